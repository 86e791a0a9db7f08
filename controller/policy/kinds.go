package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// Bounds on the "objects" and "management" kinds: every entry becomes
// work on every member device.
const (
	// MaxObjects bounds the entries of one objects policy.
	MaxObjects = 64
	// MaxObjectParameters bounds the parameters held on one instance.
	MaxObjectParameters = 64
	// MaxNotificationPaths bounds a management policy's notifications and
	// value_change entries together.
	MaxNotificationPaths = 64
	// MinInformInterval and MaxInformInterval bound
	// periodic_inform_interval, in seconds. TR-069 accepts any value ≥1
	// (TR-181/TR-098 ManagementServer), but a group-wide period under a minute is an inform
	// storm of our own making, and over a week a dead device goes unseen
	// too long.
	MinInformInterval = 60
	MaxInformInterval = 604800
	// maxNameLen is TR-069's limit on parameter names (TR-069 A.3.2), which
	// is also USP's on each ReferenceList entry (TR-181 Device.LocalAgent.Subscription.{i}.).
	maxNameLen = 256
	// maxSubscriptionIDLen is the USP Subscription.ID limit (TR-181 Device.LocalAgent.Subscription.{i}.).
	maxSubscriptionIDLen = 64
)

// Data-model roots (TR-181/TR-098 ManagementServer): TR-181 and TR-098.
const (
	rootTR181 = "Device."
	rootTR098 = "InternetGatewayDevice."
)

// ObjectsSpec is the spec of an "objects" policy: instances of tables
// that must exist with some parameter values, or must not exist, each
// found by one key parameter.
//
//	{"objects": [
//	  {"table": "Device.NAT.PortMapping.", "key": {"Alias": "voip-sip"},
//	   "parameters": {"Enable": "true", "ExternalPort": "5060",
//	                  "InternalClient": {"expr": "params[\"Device.DHCPv4.Server.Pool.1.MinAddress\"]"}}},
//	  {"table": "Device.NAT.PortMapping.", "key": {"Alias": "old-rule"}, "present": false}
//	]}
//
// "present" defaults to true. A parameter value is a string (the wire
// form: "true", "5060") or {"expr": "<CEL>"} computed per device like a
// parameters policy's expr. An entry whose table is under the other
// standard root ("Device." vs "InternetGatewayDevice.") than the
// device's is skipped on that device, so one policy can name a table for
// TR-181 and TR-098 devices both.
type ObjectsSpec struct {
	Objects []ObjectSpec `json:"objects"`
}

// ObjectSpec is one entry of an "objects" policy.
type ObjectSpec struct {
	// Table is the table path without an instance ("Device.NAT.PortMapping.").
	Table string `json:"table"`
	// Key is exactly one parameter of the instance and its value, which
	// identify it: {"Alias": "voip-sip"}.
	Key map[string]string `json:"key"`
	// Present: the instance must exist (the default) or must not (false).
	Present *bool `json:"present,omitempty"`
	// Parameters are held on the instance, by name relative to it. Each
	// value is a JSON string or {"expr": "<CEL>"}.
	Parameters map[string]json.RawMessage `json:"parameters,omitempty"`

	keyParam, keyValue string
	present            bool
	params             []objectParam // sorted by name
}

type objectParam struct {
	name     string
	value    string
	compiled *Value
}

