package mqtt

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/testagent"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

const mosquittoAddr = "127.0.0.1:1883"

// needMosquitto makes sure the machine's Mosquitto runs, starting it as
// docs/testing.md says when it is down (never skip).
func needMosquitto(t testing.TB) {
	t.Helper()
	if c, err := net.DialTimeout("tcp", mosquittoAddr, time.Second); err == nil {
		_ = c.Close()
		return
	}
	if out, err := exec.Command("mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf").CombinedOutput(); err != nil {
		t.Fatalf("start mosquitto: %v: %s", err, out)
	}
	bustest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		c, err := net.DialTimeout("tcp", mosquittoAddr, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err
	})
}

func uniq(prefix string) string { return prefix + "/" + bus.NewID()[:12] }

func startTransport(t testing.TB, ep *usp.Endpoint, o Options) *Transport {
	t.Helper()
	o.Endpoint = ep
	tr, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tr.Shutdown(ctx)
	})
	return tr
}

// mqttAgent is a test agent speaking MQTT 5 through a real broker the way
// obuspa does (docs/testing.md): it subscribes to its own topic, publishes to
// the controller topic with content-type usp.msg and response-topic.
type mqttAgent struct {
	*testagent.Agent
	c         *paho.Client
	topic     string
	badHeader atomic.Int64 // records from the controller without usp.msg or our reply topic
}

func startAgent(t testing.TB, brokerAddr, ctrlID, ctrlTopic, eid string) *mqttAgent {
	t.Helper()
	conn, err := net.Dial("tcp", brokerAddr)
	if err != nil {
		t.Fatal(err)
	}
	ma := &mqttAgent{Agent: testagent.New(eid, ctrlID), topic: uniq("usp/agent")}
	var replyTopic atomic.Value
	ma.c = paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: "agent-" + bus.NewID()[:10],
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			p := pr.Packet
			if p.Properties == nil || p.Properties.ContentType != pkgusp.MQTTContentType || p.Properties.ResponseTopic == "" {
				ma.badHeader.Add(1)
			} else {
				replyTopic.Store(p.Properties.ResponseTopic)
			}
			ma.Handle(p.Payload)
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := ma.c.Connect(ctx, &paho.Connect{KeepAlive: 30, CleanStart: true, ClientID: "agent-" + bus.NewID()[:10]}); err != nil {
		t.Fatal(err)
	}
	if _, err := ma.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: ma.topic, QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ma.c.Disconnect(&paho.Disconnect{}) })
	ma.Send = func(rec []byte) error {
		// Agent-originated records go to the configured controller
		// topic; responses to the request's response topic (TR-369 "MQTT Binding").
		to := ctrlTopic
		if rt, ok := replyTopic.Load().(string); ok {
			to = rt
		}
		// QoS 0 like obuspa's default; a QoS 0 publish does not wait on
		// the reader goroutine we are called from.
		_, err := ma.c.Publish(context.Background(), &paho.Publish{Topic: to, QoS: 0, Payload: rec,
			Properties: &paho.PublishProperties{ContentType: pkgusp.MQTTContentType, ResponseTopic: ma.topic}})
		return err
	}
	return ma
}

func (ma *mqttAgent) connectRecord(t testing.TB) {
	t.Helper()
	rec, err := pkgusp.MarshalMQTTConnect(ma.ID, ma.ControllerID, usprecord.MQTTConnectRecord_V5, ma.topic)
	if err != nil {
		t.Fatal(err)
	}
	if err := ma.Send(rec); err != nil {
		t.Fatal(err)
	}
}

