package api_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testCredKey(t *testing.T) *store.CredentialKey {
	t.Helper()
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	k, err := store.NewCredentialKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// withCredentialsAPI replaces e's API with one holding key (nil: none)
// and logging to the returned buffer.
func withCredentialsAPI(t *testing.T, e *env, key *store.CredentialKey) *lockedBuffer {
	t.Helper()
	logs := &lockedBuffer{}
	srv := httptest.NewServer(api.New(api.Options{Store: e.store, Tasks: e.tasks,
		CredentialKey: key, CWMPRealm: "TestRealm", Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}))
	t.Cleanup(srv.Close)
	e.api = srv
	return logs
}

const credBody = `{"username":"cpe-user","password":"acs-Secret-1","connection_request_username":"cr-user","connection_request_password":"cr-Secret-2"}`

func TestCredentialsAPINeverReturnsSecrets(t *testing.T) {
	e := newEnv(t)
	key := testCredKey(t)
	logs := withCredentialsAPI(t, e, key)
	const dev = "00D09E-ONT-CRED1"
	secrets := []string{"acs-Secret-1", "cr-Secret-2", store.DigestHA1("cpe-user", "TestRealm", "acs-Secret-1")}
	noSecret := func(what, body string) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(body, s) {
				t.Fatalf("%s holds a secret %q: %s", what, s, body)
			}
		}
	}

	// Not stored yet.
	if code, body := e.do(t, "GET", "/api/v1/devices/"+dev+"/credentials", ""); code != 404 || !strings.Contains(body, `"not_found"`) {
		t.Fatalf("GET before PUT: %d %s", code, body)
	}
	code, body := e.do(t, "PUT", "/api/v1/devices/"+dev+"/credentials", credBody)
	if code != 200 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	noSecret("PUT answer", body)
	code, body = e.do(t, "GET", "/api/v1/devices/"+dev+"/credentials", "")
	if code != 200 {
		t.Fatalf("GET: %d %s", code, body)
	}
	noSecret("GET answer", body)
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"username": "cpe-user", "connection_request_username": "cr-user", "has_password": true, "has_connection_request_password": true}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, got["updated_at"].(string)); err != nil {
		t.Errorf("updated_at: %v", err)
	}
	if len(got) != len(want)+1 {
		t.Errorf("GET returns more than the documented fields: %s", body)
	}

	// Viewers read, but may not set or delete.
	_, viewer, err := e.store.CreateToken(context.Background(), "viewer", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"PUT", "DELETE"} {
		res, err := e.doAs(viewer, m, "/api/v1/devices/"+dev+"/credentials", credBody)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 403 {
			t.Errorf("viewer %s: %d", m, res.StatusCode)
		}
	}
	_, operator, err := e.store.CreateToken(context.Background(), "operator", store.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	// Only admins set credentials (issue 11 item 8).
	res, err := e.doAs(operator, "PUT", "/api/v1/devices/"+dev+"/credentials", credBody)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 403 {
		t.Errorf("operator PUT: %d, want 403", res.StatusCode)
	}

	// Invalid bodies change nothing.
	before, _ := e.store.FindDeviceCredentials(context.Background(), dev)
	long := strings.Repeat("x", 257)
	for name, b := range map[string]string{
		"empty password":  `{"username":"u","password":"","connection_request_username":"c","connection_request_password":"p"}`,
		"missing cr user": `{"username":"u","password":"p","connection_request_password":"p"}`,
		"too long":        `{"username":"u","password":"` + long + `","connection_request_username":"c","connection_request_password":"p"}`,
		"unknown field":   `{"username":"u","password":"p","connection_request_username":"c","connection_request_password":"p","realm":"x"}`,
		"not json":        `username=u`,
		"trailing data":   credBody + `{}`,
		"wrong type":      `{"username":1}`,
	} {
		code, body := e.do(t, "PUT", "/api/v1/devices/"+dev+"/credentials", b)
		if code != 400 || !strings.Contains(body, `"invalid_argument"`) {
			t.Errorf("%s: %d %s", name, code, body)
		}
		noSecret(name, body)
		if strings.Contains(body, long) {
			t.Errorf("%s: the answer echoes the value", name)
		}
	}
	after, _ := e.store.FindDeviceCredentials(context.Background(), dev)
	if !after.UpdatedAt.Equal(before.UpdatedAt) {
		t.Error("an invalid PUT changed the stored credentials")
	}
	if code, _ := e.do(t, "PUT", "/api/v1/devices/bad%01id/credentials", credBody); code != 400 {
		t.Errorf("bad device ID: %d", code)
	}

	if code, _ := e.do(t, "DELETE", "/api/v1/devices/"+dev+"/credentials", ""); code != 204 {
		t.Fatalf("DELETE: %d", code)
	}
	if code, _ := e.do(t, "DELETE", "/api/v1/devices/"+dev+"/credentials", ""); code != 404 {
		t.Fatalf("second DELETE: %d", code)
	}
	if code, _ := e.do(t, "GET", "/api/v1/devices/"+dev+"/credentials", ""); code != 404 {
		t.Fatalf("GET after DELETE: %d", code)
	}
	if !strings.Contains(logs.String(), "device credentials set") {
		t.Fatalf("the API logged nothing about the change:\n%s", logs.String())
	}
	noSecret("the log", logs.String())
}

