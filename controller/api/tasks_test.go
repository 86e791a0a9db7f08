package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// do sends an API request with the admin token and returns status and body.
func (e *env) do(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	res, err := e.doAs(e.token, method, path, body)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func (e *env) task(t *testing.T, id string) api.TaskJSON {
	t.Helper()
	code, body := e.do(t, "GET", "/api/v1/tasks/"+id, "")
	if code != 200 {
		t.Fatalf("GET task %s: %d %s", id, code, body)
	}
	var tj api.TaskJSON
	if err := json.Unmarshal([]byte(body), &tj); err != nil {
		t.Fatal(err)
	}
	return tj
}

func (e *env) createTask(t *testing.T, dev, body string) (int, api.TaskJSON) {
	t.Helper()
	code, out := e.do(t, "POST", "/api/v1/devices/"+dev+"/tasks", body)
	var tj api.TaskJSON
	if code == 200 || code == 202 {
		if err := json.Unmarshal([]byte(out), &tj); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Fatalf("create task %s: %d %s", body, code, out)
	}
	return code, tj
}

func (e *env) waitState(t *testing.T, id, state string) api.TaskJSON {
	t.Helper()
	var tj api.TaskJSON
	bustest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		tj = e.task(t, id)
		if tj.State != state {
			return fmt.Errorf("task %s (%s) is %s, want %s (%+v)", id, tj.Operation, tj.State, state, tj.Error)
		}
		return nil
	})
	return tj
}

// seen publishes an event for a device and waits until the registry has it.
func (e *env) seen(t *testing.T, id string, p duetv1.Protocol, kind string) {
	t.Helper()
	ev := informEvent(id, "1")
	ev.Device.Protocol = p
	ev.Reachability.ConnectionRequestUrl = "http://192.0.2.7:7547/cr-" + id
	if kind == "online" {
		ev.Kind = &duetv1.Event_Online{Online: &duetv1.Online{}}
	}
	before, _ := e.store.CountDeviceEvents(context.Background(), id)
	if err := e.bus.PublishEvent(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, e, id, before+1)
}

