package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/migrations"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestServeUpAndCleanExit is `make run` in miniature: every component with
// the embedded NATS and brokers, ready within 30 s, SIGINT exits 0 within
// the 10 s budget.
func TestServeUpAndCleanExit(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	if code, body := d.get("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz: %d %q", code, body)
	}
	if code, body := d.get("/api/v1/devices"); code != 200 || !strings.Contains(body, `"devices":[]`) {
		t.Fatalf("devices: %d %s", code, body)
	}
	if code, body := d.get("/metrics"); code != 200 || !strings.Contains(body, "duet_controller_events_applied_total") && !strings.Contains(body, "duet_bus_") {
		t.Fatalf("metrics: %d", code)
	}
	for _, want := range []string{"is up", "API, /healthz", "NATS bus", "CWMP ACS"} {
		if !strings.Contains(d.out.String(), want) {
			t.Errorf("start-up output lacks %q", want)
		}
	}
	// An open event stream must not hold the shutdown up.
	d.openEvents("")
	start := time.Now()
	d.signal(syscall.SIGINT)
	if code := d.wait(12 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGINT\n%s", code, d.out.String())
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("took %s to exit, budget is 10 s", el)
	}
}

func publishInform(t *testing.T, b *bus.Bus, id, sw string) {
	t.Helper()
	ev := &duetv1.Event{
		Device: &duetv1.DeviceIdentity{Id: id, Protocol: duetv1.Protocol_PROTOCOL_CWMP, Manufacturer: "Acme",
			Oui: "00D09E", ProductClass: "ONT", SerialNumber: id, SoftwareVersion: sw},
		Kind: &duetv1.Event_Inform{Inform: &duetv1.Inform{}},
	}
	if err := b.PublishEvent(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
}

// controllerOnly runs `duet serve --only controller` against an external bus.
func controllerOnly(t *testing.T, natsURL, dbURL string) *duet {
	return controllerOnlyWith(t, natsURL, dbURL, nil)
}

// controllerOnlyWith is controllerOnly with more settings.
func controllerOnlyWith(t *testing.T, natsURL, dbURL string, more map[string]string) *duet {
	env := baseEnv(t, dbURL)
	for k, v := range more {
		env[k] = v
	}
	env["DUET_NATS_URL"] = natsURL
	env["DUET_ONLY"] = "controller"
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	return d
}

func TestBusEventShowsUpInAPI(t *testing.T) {
	srv := bustest.StartServer(t) // external to duet: DUET_NATS_URL
	b := bustest.Connect(t, srv.URL())
	d := controllerOnly(t, srv.URL(), storetest.NewDatabase(t))
	id := "00D09E-ONT-SN%2E42"
	publishInform(t, b, id, "3.1.4")
	bustest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		code, body := d.get("/api/v1/devices/" + url.PathEscape(id))
		if code != 200 {
			return fmt.Errorf("%d %s", code, body)
		}
		var dev map[string]any
		if err := json.Unmarshal([]byte(body), &dev); err != nil {
			return err
		}
		if dev["software_version"] != "3.1.4" || dev["manufacturer"] != "Acme" || dev["online"] != true {
			return fmt.Errorf("device %v", dev)
		}
		return nil
	})
}

// TestControllerKilledLosesNothing publishes while the controller runs, is
// killed with SIGKILL, and is down; after a restart every event is applied
// exactly once.
func TestControllerKilledLosesNothing(t *testing.T) {
	srv := bustest.StartServer(t)
	b := bustest.Connect(t, srv.URL())
	dbURL := storetest.NewDatabase(t)
	// Every Inform gets a history row here (none are counted-only), so
	// the rows show each event applied exactly once.
	d := controllerOnlyWith(t, srv.URL(), dbURL, map[string]string{"DUET_EVENT_HISTORY_KINDS": "none"})
	const id = "dev-kill"
	const total = 300
	for i := 0; i < 100; i++ {
		publishInform(t, b, id, strconv.Itoa(i))
	}
	d.signal(syscall.SIGKILL) // mid-way: some events may be applied and not acked
	d.wait(10 * time.Second)
	for i := 100; i < total; i++ {
		publishInform(t, b, id, strconv.Itoa(i))
	}
	d2 := controllerOnlyWith(t, srv.URL(), dbURL, map[string]string{"DUET_EVENT_HISTORY_KINDS": "none"})
	st, err := store.Open(context.Background(), store.Options{URL: dbURL})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Events the killed process fetched come back after the consumer's
	// AckWait (10 s).
	bustest.CheckFor(t, 45*time.Second, 100*time.Millisecond, func() error {
		n, err := st.CountDeviceEvents(context.Background(), id)
		if err != nil {
			return err
		}
		if n != total {
			return fmt.Errorf("%d of %d events applied", n, total)
		}
		return nil
	})
	_, body := d2.get("/api/v1/devices/" + id)
	if !strings.Contains(body, `"software_version":"299"`) {
		t.Fatalf("device after restart: %s", body)
	}
}

