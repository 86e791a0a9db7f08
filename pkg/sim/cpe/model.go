package cpe

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/duet-dm/duet/pkg/devicemodel"
)

// DataModel is the simulator's data model file format: a flat list of
// parameters (existing instances included) and the writable tables that
// accept AddObject, each with the parameters a new instance gets.
//
//	{"root": "Device.",
//	 "parameters": [{"path": "Device.DeviceInfo.SerialNumber", "type": "string", "value": "X", "writable": false}],
//	 "tables": [{"path": "Device.NAT.PortMapping.", "template": [{"name": "Enable", "type": "boolean", "value": "false", "writable": true}]}]}
type DataModel struct {
	Root       string      `json:"root"`
	Parameters []ParamSpec `json:"parameters"`
	Tables     []TableSpec `json:"tables"`
}

// ParamSpec is one parameter of a DataModel.
type ParamSpec struct {
	Path     string `json:"path,omitempty"`
	Name     string `json:"name,omitempty"` // in a table template
	Type     string `json:"type"`
	Value    string `json:"value"`
	Writable bool   `json:"writable,omitempty"`
	// DenyActive: active notification is refused with 9009 (counters and
	// clocks, activeNotify="canDeny" in the data models; TR-069 A.3.2).
	DenyActive bool `json:"denyActive,omitempty"`
}

// TableSpec is a writable multi-instance object.
type TableSpec struct {
	Path     string      `json:"path"`
	Template []ParamSpec `json:"template"`
}

// LoadDataModel reads a DataModel JSON file.
func LoadDataModel(path string) (*DataModel, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var dm DataModel
	if err := json.Unmarshal(b, &dm); err != nil {
		return nil, fmt.Errorf("cpe: data model %s: %w", path, err)
	}
	if dm.Root != "Device." && dm.Root != "InternetGatewayDevice." {
		return nil, fmt.Errorf("cpe: data model %s: root %q is neither Device. nor InternetGatewayDevice", path, dm.Root)
	}
	return &dm, nil
}

type param struct {
	typ          cwmp.ValueType
	value        string
	writable     bool
	denyActive   bool
	notification int
	accessList   []string
}

type table struct {
	template []ParamSpec
	next     uint32 // next instance number; never reused (TR-069 A.3.2 AddObject)
}

// model is the live data model of one CPE. It is not safe for concurrent
// use; the CPE guards it with its mutex.
type model struct {
	root    string
	params  map[string]*param
	tables  map[string]*table
	objects map[string]bool // every object path ending in "."
}

func newModel(dm *DataModel) (*model, error) {
	m := &model{root: dm.Root, params: map[string]*param{}, tables: map[string]*table{}}
	for _, p := range dm.Parameters {
		if !strings.HasPrefix(p.Path, dm.Root) || strings.HasSuffix(p.Path, ".") {
			return nil, fmt.Errorf("cpe: parameter %q is not a parameter under %s", p.Path, dm.Root)
		}
		m.params[p.Path] = &param{typ: cwmp.ParseValueType(p.Type), value: p.Value, writable: p.Writable, denyActive: p.DenyActive}
	}
	for _, t := range dm.Tables {
		if !strings.HasSuffix(t.Path, ".") {
			return nil, fmt.Errorf("cpe: table %q must end in '.'", t.Path)
		}
		m.tables[t.Path] = &table{template: t.Template, next: 1}
	}
	m.reindex()
	for tp, t := range m.tables {
		for o := range m.objects {
			if n, ok := instanceOf(tp, o); ok && n >= t.next {
				t.next = n + 1
			}
		}
	}
	return m, nil
}

// instanceOf reports whether obj is "<table><n>." and returns n.
func instanceOf(table, obj string) (uint32, bool) {
	rest, ok := strings.CutPrefix(obj, table)
	if !ok || !strings.HasSuffix(rest, ".") || strings.Count(rest, ".") != 1 {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSuffix(rest, "."), 10, 32)
	return uint32(n), err == nil && n > 0
}

func (m *model) reindex() {
	m.objects = map[string]bool{m.root: true}
	add := func(p string) {
		for i := len(m.root); i < len(p); i++ {
			if p[i] == '.' {
				m.objects[p[:i+1]] = true
			}
		}
	}
	for p := range m.params {
		add(p)
	}
	for t := range m.tables {
		add(t)
	}
}

func (m *model) clone() *model {
	c := &model{root: m.root, params: make(map[string]*param, len(m.params)), tables: make(map[string]*table, len(m.tables))}
	for k, p := range m.params {
		cp := *p
		cp.accessList = append([]string(nil), p.accessList...)
		c.params[k] = &cp
	}
	for k, t := range m.tables {
		ct := *t
		c.tables[k] = &ct
	}
	c.reindex()
	return c
}