func (e *env) taskCount(t *testing.T) int {
	t.Helper()
	var n int
	if err := e.store.Pool().QueryRow(context.Background(), "SELECT count(*) FROM tasks").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestTaskRequestsRejectedChangeNothing(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	e.seen(t, "val-dev", duetv1.Protocol_PROTOCOL_CWMP, "inform")
	for _, c := range []struct {
		dev, body string
		status    int
		code, msg string
	}{
		{"no-such-device", `{"operation":"reboot"}`, 404, "not_found", "no-such-device"},
		{"val-dev", `{"operation":"explode"}`, 400, "invalid_argument", `"explode" is unknown`},
		{"val-dev", `{"operation":"get","paths":["Device..DeviceInfo."]}`, 400, "invalid_path", "position 7"},
		{"val-dev", `{"operation":"set","params":[{"path":"Device.WiFi.SSID.1.","value":"x"}]}`, 400, "invalid_path", "object path"},
		{"val-dev", `{"operation":"set","params":[{"path":"Device.X","value":"1","type":"float"}]}`, 400, "invalid_argument", "TR-106"},
		{"val-dev", `{"operation":"get"}`, 400, "invalid_argument", "needs paths"},
		{"val-dev", `{"operation":"reboot","colour":"red"}`, 400, "invalid_argument", "colour"},
		{"val-dev", `{"operation":"reboot","wait":1000}`, 400, "invalid_argument", "wait"},
		{"val-dev", `{"operation":"reboot","expires_at":"2001-01-01T00:00:00Z"}`, 400, "invalid_argument", "past"},
		{"val-dev", `not json`, 400, "invalid_argument", "body"},
	} {
		code, body := e.do(t, "POST", "/api/v1/devices/"+c.dev+"/tasks", c.body)
		var ej api.ErrorJSON
		_ = json.Unmarshal([]byte(body), &ej)
		if code != c.status || ej.Code != c.code || !strings.Contains(ej.Message, c.msg) {
			t.Errorf("%s: %d %s, want %d %s containing %q", c.body, code, body, c.status, c.code, c.msg)
		}
	}
	if n := e.taskCount(t); n != 0 {
		t.Fatalf("%d tasks stored by rejected requests", n)
	}
	if code, _ := e.do(t, "GET", "/api/v1/tasks/nope", ""); code != 404 {
		t.Fatalf("unknown task: %d", code)
	}
	if code, _ := e.do(t, "GET", "/api/v1/devices/nope/tasks", ""); code != 404 {
		t.Fatalf("tasks of unknown device: %d", code)
	}
}

// uspAdapter stands in for the USP adapter on the bus contract: it serves
// the device's command subject and answers like a device would.
type uspAdapter struct {
	mu       sync.Mutex
	ops      []string // "get", "set", ... in arrival order
	inFlight atomic.Int32
	maxSeen  atomic.Int32
	hold     chan struct{} // when set, each command waits for a receive
}

func serveUSP(t *testing.T, b *bus.Bus, id string, a *uspAdapter) *bus.Subscription {
	t.Helper()
	sub, err := b.ServeCommands(bus.CommandSubject(devicemodel.ProtocolUSP, id), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		n := a.inFlight.Add(1)
		defer a.inFlight.Add(-1)
		if n > a.maxSeen.Load() {
			a.maxSeen.Store(n)
		}
		if a.hold != nil {
			select {
			case <-a.hold:
			case <-ctx.Done():
			}
		}
		op := commandOp(cmd)
		a.mu.Lock()
		a.ops = append(a.ops, op)
		a.mu.Unlock()
		switch op {
		case "get":
			return &duetv1.CommandResult{Result: &duetv1.CommandResult_Get{Get: &duetv1.GetResult{
				Params: []*duetv1.Parameter{{Path: cmd.GetGet().Paths[0], Value: "hello"}}}}}
		case "add":
			return &duetv1.CommandResult{Result: &duetv1.CommandResult_Add{Add: &duetv1.AddResult{InstancePath: cmd.GetAdd().ObjectPath + "7."}}}
		case "delete":
			return &duetv1.CommandResult{Error: &duetv1.Error{Code: duetv1.ErrorCode_ERROR_CODE_NOT_FOUND, Message: "no such instance", DeviceFault: 7016}}
		}
		return &duetv1.CommandResult{Result: &duetv1.CommandResult_Set{Set: &duetv1.SetResult{}}}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Stop)
	return sub
}

func (a *uspAdapter) seenOps() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.ops...)
}

func TestUSPTasksDispatchInOrderOneAtATime(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	const dev = "usp-1"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_USP, "online")
	a := &uspAdapter{hold: make(chan struct{})}
	serveUSP(t, e.bus, dev, a)
	_, t1 := e.createTask(t, dev, `{"operation":"set","params":[{"path":"Device.WiFi.SSID.1.SSID","value":"duet"}]}`)
	_, t2 := e.createTask(t, dev, `{"operation":"add","object_path":"Device.NAT.PortMapping.","params":[{"path":"Alias","value":"web"}]}`)
	_, t3 := e.createTask(t, dev, `{"operation":"delete","object_paths":["Device.NAT.PortMapping.9."]}`)
	for i := 0; i < 3; i++ {
		a.hold <- struct{}{}
	}
	e.waitState(t, t1.ID, "succeeded")
	add := e.waitState(t, t2.ID, "succeeded")
	if !strings.Contains(string(add.Result), "Device.NAT.PortMapping.7.") {
		t.Fatalf("add result %s", add.Result)
	}
	del := e.waitState(t, t3.ID, "failed")
	if del.Error == nil || del.Error.Code != "not_found" || del.Error.DeviceFault != 7016 {
		t.Fatalf("delete error %+v", del.Error)
	}
	if got := strings.Join(a.seenOps(), ","); got != "set,add,delete" {
		t.Fatalf("order %s", got)
	}
	if m := a.maxSeen.Load(); m != 1 {
		t.Fatalf("%d commands in flight at once, want 1", m)
	}
	// wait: answered synchronously.
	a.hold = nil
	code, tj := e.createTask(t, dev, `{"operation":"get","paths":["Device.DeviceInfo.SoftwareVersion"],"wait":10}`)
	if code != 200 || tj.State != "succeeded" || !strings.Contains(string(tj.Result), "hello") {
		t.Fatalf("get with wait: %d %+v %s", code, tj, tj.Result)
	}
	// Listing: newest first, paged.
	code, body := e.do(t, "GET", "/api/v1/devices/"+dev+"/tasks?limit=3", "")
	var l api.TaskList
	_ = json.Unmarshal([]byte(body), &l)
	if code != 200 || len(l.Tasks) != 3 || l.Tasks[0].ID != tj.ID || l.NextCursor == "" {
		t.Fatalf("list: %d %s", code, body)
	}
	code, body = e.do(t, "GET", "/api/v1/devices/"+dev+"/tasks?limit=3&cursor="+l.NextCursor, "")
	l = api.TaskList{}
	_ = json.Unmarshal([]byte(body), &l)
	if code != 200 || len(l.Tasks) != 1 || l.Tasks[0].ID != t1.ID || l.NextCursor != "" {
		t.Fatalf("list page 2: %d %s", code, body)
	}
}

