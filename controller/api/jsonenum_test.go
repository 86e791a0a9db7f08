package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// enumLooking is a protobuf enum constant as protojson writes it.
var enumLooking = regexp.MustCompile(`^[A-Z][A-Z0-9]*_[A-Z0-9_]+$`)

// enumValues returns every string value of a JSON document that looks
// like a protobuf enum constant, with where it is. Parameter values are the
// device's data, passed through as they are ("X_ACME_NAME" may be one).
func enumValues(t *testing.T, surface, doc string) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(doc), &v); err != nil {
		t.Fatalf("%s: not JSON: %v\n%s", surface, err, doc)
	}
	var out []string
	var walk func(at string, v any)
	walk = func(at string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if k != "value" {
					walk(at+"."+k, e)
				}
			}
		case []any:
			for i, e := range x {
				walk(fmt.Sprintf("%s[%d]", at, i), e)
			}
		case string:
			if enumLooking.MatchString(x) {
				out = append(out, at+"="+x)
			}
		}
	}
	walk(surface, v)
	return out
}

// jsonAt digs a value out of a JSON document by keys and indexes.
func jsonAt(t *testing.T, doc string, path ...any) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(doc), &v); err != nil {
		t.Fatal(err)
	}
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k < 0 || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

// TestJSONSurfacesSpeakOneVocabulary walks every JSON surface of the API
// — devices, parameters, tasks with results and errors, event history and
// the live stream — and fails on any protobuf enum constant
// (PROTOCOL_CWMP, PARAM_TYPE_STRING, ERROR_CODE_INVALID_PATH …): the API
// says "cwmp", "read_only", "invalid_path" everywhere (issue 11 item 6).
// Before, events, parameters inside results and result errors carried the
// constants.
func TestJSONSurfacesSpeakOneVocabulary(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	a := api.New(api.Options{Store: e.store, Tasks: e.tasks, Bus: e.bus})
	srv := httptest.NewServer(a)
	defer srv.Close()
	defer a.Close()
	stream := openStream(t, e, srv.URL, "")

	const dev = "os::vocab-1"
	inform := informEvent(dev, "1")
	inform.Device.Protocol = duetv1.Protocol_PROTOCOL_USP
	inform.Kind = &duetv1.Event_Inform{Inform: &duetv1.Inform{Params: []*duetv1.Parameter{
		{Path: "Device.DeviceInfo.UpTime", Value: "5", Type: duetv1.ParamType_PARAM_TYPE_UNSIGNED_INT, Writable: duetv1.Writability_WRITABILITY_READ_ONLY},
		{Path: "Device.WiFi.SSID.1.SSID", Value: "X_ACME_NAME", Type: duetv1.ParamType_PARAM_TYPE_STRING, Writable: duetv1.Writability_WRITABILITY_READ_WRITE},
	}}}
	if err := e.bus.PublishEvent(ctx, inform); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, e, dev, 1)
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_USP, "online")

	invalidPath := &duetv1.ParamError{Path: "Device.Nope.", Code: duetv1.ErrorCode_ERROR_CODE_INVALID_PATH, DeviceFault: 7026, Message: "no such path"}
	sub, err := e.bus.ServeCommands(bus.CommandSubject(devicemodel.ProtocolUSP, dev), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		switch {
		case cmd.GetGet() != nil:
			return &duetv1.CommandResult{Result: &duetv1.CommandResult_Get{Get: &duetv1.GetResult{
				Params: []*duetv1.Parameter{{Path: "Device.DeviceInfo.UpTime", Value: "6", Type: duetv1.ParamType_PARAM_TYPE_UNSIGNED_INT, Writable: duetv1.Writability_WRITABILITY_READ_ONLY}},
				Errors: []*duetv1.ParamError{invalidPath}}}}
		case cmd.GetGetSupportedDm() != nil:
			return &duetv1.CommandResult{Result: &duetv1.CommandResult_GetSupportedDm{GetSupportedDm: &duetv1.GetSupportedDMResult{
				Objects: []*duetv1.SupportedObject{{Path: "Device.WiFi.SSID.{i}.", MultiInstance: true, Access: "add_delete",
					Params: []*duetv1.SupportedParam{{Name: "Enable", Access: duetv1.Writability_WRITABILITY_READ_WRITE, Type: duetv1.ParamType_PARAM_TYPE_BOOLEAN}}}}}}}
		}
		return &duetv1.CommandResult{Error: &duetv1.Error{Code: duetv1.ErrorCode_ERROR_CODE_INVALID_PATH, Message: "no such path",
			DeviceFault: 7026, Params: []*duetv1.ParamError{invalidPath}}}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()

	var tasks []string
	for _, body := range []string{
		`{"operation":"get","paths":["Device.DeviceInfo.UpTime","Device.Nope."]}`,
		`{"operation":"get_supported_dm","paths":["Device.WiFi."]}`,
		`{"operation":"set","params":[{"path":"Device.Nope.X","value":"1","type":"unsignedInt"}]}`,
	} {
		_, tj := e.createTask(t, dev, body)
		tasks = append(tasks, tj.ID)
	}
	e.waitState(t, tasks[0], "succeeded")
	e.waitState(t, tasks[1], "succeeded")
	e.waitState(t, tasks[2], "failed")

	// A command result and a value change as events, the last one a
	// marker for the stream.
	res := &duetv1.Event{Device: &duetv1.DeviceIdentity{Id: dev, Protocol: duetv1.Protocol_PROTOCOL_USP},
		Kind: &duetv1.Event_CommandResult{CommandResult: &duetv1.CommandResult{CommandId: "x", DeviceId: dev,
			Error: &duetv1.Error{Code: duetv1.ErrorCode_ERROR_CODE_NOT_WRITABLE, Params: []*duetv1.ParamError{invalidPath}}}}}
	last := valueChange(dev, "Device.WiFi.SSID.1.SSID", "last")
	last.Device.Protocol = duetv1.Protocol_PROTOCOL_USP
	last.GetValueChange().Params[0].Type = duetv1.ParamType_PARAM_TYPE_STRING
	for _, ev := range []*duetv1.Event{res, last} {
		if err := e.bus.PublishEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	bustest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		_, body := e.do(t, "GET", "/api/v1/devices/"+url.PathEscape(dev)+"/events?type=value_change", "")
		if !strings.Contains(body, `"last"`) {
			return fmt.Errorf("value change not in the history yet")
		}
		return nil
	})

	surfaces := map[string]string{}
	get := func(path string) string {
		t.Helper()
		code, body := e.do(t, "GET", path, "")
		if code != 200 {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		surfaces["GET "+path] = body
		return body
	}
	esc := url.PathEscape(dev)
	devBody := get("/api/v1/devices/" + esc)
	get("/api/v1/devices")
	params := get("/api/v1/devices/" + esc + "/parameters")
	// The cached UpTime, wherever it is in the list.
	var cached api.ParameterList
	if err := json.Unmarshal([]byte(params), &cached); err != nil {
		t.Fatal(err)
	}
	uptime := -1
	for i, p := range cached.Parameters {
		if p.Path == "Device.DeviceInfo.UpTime" {
			uptime = i
		}
	}
	get("/api/v1/devices/" + esc + "/tasks")
	var taskBodies []string
	for _, id := range tasks {
		taskBodies = append(taskBodies, get("/api/v1/tasks/"+id))
	}
	history := get("/api/v1/devices/" + esc + "/events")
	for i := 0; ; i++ {
		typ, data := stream.next(t)
		surfaces[fmt.Sprintf("SSE event %d (%s)", i, typ)] = data
		if typ == "value_change" && strings.Contains(data, `"last"`) {
			break
		}
	}

	for name, doc := range surfaces {
		if bad := enumValues(t, name, doc); len(bad) > 0 {
			t.Errorf("%s has protobuf enum constants: %v", name, bad)
		}
	}
	// And the short names are there, the same as elsewhere in the API.
	for _, c := range []struct {
		what string
		doc  string
		path []any
		want any
	}{
		{"device protocol", devBody, []any{"protocol"}, "usp"},
		{"cached type", params, []any{"parameters", uptime, "type"}, "unsignedInt"},
		{"cached writable", params, []any{"parameters", uptime, "writable"}, "read_only"},
		{"get result type", taskBodies[0], []any{"result", "get", "params", 0, "type"}, "unsignedInt"},
		{"get result writable", taskBodies[0], []any{"result", "get", "params", 0, "writable"}, "read_only"},
		{"get result path error", taskBodies[0], []any{"result", "get", "errors", 0, "code"}, "invalid_path"},
		{"supported param access", taskBodies[1], []any{"result", "get_supported_dm", "objects", 0, "params", 0, "access"}, "read_write"},
		{"supported param type", taskBodies[1], []any{"result", "get_supported_dm", "objects", 0, "params", 0, "type"}, "boolean"},
		{"supported object access", taskBodies[1], []any{"result", "get_supported_dm", "objects", 0, "access"}, "add_delete"},
		{"task error code", taskBodies[2], []any{"error", "code"}, "invalid_path"},
		{"task result error code", taskBodies[2], []any{"result", "error", "code"}, "invalid_path"},
		{"task result param error code", taskBodies[2], []any{"result", "error", "params", 0, "code"}, "invalid_path"},
	} {
		if got := jsonAt(t, c.doc, c.path...); got != c.want {
			t.Errorf("%s at %v: %v, want %v", c.what, c.path, got, c.want)
		}
	}
	// The history holds every kind of event published above.
	var h api.EventList
	if err := json.Unmarshal([]byte(history), &h); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, ev := range h.Events {
		kinds[ev.Type] = string(ev.Event)
	}
	for kind, want := range map[string][]string{
		"inform":         {`"protocol":"usp"`, `"type":"unsignedInt"`, `"writable":"read_only"`, `"value":"X_ACME_NAME"`},
		"command_result": {`"code":"not_writable"`, `"code":"invalid_path"`},
		"value_change":   {`"type":"string"`},
	} {
		for _, w := range want {
			if !strings.Contains(kinds[kind], w) {
				t.Errorf("history %s event %s lacks %s", kind, kinds[kind], w)
			}
		}
	}
}