func TestCredentialsAPIWithoutKeyIsUnavailable(t *testing.T) {
	e := newEnv(t)
	withCredentialsAPI(t, e, nil)
	for _, m := range []string{"PUT", "GET", "DELETE"} {
		code, body := e.do(t, m, "/api/v1/devices/00D09E-ONT-NOKEY/credentials", credBody)
		if code != 503 || !strings.Contains(body, `"unavailable"`) || !strings.Contains(body, "DUET_CREDENTIALS_KEY") {
			t.Errorf("%s without a key: %d %s", m, code, body)
		}
	}
	var n int
	if err := e.store.Pool().QueryRow(context.Background(), "SELECT count(*) FROM device_credentials").Scan(&n); err != nil || n != 0 {
		t.Fatalf("rows stored without a key: %d %v", n, err)
	}
}

func TestAdapterDeskServesStoredCredentials(t *testing.T) {
	e := newEnv(t)
	key := testCredKey(t)
	withCredentialsAPI(t, e, key)
	const dev = "00D09E-ONT-DESK1"
	if code, body := e.do(t, "PUT", "/api/v1/devices/"+dev+"/credentials", credBody); code != 200 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	d, err := controller.StartAdapterDeskWith(controller.AdapterDeskOptions{Bus: e.bus, Tasks: e.tasks, Store: e.store, CredentialKey: key})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.bus.AskCredentials(ctx, dev)
	if err != nil {
		t.Fatal(err)
	}
	if !c.GetFound() || c.GetUsername() != "cpe-user" || c.GetRealm() != "TestRealm" ||
		c.GetDigestHa1() != store.DigestHA1("cpe-user", "TestRealm", "acs-Secret-1") {
		t.Fatalf("credentials = %v", c)
	}
	if c, err := e.bus.AskCredentials(ctx, "00D09E-ONT-UNKNOWN"); err != nil || c.GetFound() {
		t.Fatalf("unknown device: %v %v", c, err)
	}
	d.Stop()

	// Without a key per-device credentials are off: nothing is found.
	d, err = controller.StartAdapterDeskWith(controller.AdapterDeskOptions{Bus: e.bus, Tasks: e.tasks, Store: e.store})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	if c, err := e.bus.AskCredentials(ctx, dev); err != nil || c.GetFound() {
		t.Fatalf("without a key: %v %v", c, err)
	}
}