// scenario is the round trip every broker must carry.
func scenario(t *testing.T, brokerAddr string) {
	ep, b := usptest.Endpoint(t)
	tr := startTransport(t, ep, Options{BrokerURL: "mqtt://" + brokerAddr, Topic: uniq("usp/controller")})
	a := startAgent(t, brokerAddr, ep.ID(), tr.Topic(), "os::00D09E-"+bus.NewID()[:8])
	w := usptest.Watch(t, b, a.ID)
	a.connectRecord(t)
	// One online event for the connection, with the facts onboarding read.
	on := w.Wait("online", nil)
	if r := on.GetReachability(); r.GetTransport() != "mqtt" || r.GetAddress() != a.topic {
		t.Fatalf("reachability %v", r)
	}
	if on.GetDevice().GetSerialNumber() != "SN-"+a.ID {
		t.Fatalf("online without the DeviceInfo facts: %v", on.GetDevice())
	}

	if got := usptest.MustGet(t, b, a.ID, "Device.DeviceInfo.ModelName"); got["Device.DeviceInfo.ModelName"] != "TA-1" {
		t.Fatal(got)
	}
	res, err := usptest.Do(b, a.ID, &duetv1.Command{Op: &duetv1.Command_Set{Set: &duetv1.SetRequest{Params: []*duetv1.Parameter{{Path: "Device.IP.Interface.1.Alias", Value: "mqtt"}}}}})
	if err != nil || res.GetError() != nil || len(res.GetSet().GetUpdated()) != 1 {
		t.Fatalf("set: %v %v", res, err)
	}
	res, err = usptest.Do(b, a.ID, &duetv1.Command{Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.Reboot()", CommandKey: "rb-mqtt"}}})
	if err != nil || res.GetError() != nil {
		t.Fatalf("operate: %v %v", res, err)
	}
	if _, err := a.Boot("", "rb-mqtt", "RemoteReboot"); err != nil {
		t.Fatal(err)
	}
	if oc := w.Wait("operation_complete", nil).GetOperationComplete(); oc.GetCommandKey() != "rb-mqtt" {
		t.Fatal(oc)
	}
	bustest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, r := range a.NotifyResps() {
			if r.GetBody().GetResponse().GetNotifyResp().GetSubscriptionId() == "duet-boot" {
				return nil
			}
		}
		return fmt.Errorf("no NotifyResp for Boot!")
	})

	// Concurrent requests over the broker: answers never crossed.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := []string{"Device.DeviceInfo.SerialNumber", "Device.DeviceInfo.ModelName"}[i%2]
			got := usptest.MustGet(t, b, a.ID, p)
			if len(got) != 1 || got[p] == "" {
				t.Errorf("asked %s got %v", p, got)
			}
		}()
	}
	wg.Wait()
	if n := a.badHeader.Load(); n != 0 {
		t.Fatalf("%d publishes without content-type usp.msg / response-topic", n)
	}
	// Disconnect record: offline.
	rec, _ := pkgusp.MarshalDisconnect(a.ID, ep.ID(), "Configuration Change", 0)
	if err := a.Send(rec); err != nil {
		t.Fatal(err)
	}
	w.Wait("offline", nil)
}

func TestMosquittoMQTT5(t *testing.T) {
	needMosquitto(t)
	scenario(t, mosquittoAddr)
}

func TestEmbeddedBroker(t *testing.T) {
	br, err := StartEmbeddedBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close(); _ = br.Close() })
	scenario(t, br.Addr())

	// A second broker on the same port fails with a clear message.
	_, err = StartEmbeddedBroker(br.Addr())
	if err == nil || !strings.Contains(err.Error(), "cannot listen on "+br.Addr()) {
		t.Fatalf("port in use: %v", err)
	}
}