func TestGarbageCountedAndDropped(t *testing.T) {
	srv := bustest.StartServer(t)
	b := bustest.Connect(t, srv.URL())
	d := controllerOnly(t, srv.URL(), storetest.NewDatabase(t))
	ctx := context.Background()
	if _, err := b.JetStream().Publish(ctx, "duet.evt.cwmp.garbage.inform", []byte("not protobuf \xff\xfe")); err != nil {
		t.Fatal(err)
	}
	wrong, _ := proto.Marshal(&duetv1.Event{Id: "x", Device: &duetv1.DeviceIdentity{Id: "a", Protocol: duetv1.Protocol_PROTOCOL_USP},
		Kind: &duetv1.Event_Online{Online: &duetv1.Online{}}})
	if _, err := b.JetStream().Publish(ctx, "duet.evt.cwmp.b.online", wrong); err != nil {
		t.Fatal(err)
	}
	publishInform(t, b, "after-garbage", "1")
	bustest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if code, _ := d.get("/api/v1/devices/after-garbage"); code != 200 {
			return fmt.Errorf("event after garbage not applied: %d", code)
		}
		return nil
	})
	if v := d.metric(`duet_controller_events_invalid_total{reason="undecodable"}`); v != 1 {
		t.Fatalf("undecodable metric = %v, want 1", v)
	}
	if v := d.metric(`duet_controller_events_invalid_total{reason="invalid"}`); v != 1 {
		t.Fatalf("invalid metric = %v, want 1", v)
	}
	if !strings.Contains(d.out.String(), "duet.evt.cwmp.garbage.inform") {
		t.Fatal("the dropped event's subject is not in the log")
	}
}

func TestTwoMigratesAtOnce(t *testing.T) {
	dbURL := storetest.NewDatabase(t)
	env := map[string]string{"DUET_DATABASE_URL": dbURL, "DUET_LOG_FORMAT": "json"}
	a := startDuet(t, env, "migrate")
	b := startDuet(t, env, "migrate")
	if ca, cb := a.wait(60*time.Second), b.wait(60*time.Second); ca != 0 || cb != 0 {
		t.Fatalf("exit codes %d and %d\nA: %s\nB: %s", ca, cb, a.out.String(), b.out.String())
	}
	applied := 0
	for _, p := range []*duet{a, b} {
		var n int
		if _, err := fmt.Sscanf(p.out.String()[strings.LastIndex(p.out.String(), "applied "):], "applied %d", &n); err != nil {
			t.Fatalf("output %q", p.out.String())
		}
		applied += n
	}
	// Versions are not contiguous (0020 follows 0004): count the files.
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	if applied != len(files) {
		t.Fatalf("migrations applied %d times in total, want %d", applied, len(files))
	}
}

// TestStartupErrorsNameTheSetting: a bad value or a busy port fails start-up
// with a message naming the setting.
func TestStartupErrorsNameTheSetting(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := strconv.Itoa(busy.Addr().(*net.TCPAddr).Port)
	dbURL := storetest.NewDatabase(t)
	cases := []struct {
		name, key, value, want string
	}{
		{"http port busy", "DUET_HTTP_ADDR", "127.0.0.1:" + busyPort, "DUET_HTTP_ADDR"},
		{"nats port busy", "DUET_NATS_PORT", busyPort, "DUET_NATS_PORT"},
		{"mqtt port busy", "DUET_MQTT_PORT", busyPort, "DUET_MQTT_PORT"},
		{"cwmp port busy", "DUET_CWMP_ADDR", "127.0.0.1:" + busyPort, "DUET_CWMP_ADDR"},
		{"bad retention", "DUET_EVENT_RETENTION", "forever", "DUET_EVENT_RETENTION"},
		{"bad history kind", "DUET_EVENT_HISTORY_KINDS", "informs=0", "DUET_EVENT_HISTORY_KINDS"},
		{"bad latest-only kind", "DUET_EVENT_STREAM_LATEST_ONLY", "inform,heartbeat", "DUET_EVENT_STREAM_LATEST_ONLY"},
		{"bad log level", "DUET_LOG_LEVEL", "loud", "DUET_LOG_LEVEL"},
		{"cwmp auth unset", "DUET_CWMP_AUTH", "", "DUET_CWMP_AUTH"},
		{"cwmp auth bogus", "DUET_CWMP_AUTH", "trust-me", "DUET_CWMP_AUTH"},
		{"bad component", "DUET_ONLY", "controller,ftp", "DUET_ONLY"},
		{"bad valuechange path", "DUET_USP_VALUECHANGE", "Device..WiFi", "DUET_USP_VALUECHANGE"},
		{"keep-alive too short", "DUET_USP_KEEPALIVE", "1s", "DUET_USP_KEEPALIVE"},
		{"bad database", "DUET_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none?connect_timeout=2", "DUET_DATABASE_URL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := baseEnv(t, dbURL)
			if c.value == "" {
				delete(env, c.key)
			} else {
				env[c.key] = c.value
			}
			d := startDuet(t, env, "serve")
			if code := d.wait(30 * time.Second); code == 0 {
				t.Fatalf("started despite %s=%q", c.key, c.value)
			}
			if !strings.Contains(d.out.String(), c.want) {
				t.Fatalf("error does not name %s:\n%s", c.want, d.out.String())
			}
		})
	}
}