func (m *model) sortedParams(prefix string) []string {
	var out []string
	for p := range m.params {
		if strings.HasPrefix(p, prefix) {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func fault(code uint32, format string, args ...any) *cwmp.Fault {
	return cwmp.NewFault(code, fmt.Sprintf(format, args...))
}

// getValues implements GetParameterValues: full names and partial paths
// (a name ending in "." is its whole subtree; "" is the whole model).
func (m *model) getValues(names []string) ([]cwmp.ParameterValueStruct, *cwmp.Fault) {
	var out []cwmp.ParameterValueStruct
	for _, n := range names {
		if n == "" {
			n = m.root
		}
		if strings.HasSuffix(n, ".") {
			if !m.objects[n] {
				return nil, fault(cwmp.FaultInvalidParameterName, "no object %s", n)
			}
			for _, p := range m.sortedParams(n) {
				out = append(out, m.pvs(p))
			}
			continue
		}
		if _, ok := m.params[n]; !ok {
			return nil, fault(cwmp.FaultInvalidParameterName, "no parameter %s", n)
		}
		out = append(out, m.pvs(n))
	}
	return out, nil
}

func (m *model) pvs(path string) cwmp.ParameterValueStruct {
	p := m.params[path]
	v := p.value
	if strings.HasSuffix(path, "Password") {
		// Passwords read back empty (TR-098/TR-181 ManagementServer.Password,
		// ConnectionRequestPassword, STUNPassword, Users.User.{i}.Password).
		v = ""
	}
	return cwmp.ParameterValueStruct{Name: path, Value: cwmp.Value{Type: p.typ, Data: v}}
}

// setValues implements SetParameterValues atomically: every parameter is
// checked before any is written; on failure a 9003 fault lists one
// SetParameterValuesFault per bad parameter (TR-069 A.3.2, TR-069 §3.5, SOAP Fault).
func (m *model) setValues(list []cwmp.ParameterValueStruct) *cwmp.Fault {
	var bad []cwmp.SetParameterValuesFault
	seen := map[string]bool{}
	add := func(name string, code uint32) {
		bad = append(bad, cwmp.SetParameterValuesFault{ParameterName: name, FaultCode: code, FaultString: cwmp.FaultMessage(code)})
	}
	for _, pv := range list {
		p, ok := m.params[pv.Name]
		switch {
		case !ok:
			add(pv.Name, cwmp.FaultInvalidParameterName)
		case seen[pv.Name]:
			return fault(cwmp.FaultInvalidArguments, "parameter %s named twice", pv.Name)
		case !p.writable:
			add(pv.Name, cwmp.FaultNotWritable)
		case pv.Value.Type.Typed() && pv.Value.Type != p.typ && !compatible(pv.Value.Type, p.typ):
			add(pv.Name, cwmp.FaultInvalidParameterType)
		case cwmp.ValidateValue(p.typ, pv.Value.Data) != nil:
			add(pv.Name, cwmp.FaultInvalidParameterValue)
		case strings.HasSuffix(pv.Name, ".DiagnosticsState") && pv.Value.Data != "Requested" && pv.Value.Data != "Canceled":
			// Only Requested (and Canceled) may be written (TR-069 diagnostics, TR-143).
			add(pv.Name, cwmp.FaultInvalidParameterValue)
		}
		seen[pv.Name] = true
	}
	if len(bad) > 0 {
		f := cwmp.NewFault(cwmp.FaultInvalidArguments, "")
		f.Detail.SetParameterValuesFault = bad
		return f
	}
	for _, pv := range list {
		p := m.params[pv.Name]
		p.value = cwmp.NormalizeValue(p.typ, pv.Value.Data, false)
	}
	return nil
}

// compatible allows an integer sent with a neighbouring integer type.
func compatible(sent, have cwmp.ValueType) bool {
	ints := map[cwmp.ValueType]bool{cwmp.TypeInt: true, cwmp.TypeUnsignedInt: true, cwmp.TypeLong: true, cwmp.TypeUnsignedLong: true}
	return ints[sent] && ints[have]
}

// names implements GetParameterNames. NextLevel=false lists the path itself
// and everything below it; NextLevel=true lists the immediate children;
// NextLevel=true on a parameter is 9003 (TR-069 A.3.2).
func (m *model) names(path string, nextLevel bool) ([]cwmp.ParameterInfoStruct, *cwmp.Fault) {
	if path == "" {
		if nextLevel {
			return []cwmp.ParameterInfoStruct{{Name: m.root, Writable: false}}, nil
		}
		path = m.root
	}
	if !strings.HasSuffix(path, ".") {
		p, ok := m.params[path]
		if !ok {
			return nil, fault(cwmp.FaultInvalidParameterName, "no parameter %s", path)
		}
		if nextLevel {
			return nil, fault(cwmp.FaultInvalidArguments, "NextLevel=true on parameter %s", path)
		}
		return []cwmp.ParameterInfoStruct{{Name: path, Writable: p.writable}}, nil
	}
	if !m.objects[path] {
		return nil, fault(cwmp.FaultInvalidParameterName, "no object %s", path)
	}
	var all []string
	for o := range m.objects {
		if strings.HasPrefix(o, path) {
			all = append(all, o)
		}
	}
	all = append(all, m.sortedParams(path)...)
	sort.Strings(all)
	var out []cwmp.ParameterInfoStruct
	for _, n := range all {
		if nextLevel {
			rest := strings.TrimSuffix(n[len(path):], ".")
			if rest == "" || strings.Contains(rest, ".") {
				continue
			}
		}
		out = append(out, cwmp.ParameterInfoStruct{Name: n, Writable: m.writable(n)})
	}
	return out, nil
}

func (m *model) writable(n string) bool {
	if p, ok := m.params[n]; ok {
		return p.writable
	}
	if _, ok := m.tables[n]; ok {
		return true // a table that accepts AddObject
	}
	for t := range m.tables {
		if _, ok := instanceOf(t, n); ok {
			return true // an instance that accepts DeleteObject
		}
	}
	return false
}

// covered returns the parameters a name or partial path refers to.
func (m *model) covered(name string) ([]string, bool) {
	if strings.HasSuffix(name, ".") || name == "" {
		if name == "" {
			name = m.root
		}
		if !m.objects[name] {
			return nil, false
		}
		return m.sortedParams(name), true
	}
	if _, ok := m.params[name]; !ok {
		return nil, false
	}
	return []string{name}, true
}

func (m *model) setAttributes(list []cwmp.SetParameterAttributesStruct) *cwmp.Fault {
	for _, a := range list {
		ps, ok := m.covered(a.Name)
		if !ok {
			return fault(cwmp.FaultInvalidParameterName, "no parameter %s", a.Name)
		}
		if a.NotificationChange && (a.Notification < 0 || a.Notification > 6) {
			return fault(cwmp.FaultInvalidArguments, "notification %d out of range", a.Notification)
		}
		if a.NotificationChange && a.Notification == 2 && !strings.HasSuffix(a.Name, ".") {
			if m.params[a.Name].denyActive {
				return fault(cwmp.FaultNotificationRejected, "active notification denied for %s", a.Name)
			}
		}
		_ = ps
	}
	for _, a := range list {
		ps, _ := m.covered(a.Name)
		for _, n := range ps {
			p := m.params[n]
			if a.NotificationChange {
				// A partial path skips the parameters that deny active
				// notification rather than failing the whole request.
				if a.Notification == 2 && p.denyActive {
					continue
				}
				p.notification = a.Notification
			}
			if a.AccessListChange {
				p.accessList = append([]string(nil), a.AccessList...)
			}
		}
	}
	return nil
}

func (m *model) getAttributes(names []string) ([]cwmp.ParameterAttributeStruct, *cwmp.Fault) {
	var out []cwmp.ParameterAttributeStruct
	for _, n := range names {
		ps, ok := m.covered(n)
		if !ok {
			return nil, fault(cwmp.FaultInvalidParameterName, "no parameter %s", n)
		}
		for _, p := range ps {
			a := m.params[p]
			out = append(out, cwmp.ParameterAttributeStruct{Name: p, Notification: a.notification, AccessList: append([]string(nil), a.accessList...)})
		}
	}
	return out, nil
}

func (m *model) addObject(obj string) (uint32, *cwmp.Fault) {
	t, ok := m.tables[obj]
	if !ok {
		return 0, fault(cwmp.FaultInvalidParameterName, "%s is not a writable table", obj)
	}
	n := t.next
	t.next++
	inst := obj + strconv.FormatUint(uint64(n), 10) + "."
	for _, s := range t.template {
		m.params[inst+s.Name] = &param{typ: cwmp.ParseValueType(s.Type), value: s.Value, writable: s.Writable, denyActive: s.DenyActive}
	}
	m.objects[inst] = true
	m.reindex()
	m.updateCount(obj)
	return n, nil
}

func (m *model) deleteObject(obj string) *cwmp.Fault {
	var tbl string
	for t := range m.tables {
		if _, ok := instanceOf(t, obj); ok {
			tbl = t
		}
	}
	if tbl == "" || !m.objects[obj] {
		return fault(cwmp.FaultInvalidParameterName, "%s is not an instance of a writable table", obj)
	}
	for p := range m.params {
		if strings.HasPrefix(p, obj) {
			delete(m.params, p)
		}
	}
	for t := range m.tables {
		if strings.HasPrefix(t, obj) {
			delete(m.tables, t)
		}
	}
	m.reindex()
	m.updateCount(tbl)
	return nil
}

// updateCount keeps <Table>NumberOfEntries in step with the instances.
func (m *model) updateCount(tbl string) {
	parent, name := devicemodel.SplitParameter(strings.TrimSuffix(tbl, "."))
	p, ok := m.params[parent+name+"NumberOfEntries"]
	if !ok {
		return
	}
	n := 0
	for o := range m.objects {
		if _, ok := instanceOf(tbl, o); ok {
			n++
		}
	}
	p.value = strconv.Itoa(n)
}

func (m *model) get(path string) (string, bool) {
	p, ok := m.params[path]
	if !ok {
		return "", false
	}
	return p.value, true
}

// set writes a parameter without any checks (the CPE's own changes).
func (m *model) set(path, value string) {
	if p, ok := m.params[path]; ok {
		p.value = value
	}
}
