package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// natsNode is one nats-server process of a test cluster.
type natsNode struct {
	t    *testing.T
	name string
	url  string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

func (n *natsNode) kill() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		n.t.Fatal(err)
	}
	<-n.done
}

// startNATSCluster starts three clustered nats-server processes with
// JetStream (docs/scaling.md, NATS) and waits until JetStream answers.
func startNATSCluster(t *testing.T) []*natsNode {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		bin = "/usr/sbin/nats-server" // scripts/services.sh installs it there
	}
	dir := t.TempDir()
	client := []int{freePort(t), freePort(t), freePort(t)}
	cluster := []int{freePort(t), freePort(t), freePort(t)}
	var nodes []*natsNode
	for i := range 3 {
		var routes []string
		for j := range 3 {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", cluster[j]))
			}
		}
		name := fmt.Sprintf("n%d", i+1)
		conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
jetstream { store_dir: %q }
cluster { name: duet-e2e, listen: 127.0.0.1:%d, routes: [%s] }
`, name, client[i], filepath.Join(dir, name), cluster[i], strings.Join(routes, ", "))
		cf := filepath.Join(dir, name+".conf")
		if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		n := &natsNode{t: t, name: name, url: fmt.Sprintf("nats://127.0.0.1:%d", client[i]),
			cmd: exec.Command(bin, "-c", cf), out: &syncBuffer{}, done: make(chan struct{})}
		n.cmd.Stdout, n.cmd.Stderr = n.out, n.out
		if err := n.cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", bin, err)
		}
		go func() { _ = n.cmd.Wait(); close(n.done) }()
		t.Cleanup(func() {
			_ = n.cmd.Process.Kill()
			<-n.done
			if t.Failed() {
				t.Logf("nats-server %s output (tail):\n%s", n.name, tail(n.out.String(), 3000))
			}
		})
		nodes = append(nodes, n)
	}
	urls := natsURLs(nodes)
	bustest.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
		nc, err := nats.Connect(urls)
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = js.AccountInfo(ctx)
		return err
	})
	return nodes
}

func natsURLs(nodes []*natsNode) string {
	var u []string
	for _, n := range nodes {
		u = append(u, n.url)
	}
	return strings.Join(u, ",")
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// balancer is a TCP load balancer for the test: each connection goes to
// the next backend that accepts it (round robin, skipping dead ones), and
// stays there, as a layer-4 balancer in front of CWMP or WebSocket
// adapters does (docs/scaling.md).
type balancer struct {
	ln       net.Listener
	backends []string
	next     atomic.Uint32
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

func startBalancer(t *testing.T, backends ...string) *balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln, backends: backends, conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *balancer) Addr() string { return b.ln.Addr().String() }

func (b *balancer) track(c net.Conn, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		b.conns[c] = struct{}{}
	} else {
		delete(b.conns, c)
	}
}

func (b *balancer) serve(c net.Conn) {
	defer c.Close()
	start := int(b.next.Add(1))
	var bc net.Conn
	for i := range b.backends {
		var err error
		if bc, err = net.DialTimeout("tcp", b.backends[(start+i)%len(b.backends)], 2*time.Second); err == nil {
			break
		}
	}
	if bc == nil {
		return
	}
	defer bc.Close()
	b.track(c, true)
	b.track(bc, true)
	defer b.track(c, false)
	defer b.track(bc, false)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(bc, c)
		bc.Close()
		close(done)
	}()
	_, _ = io.Copy(c, bc)
	c.Close()
	<-done
}

// TestScaleOutSurvivesKills (issue 16 item 6, docs/scaling.md): two
// controllers, two CWMP adapters, two MQTT adapters on one shared
// subscription and two WebSocket adapters share a three-node NATS cluster
// (JetStream, three replicas) and one PostgreSQL. Under a short simulated
// load of CPEs and USP agents, one process of each kind and one NATS node
// are killed (SIGKILL). Then, from the database and the bus:
//
//   - every device is still served: new Informs and Periodic! events from
//     every device after the kill, and a Get to every device succeeds;
//   - no event is lost or applied twice: the event IDs in the stream and
//     in device history are the same set, each once;
//   - a reboot (not idempotent) handed out around the kill ran at most
//     once on its device, and ran if its task succeeded;
//   - per-device order holds: each device's events are in time order in
//     the stream, and the registry shows each device's newest event.
//
// The load is small and the deadlines generous: a slow machine makes the
// test longer, never red. BenchmarkScaleOut is the longer run.
func TestScaleOutSurvivesKills(t *testing.T) {
	runScaleOut(t, scaleOutLoad{cpes: 10, wsAgents: 6, mqttAgents: 6, period: 2 * time.Second, settle: 4 * time.Second})
}

type scaleOutLoad struct {
	cpes, wsAgents, mqttAgents int
	period                     time.Duration // periodic Inform / Periodic! interval
	settle                     time.Duration // load time before and after the kill
}

type scaleOutDevice struct {
	id    string
	proto string // cwmp, ws, mqtt
	cpe   *cpe.CPE
	agent *agent.Agent
}

func runScaleOut(t *testing.T, load scaleOutLoad) {
	began := time.Now()
	step := func(format string, args ...any) {
		t.Logf("[%5.1fs] %s", time.Since(began).Seconds(), fmt.Sprintf(format, args...))
	}
	nodes := startNATSCluster(t)
	urls := natsURLs(nodes)
	dbURL := storetest.NewDatabase(t)
	step("NATS cluster up (%s)", urls)

	run := bus.NewID()[:6]
	topic := "usp/controller/e2e-" + run
	start := func(only string, more map[string]string) *duet {
		env := baseEnv(t, dbURL)
		env["DUET_ONLY"] = only
		env["DUET_NATS_URL"] = urls
		env["DUET_NATS_REPLICAS"] = "3"
		// Every event kind gets a history row, and the stream keeps every
		// event: the two are compared at the end.
		env["DUET_EVENT_HISTORY_KINDS"] = "none"
		env["DUET_EVENT_STREAM_LATEST_ONLY"] = "none"
		env["DUET_MQTT_URL"] = "mqtt://127.0.0.1:1883"
		env["DUET_MQTT_TOPIC"] = topic
		env["DUET_MQTT_SHARED_GROUP"] = "duet-" + run
		env["DUET_WS_MAX_CONNS_PER_IP"] = "0" // all agents come from the balancer
		// Each CPE informs every 2 s, faster than the per-device inform
		// rate limit allows (docs/guide-cwmp.md); this test is about
		// processes dying, not about rate limits.
		env["DUET_CWMP_INFORM_RATE_DEVICE"] = "0"
		env["DUET_CWMP_INFORM_RATE_SOURCE"] = "0"
		for k, v := range more {
			env[k] = v
		}
		return startDuet(t, env, "serve")
	}
	ctl := []*duet{start("controller", nil), start("controller", nil)}
	cwmpAd := []*duet{start("cwmp", nil), start("cwmp", nil)}
	mqttAd := []*duet{start("usp-mqtt", nil), start("usp-mqtt", nil)}
	wsAd := []*duet{start("usp-ws", nil), start("usp-ws", nil)}
	all := append(append(append(append([]*duet{}, ctl...), cwmpAd...), mqttAd...), wsAd...)
	for _, d := range all {
		d.waitReady(90 * time.Second)
	}
	step("8 duet processes ready")

	cwmpLB := startBalancer(t, cwmpAd[0].Env["DUET_CWMP_ADDR"], cwmpAd[1].Env["DUET_CWMP_ADDR"])
	wsLB := startBalancer(t, wsAd[0].Env["DUET_WS_ADDR"], wsAd[1].Env["DUET_WS_ADDR"])

	var devices []*scaleOutDevice
	ctx := context.Background()
	for i := range load.cpes {
		c, err := cpe.New(cpe.Options{ACSURL: "http://" + cwmpLB.Addr() + "/", DataModelPath: cwmpModels[0].path,
			OUI: "00D09E", ProductClass: "SCALE", Serial: fmt.Sprintf("%s%03d", run, i), PeriodicInterval: load.period,
			RetryMinWait: 200 * time.Millisecond, Bootstrapped: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		devices = append(devices, &scaleOutDevice{id: c.DeviceID(), proto: "cwmp", cpe: c})
	}
	for _, tr := range []struct {
		name string
		n    int
		dial agent.DialFunc
	}{
		{"ws", load.wsAgents, func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			return agent.DialWebSocket(ctx, a, agent.WebSocketConfig{URL: "ws://" + wsLB.Addr() + "/usp"})
		}},
		{"mqtt", load.mqttAgents, func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			return agent.DialMQTT(ctx, a, agent.MQTTConfig{Broker: "127.0.0.1:1883", ControllerTopic: topic,
				AgentTopic: "usp/agent/e2e-" + run + "/" + a.EndpointID()})
		}},
	} {
		f, err := agent.StartFleet(ctx, tr.n, func(i int) agent.Config {
			return agent.Config{SerialNumber: fmt.Sprintf("%s%s%03d", strings.ToUpper(tr.name), run, i),
				ControllerID: controllerEID, PeriodicInterval: load.period}
		}, tr.dial)
		if err != nil {
			t.Fatalf("%s agents: %v", tr.name, err)
		}
		t.Cleanup(func() { f.Close() })
		for _, a := range f.Agents() {
			devices = append(devices, &scaleOutDevice{id: a.EndpointID(), proto: tr.name, agent: a})
		}
	}
	step("%d CPEs and %d agents started", load.cpes, load.wsAgents+load.mqttAgents)

	db := func() *pgx.Conn {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}()
	// eventsSince counts each device's inform and periodic events (the
	// routine ones every device sends) timed after since.
	eventsSince := func(since time.Time) map[string]int {
		t.Helper()
		rows, err := db.Query(ctx, `SELECT device_id, count(*) FROM device_events
			WHERE kind IN ('inform', 'periodic') AND time > $1 GROUP BY device_id`, since)
		if err != nil {
			t.Fatal(err)
		}
		n := map[string]int{}
		for rows.Next() {
			var id string
			var c int
			if err := rows.Scan(&id, &c); err != nil {
				t.Fatal(err)
			}
			n[id] = c
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	everyDeviceHas := func(what string, since time.Time, atLeast int) {
		t.Helper()
		bustest.CheckFor(t, 120*time.Second, 250*time.Millisecond, func() error {
			n := eventsSince(since)
			var missing []string
			for _, d := range devices {
				if n[d.id] < atLeast {
					missing = append(missing, fmt.Sprintf("%s (%s): %d", d.id, d.proto, n[d.id]))
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("%s: devices with fewer than %d routine events: %v", what, atLeast, missing)
			}
			return nil
		})
	}
	everyDeviceHas("before the kill", began, 2)
	step("every device has sent routine events")

	// A reboot to a CPE and to an agent of each transport, just before the
	// kill, so that some are in flight when their adapter or the
	// controller handling them dies.
	api := ctl[1] // survives
	var reboots []struct {
		dev *scaleOutDevice
		id  string
	}
	seen := map[string]bool{}
	for _, d := range devices {
		if seen[d.proto] {
			continue
		}
		seen[d.proto] = true
		_, tk := api.postTask(d.id, `{"operation":"reboot"}`)
		reboots = append(reboots, struct {
			dev *scaleOutDevice
			id  string
		}{d, tk.ID})
	}

	killed := time.Now()
	for _, d := range []*duet{ctl[0], cwmpAd[0], mqttAd[0], wsAd[0]} {
		d.signal(syscall.SIGKILL)
	}
	nodes[0].kill()
	for _, d := range []*duet{ctl[0], cwmpAd[0], mqttAd[0], wsAd[0]} {
		d.wait(30 * time.Second)
	}
	step("killed a controller, a CWMP, an MQTT and a WebSocket adapter, and NATS node %s", nodes[0].name)

	// Served after the kill: routine events timed after it from every
	// device (the timing leaves out Informs retried from before it) ...
	everyDeviceHas("after the kill", killed.Add(load.settle), 2)
	step("every device has sent routine events since the kill")
	// ... and a command to every device succeeds.
	var gets []string
	for _, d := range devices {
		path := "Device.DeviceInfo.SoftwareVersion"
		if d.proto == "cwmp" {
			path = d.cpe.Root() + "DeviceInfo.SoftwareVersion"
		}
		_, tk := api.postTask(d.id, `{"operation":"get","paths":["`+path+`"]}`)
		gets = append(gets, tk.ID)
	}
	for _, id := range gets {
		api.waitTask(id, "succeeded", 120*time.Second)
	}
	step("a Get to each of the %d devices succeeded", len(devices))

	// The reboots ended, each ran at most once, and one that succeeded ran.
	for _, r := range reboots {
		var tk apiTask
		bustest.CheckFor(t, 120*time.Second, 250*time.Millisecond, func() error {
			tk = api.getTask(r.id)
			if tk.State != "succeeded" && tk.State != "failed" {
				return fmt.Errorf("reboot of %s is %s", r.dev.id, tk.State)
			}
			return nil
		})
		ran := 0
		if r.dev.cpe != nil {
			ran = int(r.dev.cpe.Stats().Reboots)
		} else {
			ran = r.dev.agent.Boots()
		}
		if ran > 1 || (tk.State == "succeeded" && ran != 1) {
			t.Errorf("reboot of %s (%s): task %s, the device rebooted %d times", r.dev.id, r.dev.proto, tk.State, ran)
		}
		if tk.State == "failed" && (tk.Error == nil || tk.Error.Code != "outcome_unknown") {
			t.Errorf("reboot of %s (%s) failed with %+v, want outcome_unknown", r.dev.id, r.dev.proto, tk.Error)
		}
	}
	step("reboots ended, each at most once on its device")

	// Stop the load, wait until the controllers applied everything, then
	// compare the stream with the database.
	for _, d := range devices {
		if d.cpe != nil {
			_ = d.cpe.Close()
		} else {
			_ = d.agent.Close()
		}
	}
	nc, err := nats.Connect(urls)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 120*time.Second, 250*time.Millisecond, func() error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := controllerConsumer(cctx, js) // duet-controller-<installation id>
		if err != nil {
			return err
		}
		info, err := c.Info(cctx)
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("controller consumer: %d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
		}
		return nil
	})
	step("controllers caught up")

	type streamed struct {
		id, device string
		seq        uint64
		at         time.Time
		routine    bool // inform or periodic
	}
	var stream []streamed
	{
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		s, err := js.Stream(cctx, bus.EventStream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(cctx)
		if err != nil {
			t.Fatal(err)
		}
		// Message by message: an ordered consumer is an R1 consumer the
		// cluster may place on a node that is gone.
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
			m, err := s.GetMsg(cctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				t.Fatalf("reading event %d of the stream: %v", seq, err)
			}
			ev := &duetv1.Event{}
			if err := proto.Unmarshal(m.Data, ev); err != nil {
				t.Fatalf("event %d: %v", seq, err)
			}
			stream = append(stream, streamed{id: ev.GetId(), device: ev.GetDevice().GetId(), seq: seq, at: ev.GetTime().AsTime(),
				routine: ev.GetInform() != nil || ev.GetPeriodic() != nil})
		}
	}
	rows, err := db.Query(ctx, `SELECT id, device_id, stream_seq FROM device_events`)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]uint64{}
	for rows.Next() {
		var id, dev string
		var seq int64
		if err := rows.Scan(&id, &dev, &seq); err != nil {
			t.Fatal(err)
		}
		stored[id] = uint64(seq)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	inStream := map[string]bool{}
	lost, twice := 0, 0
	for _, e := range stream {
		if inStream[e.id] {
			twice++
			t.Errorf("event %s (device %s) is twice in the stream", e.id, e.device)
		}
		inStream[e.id] = true
		if seq, ok := stored[e.id]; !ok {
			lost++
			if lost <= 10 {
				t.Errorf("event %s (device %s, stream seq %d) was never applied", e.id, e.device, e.seq)
			}
		} else if seq != e.seq {
			t.Errorf("event %s: applied from stream seq %d, stored at %d", e.id, seq, e.seq)
		}
	}
	for id := range stored {
		if !inStream[id] {
			t.Errorf("device history has event %s, which is not in the stream", id)
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d events never applied", lost, len(stream))
	}
	step("%d events in the stream, %d in device history: none lost, none twice", len(stream), len(stored))

	// Order: each device's routine events are in time order in the stream, and the
	// registry moved forward to them: its last_seen is the newest routine
	// event's time or later (other events, such as the agents' offline,
	// may be newer), never older.
	newest, newestRoutine := map[string]time.Time{}, map[string]time.Time{}
	for _, e := range stream {
		// The routine events are each device's sequence; a command's or
		// a connection request's outcome may be timed before the Inform
		// it caused and published after it.
		if prev, ok := newestRoutine[e.device]; ok && e.routine && e.at.Before(prev) {
			t.Errorf("device %s: event %s (seq %d) at %s follows one at %s", e.device, e.id, e.seq, e.at.Format(time.RFC3339Nano), prev.Format(time.RFC3339Nano))
		}
		if e.at.After(newest[e.device]) {
			newest[e.device] = e.at
		}
		if e.routine && e.at.After(newestRoutine[e.device]) {
			newestRoutine[e.device] = e.at
		}
	}
	var ids []string
	for id := range newest {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		var lastSeen time.Time
		if err := db.QueryRow(ctx, `SELECT last_seen FROM devices WHERE id = $1`, id).Scan(&lastSeen); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				t.Errorf("device %s has events but no registry row", id)
				continue
			}
			t.Fatal(err)
		}
		if lastSeen.Before(newestRoutine[id].Truncate(time.Microsecond)) || lastSeen.After(newest[id]) {
			t.Errorf("device %s: registry last_seen %s, newest routine event %s, newest event %s", id, lastSeen.Format(time.RFC3339Nano),
				newestRoutine[id].Format(time.RFC3339Nano), newest[id].Format(time.RFC3339Nano))
		}
	}
	step("per-device order holds for %d devices; done in %s", len(ids), time.Since(began).Round(time.Second))
}