func TestConnectionRequestCarriesStoredCredentials(t *testing.T) {
	e := newEnv(t)
	key := testCredKey(t)
	// This queue is the one the API and the registry use.
	e.tasks = nil
	q, err := controller.NewTaskQueue(controller.TaskQueueOptions{Store: e.store, Bus: e.bus, CredentialKey: key,
		SweepInterval: 100 * time.Millisecond, CommandTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Stop)
	e.tasks = q
	withCredentialsAPI(t, e, key)
	e.startRegistry(t)
	const dev, bare = "00D09E-ONT-CRCRED", "00D09E-ONT-CRBARE"
	if code, body := e.do(t, "PUT", "/api/v1/devices/"+dev+"/credentials", credBody); code != 200 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	crs := make(chan *duetv1.Command, 10)
	for _, id := range []string{dev, bare} {
		e.seen(t, id, duetv1.Protocol_PROTOCOL_CWMP, "inform")
		sub, err := e.bus.ServeCommands(bus.CommandSubject(devicemodel.ProtocolCWMP, id), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
			crs <- cmd
			return &duetv1.CommandResult{CommandId: cmd.GetId(), DeviceId: cmd.GetDeviceId()}
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Stop()
	}
	got := map[string]*duetv1.ConnectionRequest{}
	for _, id := range []string{dev, bare} {
		e.createTask(t, id, `{"operation":"reboot"}`)
		select {
		case cmd := <-crs:
			got[cmd.GetDeviceId()] = cmd.GetConnectionRequest()
		case <-time.After(15 * time.Second):
			t.Fatalf("no connection request for %s", id)
		}
	}
	if cr := got[dev]; cr.GetUsername() != "cr-user" || cr.GetPassword() != "cr-Secret-2" || cr.GetUrl() == "" {
		t.Fatalf("connection request for %s: %v", dev, cr)
	}
	if cr := got[bare]; cr == nil || cr.GetUsername() != "" || cr.GetPassword() != "" {
		t.Fatalf("connection request for a device without credentials: %v", cr)
	}
}

// TestCredentialsChangesAuditedWithoutSecrets: PUT (create, then update)
// and DELETE each leave an audit entry with the token's owner, the
// usernames and which passwords are set, and not one byte of a secret
// anywhere in audit_log.
func TestCredentialsChangesAuditedWithoutSecrets(t *testing.T) {
	e := newEnv(t)
	key := testCredKey(t)
	withCredentialsAPI(t, e, key)
	const dev = "00D09E-ONT-AUDIT1"
	for _, body := range []string{credBody, strings.ReplaceAll(credBody, "cpe-user", "cpe-user2")} {
		if code, out := e.do(t, "PUT", "/api/v1/devices/"+dev+"/credentials", body); code != 200 {
			t.Fatalf("PUT: %d %s", code, out)
		}
	}
	if code, out := e.do(t, "DELETE", "/api/v1/devices/"+dev+"/credentials", ""); code != 204 {
		t.Fatalf("DELETE: %d %s", code, out)
	}
	// Every column of every row, as text.
	rows, err := e.store.Pool().Query(context.Background(),
		"SELECT actor, action, object_type, object_id, coalesce(before::text, 'null'), coalesce(after::text, 'null') FROM audit_log ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var actor, action, typ, id, before, after string
		if err := rows.Scan(&actor, &action, &typ, &id, &before, &after); err != nil {
			t.Fatal(err)
		}
		if typ != "device_credentials" || id != dev || !strings.HasPrefix(actor, "test admin (") {
			t.Errorf("entry %s %s %s %s", actor, action, typ, id)
		}
		got = append(got, action+" "+before+" -> "+after)
	}
	want := []string{
		`create null -> {"username": "cpe-user", "password_set": true, "connection_request_username": "cr-user", "connection_request_password_set": true}`,
		`update {"username": "cpe-user", "password_set": true, "connection_request_username": "cr-user", "connection_request_password_set": true} -> {"username": "cpe-user2", "password_set": true, "connection_request_username": "cr-user", "connection_request_password_set": true}`,
		`delete {"username": "cpe-user2", "password_set": true, "connection_request_username": "cr-user", "connection_request_password_set": true} -> null`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var dump string
	if err := e.store.Pool().QueryRow(context.Background(), "SELECT coalesce(string_agg(a::text, ' '), '') FROM audit_log a").Scan(&dump); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"acs-Secret-1", "cr-Secret-2", store.DigestHA1("cpe-user", "TestRealm", "acs-Secret-1"), store.DigestHA1("cpe-user2", "TestRealm", "acs-Secret-1")} {
		if strings.Contains(dump, s) {
			t.Fatalf("audit_log holds a secret %q", s)
		}
	}
}