func validateObjects(spec json.RawMessage) (*CheckedSpec, error) {
	var objs ObjectsSpec
	if err := decodeStrict(spec, &objs); err != nil {
		return nil, err
	}
	if len(objs.Objects) == 0 {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "spec.objects is empty")
	}
	if len(objs.Objects) > MaxObjects {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "spec.objects has %d entries; the limit is %d", len(objs.Objects), MaxObjects)
	}
	seen := map[[3]string]int{}
	for i := range objs.Objects {
		o := &objs.Objects[i]
		where := fmt.Sprintf("spec.objects[%d]", i)
		if err := checkTable(where+".table", o.Table); err != nil {
			return nil, err
		}
		if len(o.Key) != 1 {
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s.key has %d parameters; give exactly one, e.g. {\"Alias\": \"voip-sip\"}", where, len(o.Key))
		}
		for k, v := range o.Key {
			o.keyParam, o.keyValue = k, v
		}
		if err := checkRelativeName(where+".key", o.keyParam); err != nil {
			return nil, err
		}
		if o.keyValue == "" {
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s.key.%s is empty; the key value identifies the instance", where, o.keyParam)
		}
		if len(o.keyValue) > maxNameLen {
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s.key.%s is %d bytes; the limit is %d", where, o.keyParam, len(o.keyValue), maxNameLen)
		}
		id := [3]string{o.Table, o.keyParam, o.keyValue}
		if j, dup := seen[id]; dup {
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s is %s[%s==%q] again, as spec.objects[%d]", where, o.Table, o.keyParam, o.keyValue, j)
		}
		seen[id] = i
		o.present = o.Present == nil || *o.Present
		if !o.present && len(o.Parameters) > 0 {
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s has parameters but \"present\": false; an instance to delete holds none", where)
		}
		if len(o.Parameters) > MaxObjectParameters {
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s.parameters has %d entries; the limit is %d", where, len(o.Parameters), MaxObjectParameters)
		}
		for _, name := range slices.Sorted(maps.Keys(o.Parameters)) {
			pw := where + ".parameters." + name
			if err := checkRelativeName(where+".parameters", name); err != nil {
				return nil, err
			}
			if name == o.keyParam {
				return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s is the key; its value comes from %s.key", pw, where)
			}
			p, err := parseObjectValue(pw, o.Parameters[name])
			if err != nil {
				return nil, err
			}
			p.name = name
			o.params = append(o.params, p)
		}
	}
	return &CheckedSpec{Kind: KindObjects, Objects: objs.Objects}, nil
}

// checkTable accepts the path of a table: an object path ending in the
// table's name ("Device.NAT.PortMapping."), not an instance, search path
// or data-model root. Errors give the position in the path.
func checkTable(where, table string) error {
	if base, ok := strings.CutSuffix(table, ".{i}."); ok {
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s %q: name the table without \"{i}\": %q", where, table, base+".")
	}
	p, err := devicemodel.ParsePath(table, false)
	if err != nil {
		return pathError(where, err)
	}
	if p.Kind != devicemodel.PathObject {
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s %q is not a table path (kind %s); a table path ends with '.'", where, table, p.Kind)
	}
	if p.Search {
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s %q is a search path; name one table", where, table)
	}
	body := strings.TrimSuffix(table, ".")
	i := strings.LastIndexByte(body, '.')
	if i < 0 {
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s %q is a data model root, not a table", where, table)
	}
	if last := body[i+1:]; last[0] >= '0' && last[0] <= '9' {
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s %q at position %d: %s is an instance number; give the table, %q", where, table, i+1, last, body[:i+1])
	}
	return nil
}

// checkRelativeName accepts a parameter name relative to an instance
// ("Enable"): one segment, no dots.
func checkRelativeName(where, name string) error {
	if strings.Contains(name, ".") {
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s: %q is not a parameter name relative to the instance (no dots)", where, name)
	}
	if len(name) > maxNameLen {
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s: %q is longer than %d bytes", where, name, maxNameLen)
	}
	p, err := devicemodel.ParsePath(name, false)
	if err != nil {
		return pathError(where, err)
	}
	if p.Kind != devicemodel.PathParameter || p.Search {
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s: %q is not a parameter name", where, name)
	}
	return nil
}

// pathError names the field of a path that does not parse; the parser's
// message gives the position.
func pathError(where string, err error) error {
	var se *devicemodel.PathSyntaxError
	if errors.As(err, &se) {
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s: %s", where, se.Error())
	}
	return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s: %s", where, devicemodel.ErrorMessage(err))
}

