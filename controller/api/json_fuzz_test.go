package api_test

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// jsonRoutes are the API routes that decode a JSON body, each fuzzed
// through the real handler, token check and store.
var jsonRoutes = []string{
	"POST /api/v1/devices/fz-1/tasks",
	"PUT /api/v1/devices/fz-1/credentials",
}

// FuzzAPIJSONBodies: whatever body a client sends to a route that decodes
// JSON, the API answers with a status below 500 (bad input is a 4xx with a
// reason, never a 500 or a panic; issue 15 §1).
func FuzzAPIJSONBodies(f *testing.F) {
	b, _ := bustest.Start(f)
	s, _ := storetest.Open(f)
	q, err := controller.NewTaskQueue(controller.TaskQueueOptions{Store: s, Bus: b,
		SweepInterval: time.Hour, CommandTimeout: 5 * time.Second})
	if err != nil {
		f.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(q.Stop)
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	key, err := store.NewCredentialKey(raw)
	if err != nil {
		f.Fatal(err)
	}
	h := api.New(api.Options{Store: s, Tasks: q, CredentialKey: key, CWMPRealm: "Duet",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	_, tok, err := s.CreateToken(context.Background(), "fuzz admin", store.RoleAdmin)
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		`{"op":"get","paths":["Device.DeviceInfo."]}`,
		`{"op":"set","params":[{"path":"Device.X","value":"1","type":"boolean"}],"wait":1e308}`,
		`{"devices":["fz-1"],"task":{"op":"reboot"}}`,
		`{"username":"u","password":"p","connection_request_username":"c","connection_request_password":"d"}`,
		`{"op":"get","paths":["Device.\u0000"]}`, `[]`, `null`, `{"op":`, `{} {}`, "",
	} {
		for i := range jsonRoutes {
			f.Add(uint8(i), []byte(seed))
		}
	}
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		method, path, _ := strings.Cut(jsonRoutes[int(route)%len(jsonRoutes)], " ")
		req := httptest.NewRequest(method, path, strings.NewReader(string(body)))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= http.StatusInternalServerError {
			t.Fatalf("%s %s with %q: %d %s", method, path, body, w.Code, w.Body.String())
		}
	})
}
