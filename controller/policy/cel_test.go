package policy_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/devicemodel"
)

var now = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

func facts() policy.DeviceFacts {
	return policy.DeviceFacts{
		Device: devicemodel.Device{
			ID: "00D09E-HG8245-SN0001", Protocol: devicemodel.ProtocolCWMP, Manufacturer: "Huawei", OUI: "00D09E",
			ProductClass: "HG8245", SerialNumber: "SN0001", ModelName: "HG8245H", SoftwareVersion: "V3R017C10",
			HardwareVersion: "10C7.A", Online: true, LastSeen: now.Add(-10 * time.Minute),
		},
		Tags:   []string{"north", "fttp"},
		Params: map[string]string{"Device.DeviceInfo.ModelName": "HG8245H", "Device.WiFi.Radio.1.Channel": "6"},
		Now:    now,
	}
}

func TestFilterMatch(t *testing.T) {
	for src, want := range map[string]bool{
		`manufacturer == "Huawei"`:                                       true,
		`manufacturer == "ZTE"`:                                          false,
		`protocol == "cwmp" && online`:                                   true,
		`oui == "00D09E" && product_class.startsWith("HG")`:              true,
		`serial_number in ["SN0001", "SN0002"]`:                          true,
		`software_version.matches("^V3R0(17|18)")`:                       true,
		`hardware_version != "10C7.A"`:                                   false,
		`model_name == params["Device.DeviceInfo.ModelName"]`:            true,
		`int(params["Device.WiFi.Radio.1.Channel"]) > 5`:                 true,
		`"north" in tags`:                                                true,
		`tags.exists(t, t.startsWith("south"))`:                          false,
		`now - last_seen < duration("1h")`:                               true,
		`last_seen < timestamp("2026-01-01T00:00:00Z")`:                  false,
		`"Device.X_Vendor.Foo" in params`:                                false,
		`has(params.foo) || id.endsWith("SN0001")`:                       true,
		"manufacturer == \"Huawei\"\n  && !(\"lab\" in tags)":            true,
		`size(tags) == 2 && tags.all(t, size(t) <= 5) && online == true`: true,
	} {
		f, err := policy.CompileFilter(src)
		if err != nil {
			t.Errorf("CompileFilter(%s): %v", src, err)
			continue
		}
		got, err := f.Match(facts())
		if err != nil || got != want {
			t.Errorf("Match(%s) = %v, %v; want %v", src, got, err, want)
		}
	}
}

// A bad filter is rejected with the line:column of the problem, 1-based.
func TestFilterCompileErrorsHavePositions(t *testing.T) {
	for _, c := range []struct{ src, pos, says string }{
		{`manufactuer == "Huawei"`, "1:1:", "undeclared reference to 'manufactuer'"},
		{`online && manufacturer == 3`, "1:24:", "no matching overload"},
		{"online &&\n  serial_number > 5", "2:17:", "no matching overload"},
		{`manufacturer == "Huawei`, "1:17:", "Syntax error"},
		{`tags.contains("x")`, "1:14:", "no matching overload for 'contains'"},
		{`last_seen > "2026-01-01"`, "1:11:", "no matching overload"},
		{`params[1] == "x"`, "1:7:", "no matching overload"},
	} {
		_, err := policy.CompileFilter(c.src)
		var de *devicemodel.Error
		if !errors.As(err, &de) || de.Code != devicemodel.CodeInvalidArgument {
			t.Errorf("%q: err %v, want a CodeInvalidArgument *devicemodel.Error", c.src, err)
			continue
		}
		if !strings.HasPrefix(de.Message, "filter "+c.pos) || !strings.Contains(de.Message, c.says) {
			t.Errorf("%q: message %q, want it to start %q and say %q", c.src, de.Message, "filter "+c.pos, c.says)
		}
	}
}

func TestFilterMustBeBool(t *testing.T) {
	for _, src := range []string{`serial_number`, `1 + 2`, `tags`, `params`, `last_seen`} {
		_, err := policy.CompileFilter(src)
		if devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument || !strings.Contains(err.Error(), "must be a bool expression") {
			t.Errorf("%s: %v, want a bool-result error", src, err)
		}
	}
	for _, src := range []string{"", "   ", "\n"} {
		if _, err := policy.CompileFilter(src); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument || !strings.Contains(err.Error(), "empty") {
			t.Errorf("%q: %v, want empty-filter error", src, err)
		}
	}
}

func TestFilterSizeLimits(t *testing.T) {
	huge := `serial_number == "` + strings.Repeat("x", policy.MaxSourceLen) + `"`
	if _, err := policy.CompileFilter(huge); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument || !strings.Contains(err.Error(), "limit") {
		t.Errorf("huge source: %v", err)
	}
	// Short source, many nodes.
	many := strings.Repeat(`online && `, 300) + "online"
	if _, err := policy.CompileFilter(many); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Errorf("too many nodes: %v", err)
	}
	deep := strings.Repeat("(", 100) + "online" + strings.Repeat(")", 100)
	if _, err := policy.CompileFilter(deep); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Errorf("too deep: %v", err)
	}
}

