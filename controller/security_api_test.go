package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus/bustest"
)

// TestAPIRefusesNUL: a NUL anywhere in API input (path segment, query
// parameter, param condition, JSON body) is a 400, not a 500 from
// PostgreSQL (issue 15 §1). Before, ?manufacturer=%00 and the tag and
// body cases answered 500.
func TestAPIRefusesNUL(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	if err := e.bus.PublishEvent(context.Background(), informEvent("nul-dev", "1")); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if code, _ := getDevice(t, e, "nul-dev"); code != http.StatusOK {
			return fmt.Errorf("device not applied (%d)", code)
		}
		return nil
	})
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/api/v1/devices?manufacturer=a%00b", ""},
		{"GET", "/api/v1/devices?q=a%00", ""},
		{"GET", "/api/v1/devices?param=Device.X:eq:a%00", ""},
		{"GET", "/api/v1/devices/nul%00dev", ""},
		{"GET", "/api/v1/devices/nul-dev/parameters?path=Device.%00", ""},
		{"POST", "/api/v1/devices/nul-dev/tags/a%00b", ""},
		{"POST", "/api/v1/devices/nul-dev/tasks", `{"operation":"set","params":[{"path":"Device.X","value":"a\u0000b"}]}`},
		{"POST", "/api/v1/groups", `{"name":"g\u0000","filter":{}}`},
	} {
		res, err := e.doAs(e.token, c.method, c.path, c.body)
		if err != nil {
			t.Fatal(err)
		}
		var body controller.ErrorJSON
		_ = json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest || body.Code != "invalid_argument" {
			t.Errorf("%s %s: %d %+v, want 400 invalid_argument", c.method, c.path, res.StatusCode, body)
		}
	}
	// An escaped backslash before "u0000" is no NUL.
	res, err := e.doAs(e.token, "POST", "/api/v1/devices/nul-dev/tasks", `{"operation":"set","connection_request":false,"params":[{"path":"Device.X","value":"a\\u0000b"}]}`)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Errorf("literal backslash-u0000: %d, want 202", res.StatusCode)
	}
}