// parseObjectValue reads a JSON string or {"expr": "<CEL>"}.
func parseObjectValue(where string, raw json.RawMessage) (objectParam, error) {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) > 0 && raw[0] == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return objectParam{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s: %v", where, err)
		}
		return objectParam{value: s}, nil
	case len(raw) > 0 && raw[0] == '{':
		var e struct {
			Expr string `json:"expr"`
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return objectParam{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s: %v; an expression is {\"expr\": \"<CEL>\"}", where, err)
		}
		v, err := CompileValue(e.Expr)
		if err != nil {
			return objectParam{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s.expr: %s", where, devicemodel.ErrorMessage(err))
		}
		return objectParam{compiled: v}, nil
	}
	// Numbers and booleans are refused rather than converted: the value
	// is sent as written, and "true" vs 1 is the operator's choice.
	shown := string(raw)
	if len(shown) > 32 {
		shown = shown[:32] + "..."
	}
	return objectParam{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s is %s; give a string (\"5060\", \"true\") or {\"expr\": \"<CEL>\"}", where, shown)
}

func (s *CheckedSpec) objectsNeed() ParamNeed {
	need := ParamNeed{}
	for _, o := range s.Objects {
		// Diff looks for the instance among every cached row of the table.
		need = need.Union(ParamNeed{Prefixes: []string{o.Table}})
		for _, p := range o.params {
			if p.compiled != nil {
				need = need.Union(p.compiled.Params())
			}
		}
	}
	return need
}

func (s *CheckedSpec) objectWants(d DeviceFacts, _ Env) ([]Want, error) {
	root := deviceRoot(d)
	wants := make([]Want, 0, len(s.Objects))
	for _, o := range s.Objects {
		if !appliesTo(o.Table, root) {
			continue
		}
		ow := &ObjectWant{Table: o.Table, KeyParam: o.keyParam, KeyValue: o.keyValue, Present: o.present, Create: o.present}
		if len(o.params) > 0 {
			ow.Params = make(map[string]string, len(o.params))
		}
		for _, p := range o.params {
			v := p.value
			if p.compiled != nil {
				var err error
				if v, err = p.compiled.Eval(d); err != nil {
					return nil, devicemodel.Errorf(devicemodel.CodeInvalidValue, "%s[%s==%s].%s: %s", o.Table, o.keyParam, o.keyValue, p.name, devicemodel.ErrorMessage(err))
				}
			}
			ow.Params[p.name] = v
		}
		wants = append(wants, Want{Object: ow})
	}
	return wants, nil
}

// ManagementSpec is the spec of a "management" policy: how a device
// reports to Duet, translated per protocol. At least one field is given.
//
//	{"periodic_inform_interval": 300,
//	 "notifications": [{"path": "Device.WiFi.SSID.1.SSID", "notification": "active"}],
//	 "value_change": ["Device.DeviceInfo.SoftwareVersion", "Device.WiFi.SSID."]}
//
// On CWMP:
//   - periodic_inform_interval sets <root>ManagementServer.PeriodicInformEnable
//     to true and .PeriodicInformInterval (TR-181/TR-098 ManagementServer), root being the
//     device's "Device." or "InternetGatewayDevice.";
//   - notifications set each path's notification attribute (off 0,
//     passive 1, active 2; SetParameterAttributes, TR-069 A.3.2), a partial
//     path covering its subtree;
//   - value_change is active notification on each path.
//
// On USP:
//   - periodic_inform_interval sets PeriodicNotifInterval on the
//     Device.LocalAgent.Controller.{i}. whose EndpointID is ours (TR-369
//     "Notify"; TR-181 Device.LocalAgent.Controller.{i}.); that instance must exist (it is how the agent knows us);
//   - USP has no notification attributes: value_change paths and
//     notifications "passive" or "active" become the ReferenceList of one
//     ValueChange Subscription of the policy (TR-181 Device.LocalAgent.Subscription.{i}.). An agent
//     notifies at once whichever was asked; passive only differs on CWMP.
//     "off" asks nothing: a path outside our subscriptions is not
//     notified, and other Controllers' subscriptions are not ours to
//     change.
//
// Paths under the other standard root than the device's are skipped on
// that device, so one policy can list a TR-181 and a TR-098 path.
type ManagementSpec struct {
	// PeriodicInformInterval is in seconds.
	PeriodicInformInterval *int64             `json:"periodic_inform_interval,omitempty"`
	Notifications          []NotificationSpec `json:"notifications,omitempty"`
	ValueChange            []string           `json:"value_change,omitempty"`

	attrs []AttrWant // notifications then value_change, in spec order
}

// NotificationSpec is one path's notification: "off", "passive" or
// "active".
type NotificationSpec struct {
	Path         string `json:"path"`
	Notification string `json:"notification"`
}

// notificationValues are the CWMP attribute values (TR-069 A.3.2). The
// lightweight ones (3-6) are left out: Duet does not listen for them.
var notificationValues = map[string]int{"off": 0, "passive": 1, "active": 2}

func validateManagement(spec json.RawMessage) (*CheckedSpec, error) {
	var m ManagementSpec
	if err := decodeStrict(spec, &m); err != nil {
		return nil, err
	}
	if m.PeriodicInformInterval == nil && len(m.Notifications) == 0 && len(m.ValueChange) == 0 {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "spec needs at least one of periodic_inform_interval, notifications, value_change")
	}
	if v := m.PeriodicInformInterval; v != nil && (*v < MinInformInterval || *v > MaxInformInterval) {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "spec.periodic_inform_interval is %d; give seconds from %d to %d", *v, MinInformInterval, MaxInformInterval)
	}
	if n := len(m.Notifications) + len(m.ValueChange); n > MaxNotificationPaths {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "spec.notifications and spec.value_change have %d entries together; the limit is %d", n, MaxNotificationPaths)
	}
	seen := map[string]string{}
	add := func(where, path string, notification int) error {
		if err := checkNotificationPath(where, path); err != nil {
			return err
		}
		if other, dup := seen[path]; dup {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s %q is also %s", where, path, other)
		}
		seen[path] = where
		m.attrs = append(m.attrs, AttrWant{Path: path, Notification: notification})
		return nil
	}
	for i, n := range m.Notifications {
		where := fmt.Sprintf("spec.notifications[%d]", i)
		v, ok := notificationValues[n.Notification]
		if !ok {
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s.notification is %q; give off, passive or active", where, n.Notification)
		}
		if err := add(where+".path", n.Path, v); err != nil {
			return nil, err
		}
	}
	for i, p := range m.ValueChange {
		if err := add(fmt.Sprintf("spec.value_change[%d]", i), p, notificationValues["active"]); err != nil {
			return nil, err
		}
	}
	return &CheckedSpec{Kind: KindManagement, Management: &m}, nil
}