// TestExternalNATSAndBrokers points duet at the machine's real nats-server
// and Mosquitto (docs/testing.md), as DUET_NATS_URL/DUET_MQTT_URL deployments do.
func TestExternalNATSAndBrokers(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	env["DUET_NATS_URL"] = "nats://127.0.0.1:4222"
	env["DUET_MQTT_URL"] = "mqtt://127.0.0.1:1883"
	// A unique topic, so parallel runs on the shared broker stay apart.
	env["DUET_MQTT_TOPIC"] = "duet-e2e/" + bus.NewID()[:8]
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	if !strings.Contains(d.out.String(), "nats://127.0.0.1:4222") {
		t.Fatalf("did not use the external NATS:\n%s", d.out.String())
	}
	d.signal(syscall.SIGTERM)
	if code := d.wait(12 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestAPITokens: a first start without DUET_ADMIN_TOKEN prints an admin
// token once; `duet token` creates, lists and revokes; the API refuses
// requests without a live token (401) and writes by a viewer (403), while
// /healthz, /readyz and /metrics stay open.
func TestAPITokens(t *testing.T) {
	dbURL := storetest.NewDatabase(t)
	env := baseEnv(t, dbURL)
	delete(env, "DUET_ADMIN_TOKEN")
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	var admin string
	for _, line := range strings.Split(d.out.String(), "\n") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "duet_") {
			admin = l
		}
	}
	if admin == "" {
		t.Fatalf("no admin token printed on first start:\n%s", d.out.String())
	}
	if strings.Count(d.out.String(), admin) != 1 {
		t.Fatalf("admin token printed more than once (or logged)")
	}
	if code, _ := d.doAs(admin, "GET", "/api/v1/devices", ""); code != 200 {
		t.Fatalf("printed admin token: %d", code)
	}
	if code, body := d.doAs("", "GET", "/api/v1/devices", ""); code != 401 || !strings.Contains(body, `"unauthenticated"`) {
		t.Fatalf("no token: %d %s", code, body)
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, _ := d.doAs("", "GET", p, ""); code != 200 {
			t.Fatalf("%s without a token: %d", p, code)
		}
	}
	tokenCmd := func(args ...string) string {
		t.Helper()
		c := startDuet(t, map[string]string{"DUET_DATABASE_URL": dbURL, "DUET_LOG_FORMAT": "json"}, append([]string{"token"}, args...)...)
		if code := c.wait(30 * time.Second); code != 0 {
			t.Fatalf("duet token %v: exit %d\n%s", args, code, c.out.String())
		}
		return c.out.String()
	}
	out := tokenCmd("create", "--name", "dashboard", "--role", "viewer")
	var viewer string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "duet_") {
			viewer = line
		}
	}
	if viewer == "" {
		t.Fatalf("token create printed no secret:\n%s", out)
	}
	if code, _ := d.doAs(viewer, "GET", "/api/v1/devices", ""); code != 200 {
		t.Fatalf("viewer GET: %d", code)
	}
	if code, body := d.doAs(viewer, "POST", "/api/v1/devices/x/tasks", `{"operation":"reboot"}`); code != 403 || !strings.Contains(body, `"denied"`) {
		t.Fatalf("viewer POST: %d %s", code, body)
	}
	list := tokenCmd("list")
	var id string
	for _, line := range strings.Split(list, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == "dashboard" {
			id = f[0]
		}
	}
	if id == "" || strings.Contains(list, viewer) || strings.Contains(list, admin) {
		t.Fatalf("token list (no ID, or it shows a secret):\n%s", list)
	}
	tokenCmd("revoke", id)
	if code, _ := d.doAs(viewer, "GET", "/api/v1/devices", ""); code != 401 {
		t.Fatalf("revoked viewer: %d", code)
	}
}