func TestUSPTaskWaitsForOfflineDevice(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	const dev = "usp-offline"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_USP, "online")
	// Nobody serves the device: the task is tried, never delivered, and
	// waits.
	code, tj := e.createTask(t, dev, `{"operation":"reboot","wait":1}`)
	if code != 202 || tj.State != "queued" {
		t.Fatalf("reboot for an unreachable device: %d %+v", code, tj)
	}
	a := &uspAdapter{}
	serveUSP(t, e.bus, dev, a)
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_USP, "online") // it comes back
	got := e.waitState(t, tj.ID, "succeeded")
	if got.Attempts != 1 {
		t.Fatalf("attempts %d: a never-delivered dispatch counts", got.Attempts)
	}
	if ops := a.seenOps(); len(ops) != 1 || ops[0] != "operate" {
		t.Fatalf("device got %v", ops)
	}
}

// askWork is what the CWMP adapter does in a session.
func askWork(t *testing.T, b *bus.Bus, dev, session string, round uint32, results ...*duetv1.CommandResult) []*duetv1.Command {
	t.Helper()
	w, err := b.AskWork(context.Background(), &duetv1.SessionWorkRequest{DeviceId: dev, SessionId: session, Round: round, Results: results})
	if err != nil {
		t.Fatal(err)
	}
	return w.GetCommands()
}

func ok(cmd *duetv1.Command) *duetv1.CommandResult {
	return &duetv1.CommandResult{CommandId: cmd.Id, DeviceId: cmd.DeviceId}
}