// An expression whose work explodes at run time (nested comprehensions
// over a big list) hits the cost budget: no match, an error, and it
// returns promptly instead of burning a core.
func TestFilterCostLimit(t *testing.T) {
	f, err := policy.CompileFilter(`tags.all(a, tags.all(b, tags.all(c, a + b + c != "")))`)
	if err != nil {
		t.Fatal(err)
	}
	d := facts()
	if ok, err := f.Match(d); !ok || err != nil {
		t.Fatalf("small list: %v %v", ok, err)
	}
	d.Tags = make([]string, 200)
	for i := range d.Tags {
		d.Tags[i] = "t"
	}
	ok, err := f.Match(d)
	if ok || !policy.IsEvalError(err) || !strings.Contains(err.Error(), "cost") {
		t.Fatalf("200^3 iterations: %v %v, want no match and a cost error", ok, err)
	}
}

func TestFilterRuntimeErrorsDoNotMatch(t *testing.T) {
	for _, src := range []string{
		`params["Device.Missing"] == "x"`,
		`int(params["Device.DeviceInfo.ModelName"]) > 0`,
		`1 / size(params["Device.Empty"]) == 0`,
	} {
		f, err := policy.CompileFilter(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		d := facts()
		d.Params["Device.Empty"] = ""
		ok, err := f.Match(d)
		if ok || !policy.IsEvalError(err) || !strings.Contains(err.Error(), d.Device.ID) {
			t.Errorf("%s: %v %v; want no match and an evaluation error naming the device", src, ok, err)
		}
	}
	// nil Tags and Params behave as empty, not as a crash.
	f, err := policy.CompileFilter(`!("x" in tags) && !("p" in params)`)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := f.Match(policy.DeviceFacts{Device: devicemodel.Device{ID: "d"}}); !ok || err != nil {
		t.Fatalf("zero facts: %v %v", ok, err)
	}
}

func TestValueExpressions(t *testing.T) {
	for src, want := range map[string]string{
		`"pppoe-" + serial_number`:                    "pppoe-SN0001",
		`serial_number.lowerAscii() + "@isp.example"`: "sn0001@isp.example",
		`300`: "300",
		`int(params["Device.WiFi.Radio.1.Channel"]) + 5`: "11",
		`uint(86400)`: "86400",
		`online`:      "true",
		`"north" in tags ? "ntp-n.isp" : "ntp-s.isp"`: "ntp-n.isp",
		`size(tags) == 0`: "false",
	} {
		v, err := policy.CompileValue(src)
		if err != nil {
			t.Errorf("CompileValue(%s): %v", src, err)
			continue
		}
		got, err := v.Eval(facts())
		if err != nil || got != want {
			t.Errorf("Eval(%s) = %q, %v; want %q", src, got, err, want)
		}
	}
	for _, src := range []string{`tags`, `params`, `last_seen`, `1.5`, `b"x"`, `null`} {
		if _, err := policy.CompileValue(src); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument || !strings.Contains(err.Error(), "must be a string, int, uint or bool") {
			t.Errorf("CompileValue(%s): %v, want a result-type error", src, err)
		}
	}
	_, err := policy.CompileValue(`"pppoe-" + serial`)
	if err == nil || !strings.Contains(err.Error(), "value expression 1:12:") {
		t.Errorf("undeclared variable: %v, want position 1:12", err)
	}
	v, err := policy.CompileValue(`params["Device.Missing"]`)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := v.Eval(facts()); !policy.IsEvalError(err) || got != "" {
		t.Errorf("missing key: %q %v", got, err)
	}
}

// FuzzCompileFilter: whatever an operator (or an attacker with an API
// token) sends, compiling never panics, and a filter that compiles
// evaluates without panicking within its budget.
func FuzzCompileFilter(f *testing.F) {
	for _, s := range []string{
		`manufacturer == "Huawei"`, `"north" in tags`, `params["Device.X"] == "1"`,
		`now - last_seen < duration("1h")`, `tags.all(a, tags.exists(b, a == b))`,
		`software_version.matches("^V3")`, `int(params["x"]) / 0 == 1`, `(((online)))`,
		`manufacturer == "Huawei`, `[1,2,3].map(x, x * 2)[1] == 4`, `"\u00e9" + oui == ""`,
		`timestamp("bad") < now`, `dyn(1) == "1"`, `{"a": 1}["a"] == 1`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		flt, err := policy.CompileFilter(src)
		if err != nil {
			if devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
				t.Fatalf("%q: %v is not CodeInvalidArgument", src, err)
			}
			return
		}
		_, _ = flt.Match(facts())
		_, _ = policy.CompileValue(src)
	})
}

// TestErrorPosition: the position of a compile error is read back for an
// editor to mark; errors without one say so.
func TestErrorPosition(t *testing.T) {
	for _, c := range []struct {
		src       string
		line, col int
		ok        bool
	}{
		{`manufacturer == "Huawei" &&`, 1, 28, true},
		{"online &&\n  nope == 1", 2, 3, true},
		{`model_name`, 1, 1, true}, // not a bool
		{` `, 0, 0, false},         // empty
	} {
		_, err := policy.CompileFilter(c.src)
		if err == nil {
			t.Fatalf("%q compiled", c.src)
		}
		line, col, ok := policy.ErrorPosition(err)
		if line != c.line || col != c.col || ok != c.ok {
			t.Errorf("%q: %d:%d %v (%v), want %d:%d %v", c.src, line, col, ok, err, c.line, c.col, c.ok)
		}
	}
}
