package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// apiTask is the part of a task the tests look at.
type apiTask struct {
	ID           string          `json:"id"`
	State        string          `json:"state"`
	Attempts     int             `json:"attempts"`
	DispatchedAt *time.Time      `json:"dispatched_at"`
	Result       json.RawMessage `json:"result"`
	Error        *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (d *duet) postTask(dev, body string) (int, apiTask) {
	d.t.Helper()
	code, out := d.do("POST", "/api/v1/devices/"+url.PathEscape(dev)+"/tasks", body)
	var tk apiTask
	if code != 200 && code != 202 {
		d.t.Fatalf("POST task %s: %d %s", body, code, out)
	}
	if err := json.Unmarshal([]byte(out), &tk); err != nil {
		d.t.Fatal(err)
	}
	return code, tk
}

// runTask posts a task with wait and wants it to succeed within it.
func (d *duet) runTask(dev, body string) apiTask {
	d.t.Helper()
	code, tk := d.postTask(dev, body[:len(body)-1]+`,"wait":30}`)
	if code != 200 || tk.State != "succeeded" {
		d.t.Fatalf("task %s: %d %+v %+v", body, code, tk, tk.Error)
	}
	return tk
}

func (d *duet) getTask(id string) apiTask {
	d.t.Helper()
	code, out := d.get("/api/v1/tasks/" + id)
	var tk apiTask
	if code != 200 || json.Unmarshal([]byte(out), &tk) != nil {
		d.t.Fatalf("GET task %s: %d %s", id, code, out)
	}
	return tk
}

func (d *duet) waitTask(id, state string, timeout time.Duration) apiTask {
	d.t.Helper()
	var tk apiTask
	bustest.CheckFor(d.t, timeout, 100*time.Millisecond, func() error {
		tk = d.getTask(id)
		if tk.State != state {
			return fmt.Errorf("task %s is %s, want %s", id, tk.State, state)
		}
		return nil
	})
	return tk
}

func (d *duet) waitDevice(id string) {
	d.t.Helper()
	bustest.CheckFor(d.t, 30*time.Second, 100*time.Millisecond, func() error {
		if code, body := d.get("/api/v1/devices/" + url.PathEscape(id)); code != 200 {
			return fmt.Errorf("device %s: %d %s", id, code, body)
		}
		return nil
	})
}

func startCPE(t *testing.T, acs, serial string) *cpe.CPE {
	t.Helper()
	c, err := cpe.New(cpe.Options{ACSURL: acs, DataModelPath: cwmpModels[0].path, OUI: "00D09E", ProductClass: "TASKS",
		Serial: serial, PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond, Bootstrapped: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestTasksOnCWMPDevice drives a simulated TR-069 CPE through the API of
// the real binary: each task wakes the CPE with a connection request and
// goes out in the session that follows.
func TestTasksOnCWMPDevice(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"
	c := startCPE(t, acs, "T1")
	dev := c.DeviceID()
	d.waitDevice(dev)

	stream := d.openEvents("?type=command_result&device=" + url.QueryEscape(dev))
	set := d.runTask(dev, `{"operation":"set","params":[{"path":"Device.WiFi.SSID.1.SSID","value":"duet-e2e"}]}`)
	if v, _ := c.Value("Device.WiFi.SSID.1.SSID"); v != "duet-e2e" {
		t.Fatalf("CPE SSID %q after set", v)
	}
	// The set's result also went out on the event stream.
	if ev := stream.next(); !strings.Contains(ev, set.ID) {
		t.Fatalf("event stream: %s", ev)
	}
	got := d.runTask(dev, `{"operation":"get","paths":["Device.WiFi.SSID.1.SSID"]}`)
	if !strings.Contains(string(got.Result), `"duet-e2e"`) {
		t.Fatalf("get result %s", got.Result)
	}
	// The value read is in the parameter cache.
	if code, body := d.get("/api/v1/devices/" + url.PathEscape(dev) + "/parameters?path=Device.WiFi.SSID.1.SSID"); code != 200 || !strings.Contains(body, `"value":"duet-e2e"`) {
		t.Fatalf("parameter cache: %d %s", code, body)
	}
	add := d.runTask(dev, `{"operation":"add","object_path":"Device.NAT.PortMapping.","params":[{"path":"Alias","value":"web"}]}`)
	var ar struct {
		Add struct {
			InstancePath string `json:"instance_path"`
		} `json:"add"`
	}
	if err := json.Unmarshal(add.Result, &ar); err != nil || !strings.HasPrefix(ar.Add.InstancePath, "Device.NAT.PortMapping.") {
		t.Fatalf("add result %s", add.Result)
	}
	if v, ok := c.Value(ar.Add.InstancePath + "Alias"); !ok || v != "web" {
		t.Fatalf("new instance Alias %q %v", v, ok)
	}
	d.runTask(dev, `{"operation":"delete","object_paths":["`+ar.Add.InstancePath+`"]}`)
	if _, ok := c.Value(ar.Add.InstancePath + "Alias"); ok {
		t.Fatal("instance still there after delete")
	}
	// A fault from the CPE fails the task with its code.
	code, bad := d.postTask(dev, `{"operation":"set","params":[{"path":"Device.DeviceInfo.NoSuchThing","value":"1"}],"wait":30}`)
	if code != 200 || bad.State != "failed" || bad.Error == nil {
		t.Fatalf("set of an unknown parameter: %d %+v", code, bad)
	}
	before := c.Stats().Sessions
	d.runTask(dev, `{"operation":"reboot"}`)
	bustest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if s := c.Stats().Sessions; s < before+2 {
			return fmt.Errorf("no session after the reboot (%d)", s)
		}
		return nil
	})
}

// TestCWMPTaskForOfflineDevice: tasks for a CPE that is away wait; the
// cancelled and the expired one are never sent, the other is delivered in
// the first session after the CPE comes back.
func TestCWMPTaskForOfflineDevice(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"
	c := startCPE(t, acs, "OFF1")
	dev := c.DeviceID()
	d.waitDevice(dev)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	_, cancelled := d.postTask(dev, `{"operation":"reboot"}`)
	exp := time.Now().Add(time.Second).UTC().Format(time.RFC3339Nano)
	_, expired := d.postTask(dev, `{"operation":"factory_reset","expires_at":"`+exp+`"}`)
	_, set := d.postTask(dev, `{"operation":"set","params":[{"path":"Device.WiFi.SSID.1.SSID","value":"while-away"}]}`)
	if code, body := d.do("DELETE", "/api/v1/tasks/"+cancelled.ID, ""); code != 200 {
		t.Fatalf("cancel: %d %s", code, body)
	}
	d.waitTask(expired.ID, "expired", 20*time.Second)
	if tk := d.getTask(set.ID); tk.State != "queued" {
		t.Fatalf("task for an offline CPE is %s", tk.State)
	}
	// The CPE comes back (a new process with the same identity).
	c2 := startCPE(t, acs, "OFF1")
	d.waitTask(set.ID, "succeeded", 30*time.Second)
	if v, _ := c2.Value("Device.WiFi.SSID.1.SSID"); v != "while-away" {
		t.Fatalf("CPE SSID %q", v)
	}
	for _, id := range []string{cancelled.ID, expired.ID} {
		if tk := d.getTask(id); tk.DispatchedAt != nil || tk.Attempts != 0 {
			t.Fatalf("task %s was sent: %+v", id, tk)
		}
	}
	if code, _ := d.do("DELETE", "/api/v1/tasks/"+set.ID, ""); code != 409 {
		t.Fatalf("cancel of a finished task: %d", code)
	}
}

// tasksControllerEID is the binary's default USP endpoint ID.
const tasksControllerEID = "self::duet-controller"

// startAgent connects a simulated USP agent to the binary's embedded MQTT
// broker.
func startAgent(t *testing.T, env map[string]string, serial string) (*agent.Agent, *agent.Client) {
	t.Helper()
	a, err := agent.New(agent.Config{SerialNumber: serial, ControllerID: tasksControllerEID})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := agent.DialMQTT(ctx, a, agent.MQTTConfig{
		Broker: "127.0.0.1:" + env["DUET_MQTT_PORT"], ControllerTopic: "usp/controller/" + tasksControllerEID,
		AgentTopic: "usp/agent/" + a.EndpointID(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(); _ = a.Close() })
	return a, c
}

func (d *duet) waitOnline(id string, online bool) {
	d.t.Helper()
	bustest.CheckFor(d.t, 30*time.Second, 100*time.Millisecond, func() error {
		code, body := d.get("/api/v1/devices/" + url.PathEscape(id))
		if code != 200 || !strings.Contains(body, fmt.Sprintf(`"online":%v`, online)) {
			return fmt.Errorf("device %s: %d %s", id, code, body)
		}
		return nil
	})
}

// TestTasksOnUSPDevice is TestTasksOnCWMPDevice's sequence on a simulated
// USP agent over MQTT: the same requests, the same kinds of results.
func TestTasksOnUSPDevice(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	a, _ := startAgent(t, env, "UTASK1")
	dev := a.EndpointID()
	d.waitOnline(dev, true)

	d.runTask(dev, `{"operation":"set","params":[{"path":"Device.WiFi.SSID.1.SSID","value":"duet-e2e"}]}`)
	if v, _ := a.Parameter("Device.WiFi.SSID.1.SSID"); v != "duet-e2e" {
		t.Fatalf("agent SSID %q after set", v)
	}
	got := d.runTask(dev, `{"operation":"get","paths":["Device.WiFi.SSID.1.SSID"]}`)
	if !strings.Contains(string(got.Result), `"duet-e2e"`) {
		t.Fatalf("get result %s", got.Result)
	}
	// The value read is in the parameter cache.
	if code, body := d.get("/api/v1/devices/" + url.PathEscape(dev) + "/parameters?path=Device.WiFi.SSID.1.SSID"); code != 200 || !strings.Contains(body, `"value":"duet-e2e"`) {
		t.Fatalf("parameter cache: %d %s", code, body)
	}
	add := d.runTask(dev, `{"operation":"add","object_path":"Device.NAT.PortMapping.","params":[{"path":"Alias","value":"web"},{"path":"ExternalPort","value":"8080","type":"unsignedInt"}]}`)
	var ar struct {
		Add struct {
			InstancePath string `json:"instance_path"`
		} `json:"add"`
	}
	if err := json.Unmarshal(add.Result, &ar); err != nil || !strings.HasPrefix(ar.Add.InstancePath, "Device.NAT.PortMapping.") {
		t.Fatalf("add result %s", add.Result)
	}
	if v, ok := a.Parameter(ar.Add.InstancePath + "Alias"); !ok || v != "web" {
		t.Fatalf("new instance Alias %q %v", v, ok)
	}
	d.runTask(dev, `{"operation":"delete","object_paths":["`+ar.Add.InstancePath+`"]}`)
	if _, ok := a.Parameter(ar.Add.InstancePath + "Alias"); ok {
		t.Fatal("instance still there after delete")
	}
	code, bad := d.postTask(dev, `{"operation":"set","params":[{"path":"Device.DeviceInfo.NoSuchThing","value":"1"}],"wait":30}`)
	if code != 200 || bad.State != "failed" || bad.Error == nil {
		t.Fatalf("set of an unknown parameter: %d %+v", code, bad)
	}
	boots := a.Boots()
	d.runTask(dev, `{"operation":"reboot"}`)
	bustest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if b := a.Boots(); b <= boots {
			return fmt.Errorf("agent did not reboot (%d boots)", b)
		}
		return nil
	})
}

// TestUSPTaskForOfflineDevice: as TestCWMPTaskForOfflineDevice, for an
// agent that disconnected and comes back.
func TestUSPTaskForOfflineDevice(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	a, c := startAgent(t, env, "UOFF1")
	dev := a.EndpointID()
	d.waitOnline(dev, true)
	_ = c.Close()
	_ = a.Close()
	d.waitOnline(dev, false)
	_, cancelled := d.postTask(dev, `{"operation":"reboot"}`)
	exp := time.Now().Add(time.Second).UTC().Format(time.RFC3339Nano)
	_, expired := d.postTask(dev, `{"operation":"factory_reset","expires_at":"`+exp+`"}`)
	_, set := d.postTask(dev, `{"operation":"set","params":[{"path":"Device.WiFi.SSID.1.SSID","value":"while-away"}]}`)
	if code, body := d.do("DELETE", "/api/v1/tasks/"+cancelled.ID, ""); code != 200 {
		t.Fatalf("cancel: %d %s", code, body)
	}
	d.waitTask(expired.ID, "expired", 20*time.Second)
	if tk := d.getTask(set.ID); tk.State != "queued" {
		t.Fatalf("task for an offline agent is %s", tk.State)
	}
	a2, _ := startAgent(t, env, "UOFF1")
	d.waitTask(set.ID, "succeeded", 30*time.Second)
	if v, _ := a2.Parameter("Device.WiFi.SSID.1.SSID"); v != "while-away" {
		t.Fatalf("agent SSID %q", v)
	}
	for _, id := range []string{cancelled.ID, expired.ID} {
		if tk := d.getTask(id); tk.DispatchedAt != nil || tk.Attempts != 0 {
			t.Fatalf("task %s was sent: %+v", id, tk)
		}
	}
	if a2.Boots() != 0 {
		t.Fatalf("agent booted %d times: the cancelled reboot or expired reset reached it", a2.Boots())
	}
}

// eventStream reads GET /api/v1/events.
type eventStream struct {
	t  testing.TB
	sc *bufio.Scanner
}

func (d *duet) openEvents(query string) *eventStream {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	d.t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", d.HTTP+"/api/v1/events"+query, nil)
	req.Header.Set("Authorization", "Bearer "+d.Env["DUET_ADMIN_TOKEN"])
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { res.Body.Close() })
	if res.StatusCode != 200 {
		d.t.Fatalf("event stream: %d", res.StatusCode)
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	return &eventStream{t: d.t, sc: sc}
}

// next returns the data of the next event.
func (s *eventStream) next() string {
	s.t.Helper()
	for s.sc.Scan() {
		if l := s.sc.Text(); strings.HasPrefix(l, "data: ") {
			return strings.TrimPrefix(l, "data: ")
		}
	}
	s.t.Fatalf("event stream ended: %v", s.sc.Err())
	return ""
}

// TestTasksSurviveControllerKill: `duet serve --only controller` is killed
// (SIGKILL) with a reboot handed to a CWMP session and a set queued, and
// started again on the same database and bus. Nothing is lost (the set is
// delivered) and nothing is sent twice (the reboot, whose outcome is
// unknown, is failed as such and never handed out again). The test plays
// the CWMP adapter on the bus.
func TestTasksSurviveControllerKill(t *testing.T) {
	srv := bustest.StartServer(t)
	b := bustest.Connect(t, srv.URL())
	dbURL := storetest.NewDatabase(t)
	d := controllerOnly(t, srv.URL(), dbURL)
	const dev = "00D09E-KILL-1"
	publishInform(t, b, dev, "1.0")
	d.waitDevice(dev)
	_, reboot := d.postTask(dev, `{"operation":"reboot","connection_request":false}`)
	_, set := d.postTask(dev, `{"operation":"set","params":[{"path":"Device.X","value":"1"}],"connection_request":false}`)
	ask := func(session string, round uint32, results ...*duetv1.CommandResult) []*duetv1.Command {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		w, err := b.AskWork(ctx, &duetv1.SessionWorkRequest{DeviceId: dev, SessionId: session, Round: round, Results: results})
		if err != nil {
			t.Fatal(err)
		}
		return w.GetCommands()
	}
	if c := ask("s1", 0); len(c) != 1 || c[0].Id != reboot.ID {
		t.Fatalf("s1: %v", c)
	}
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	d.wait(10 * time.Second)

	env := baseEnv(t, dbURL)
	env["DUET_NATS_URL"] = srv.URL()
	env["DUET_ONLY"] = "controller"
	d2 := startDuet(t, env, "serve")
	d2.waitReady(30 * time.Second)
	if tk := d2.getTask(reboot.ID); tk.State != "failed" || tk.Error == nil || tk.Error.Code != "outcome_unknown" {
		t.Fatalf("in-flight reboot after the kill: %+v %+v", tk, tk.Error)
	}
	if tk := d2.getTask(set.ID); tk.State != "queued" {
		t.Fatalf("queued set after the kill: %s", tk.State)
	}
	c := ask("s2", 0)
	if len(c) != 1 || c[0].Id != set.ID {
		t.Fatalf("s2: %v, want the set only", c)
	}
	if c := ask("s2", 1, &duetv1.CommandResult{CommandId: set.ID, DeviceId: dev}); len(c) != 0 {
		t.Fatalf("s2 round 1: %v", c)
	}
	d2.waitTask(set.ID, "succeeded", 10*time.Second)
}