func startDesk(t *testing.T, e *env) {
	t.Helper()
	d, err := controller.StartAdapterDesk(e.bus, e.tasks, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
}

func TestCWMPTasksGoOutInSessionsAfterAConnectionRequest(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	startDesk(t, e)
	const dev = "00D09E-ONT-CW1"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_CWMP, "inform")
	crs := make(chan *duetv1.ConnectionRequest, 10)
	sub, err := e.bus.ServeCommands(bus.CommandSubject(devicemodel.ProtocolCWMP, dev), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		crs <- cmd.GetConnectionRequest()
		return &duetv1.CommandResult{}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	_, set := e.createTask(t, dev, `{"operation":"set","params":[{"path":"Device.WiFi.SSID.1.SSID","value":"x"}]}`)
	_, reboot := e.createTask(t, dev, `{"operation":"reboot","connection_request":false}`)
	select {
	case cr := <-crs:
		if cr.GetUrl() != "http://192.0.2.7:7547/cr-"+dev {
			t.Fatalf("connection request to %q", cr.GetUrl())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no connection request")
	}
	cmds := askWork(t, e.bus, dev, "s1", 0)
	if len(cmds) != 1 || cmds[0].Id != set.ID || cmds[0].GetSet() == nil {
		t.Fatalf("round 0: %v", cmds)
	}
	if e.task(t, set.ID).State != "dispatched" {
		t.Fatal("handed-out task not dispatched")
	}
	cmds2 := askWork(t, e.bus, dev, "s1", 1, ok(cmds[0]))
	if len(cmds2) != 1 || cmds2[0].Id != reboot.ID || cmds2[0].GetOperate().GetCommand() != "Device.Reboot()" {
		t.Fatalf("round 1: %v", cmds2)
	}
	e.waitState(t, set.ID, "succeeded")
	// The reboot's result comes as a command_result event (the adapter
	// publishes each), before the next round.
	ev := &duetv1.Event{Device: &duetv1.DeviceIdentity{Id: dev, Protocol: duetv1.Protocol_PROTOCOL_CWMP},
		Kind: &duetv1.Event_CommandResult{CommandResult: ok(cmds2[0])}}
	if err := e.bus.PublishEvent(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, reboot.ID, "succeeded")
	if cmds := askWork(t, e.bus, dev, "s1", 2, ok(cmds2[0])); len(cmds) != 0 {
		t.Fatalf("round 2: %v", cmds)
	}
	if n := len(crs); n != 0 {
		t.Fatalf("%d connection requests for a task that asked for none", n)
	}
}

func TestCWMPLostResultsNeverResendNonIdempotent(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	startDesk(t, e)
	const dev = "00D09E-ONT-CW2"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_CWMP, "inform")
	_, reboot := e.createTask(t, dev, `{"operation":"reboot","connection_request":false}`)
	_, get := e.createTask(t, dev, `{"operation":"get","paths":["Device.DeviceInfo."],"connection_request":false}`)
	if c := askWork(t, e.bus, dev, "s1", 0); len(c) != 1 || c[0].Id != reboot.ID {
		t.Fatalf("s1: %v", c)
	}
	// Session s1 died; the next session never mentions the reboot.
	c := askWork(t, e.bus, dev, "s2", 0)
	if len(c) != 1 || c[0].Id != get.ID {
		t.Fatalf("s2 round 0: %v, want the get (not the reboot again)", c)
	}
	rb := e.task(t, reboot.ID)
	if rb.State != "failed" || rb.Error == nil || rb.Error.Code != "outcome_unknown" {
		t.Fatalf("lost reboot: %+v %+v", rb, rb.Error)
	}
	// The get's session dies too: idempotent, so it goes out again.
	c = askWork(t, e.bus, dev, "s3", 0)
	if len(c) != 1 || c[0].Id != get.ID {
		t.Fatalf("s3: %v, want the get again", c)
	}
	// A result saying the adapter never ran it requeues it as well.
	unavailable := &duetv1.CommandResult{CommandId: get.ID, DeviceId: dev,
		Error: &duetv1.Error{Code: duetv1.ErrorCode_ERROR_CODE_UNAVAILABLE, Message: "session ended (timeout) before the command ran"}}
	if c := askWork(t, e.bus, dev, "s3", 1, unavailable); len(c) != 1 || c[0].Id != get.ID {
		t.Fatalf("after unavailable: %v", c)
	}
	if c := askWork(t, e.bus, dev, "s3", 2, ok(c[0])); len(c) != 0 {
		t.Fatalf("after get: %v", c)
	}
	g := e.waitState(t, get.ID, "succeeded")
	// s2 and s3's last round: the dispatch that never ran does not count.
	if g.Attempts != 2 {
		t.Fatalf("get attempts %d, want 2", g.Attempts)
	}
	// The explicit retry sends the reboot again, as a new task.
	code, body := e.do(t, "POST", "/api/v1/tasks/"+reboot.ID+"/retry", "")
	var retry api.TaskJSON
	_ = json.Unmarshal([]byte(body), &retry)
	if code != 202 || retry.RetryOf != reboot.ID || retry.State != "queued" {
		t.Fatalf("retry: %d %s", code, body)
	}
	if c := askWork(t, e.bus, dev, "s4", 0); len(c) != 1 || c[0].Id != retry.ID {
		t.Fatalf("s4: %v", c)
	}
	if code, _ := e.do(t, "POST", "/api/v1/tasks/"+get.ID+"/retry", ""); code != 409 {
		t.Fatalf("retry of a succeeded task: %d", code)
	}
}

func TestRestartFailsInFlightRebootAndLateResultWins(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	startDesk(t, e)
	const dev = "00D09E-ONT-CW3"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_CWMP, "inform")
	_, reboot := e.createTask(t, dev, `{"operation":"reboot","connection_request":false}`)
	_, set := e.createTask(t, dev, `{"operation":"set","params":[{"path":"Device.X","value":"1"}],"connection_request":false}`)
	c := askWork(t, e.bus, dev, "s1", 0)
	if len(c) != 1 || c[0].Id != reboot.ID {
		t.Fatalf("s1: %v", c)
	}
	// The controller restarts with the reboot in flight.
	e.tasks.Stop()
	e.startTasks(t)
	rb := e.task(t, reboot.ID)
	if rb.State != "failed" || rb.Error.Code != "outcome_unknown" {
		t.Fatalf("after restart: %s %+v", rb.State, rb.Error)
	}
	if st := e.task(t, set.ID).State; st != "queued" {
		t.Fatalf("queued task after restart: %s", st)
	}
	// The reboot's result was on its way: it replaces "unknown".
	ev := &duetv1.Event{Device: &duetv1.DeviceIdentity{Id: dev, Protocol: duetv1.Protocol_PROTOCOL_CWMP},
		Kind: &duetv1.Event_CommandResult{CommandResult: ok(c[0])}}
	if err := e.bus.PublishEvent(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, reboot.ID, "succeeded")
}

