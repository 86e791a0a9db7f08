package agent

import (
	"sort"
	"strconv"
	"strings"

	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// valueType is the TR-106 type of a parameter, enough to validate writes
// (TR-106 value encoding, as TR-369 "Messages" uses it) and to answer GetSupportedDM.
type valueType int

const (
	typeString valueType = iota
	typeBool
	typeUint
)

func (t valueType) protoType() uspmsg.GetSupportedDMResp_ParamValueType {
	switch t {
	case typeBool:
		return uspmsg.GetSupportedDMResp_PARAM_BOOLEAN
	case typeUint:
		return uspmsg.GetSupportedDMResp_PARAM_UNSIGNED_INT
	}
	return uspmsg.GetSupportedDMResp_PARAM_STRING
}

type paramDef struct {
	name     string
	typ      valueType
	writable bool
	def      string   // value of a new instance
	enum     []string // allowed values, when set
	max      uint64   // for typeUint, 0 = no limit
}

type cmdDef struct {
	name   string // "Reboot()"
	async  bool
	inputs []string
	output []string
}

// objDef describes one supported object, keyed by its supported path
// ("Device.NAT.PortMapping.{i}." for a row of a table).
type objDef struct {
	path      string
	multi     bool
	creatable bool // Add/Delete allowed from a Controller
	params    []paramDef
	commands  []cmdDef
	events    []string   // "Boot!"
	keys      [][]string // unique key sets; every param in them is required on Add
}

func (d *objDef) param(name string) *paramDef {
	for i := range d.params {
		if d.params[i].name == name {
			return &d.params[i]
		}
	}
	return nil
}

func (d *objDef) command(name string) *cmdDef {
	for i := range d.commands {
		if d.commands[i].name == name {
			return &d.commands[i]
		}
	}
	return nil
}

func rw(name string, t valueType, def string) paramDef {
	return paramDef{name: name, typ: t, writable: true, def: def}
}
func ro(name string, t valueType) paramDef { return paramDef{name: name, typ: t} }

// schema is the supported data model: a small TR-181 subset (TR-181).
var schema = buildSchema(append(append(fileSchema, diagSchema...), []objDef{
	{path: "Device.", commands: []cmdDef{
		{name: "Reboot()", inputs: []string{"Cause", "Reason"}},
		{name: "FactoryReset()", inputs: []string{"Cause", "Reason"}},
	}, events: []string{"Boot!"}},
	{path: "Device.DeviceInfo.", params: []paramDef{
		ro("Manufacturer", typeString), ro("ManufacturerOUI", typeString), ro("ModelName", typeString),
		ro("ProductClass", typeString), ro("SerialNumber", typeString), ro("SoftwareVersion", typeString),
		ro("HardwareVersion", typeString), ro("UpTime", typeUint), rw("ProvisioningCode", typeString, ""),
		ro("ActiveFirmwareImage", typeString), ro("BootFirmwareImage", typeString),
	}},
	{path: "Device.LocalAgent.", params: []paramDef{
		ro("EndpointID", typeString), ro("SoftwareVersion", typeString), ro("SupportedProtocols", typeString),
		ro("UpTime", typeUint),
	}, events: []string{"Periodic!", "Timer!"},
		// TR-181 Device.LocalAgent.ScheduleTimer(): async, completes after
		// DelaySeconds (and raises Timer!).
		commands: []cmdDef{{name: "ScheduleTimer()", async: true, inputs: []string{"DelaySeconds"}}}},
	{path: "Device.LocalAgent.MTP.{i}.", multi: true, keys: [][]string{{"Alias"}}, params: []paramDef{
		rw("Alias", typeString, ""), rw("Enable", typeBool, "false"),
		{name: "Protocol", typ: typeString, writable: true, def: "MQTT", enum: []string{"MQTT", "STOMP", "WebSocket", "UDS"}},
		ro("Status", typeString),
	}},
	{path: "Device.LocalAgent.Controller.{i}.", multi: true, creatable: true, keys: [][]string{{"Alias"}, {"EndpointID"}},
		params: []paramDef{
			rw("Alias", typeString, ""), rw("EndpointID", typeString, ""), rw("Enable", typeBool, "false"),
			rw("AssignedRole", typeString, ""),
			rw("PeriodicNotifInterval", typeUint, "86400"),
			rw("USPNotifRetryMinimumWaitInterval", typeUint, "5"),
			rw("USPNotifRetryIntervalMultiplier", typeUint, "2000"),
			rw("OnBoardingComplete", typeBool, "false"),
		},
		commands: []cmdDef{{name: "SendOnBoardRequest()"}},
	},
	{path: "Device.LocalAgent.Controller.{i}.BootParameter.{i}.", multi: true, creatable: true, keys: [][]string{{"Alias"}, {"ParameterName"}},
		params: []paramDef{rw("Alias", typeString, ""), rw("Enable", typeBool, "false"), rw("ParameterName", typeString, "")}},
	{path: "Device.LocalAgent.Subscription.{i}.", multi: true, creatable: true, keys: [][]string{{"Alias"}, {"Recipient", "ID"}},
		params: []paramDef{
			rw("Alias", typeString, ""), rw("Enable", typeBool, "false"), rw("ID", typeString, ""),
			ro("Recipient", typeString),
			{name: "NotifType", typ: typeString, writable: true, def: "ValueChange",
				enum: []string{"ValueChange", "ObjectCreation", "ObjectDeletion", "OperationComplete", "Event"}},
			rw("ReferenceList", typeString, ""), rw("Persistent", typeBool, "false"),
			rw("TimeToLive", typeUint, "0"), rw("NotifRetry", typeBool, "false"), rw("NotifExpiration", typeUint, "0"),
		}},
	{path: "Device.LocalAgent.Request.{i}.", multi: true, params: []paramDef{
		ro("Originator", typeString), ro("Command", typeString), ro("CommandKey", typeString), ro("Status", typeString),
	}},
	{path: "Device.WiFi.", params: []paramDef{ro("SSIDNumberOfEntries", typeUint)}},
	{path: "Device.WiFi.SSID.{i}.", multi: true, keys: [][]string{{"Alias"}, {"Name"}}, params: []paramDef{
		rw("Alias", typeString, ""), rw("Enable", typeBool, "true"), ro("Status", typeString), ro("Name", typeString),
		{name: "SSID", typ: typeString, writable: true, max: 32},
	}},
	{path: "Device.NAT.", params: []paramDef{ro("PortMappingNumberOfEntries", typeUint)}},
	{path: "Device.NAT.PortMapping.{i}.", multi: true, creatable: true,
		keys: [][]string{{"Alias"}, {"RemoteHost", "ExternalPort", "Protocol"}},
		params: []paramDef{
			rw("Alias", typeString, ""), rw("Enable", typeBool, "false"), rw("Description", typeString, ""),
			rw("RemoteHost", typeString, ""),
			{name: "ExternalPort", typ: typeUint, writable: true, def: "0", max: 65535},
			{name: "InternalPort", typ: typeUint, writable: true, def: "0", max: 65535},
			{name: "Protocol", typ: typeString, writable: true, def: "TCP", enum: []string{"TCP", "UDP"}},
			rw("InternalClient", typeString, ""),
		}},
}...))

type schemaIndex struct {
	byPath map[string]*objDef
	order  []string
}

func buildSchema(defs []objDef) schemaIndex {
	s := schemaIndex{byPath: map[string]*objDef{}}
	for i := range defs {
		d := &defs[i]
		s.byPath[d.path] = d
		s.order = append(s.order, d.path)
	}
	sort.Strings(s.order)
	return s
}

// splitPath splits "Device.A.1.B" into its segments. Dots inside a search
// expression ("[Name=="a.b"]") do not split.
func splitPath(p string) []string {
	p = strings.TrimSuffix(p, ".")
	var out []string
	depth, quoted, start := 0, false, 0
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '"':
			quoted = !quoted
		case quoted:
		case c == '[':
			depth++
		case c == ']':
			depth--
		case c == '.' && depth == 0:
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return append(out, p[start:])
}

func isExpr(seg string) bool { return strings.HasPrefix(seg, "[") && strings.HasSuffix(seg, "]") }

func isInstance(seg string) bool {
	if seg == "" || seg[0] == '0' {
		return false
	}
	for i := 0; i < len(seg); i++ {
		if seg[i] < '0' || seg[i] > '9' {
			return false
		}
	}
	return true
}

// supportedOf maps an instantiated or search object path to its supported
// path: "Device.NAT.PortMapping.3." and "Device.NAT.PortMapping.*." both give
// "Device.NAT.PortMapping.{i}.".
func supportedOf(objPath string) string {
	segs := splitPath(objPath)
	for i, s := range segs {
		if isInstance(s) || s == "*" || isExpr(s) {
			segs[i] = "{i}"
		}
	}
	return strings.Join(segs, ".") + "."
}

// defOf returns the definition of an (instantiated or search) object path.
func defOf(objPath string) *objDef { return schema.byPath[supportedOf(objPath)] }

// isTablePath reports whether p names a table itself ("Device.NAT.PortMapping.").
func isTablePath(p string) bool {
	d, ok := schema.byPath[supportedOf(p)+"{i}."]
	return ok && d.multi
}

// match reports whether path (instantiated) matches pattern segment for
// segment, where "*" matches any instance and "[expr]" an instance whose
// parameters satisfy expr (TR-369 "Instance identifiers", TR-369 "Search expressions").
func (m *model) match(pattern, path string) bool {
	ps, xs := splitPath(pattern), splitPath(path)
	if len(ps) != len(xs) || strings.HasSuffix(pattern, ".") != strings.HasSuffix(path, ".") {
		return false
	}
	return m.matchSegs(ps, xs)
}

func (m *model) matchSegs(ps, xs []string) bool {
	for i := range ps {
		if ps[i] == xs[i] {
			continue
		}
		if !isInstance(xs[i]) {
			return false
		}
		switch {
		case ps[i] == "*":
		case isExpr(ps[i]):
			if !m.eval(strings.Join(xs[:i+1], ".")+".", ps[i][1:len(ps[i])-1]) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// matchPrefix reports whether the object pattern (ending in ".") matches
// path or an ancestor of it; other patterns must match path exactly.
func (m *model) matchPrefix(pattern, path string) bool {
	if !strings.HasSuffix(pattern, ".") {
		return m.match(pattern, path)
	}
	ps, xs := splitPath(pattern), splitPath(path)
	if len(ps) > len(xs) || (len(ps) == len(xs) && !strings.HasSuffix(path, ".")) {
		return false
	}
	return m.matchSegs(ps, xs[:len(ps)])
}

// eval evaluates a search expression ("Enable==true&&Name=="x"") against
// the row inst. Comparison is by the parameter's type: numbers compare as
// numbers, booleans accept true/false/1/0, strings allow only == and !=;
// "~=" tests membership of a comma list (TR-369 "Search expressions"). Anything it cannot
// parse matches nothing.
func (m *model) eval(inst, expr string) bool {
	d := defOf(inst)
	if d == nil || expr == "" {
		return false
	}
	for _, comp := range strings.Split(expr, "&&") {
		i := strings.IndexAny(comp, "=!<>~")
		if i <= 0 || i+1 >= len(comp) {
			return false
		}
		op := comp[i : i+1]
		if comp[i+1] == '=' {
			op = comp[i : i+2]
		}
		if op == "=" || op == "!" || op == "~" {
			return false
		}
		name := strings.TrimSpace(comp[:i])
		val := strings.TrimSpace(comp[i+len(op):])
		if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
			val = strings.NewReplacer("%22", `"`, "%25", "%").Replace(val[1 : len(val)-1])
		}
		actual, ok := m.values[inst+name]
		pd := d.param(name)
		if !ok || pd == nil || !compare(pd.typ, actual, op, val) {
			return false
		}
	}
	return true
}

func compare(t valueType, actual, op, val string) bool {
	if op == "~=" {
		for _, e := range strings.Split(actual, ",") {
			if strings.TrimSpace(e) == val {
				return true
			}
		}
		return false
	}
	var c int
	switch t {
	case typeBool:
		a, err1 := usp.ParseBool(actual)
		b, err2 := usp.ParseBool(val)
		if err1 != nil || err2 != nil || (op != "==" && op != "!=") {
			return false
		}
		if a != b {
			c = 1
		}
	case typeUint:
		a, err1 := strconv.ParseUint(strings.TrimPrefix(actual, "+"), 10, 64)
		b, err2 := strconv.ParseUint(strings.TrimPrefix(val, "+"), 10, 64)
		if err1 != nil || err2 != nil {
			return false
		}
		switch {
		case a < b:
			c = -1
		case a > b:
			c = 1
		}
	default:
		if op != "==" && op != "!=" {
			return false
		}
		if actual != val {
			c = 1
		}
	}
	switch op {
	case "==":
		return c == 0
	case "!=":
		return c != 0
	case "<":
		return c < 0
	case ">":
		return c > 0
	case "<=":
		return c <= 0
	case ">=":
		return c >= 0
	}
	return false
}

// model is the instantiated data model: the set of existing objects, the
// parameter values, and each table's next instance number.
type model struct {
	objects map[string]bool   // "Device.NAT.PortMapping.1."
	values  map[string]string // full parameter path → value
	next    map[string]int    // table path → next instance number
}

func newModel() *model {
	return &model{objects: map[string]bool{}, values: map[string]string{}, next: map[string]int{}}
}

func (m *model) clone() *model {
	c := &model{
		objects: make(map[string]bool, len(m.objects)),
		values:  make(map[string]string, len(m.values)),
		next:    make(map[string]int, len(m.next)),
	}
	for k, v := range m.objects {
		c.objects[k] = v
	}
	for k, v := range m.values {
		c.values[k] = v
	}
	for k, v := range m.next {
		c.next[k] = v
	}
	return c
}

// ensureObject creates obj and its single-instance ancestors.
func (m *model) ensureObject(obj string) {
	segs := splitPath(obj)
	for i := 1; i <= len(segs); i++ {
		p := strings.Join(segs[:i], ".") + "."
		if d := defOf(p); d != nil && !(d.multi && !isInstance(segs[i-1])) {
			m.objects[p] = true
		}
	}
}

// addInstance creates the next row of table (a table path) with default
// values and returns its instance path.
func (m *model) addInstance(table string) string {
	if m.next[table] == 0 {
		m.next[table] = 1
	}
	n := m.next[table]
	m.next[table] = n + 1
	inst := table + strconv.Itoa(n) + "."
	m.ensureObject(inst)
	for _, p := range defOf(inst).params {
		m.values[inst+p.name] = p.def
	}
	return inst
}

// deleteObject removes obj and everything below it.
func (m *model) deleteObject(obj string) {
	for o := range m.objects {
		if strings.HasPrefix(o, obj) {
			delete(m.objects, o)
		}
	}
	for p := range m.values {
		if strings.HasPrefix(p, obj) {
			delete(m.values, p)
		}
	}
}

// resolveObjects returns the existing objects matching an object path (with
// "*" allowed), sorted.
func (m *model) resolveObjects(pattern string) []string {
	if !isSearch(pattern) {
		if m.objects[pattern] {
			return []string{pattern}
		}
		return nil
	}
	var out []string
	for o := range m.objects {
		if m.match(pattern, o) {
			out = append(out, o)
		}
	}
	sortPaths(out)
	return out
}

// instances returns the existing rows of the table path, sorted.
func (m *model) instances(table string) []string {
	var out []string
	n := len(splitPath(table)) + 1
	for o := range m.objects {
		if strings.HasPrefix(o, table) && len(splitPath(o)) == n && isInstance(splitPath(o)[n-1]) {
			out = append(out, o)
		}
	}
	sortPaths(out)
	return out
}

// sortPaths orders paths with instance numbers compared numerically.
func sortPaths(ps []string) {
	sort.Slice(ps, func(i, j int) bool { return pathLess(ps[i], ps[j]) })
}

func pathLess(a, b string) bool {
	as, bs := splitPath(a), splitPath(b)
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] == bs[i] {
			continue
		}
		ai, aerr := strconv.Atoi(as[i])
		bi, berr := strconv.Atoi(bs[i])
		if aerr == nil && berr == nil {
			return ai < bi
		}
		return as[i] < bs[i]
	}
	return len(as) < len(bs)
}

// checkValue validates v against p and returns it in canonical form, or a
// USP error code (TR-106 value encoding, as TR-369 "Messages" uses it).
func checkValue(p *paramDef, v string) (string, uint32, string) {
	switch p.typ {
	case typeBool:
		b, err := usp.ParseBool(v)
		if err != nil {
			return "", usp.ErrCodeInvalidType, err.Error()
		}
		return usp.FormatBool(b), 0, ""
	case typeUint:
		n, err := strconv.ParseUint(strings.TrimPrefix(v, "+"), 10, 32)
		if err != nil {
			return "", usp.ErrCodeInvalidType, "not an unsignedInt: " + strconv.Quote(v)
		}
		if p.max != 0 && n > p.max {
			return "", usp.ErrCodeInvalidValue, "out of range"
		}
		return strconv.FormatUint(n, 10), 0, ""
	}
	if p.max != 0 && uint64(len(v)) > p.max {
		return "", usp.ErrCodeInvalidValue, "too long"
	}
	if len(p.enum) > 0 {
		for _, e := range p.enum {
			if e == v {
				return v, 0, ""
			}
		}
		return "", usp.ErrCodeInvalidValue, "not one of " + strings.Join(p.enum, ",")
	}
	return v, 0, ""
}