// checkNotificationPath accepts a parameter or a partial (object) path
// that both protocols can take: no search paths (CWMP has none), at most
// 256 bytes, and not a bare root (every parameter of the device, counters
// included, would notify).
func checkNotificationPath(where, path string) error {
	p, err := devicemodel.ParsePath(path, false)
	if err != nil {
		return pathError(where, err)
	}
	switch {
	case p.Kind != devicemodel.PathParameter && p.Kind != devicemodel.PathObject:
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s %q is a %s path; give a parameter or an object path", where, path, p.Kind)
	case p.Search:
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s %q is a search path; CWMP has none, give instance numbers", where, path)
	case len(path) > maxNameLen:
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s %q is longer than %d bytes", where, path, maxNameLen)
	case p.Kind == devicemodel.PathObject && !strings.Contains(strings.TrimSuffix(path, "."), "."):
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s %q is a whole data model; name a subtree", where, path)
	}
	return nil
}

// USP tables a management policy writes (TR-181 Device.LocalAgent.Subscription.{i}., TR-181).
const (
	uspControllerTable   = "Device.LocalAgent.Controller."
	uspSubscriptionTable = "Device.LocalAgent.Subscription."
)

func (s *CheckedSpec) managementNeed() ParamNeed {
	m := s.Management
	if m == nil {
		return ParamNeed{}
	}
	need := ParamNeed{}
	if m.PeriodicInformInterval != nil {
		for _, root := range []string{rootTR181, rootTR098} {
			need.Paths = append(need.Paths, root+"ManagementServer.PeriodicInformEnable", root+"ManagementServer.PeriodicInformInterval")
		}
		need.Prefixes = append(need.Prefixes, uspControllerTable)
	}
	// Always: a USP device is swept of the policy's stale subscriptions
	// even when it no longer asks for one.
	need.Prefixes = append(need.Prefixes, uspSubscriptionTable)
	return ParamNeed{}.Union(need) // sorted, as Union leaves them
}

func (s *CheckedSpec) managementWants(d DeviceFacts, env Env) ([]Want, error) {
	m := s.Management
	switch d.Device.Protocol {
	case devicemodel.ProtocolCWMP:
		root := deviceRoot(d)
		var wants []Want
		if m.PeriodicInformInterval != nil {
			wants = append(wants,
				Want{Param: &ParamWant{Path: root + "ManagementServer.PeriodicInformEnable", Value: "true"}},
				Want{Param: &ParamWant{Path: root + "ManagementServer.PeriodicInformInterval", Value: strconv.FormatInt(*m.PeriodicInformInterval, 10)}})
		}
		for _, a := range m.attrs {
			if appliesTo(a.Path, root) {
				wants = append(wants, Want{Attr: &AttrWant{Path: a.Path, Notification: a.Notification}})
			}
		}
		return wants, nil
	case devicemodel.ProtocolUSP:
		return m.uspWants(env)
	}
	return nil, devicemodel.Errorf(devicemodel.CodeInvalidValue, "device %s speaks protocol %q; a management policy knows cwmp and usp", d.Device.ID, d.Device.Protocol)
}