func TestCancelExpireAndUniqueKey(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	startDesk(t, e)
	const dev = "00D09E-ONT-CW4"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_CWMP, "inform")
	_, cancelled := e.createTask(t, dev, `{"operation":"reboot","connection_request":false}`)
	exp := time.Now().Add(300 * time.Millisecond).UTC().Format(time.RFC3339Nano)
	_, expiring := e.createTask(t, dev, `{"operation":"factory_reset","connection_request":false,"expires_at":"`+exp+`"}`)
	_, first := e.createTask(t, dev, `{"operation":"set","params":[{"path":"Device.A","value":"1"}],"unique_key":"a","connection_request":false}`)
	_, second := e.createTask(t, dev, `{"operation":"set","params":[{"path":"Device.A","value":"2"}],"unique_key":"a","connection_request":false}`)
	if code, body := e.do(t, "DELETE", "/api/v1/tasks/"+cancelled.ID, ""); code != 200 || !strings.Contains(body, `"cancelled"`) {
		t.Fatalf("cancel: %d %s", code, body)
	}
	if code, _ := e.do(t, "DELETE", "/api/v1/tasks/"+cancelled.ID, ""); code != 409 {
		t.Fatalf("cancel twice: %d", code)
	}
	if f := e.task(t, first.ID); f.State != "cancelled" || !strings.Contains(f.Error.Message, second.ID) {
		t.Fatalf("replaced task: %+v %+v", f, f.Error)
	}
	e.waitState(t, expiring.ID, "expired")
	c := askWork(t, e.bus, dev, "s1", 0)
	if len(c) != 1 || c[0].Id != second.ID {
		t.Fatalf("handed out %v, want only the replacing set", c)
	}
	if code, _ := e.do(t, "DELETE", "/api/v1/tasks/"+second.ID, ""); code != 409 {
		t.Fatalf("cancel dispatched: %d", code)
	}
	if c := askWork(t, e.bus, dev, "s1", 1, ok(c[0])); len(c) != 0 {
		t.Fatalf("after the set: %v", c)
	}
}

func commandOp(cmd *duetv1.Command) string {
	m := cmd.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("op"))
	if fd == nil {
		return ""
	}
	return string(fd.Name())
}

func TestConcurrentUniqueKeyLeavesOneQueued(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	const dev = "00D09E-ONT-UK"
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_CWMP, "inform")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.tasks.Create(context.Background(), dev, controller.TaskRequest{Operation: "get",
				Paths: []string{"Device.DeviceInfo."}, UniqueKey: "poll", ConnectionRequest: new(bool)})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("create with a shared unique_key: %v", err)
		}
	}
	code, body := e.do(t, "GET", "/api/v1/devices/"+dev+"/tasks?state=queued", "")
	var l api.TaskList
	_ = json.Unmarshal([]byte(body), &l)
	if code != 200 || len(l.Tasks) != 1 {
		t.Fatalf("%d queued tasks with one unique_key: %s", len(l.Tasks), body)
	}
}