func TestStartFailsClearlyWithoutBroker(t *testing.T) {
	ep, _ := usptest.Endpoint(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	tr, err := New(Options{Endpoint: ep, BrokerURL: "mqtt://" + addr, ConnectTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	err = tr.Start()
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("start without broker: %v", err)
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{Endpoint: ep, BrokerURL: "::bad"}); err == nil {
		t.Fatal("bad URL accepted")
	}
	q := byte(2)
	if _, err := New(Options{Endpoint: ep, QoS: &q}); err == nil || !strings.Contains(err.Error(), "QoS") {
		t.Fatalf("QoS 2 accepted: %v", err)
	}
}

func TestSharedSubscriptionAcrossAdapters(t *testing.T) {
	needMosquitto(t)
	b, _ := bustest.Start(t)
	ctrlID := "self::duet-shared-" + bus.NewID()[:8]
	topic := uniq("usp/controller")
	for i := range 2 {
		ep, _ := usptest.Endpoint(t, func(o *usp.Options) { o.Bus = b; o.EndpointID = ctrlID; o.AdapterID = fmt.Sprintf("shared-%d", i) })
		startTransport(t, ep, Options{BrokerURL: "mqtt://" + mosquittoAddr, Topic: topic, SharedGroup: "duet"})
	}
	var agents []*mqttAgent
	for i := range 6 {
		a := startAgent(t, mosquittoAddr, ctrlID, topic, fmt.Sprintf("os::00D09E-SH%d-%s", i, bus.NewID()[:6]))
		w := usptest.Watch(t, b, a.ID)
		a.connectRecord(t)
		w.Wait("online", nil)
		agents = append(agents, a)
	}
	// Whichever process got an agent's Connect serves its commands, and its
	// answers come back on that process's own reply topic.
	for _, a := range agents {
		if got := usptest.MustGet(t, b, a.ID, "Device.DeviceInfo.SerialNumber"); got["Device.DeviceInfo.SerialNumber"] != "SN-"+a.ID {
			t.Fatal(got)
		}
	}
}

// TestMQTT311AgentThroughMosquitto drives a 3.1.1 "agent" made of the real
// mosquitto_pub/mosquitto_sub clients speaking MQTT 3.1.1: it uses the
// /reply-to= topic suffix both ways (TR-369 "MQTT Binding") and the broker bridges
// it to our MQTT 5 session.
func TestMQTT311AgentThroughMosquitto(t *testing.T) {
	needMosquitto(t)
	ep, b := usptest.Endpoint(t, func(o *usp.Options) { o.OnboardValueChange = []string{} })
	tr := startTransport(t, ep, Options{BrokerURL: "mqtt://" + mosquittoAddr, Topic: uniq("usp/controller")})
	eid := "os::00D09E-V311-" + bus.NewID()[:6]
	agentTopic := uniq("usp/agent311")
	dir := t.TempDir()

	// The agent subscribes to <topic>/# like obuspa does for 3.1.1.
	sub := exec.Command("mosquitto_sub", "-V", "mqttv311", "-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", agentTopic+"/#", "-F", "%t %x")
	out, err := sub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Process.Kill(); _ = sub.Wait() })
	lines := make(chan string, 64)
	go func() { // ends when the process is killed and stdout closes
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<22)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	pub := func(topic string, payload []byte) {
		t.Helper()
		f := filepath.Join(dir, bus.NewID())
		if err := os.WriteFile(f, payload, 0o600); err != nil {
			t.Fatal(err)
		}
		if o, err := exec.Command("mosquitto_pub", "-V", "mqttv311", "-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", topic, "-f", f).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub: %v %s", err, o)
		}
	}
	// Wait until mosquitto_sub is subscribed: probe until a line arrives.
	probe := agentTopic + "/probe"
	bustest.CheckFor(t, 10*time.Second, 0, func() error {
		pub(probe, []byte("x"))
		select {
		case l := <-lines:
			if strings.HasPrefix(l, probe) {
				return nil
			}
		case <-time.After(100 * time.Millisecond):
		}
		return fmt.Errorf("mosquitto_sub not subscribed yet")
	})
	for len(lines) > 0 {
		<-lines
	}
	toCtrl := pkgusp.MQTTReplyToTopic(tr.Topic(), agentTopic)
	w := usptest.Watch(t, b, eid)
	rec, _ := pkgusp.MarshalMQTTConnect(eid, ep.ID(), usprecord.MQTTConnectRecord_V3_1_1, agentTopic)
	pub(toCtrl, rec)

	// Answer whatever the controller asks, over 3.1.1, until the Get we
	// send below is answered. Onboarding asks first.
	agent := testagent.New(eid, ep.ID())
	agent.Send = func(r []byte) error { pub(toCtrl, r); return nil }
	done := make(chan *duetv1.CommandResult, 1)
	get := func() {
		res, err := usptest.Do(b, eid, &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo.ModelName"}}}})
		if err != nil {
			res = &duetv1.CommandResult{Error: &duetv1.Error{Message: err.Error()}}
		}
		done <- res
	}
	asked := false
	wantTopic := pkgusp.MQTTReplyToTopic(agentTopic, tr.ReplyTopic())
	deadline := time.After(20 * time.Second)
	for {
		select {
		case res := <-done:
			if res.GetError() != nil || res.GetGet().GetParams()[0].GetValue() != "TA-1" {
				t.Fatalf("get over 3.1.1: %v", res)
			}
			// Online, with the facts onboarding read over 3.1.1.
			w.Wait("online", func(ev *duetv1.Event) bool { return ev.GetDevice().GetSerialNumber() == "SN-"+eid })
			return
		case l, ok := <-lines:
			if !ok {
				t.Fatal("mosquitto_sub ended")
			}
			topic, hx, _ := strings.Cut(l, " ")
			if topic != wantTopic {
				t.Fatalf("controller published to %q, want %q", topic, wantTopic)
			}
			raw, err := hex.DecodeString(hx)
			if err != nil {
				t.Fatal(err)
			}
			var r usprecord.Record
			if err := proto.Unmarshal(raw, &r); err != nil || r.GetToId() != eid {
				t.Fatalf("bad record to the agent: %v", err)
			}
			agent.Handle(raw)
			if !asked {
				// Onboarding's first request: the session exists, so
				// a command finds the agent.
				asked = true
				go get()
			}
		case <-deadline:
			t.Fatal("no answer over MQTT 3.1.1")
		}
	}
}