// uspWants translates the spec for a USP agent (see ManagementSpec).
// Errors are CodeInvalidValue, so the device is reported failed with
// the reason.
func (m *ManagementSpec) uspWants(env Env) ([]Want, error) {
	var wants []Want
	if m.PeriodicInformInterval != nil {
		if env.USPEndpointID == "" {
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidValue, "periodic_inform_interval on USP needs the controller's USP endpoint ID (Env.USPEndpointID), which is not configured")
		}
		// The agent owns its Controller rows: a missing one is a failure
		// (Create false), not something to add (TR-369 "Discovery").
		wants = append(wants, Want{Object: &ObjectWant{
			Table: uspControllerTable, KeyParam: "EndpointID", KeyValue: env.USPEndpointID,
			Present: true, Create: false,
			Params: map[string]string{"PeriodicNotifInterval": strconv.FormatInt(*m.PeriodicInformInterval, 10)},
		}})
	}
	if env.PolicyID == "" {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidValue, "a management policy on USP needs its policy ID (Env.PolicyID) to name its subscriptions")
	}
	var refs []string
	for _, a := range m.attrs {
		if a.Notification > 0 && appliesTo(a.Path, rootTR181) {
			refs = append(refs, a.Path)
		}
	}
	slices.Sort(refs)
	refs = slices.Compact(refs)
	prefix := subscriptionPrefix(env.PolicyID)
	if len(refs) == 0 {
		// Nothing to subscribe to, but an earlier revision may have.
		return append(wants, Want{Object: &ObjectWant{
			Table: uspSubscriptionTable, KeyParam: "ID", StalePrefix: prefix,
		}}), nil
	}
	list := strings.Join(refs, ",") // a USP list is comma-separated (TR-106)
	sum := sha256.Sum256([]byte(list))
	id := prefix + hex.EncodeToString(sum[:6])
	if len(id) > maxSubscriptionIDLen {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidValue, "subscription ID %q is longer than USP's %d bytes; the policy ID is too long", id, maxSubscriptionIDLen)
	}
	// ReferenceList cannot be changed once written (TR-181 Device.LocalAgent.Subscription.{i}.): the ID
	// carries the list's hash, so another list is another instance, and
	// StalePrefix deletes the policy's instances for older lists.
	return append(wants, Want{Object: &ObjectWant{
		Table: uspSubscriptionTable, KeyParam: "ID", KeyValue: id,
		Present: true, Create: true,
		Params: map[string]string{
			// A disabled row never fires; a non-persistent one is gone
			// after the agent restarts (TR-181 Device.LocalAgent.Subscription.{i}., TR-369 "Notifications", first contact step 5).
			"Enable":     "true",
			"NotifType":  "ValueChange",
			"Persistent": "true",
			// A value change is reported again by the next one or read
			// back at the next reconcile: no need for retries.
			"NotifRetry": "false",
		},
		CreateOnly:  map[string]string{"ReferenceList": list},
		StalePrefix: prefix,
	}}), nil
}

// subscriptionPrefix starts the ID of every USP Subscription the policy
// creates; the trailing '-' keeps "pol_1" from matching "pol_12".
func subscriptionPrefix(policyID string) string { return "duet-" + policyID + "-" }

// deviceRoot is the data-model root Wants are written under. A USP agent
// has the TR-181 root only. For CWMP it is the root the device reported;
// when not recorded, the root of its cached parameters, and "Device."
// (TR-181, what current CPEs speak) when nothing is cached either.
func deviceRoot(d DeviceFacts) string {
	if d.Device.Protocol == devicemodel.ProtocolUSP {
		return rootTR181
	}
	if d.Device.DataModel != "" {
		return d.Device.DataModel
	}
	for p := range d.Params {
		if strings.HasPrefix(p, rootTR098) {
			return rootTR098
		}
	}
	return rootTR181
}

// appliesTo reports whether a path is for a device with the given root:
// a path under the other standard root is not; a vendor root is taken as
// written.
func appliesTo(path, root string) bool {
	r := devicemodel.DataModelRoot(path)
	return r == root || (r != rootTR181 && r != rootTR098)
}
