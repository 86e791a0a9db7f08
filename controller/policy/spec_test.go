package policy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func TestValidateSpecRejects(t *testing.T) {
	for _, c := range []struct {
		kind, spec string
		code       devicemodel.Code
		says       string
	}{
		{"firmware", `{}`, devicemodel.CodeInvalidArgument, `spec.file_id`},
		{"firmware", `{"file_id":"f"}`, devicemodel.CodeInvalidArgument, `spec.version`},
		{"firmwares", `{}`, devicemodel.CodeInvalidArgument, `kind "firmwares" is not supported`},
		{"parameters", `{`, devicemodel.CodeInvalidArgument, "spec:"},
		{"parameters", `{"parameters":[]}`, devicemodel.CodeInvalidArgument, "empty"},
		{"parameters", `{"parameters":[{"path":"Device.X","vlaue":"1"}]}`, devicemodel.CodeInvalidArgument, `unknown field "vlaue"`},
		{"parameters", `{"parameters":[{"path":"Device..X","value":"1"}]}`, devicemodel.CodeInvalidPath, "spec.parameters[0].path: invalid path \"Device..X\" at position 7"},
		{"parameters", `{"parameters":[{"path":"Device.WiFi.","value":"1"}]}`, devicemodel.CodeInvalidPath, "is not a parameter path (kind object)"},
		{"parameters", `{"parameters":[{"path":"Device.WiFi.SSID.*.SSID","value":"x"}]}`, devicemodel.CodeInvalidPath, "search path"},
		{"parameters", `{"parameters":[{"path":"Device.X","value":"1"},{"path":"Device.X","value":"2"}]}`, devicemodel.CodeInvalidArgument, "spec.parameters[1].path \"Device.X\" is also spec.parameters[0]"},
		{"parameters", `{"parameters":[{"path":"Device.X","value":"1","expr":"\"1\""}]}`, devicemodel.CodeInvalidArgument, "both value and expr"},
		{"parameters", `{"parameters":[{"path":"Device.X"}]}`, devicemodel.CodeInvalidArgument, "needs a value or an expr"},
		{"parameters", `{"parameters":[{"path":"Device.X","expr":"\"pppoe-\" + serial"}]}`, devicemodel.CodeInvalidArgument, "spec.parameters[0].expr: value expression 1:12: undeclared reference to 'serial'"},
		{"parameters", `{"parameters":[{"path":"Device.X","expr":"tags"}]}`, devicemodel.CodeInvalidArgument, "must be a string, int, uint or bool"},
	} {
		_, err := policy.ValidateSpec(c.kind, json.RawMessage(c.spec))
		if devicemodel.ErrorCode(err) != c.code || !strings.Contains(devicemodel.ErrorMessage(err), c.says) {
			t.Errorf("%s %s: %v, want %s saying %q", c.kind, c.spec, err, c.code, c.says)
		}
	}
	var many []string
	for i := 0; i <= policy.MaxParameters; i++ {
		many = append(many, fmt.Sprintf(`{"path":"Device.X.%d.Y","value":"1"}`, i+1))
	}
	if _, err := policy.ValidateSpec("parameters", json.RawMessage(`{"parameters":[`+strings.Join(many, ",")+`]}`)); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("too many parameters: %v", err)
	}
}

func TestSpecDesiredComparesWithCachedValues(t *testing.T) {
	spec, err := policy.ValidateSpec("parameters", json.RawMessage(`{"parameters":[
		{"path":"Device.ManagementServer.PeriodicInformInterval","value":"300"},
		{"path":"Device.PPP.Interface.1.Username","expr":"\"pppoe-\" + serial_number"},
		{"path":"Device.WiFi.Radio.1.Channel","expr":"int(params[\"Device.WiFi.Radio.1.Channel\"]) > 6 ? 11 : 1"}
	]}`))
	if err != nil {
		t.Fatal(err)
	}
	d := facts() // channel 6 cached, the others unknown
	changes, err := desired(spec, d)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range changes {
		cur := "<unknown>"
		if c.Current != nil {
			cur = *c.Current
		}
		got[c.Path] = cur + " -> " + c.Desired
	}
	want := map[string]string{
		"Device.ManagementServer.PeriodicInformInterval": "<unknown> -> 300",
		"Device.PPP.Interface.1.Username":                "<unknown> -> pppoe-SN0001",
		"Device.WiFi.Radio.1.Channel":                    "6 -> 1",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("changes %v, want %v", got, want)
	}
	// A device already as desired needs nothing.
	d.Params["Device.ManagementServer.PeriodicInformInterval"] = "300"
	d.Params["Device.PPP.Interface.1.Username"] = "pppoe-SN0001"
	d.Params["Device.WiFi.Radio.1.Channel"] = "1"
	if changes, err := desired(spec, d); err != nil || len(changes) != 0 {
		t.Fatalf("compliant device: %+v %v", changes, err)
	}
	// A failing expression fails the device, naming the parameter.
	delete(d.Params, "Device.WiFi.Radio.1.Channel")
	if _, err := desired(spec, d); !policy.IsEvalError(err) || !strings.Contains(err.Error(), "Device.WiFi.Radio.1.Channel") {
		t.Fatalf("failing expression: %v", err)
	}
}

func TestPreview(t *testing.T) {
	s, _ := storetest.Open(t)
	seed(t, s, 12)
	spec, err := policy.ValidateSpec("parameters", json.RawMessage(`{"parameters":[
		{"path":"Device.PPP.Interface.1.Username","expr":"\"pppoe-\" + serial_number"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	g := store.Group{Name: "hw", Filter: `manufacturer == "Huawei"`}
	var got []string
	cursor := ""
	for {
		p, err := policy.Preview(context.Background(), s, g, spec, policy.Env{}, cursor, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range p.Devices {
			if d.Error != "" || len(d.Changes) != 1 || d.Changes[0].Current != nil {
				t.Fatalf("%+v", d)
			}
			got = append(got, d.DeviceID+"="+d.Changes[0].Desired)
		}
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
	}
	want := "dev-000=pppoe-SN000 dev-003=pppoe-SN003 dev-006=pppoe-SN006 dev-009=pppoe-SN009"
	if strings.Join(got, " ") != want {
		t.Fatalf("preview %v, want %s", got, want)
	}
}

// desired is the parameter changes the spec makes on d.
func desired(spec *policy.CheckedSpec, d policy.DeviceFacts) ([]policy.Change, error) {
	wants, err := spec.Wants(d, policy.Env{})
	if err != nil {
		return nil, err
	}
	return policy.Diff(wants, d.Params, d.Listings, freshSince, true, nil).Set, nil
}