// TestReconnectsAfterBrokerRestart: autopaho reconnects and resubscribes on
// its own; the agent's new Connect record moves its session over.
func TestReconnectsAfterBrokerRestart(t *testing.T) {
	br, err := StartEmbeddedBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := br.Addr()
	ep, b := usptest.Endpoint(t)
	tr := startTransport(t, ep, Options{BrokerURL: "mqtt://" + addr, Topic: uniq("usp/controller")})
	eid := "os::00D09E-RECONN-" + bus.NewID()[:6]
	a := startAgent(t, addr, ep.ID(), tr.Topic(), eid)
	w := usptest.Watch(t, b, eid)
	a.connectRecord(t)
	// The record is handled asynchronously; commands are served once the
	// agent is online.
	w.Wait("online", nil)
	if got := usptest.MustGet(t, b, eid, "Device.DeviceInfo.ModelName"); got["Device.DeviceInfo.ModelName"] != "TA-1" {
		t.Fatal(got)
	}
	_ = br.Close()
	var br2 *Broker
	bustest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		var err error
		br2, err = StartEmbeddedBroker(addr)
		return err
	})
	t.Cleanup(func() { _ = br2.Close() })
	a2 := startAgent(t, addr, ep.ID(), tr.Topic(), eid)
	// The controller may not be resubscribed yet: the agent repeats its
	// Connect record until a request reaches it, as a restarted obuspa would
	// after its own reconnect.
	bustest.CheckFor(t, 20*time.Second, 200*time.Millisecond, func() error {
		a2.connectRecord(t)
		res, err := usptest.Do(b, eid, &duetv1.Command{Timeout: durationpb.New(500 * time.Millisecond), Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo.ModelName"}}}})
		if err != nil {
			return err
		}
		if res.GetError() != nil {
			return fmt.Errorf("%v", res.GetError())
		}
		return nil
	})
}
