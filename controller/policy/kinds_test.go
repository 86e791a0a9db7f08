package policy_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

func TestValidateObjectsRejects(t *testing.T) {
	obj := func(s string) string { return `{"objects":[` + s + `]}` }
	for _, c := range []struct {
		spec string
		code devicemodel.Code
		says string
	}{
		{`{"objects":[]}`, devicemodel.CodeInvalidArgument, "spec.objects is empty"},
		{`{"objects":[{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"},"precent":false}]}`, devicemodel.CodeInvalidArgument, `unknown field "precent"`},
		{obj(`{"table":"Device.NAT..PortMapping.","key":{"Alias":"a"}}`), devicemodel.CodeInvalidPath, `spec.objects[0].table: invalid path "Device.NAT..PortMapping." at position 11`},
		{obj(`{"table":"Device.NAT.PortMapping","key":{"Alias":"a"}}`), devicemodel.CodeInvalidPath, "spec.objects[0].table \"Device.NAT.PortMapping\" is not a table path (kind parameter)"},
		{obj(`{"table":"Device.NAT.PortMapping.2.","key":{"Alias":"a"}}`), devicemodel.CodeInvalidPath, `spec.objects[0].table "Device.NAT.PortMapping.2." at position 23: 2 is an instance number; give the table, "Device.NAT.PortMapping."`},
		{obj(`{"table":"Device.NAT.PortMapping.{i}.","key":{"Alias":"a"}}`), devicemodel.CodeInvalidPath, `without "{i}": "Device.NAT.PortMapping."`},
		{obj(`{"table":"Device.NAT.PortMapping.*.","key":{"Alias":"a"}}`), devicemodel.CodeInvalidPath, "search path"},
		{obj(`{"table":"Device.NAT.PortMapping.[Alias==\"a\"].","key":{"Alias":"a"}}`), devicemodel.CodeInvalidPath, "search path"},
		{obj(`{"table":"Device.","key":{"Alias":"a"}}`), devicemodel.CodeInvalidPath, "data model root"},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{}}`), devicemodel.CodeInvalidArgument, "spec.objects[0].key has 0 parameters; give exactly one"},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"a","Description":"b"}}`), devicemodel.CodeInvalidArgument, "key has 2 parameters"},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":""}}`), devicemodel.CodeInvalidArgument, "spec.objects[0].key.Alias is empty"},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"X.Alias":"a"}}`), devicemodel.CodeInvalidPath, `spec.objects[0].key: "X.Alias" is not a parameter name relative to the instance`},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"1Alias":"a"}}`), devicemodel.CodeInvalidPath, `spec.objects[0].key: invalid path "1Alias" at position 0`},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"}},{"table":"Device.NAT.PortMapping.","key":{"Alias":"b"}},{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"},"present":false}`),
			devicemodel.CodeInvalidArgument, `spec.objects[2] is Device.NAT.PortMapping.[Alias=="a"] again, as spec.objects[0]`},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"},"present":false,"parameters":{"Enable":"false"}}`), devicemodel.CodeInvalidArgument, `spec.objects[0] has parameters but "present": false`},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"},"parameters":{"Alias":"b"}}`), devicemodel.CodeInvalidArgument, "spec.objects[0].parameters.Alias is the key"},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"},"parameters":{"X.Enable":"true"}}`), devicemodel.CodeInvalidPath, `spec.objects[0].parameters: "X.Enable" is not a parameter name relative`},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"},"parameters":{"Enable":true}}`), devicemodel.CodeInvalidArgument, `spec.objects[0].parameters.Enable is true; give a string`},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"},"parameters":{"ExternalPort":5060}}`), devicemodel.CodeInvalidArgument, `parameters.ExternalPort is 5060`},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"},"parameters":{"Enable":null}}`), devicemodel.CodeInvalidArgument, `parameters.Enable is null`},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"},"parameters":{"InternalClient":{"exp":"\"x\""}}}`), devicemodel.CodeInvalidArgument, `spec.objects[0].parameters.InternalClient: json: unknown field "exp"`},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"},"parameters":{"InternalClient":{"expr":"serial"}}}`), devicemodel.CodeInvalidArgument, "spec.objects[0].parameters.InternalClient.expr: value expression 1:1: undeclared reference to 'serial'"},
		{obj(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"a"},"parameters":{"InternalClient":{}}}`), devicemodel.CodeInvalidArgument, "InternalClient.expr: value expression is empty"},
	} {
		_, err := policy.ValidateSpec("objects", json.RawMessage(c.spec))
		if devicemodel.ErrorCode(err) != c.code || !strings.Contains(devicemodel.ErrorMessage(err), c.says) {
			t.Errorf("%s:\n got %v\nwant %s saying %q", c.spec, err, c.code, c.says)
		}
	}
	var many []string
	for i := range policy.MaxObjects + 1 {
		many = append(many, fmt.Sprintf(`{"table":"Device.NAT.PortMapping.","key":{"Alias":"r%d"}}`, i))
	}
	if _, err := policy.ValidateSpec("objects", json.RawMessage(obj(strings.Join(many, ",")))); err == nil || !strings.Contains(err.Error(), "the limit is 64") {
		t.Errorf("too many objects: %v", err)
	}
	params := map[string]string{}
	for i := range policy.MaxObjectParameters + 1 {
		params[fmt.Sprintf("P%d", i)] = "x"
	}
	b, _ := json.Marshal(params)
	if _, err := policy.ValidateSpec("objects", json.RawMessage(obj(`{"table":"Device.X.","key":{"Alias":"a"},"parameters":`+string(b)+`}`))); err == nil ||
		!strings.Contains(err.Error(), "spec.objects[0].parameters has 65 entries") {
		t.Errorf("too many parameters: %v", err)
	}
}

const portMappingSpec = `{"objects":[
	{"table":"Device.NAT.PortMapping.","key":{"Alias":"voip-sip"},"present":true,
	 "parameters":{"Enable":"true","ExternalPort":"5060","InternalClient":{"expr":"params[\"Device.DHCPv4.Server.Pool.1.MinAddress\"]"}}},
	{"table":"Device.NAT.PortMapping.","key":{"Alias":"old-rule"},"present":false},
	{"table":"InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.WANIPConnection.1.PortMapping.","key":{"PortMappingDescription":"voip-sip"},
	 "parameters":{"PortMappingEnabled":"true"}}
]}`

func mustSpec(t *testing.T, kind, spec string) *policy.CheckedSpec {
	t.Helper()
	s, err := policy.ValidateSpec(kind, json.RawMessage(spec))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func wantsJSON(t *testing.T, ws []policy.Want) string {
	t.Helper()
	b, err := json.Marshal(ws)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestObjectsWants(t *testing.T) {
	s := mustSpec(t, "objects", portMappingSpec)
	need := s.Need()
	if got, want := fmt.Sprint(need.Prefixes), "[Device.NAT.PortMapping. InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.WANIPConnection.1.PortMapping.]"; got != want {
		t.Errorf("need prefixes %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(need.Paths), "[Device.DHCPv4.Server.Pool.1.MinAddress]"; got != want || need.All {
		t.Errorf("need paths %s (all %v), want %s", got, need.All, want)
	}

	tr181 := policy.DeviceFacts{Device: devicemodel.Device{ID: "d1", Protocol: devicemodel.ProtocolCWMP, DataModel: "Device."},
		Params: map[string]string{"Device.DHCPv4.Server.Pool.1.MinAddress": "192.168.1.10"}}
	ws, err := s.Wants(tr181, policy.Env{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := wantsJSON(t, ws), `[`+
		`{"object":{"table":"Device.NAT.PortMapping.","key_param":"Alias","key_value":"voip-sip","present":true,"create":true,"params":{"Enable":"true","ExternalPort":"5060","InternalClient":"192.168.1.10"}}},`+
		`{"object":{"table":"Device.NAT.PortMapping.","key_param":"Alias","key_value":"old-rule","present":false,"create":false}}]`; got != want {
		t.Fatalf("TR-181 wants\n %s\nwant\n %s", got, want)
	}

	// The same on USP (always TR-181).
	usp := tr181
	usp.Device.Protocol, usp.Device.DataModel = devicemodel.ProtocolUSP, ""
	if ws2, err := s.Wants(usp, policy.Env{}); err != nil || wantsJSON(t, ws2) != wantsJSON(t, ws) {
		t.Fatalf("USP wants %s %v", wantsJSON(t, ws2), err)
	}

	// A TR-098 device gets the InternetGatewayDevice entry only (and the
	// expression is not evaluated).
	tr098 := policy.DeviceFacts{Device: devicemodel.Device{ID: "d2", Protocol: devicemodel.ProtocolCWMP, DataModel: "InternetGatewayDevice."}}
	ws, err = s.Wants(tr098, policy.Env{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].Object.KeyParam != "PortMappingDescription" || ws[0].Object.Params["PortMappingEnabled"] != "true" {
		t.Fatalf("TR-098 wants %s", wantsJSON(t, ws))
	}

	// A failing expression fails the device, naming the instance.
	delete(tr181.Params, "Device.DHCPv4.Server.Pool.1.MinAddress")
	if _, err := s.Wants(tr181, policy.Env{}); !policy.IsEvalError(err) || !strings.Contains(err.Error(), "Device.NAT.PortMapping.[Alias==voip-sip].InternalClient") {
		t.Fatalf("failing expression: %v", err)
	}
}

func TestObjectsPlan(t *testing.T) {
	s := mustSpec(t, "objects", portMappingSpec)
	d := policy.DeviceFacts{Device: devicemodel.Device{ID: "d1", Protocol: devicemodel.ProtocolCWMP, DataModel: "Device."},
		Params: map[string]string{
			"Device.DHCPv4.Server.Pool.1.MinAddress":  "192.168.1.10",
			"Device.NAT.PortMapping.1.Alias":          "old-rule",
			"Device.NAT.PortMapping.2.Alias":          "voip-sip",
			"Device.NAT.PortMapping.2.Enable":         "true",
			"Device.NAT.PortMapping.2.ExternalPort":   "5061",
			"Device.NAT.PortMapping.2.InternalClient": "192.168.1.10",
		}}
	ws, err := s.Wants(d, policy.Env{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := planJSON(t, policy.Diff(ws, d.Params, nil, freshSince, false, nil)),
		`{"set":[{"path":"Device.NAT.PortMapping.2.ExternalPort","current":"5061","desired":"5060"}],"delete":["Device.NAT.PortMapping.1."]}`; got != want {
		t.Fatalf("plan\n %s\nwant\n %s", got, want)
	}
}

func TestValidateManagementRejects(t *testing.T) {
	for _, c := range []struct {
		spec string
		code devicemodel.Code
		says string
	}{
		{`{}`, devicemodel.CodeInvalidArgument, "at least one of periodic_inform_interval, notifications, value_change"},
		{`{"notifications":[],"value_change":[]}`, devicemodel.CodeInvalidArgument, "at least one of"},
		{`{"periodic_inform":300}`, devicemodel.CodeInvalidArgument, `unknown field "periodic_inform"`},
		{`{"periodic_inform_interval":0}`, devicemodel.CodeInvalidArgument, "spec.periodic_inform_interval is 0; give seconds from 60 to 604800"},
		{`{"periodic_inform_interval":604801}`, devicemodel.CodeInvalidArgument, "is 604801"},
		{`{"periodic_inform_interval":"300"}`, devicemodel.CodeInvalidArgument, "spec:"},
		{`{"notifications":[{"path":"Device.WiFi.SSID.1.SSID","notification":"loud"}]}`, devicemodel.CodeInvalidArgument, `spec.notifications[0].notification is "loud"; give off, passive or active`},
		{`{"notifications":[{"path":"Device.WiFi.SSID.1.SSID","notification":"active"},{"path":"Device..SSID","notification":"off"}]}`, devicemodel.CodeInvalidPath, `spec.notifications[1].path: invalid path "Device..SSID" at position 7`},
		{`{"value_change":["Device.WiFi.SSID.*.SSID"]}`, devicemodel.CodeInvalidPath, `spec.value_change[0] "Device.WiFi.SSID.*.SSID" is a search path`},
		{`{"value_change":["Device.Reboot()"]}`, devicemodel.CodeInvalidPath, "is a command path"},
		{`{"value_change":["Device."]}`, devicemodel.CodeInvalidPath, "is a whole data model"},
		{`{"value_change":["Device.` + strings.Repeat("A", 256) + `"]}`, devicemodel.CodeInvalidPath, "longer than 256"},
		{`{"value_change":["Device.A","Device.B","Device.A"]}`, devicemodel.CodeInvalidArgument, `spec.value_change[2] "Device.A" is also spec.value_change[0]`},
		{`{"notifications":[{"path":"Device.A","notification":"passive"}],"value_change":["Device.A"]}`, devicemodel.CodeInvalidArgument, `spec.value_change[0] "Device.A" is also spec.notifications[0].path`},
	} {
		_, err := policy.ValidateSpec("management", json.RawMessage(c.spec))
		if devicemodel.ErrorCode(err) != c.code || !strings.Contains(devicemodel.ErrorMessage(err), c.says) {
			t.Errorf("%s:\n got %v\nwant %s saying %q", c.spec, err, c.code, c.says)
		}
	}
	var many []string
	for i := range policy.MaxNotificationPaths + 1 {
		many = append(many, fmt.Sprintf(`"Device.X.%d.Y"`, i+1))
	}
	if _, err := policy.ValidateSpec("management", json.RawMessage(`{"value_change":[`+strings.Join(many, ",")+`]}`)); err == nil || !strings.Contains(err.Error(), "the limit is 64") {
		t.Errorf("too many paths: %v", err)
	}
}

const managementSpec = `{"periodic_inform_interval": 300,
	"notifications": [
		{"path": "Device.WiFi.SSID.1.SSID", "notification": "active"},
		{"path": "Device.WiFi.SSID.1.Enable", "notification": "passive"},
		{"path": "Device.DeviceInfo.UpTime", "notification": "off"},
		{"path": "InternetGatewayDevice.LANDevice.1.WLANConfiguration.1.SSID", "notification": "active"}
	],
	"value_change": ["Device.DeviceInfo.SoftwareVersion", "InternetGatewayDevice.DeviceInfo.SoftwareVersion", "Device.NAT.PortMapping."]}`

func cwmpDevice(root string, params map[string]string) policy.DeviceFacts {
	return policy.DeviceFacts{Device: devicemodel.Device{ID: "cpe", Protocol: devicemodel.ProtocolCWMP, DataModel: root}, Params: params}
}

func uspDevice(params map[string]string) policy.DeviceFacts {
	return policy.DeviceFacts{Device: devicemodel.Device{ID: "agent", Protocol: devicemodel.ProtocolUSP, DataModel: "Device."}, Params: params}
}

func TestManagementWantsCWMP(t *testing.T) {
	s := mustSpec(t, "management", managementSpec)
	tr181 := `[{"param":{"path":"Device.ManagementServer.PeriodicInformEnable","value":"true"}},` +
		`{"param":{"path":"Device.ManagementServer.PeriodicInformInterval","value":"300"}},` +
		`{"attribute":{"path":"Device.WiFi.SSID.1.SSID","notification":2}},` +
		`{"attribute":{"path":"Device.WiFi.SSID.1.Enable","notification":1}},` +
		`{"attribute":{"path":"Device.DeviceInfo.UpTime","notification":0}},` +
		`{"attribute":{"path":"Device.DeviceInfo.SoftwareVersion","notification":2}},` +
		`{"attribute":{"path":"Device.NAT.PortMapping.","notification":2}}]`
	tr098 := `[{"param":{"path":"InternetGatewayDevice.ManagementServer.PeriodicInformEnable","value":"true"}},` +
		`{"param":{"path":"InternetGatewayDevice.ManagementServer.PeriodicInformInterval","value":"300"}},` +
		`{"attribute":{"path":"InternetGatewayDevice.LANDevice.1.WLANConfiguration.1.SSID","notification":2}},` +
		`{"attribute":{"path":"InternetGatewayDevice.DeviceInfo.SoftwareVersion","notification":2}}]`
	for _, c := range []struct {
		name string
		d    policy.DeviceFacts
		want string
	}{
		{"TR-181", cwmpDevice("Device.", nil), tr181},
		{"TR-098", cwmpDevice("InternetGatewayDevice.", nil), tr098},
		// Root not recorded: taken from the cache, else TR-181.
		{"TR-098 from the cache", cwmpDevice("", map[string]string{"InternetGatewayDevice.ManagementServer.PeriodicInformInterval": "600"}), tr098},
		{"nothing known", cwmpDevice("", nil), tr181},
	} {
		ws, err := s.Wants(c.d, policy.Env{})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := wantsJSON(t, ws); got != c.want {
			t.Errorf("%s: wants\n %s\nwant\n %s", c.name, got, c.want)
		}
	}
	need := s.Need()
	for _, p := range []string{"Device.ManagementServer.PeriodicInformInterval", "InternetGatewayDevice.ManagementServer.PeriodicInformEnable"} {
		if !slices.Contains(need.Paths, p) {
			t.Errorf("need %v lacks %s", need.Paths, p)
		}
	}
	for _, p := range []string{"Device.LocalAgent.Controller.", "Device.LocalAgent.Subscription."} {
		if !slices.Contains(need.Prefixes, p) {
			t.Errorf("need %v lacks %s", need.Prefixes, p)
		}
	}

	// Applied once per revision: the plan has the attributes until then.
	ws, _ := s.Wants(cwmpDevice("Device.", map[string]string{"Device.ManagementServer.PeriodicInformEnable": "true", "Device.ManagementServer.PeriodicInformInterval": "300"}), policy.Env{})
	if p := policy.Diff(ws, map[string]string{"Device.ManagementServer.PeriodicInformEnable": "true", "Device.ManagementServer.PeriodicInformInterval": "300"}, nil, freshSince, false, nil); len(p.Set) != 0 || len(p.Attributes) != 5 {
		t.Fatalf("plan %s", planJSON(t, p))
	}
}

const ctrlEID = "self::duet-test"

func TestManagementWantsUSP(t *testing.T) {
	s := mustSpec(t, "management", managementSpec)
	env := policy.Env{USPEndpointID: ctrlEID, PolicyID: "pol_1"}
	ws, err := s.Wants(uspDevice(nil), env)
	if err != nil {
		t.Fatal(err)
	}
	// passive and active both subscribe; off and the TR-098 paths do not.
	refs := "Device.DeviceInfo.SoftwareVersion,Device.NAT.PortMapping.,Device.WiFi.SSID.1.Enable,Device.WiFi.SSID.1.SSID"
	if len(ws) != 2 {
		t.Fatalf("wants %s", wantsJSON(t, ws))
	}
	if got, want := wantsJSON(t, ws[:1]), `[{"object":{"table":"Device.LocalAgent.Controller.","key_param":"EndpointID","key_value":"`+ctrlEID+`","present":true,"create":false,"params":{"PeriodicNotifInterval":"300"}}}]`; got != want {
		t.Fatalf("controller want\n %s\nwant\n %s", got, want)
	}
	sub := ws[1].Object
	if sub.Table != subs || sub.KeyParam != "ID" || !strings.HasPrefix(sub.KeyValue, "duet-pol_1-") || len(sub.KeyValue) != len("duet-pol_1-")+12 ||
		sub.StalePrefix != "duet-pol_1-" || !sub.Present || !sub.Create || sub.CreateOnly["ReferenceList"] != refs ||
		fmt.Sprint(sub.Params) != "map[Enable:true NotifRetry:false NotifType:ValueChange Persistent:true]" {
		t.Fatalf("subscription want %s", wantsJSON(t, ws[1:]))
	}
	// Stable: the same list, in another order, is the same instance.
	reordered := mustSpec(t, "management", `{"value_change":["Device.WiFi.SSID.1.SSID","Device.NAT.PortMapping.","Device.WiFi.SSID.1.Enable","Device.DeviceInfo.SoftwareVersion"]}`)
	ws2, err := reordered.Wants(uspDevice(nil), env)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws2) != 1 || ws2[0].Object.KeyValue != sub.KeyValue {
		t.Fatalf("reordered list: %s, want ID %s", wantsJSON(t, ws2), sub.KeyValue)
	}
	// Another list is another instance; another policy another prefix.
	other := mustSpec(t, "management", `{"value_change":["Device.DeviceInfo.SoftwareVersion"]}`)
	ws3, _ := other.Wants(uspDevice(nil), env)
	ws4, _ := other.Wants(uspDevice(nil), policy.Env{PolicyID: "pol_2"})
	if ws3[0].Object.KeyValue == sub.KeyValue || !strings.HasPrefix(ws4[0].Object.KeyValue, "duet-pol_2-") {
		t.Fatalf("IDs %s %s %s", sub.KeyValue, ws3[0].Object.KeyValue, ws4[0].Object.KeyValue)
	}

	// Only an interval, or only "off": the policy's old subscriptions are swept.
	for _, spec := range []string{`{"periodic_inform_interval":600}`, `{"notifications":[{"path":"Device.A","notification":"off"}]}`} {
		ws, err := mustSpec(t, "management", spec).Wants(uspDevice(nil), env)
		if err != nil {
			t.Fatal(err)
		}
		last := ws[len(ws)-1].Object
		if last == nil || last.Table != subs || last.KeyValue != "" || last.StalePrefix != "duet-pol_1-" {
			t.Fatalf("%s: wants %s", spec, wantsJSON(t, ws))
		}
	}

	// What the installation must provide.
	if _, err := s.Wants(uspDevice(nil), policy.Env{PolicyID: "pol_1"}); !policy.IsEvalError(err) || !strings.Contains(err.Error(), "USPEndpointID") {
		t.Fatalf("no endpoint ID: %v", err)
	}
	if _, err := s.Wants(uspDevice(nil), policy.Env{USPEndpointID: ctrlEID}); !policy.IsEvalError(err) || !strings.Contains(err.Error(), "PolicyID") {
		t.Fatalf("no policy ID: %v", err)
	}
	if _, err := s.Wants(uspDevice(nil), policy.Env{USPEndpointID: ctrlEID, PolicyID: strings.Repeat("p", 60)}); !policy.IsEvalError(err) || !strings.Contains(err.Error(), "longer than USP's 64") {
		t.Fatalf("long policy ID: %v", err)
	}
	if _, err := s.Wants(policy.DeviceFacts{Device: devicemodel.Device{ID: "x", Protocol: "coap"}}, env); !policy.IsEvalError(err) {
		t.Fatalf("unknown protocol: %v", err)
	}
}

func TestManagementPlanUSP(t *testing.T) {
	s := mustSpec(t, "management", `{"periodic_inform_interval":300}`)
	env := policy.Env{USPEndpointID: ctrlEID, PolicyID: "pol_1"}
	ws, err := s.Wants(uspDevice(nil), env)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing read yet: both tables are read first.
	if got, want := planJSON(t, policy.Diff(ws, map[string]string{}, nil, freshSince, false, nil)), `{"refresh":["Device.LocalAgent.Controller.","`+subs+`"]}`; got != want {
		t.Fatalf("plan %s, want %s", got, want)
	}
	// Our Controller row is not there: the device cannot comply.
	known := map[string]string{"Device.LocalAgent.Controller.1.EndpointID": "self::someone-else"}
	if got, want := planJSON(t, policy.Diff(ws, known, full, freshSince, false, nil)), `{"missing":["Device.LocalAgent.Controller.[EndpointID==`+ctrlEID+`]"]}`; got != want {
		t.Fatalf("plan %s, want %s", got, want)
	}
	known["Device.LocalAgent.Controller.2.EndpointID"] = ctrlEID
	known["Device.LocalAgent.Controller.2.PeriodicNotifInterval"] = "86400"
	known["Device.LocalAgent.Controller.2.MTP.1.Enable"] = "true"
	if got, want := planJSON(t, policy.Diff(ws, known, full, freshSince, false, nil)),
		`{"set":[{"path":"Device.LocalAgent.Controller.2.PeriodicNotifInterval","current":"86400","desired":"300"}]}`; got != want {
		t.Fatalf("plan %s, want %s", got, want)
	}
}

// conflicts lists the keys on which a and b want different things.
func conflicts(a, b []policy.Want) []string {
	va := map[string]string{}
	for _, w := range a {
		va[w.Key()] = w.Value()
	}
	var out []string
	for _, w := range b {
		if v, ok := va[w.Key()]; ok && v != w.Value() {
			out = append(out, w.Key())
		}
	}
	slices.Sort(out)
	return out
}

func TestManagementConflicts(t *testing.T) {
	env300 := policy.Env{USPEndpointID: ctrlEID, PolicyID: "pol_1"}
	env600 := policy.Env{USPEndpointID: ctrlEID, PolicyID: "pol_2"}
	p300 := mustSpec(t, "management", `{"periodic_inform_interval":300,"value_change":["Device.DeviceInfo.SoftwareVersion"]}`)
	p300b := mustSpec(t, "management", `{"periodic_inform_interval":300,"notifications":[{"path":"Device.DeviceInfo.SoftwareVersion","notification":"active"}]}`)
	p600 := mustSpec(t, "management", `{"periodic_inform_interval":600,"notifications":[{"path":"Device.DeviceInfo.SoftwareVersion","notification":"passive"}]}`)
	for _, d := range []policy.DeviceFacts{cwmpDevice("Device.", nil), cwmpDevice("InternetGatewayDevice.", nil), uspDevice(nil)} {
		wants := func(s *policy.CheckedSpec, env policy.Env) []policy.Want {
			ws, err := s.Wants(d, env)
			if err != nil {
				t.Fatal(err)
			}
			return ws
		}
		if c := conflicts(wants(p300, env300), wants(p300b, env600)); len(c) != 0 {
			t.Errorf("%s: equal policies conflict on %v", d.Device.DataModel, c)
		}
		c := conflicts(wants(p300, env300), wants(p600, env600))
		var want []string
		switch {
		case d.Device.Protocol == devicemodel.ProtocolUSP:
			// Each policy has its own subscription; only the interval competes.
			want = []string{"object Device.LocalAgent.Controller.[EndpointID==" + ctrlEID + "]"}
		case d.Device.DataModel == "Device.":
			want = []string{"attribute Device.DeviceInfo.SoftwareVersion", "param Device.ManagementServer.PeriodicInformInterval"}
		default:
			want = []string{"param InternetGatewayDevice.ManagementServer.PeriodicInformInterval"}
		}
		if !slices.Equal(c, want) {
			t.Errorf("%s %s: conflicts %v, want %v", d.Device.Protocol, d.Device.DataModel, c, want)
		}
	}
}

// TestManagementAgainstAgentSimulator applies the plans of a management
// policy to the USP agent simulator until nothing is left to do: the
// names and values it produces are ones the agent accepts.
func TestManagementAgainstAgentSimulator(t *testing.T) {
	a, err := agent.New(agent.Config{SerialNumber: "SN-POLICY", ControllerID: ctrlEID})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	n := 0
	do := func(m *uspmsg.Msg) *uspmsg.Response {
		t.Helper()
		b, err := usp.MarshalMsgRecord(ctrlEID, a.EndpointID(), m)
		if err != nil {
			t.Fatal(err)
		}
		replies := a.HandleRecord(b)
		if len(replies) != 1 {
			t.Fatalf("%d replies", len(replies))
		}
		r, err := usp.ParseRecord(replies[0], ctrlEID)
		if err != nil {
			t.Fatal(err)
		}
		resp := r.Msg.GetBody().GetResponse()
		if resp == nil {
			t.Fatalf("not a response: %v", r.Msg)
		}
		return resp
	}
	id := func() string { n++; return fmt.Sprint("m", n) }
	read := func() map[string]string {
		known := map[string]string{}
		resp := do(usp.NewGet(id(), []string{"Device.LocalAgent.Controller.", subs}, 0))
		for _, rp := range resp.GetGetResp().GetReqPathResults() {
			if rp.GetErrCode() != 0 {
				t.Fatalf("get %s: %d %s", rp.GetRequestedPath(), rp.GetErrCode(), rp.GetErrMsg())
			}
			for _, res := range rp.GetResolvedPathResults() {
				for k, v := range res.GetResultParams() {
					known[res.GetResolvedPath()+k] = v
				}
			}
		}
		return known
	}
	settings := func(m map[string]string) []usp.ParamSetting {
		var out []usp.ParamSetting
		for _, k := range slices.Sorted(maps.Keys(m)) {
			out = append(out, usp.ParamSetting{Param: k, Value: m[k]})
		}
		return out
	}
	apply := func(p policy.Plan) {
		t.Helper()
		if len(p.Missing) != 0 || len(p.Attributes) != 0 {
			t.Fatalf("plan %s", planJSON(t, p))
		}
		if len(p.Set) > 0 {
			byObj := map[string]map[string]string{}
			for _, c := range p.Set {
				obj, name := devicemodel.SplitParameter(c.Path)
				if byObj[obj] == nil {
					byObj[obj] = map[string]string{}
				}
				byObj[obj][name] = c.Desired
			}
			var objs []usp.ObjectSettings
			for _, o := range slices.Sorted(maps.Keys(byObj)) {
				objs = append(objs, usp.ObjectSettings{Path: o, Params: settings(byObj[o])})
			}
			if resp := do(usp.NewSet(id(), false, objs)); resp.GetSetResp() == nil {
				t.Fatalf("set refused: %v", resp)
			}
		}
		for _, add := range p.Add {
			resp := do(usp.NewAdd(id(), false, []usp.ObjectSettings{{Path: add.Table, Params: settings(add.Params)}}))
			for _, r := range resp.GetAddResp().GetCreatedObjResults() {
				if s := r.GetOperStatus().GetOperSuccess(); s == nil || len(s.GetParamErrs()) != 0 {
					t.Fatalf("add refused: %v", r)
				}
			}
		}
		if len(p.Delete) > 0 {
			resp := do(usp.NewDelete(id(), false, p.Delete))
			for _, r := range resp.GetDeleteResp().GetDeletedObjResults() {
				if s := r.GetOperStatus().GetOperSuccess(); s == nil || len(s.GetAffectedPaths()) != 1 {
					t.Fatalf("delete refused: %v", r)
				}
			}
		}
	}
	env := policy.Env{USPEndpointID: ctrlEID, PolicyID: "pol_sim"}
	d := uspDevice(nil)
	converge := func(spec string) map[string]string {
		t.Helper()
		s := mustSpec(t, "management", spec)
		ws, err := s.Wants(d, env)
		if err != nil {
			t.Fatal(err)
		}
		tables := []string{"Device.LocalAgent.Controller.", subs}
		for range 3 {
			known := read()
			p := policy.Diff(ws, known, full, freshSince, true, tables)
			if p.Empty() {
				return known
			}
			apply(p)
		}
		t.Fatalf("%s: no convergence; plan %s", spec, planJSON(t, policy.Diff(ws, read(), full, freshSince, true, tables)))
		return nil
	}
	ours := func(known map[string]string) []string {
		var out []string
		for k, v := range known {
			if strings.HasPrefix(k, subs) && strings.HasSuffix(k, ".ID") && strings.HasPrefix(v, "duet-pol_sim-") {
				inst, _ := devicemodel.SplitParameter(k)
				out = append(out, v+" "+known[inst+"ReferenceList"]+" "+known[inst+"Enable"]+" "+known[inst+"Persistent"])
			}
		}
		slices.Sort(out)
		return out
	}

	known := converge(`{"periodic_inform_interval":300,"value_change":["Device.DeviceInfo.SoftwareVersion","Device.WiFi.SSID."]}`)
	if known["Device.LocalAgent.Controller.1.PeriodicNotifInterval"] != "300" {
		t.Fatalf("interval not set: %v", known)
	}
	first := ours(known)
	if len(first) != 1 || !strings.HasSuffix(first[0], " Device.DeviceInfo.SoftwareVersion,Device.WiFi.SSID. true true") {
		t.Fatalf("subscriptions %v", first)
	}
	// A changed list replaces the subscription.
	second := ours(converge(`{"periodic_inform_interval":300,"value_change":["Device.DeviceInfo.SoftwareVersion"],"notifications":[{"path":"Device.WiFi.SSID.1.SSID","notification":"passive"}]}`))
	if len(second) != 1 || second[0] == first[0] || !strings.Contains(second[0], " Device.DeviceInfo.SoftwareVersion,Device.WiFi.SSID.1.SSID ") {
		t.Fatalf("subscriptions %v after %v", second, first)
	}
	// None wanted: swept.
	if left := ours(converge(`{"periodic_inform_interval":600}`)); len(left) != 0 {
		t.Fatalf("subscriptions left %v", left)
	}
}
