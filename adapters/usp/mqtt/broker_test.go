package mqtt

import (
	"context"
	"encoding/binary"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// secrets is an in-memory AgentAuthenticator; cmd/duet's is PostgreSQL
// (pkg/store TestUSPAgentSecretsAndEnrolment, e2e TestUSPAgentAuth).
type secrets struct {
	mu sync.Mutex
	m  map[string]string
}

func (s *secrets) CheckAgentSecret(_ context.Context, eid, secret string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	want, ok := s.m[eid]
	return ok && want == secret, nil
}

func (s *secrets) add(eid, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]string{}
	}
	s.m[eid] = secret
}

// securedBroker starts the embedded broker with authentication, an
// endpoint and Duet's transport logged in to it.
func securedBroker(t *testing.T, mod func(*BrokerOptions)) (*Broker, *secrets, *usp.Endpoint, *Transport, *bus.Bus) {
	t.Helper()
	ep, b := usptest.Endpoint(t, func(o *usp.Options) { o.RequestTimeout = 5 * time.Second })
	sec := &secrets{}
	o := BrokerOptions{Addr: "127.0.0.1:0", Auth: sec, ControllerTopic: "usp/controller/" + ep.ID()}
	if mod != nil {
		mod(&o)
	}
	br, err := StartBroker(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	user, pass := br.ControllerCredentials()
	tr := startTransport(t, ep, Options{BrokerURL: br.URL(), Topic: o.ControllerTopic, Username: user, Password: pass})
	return br, sec, ep, tr, b
}

// TestEmbeddedBrokerRefusesAnonymousAndWildcard: with authentication an
// anonymous client cannot connect, and a logged-in agent cannot subscribe
// to '#' (before: an anonymous SUBSCRIBE # read every Get and GetResp).
func TestEmbeddedBrokerRefusesAnonymousAndWildcard(t *testing.T) {
	br, sec, _, _, _ := securedBroker(t, nil)
	if _, err := connectAttacker(t, br.Addr(), "", ""); err == nil {
		t.Fatal("an anonymous client connected")
	}
	if _, err := connectAttacker(t, br.Addr(), "os::1-A", "wrong password of twenty+"); err == nil {
		t.Fatal("a wrong password connected")
	}
	sec.add("os::1-A", "a good secret of twenty chars")
	at, err := connectAttacker(t, br.Addr(), "os::1-A", "a good secret of twenty chars")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := at.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "#"}, {Topic: "usp/agent/os::1-A"}}})
	if err != nil && sa == nil {
		t.Fatal(err)
	}
	if len(sa.Reasons) != 2 || sa.Reasons[0] < 0x80 || sa.Reasons[1] >= 0x80 {
		t.Fatalf("SUBACK reasons %v: want '#' refused and the agent's own topic granted", sa.Reasons)
	}
}

// TestEmbeddedBrokerRefusesHijack: an agent logged in as itself publishes
// an MQTTConnectRecord with a victim's from_id and its own topic; the
// broker drops it (from_id is not the login) and the victim keeps its
// session (issue 15 §2; before: the victim's requests went to the
// attacker).
func TestEmbeddedBrokerRefusesHijack(t *testing.T) {
	br, sec, ep, tr, b := securedBroker(t, nil)
	get := func(eid string) map[string]string {
		return usptest.MustGet(t, b, eid, "Device.DeviceInfo.SerialNumber")
	}
	a := usptest.SimAgent(t, ep.ID(), "MQTT")
	w := usptest.Watch(t, b, a.EndpointID())
	sec.add(a.EndpointID(), "victim secret of twenty chars")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.DialMQTT(ctx, a, agent.MQTTConfig{Broker: br.Addr(), ControllerTopic: tr.Topic(),
		AgentTopic: "usp/agent/" + a.EndpointID(), Username: a.EndpointID(), Password: "victim secret of twenty chars"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	w.Wait("online", func(ev *duetv1.Event) bool { return ev.GetDevice().GetSerialNumber() != "" })
	sec.add("os::EVIL-1", "evil secret of twenty chars!")
	at, err := connectAttacker(t, br.Addr(), "os::EVIL-1", "evil secret of twenty chars!")
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"mtp": "mqtt", "reason": usp.RefuseFromID}
	before := usptest.MetricValue(t, "duet_usp_agent_refused_total", labels)
	if err := at.hijack(t, a.EndpointID(), ep.ID(), tr.Topic()); err != nil {
		t.Logf("publish: %v (a refusal may come back as an error)", err)
	}
	bustest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if usptest.MetricValue(t, "duet_usp_agent_refused_total", labels) <= before {
			return errNotYet
		}
		return nil
	})
	if got := get(a.EndpointID()); got["Device.DeviceInfo.SerialNumber"] == "" {
		t.Fatal(got)
	}
	if n := at.got.Load(); n != 0 {
		t.Fatalf("the attacker received %d records", n)
	}
}

// TestEmbeddedBrokerRefusesOversizedPublish: a PUBLISH announcing 100 MB
// is refused from its fixed header: the connection closes long before
// the body could be buffered (before: 100 MB took Duet from 74 to 482 MB).
func TestEmbeddedBrokerRefusesOversizedPublish(t *testing.T) {
	br, err := StartEmbeddedBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	// The limit is announced in CONNACK.
	conn, err := net.Dial("tcp", br.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := cl.Connect(ctx, &paho.Connect{ClientID: "big", KeepAlive: 30, CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	if ca.Properties == nil || ca.Properties.MaximumPacketSize == nil || *ca.Properties.MaximumPacketSize != DefaultMaxPacketSize {
		t.Fatalf("CONNACK does not announce Maximum Packet Size %d: %+v", DefaultMaxPacketSize, ca.Properties)
	}
	_ = cl.Disconnect(&paho.Disconnect{})

	var m0 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	raw, err := net.Dial("tcp", br.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// MQTT 3.1.1 CONNECT, client "big2", clean session, keep-alive 30.
	connect := []byte{0x10, 16, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 4, 'b', 'i', 'g', '2'}
	if _, err := raw.Write(connect); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	_ = raw.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := raw.Read(ack); err != nil || ack[0] != 0x20 {
		t.Fatalf("connack %x %v", ack, err)
	}
	// PUBLISH QoS 0, remaining length 100 MB (variable-length encoding).
	hdr := []byte{0x30}
	hdr = binary.AppendUvarint(hdr, 100<<20)
	_, _ = raw.Write(hdr)
	chunk := make([]byte, 64<<10)
	closed := false
	for range 1600 { // up to 100 MB, stopping as soon as the broker hangs up
		_ = raw.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := raw.Write(chunk); err != nil {
			closed = true
			break
		}
	}
	if !closed {
		_ = raw.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := raw.Read(ack); err == nil {
			t.Fatal("the broker took a 100 MB publish")
		}
	}
	var m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m1)
	if grew := int64(m1.HeapInuse) - int64(m0.HeapInuse); grew > 32<<20 {
		t.Fatalf("heap grew by %d MB on a refused publish", grew>>20)
	}
}

// TestEmbeddedBrokerTLS: MQTTS with a password login, and with a client
// certificate naming the agent (TR-369 urn:bbf:usp:id: SAN) instead of a
// password; a certificate of another endpoint ID cannot log in as this one.
func TestEmbeddedBrokerTLS(t *testing.T) {
	pki := usptest.NewPKI(t)
	br, _, ep, tr, b := securedBroker(t, func(o *BrokerOptions) { o.TLSAddr = "127.0.0.1:0"; o.TLS = pki.ServerTLS() })
	a := usptest.SimAgent(t, ep.ID(), "MQTT")
	w := usptest.Watch(t, b, a.EndpointID())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A certificate of someone else, with the agent's name as username.
	other := pki.Agent("os::OTHER-1")
	if _, err := agent.DialMQTT(ctx, a, agent.MQTTConfig{Broker: br.TLSAddr(), ControllerTopic: tr.Topic(), Username: a.EndpointID(),
		AgentTopic: "usp/agent/" + a.EndpointID(), TLS: pki.ClientTLS(&other)}); err == nil {
		t.Fatal("a certificate of another endpoint logged in as the agent")
	}
	cert := pki.Agent(a.EndpointID())
	c, err := agent.DialMQTT(ctx, a, agent.MQTTConfig{Broker: br.TLSAddr(), ControllerTopic: tr.Topic(),
		AgentTopic: "usp/agent/" + a.EndpointID(), TLS: pki.ClientTLS(&cert)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	w.Wait("online", func(ev *duetv1.Event) bool { return ev.GetDevice().GetSerialNumber() != "" })
	if got := usptest.MustGet(t, b, a.EndpointID(), "Device.DeviceInfo.SerialNumber"); got["Device.DeviceInfo.SerialNumber"] == "" {
		t.Fatal(got)
	}
}

// TestTransportAnnouncesMaximumPacketSize: Duet's CONNECT to any broker
// carries Maximum Packet Size, so an external broker drops an agent's
// oversized publish instead of delivering it to Duet.
func TestTransportAnnouncesMaximumPacketSize(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 512)
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, _ := c.Read(buf)
		got <- buf[:n]
	}()
	ep, _ := usptest.Endpoint(t)
	tr, err := New(Options{Endpoint: ep, BrokerURL: "mqtt://" + ln.Addr().String(), ConnectTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = tr.Start() }()
	defer tr.Shutdown(context.Background())
	var connect []byte
	select {
	case connect = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("no CONNECT")
	}
	// Property 0x27 (Maximum Packet Size) followed by the value.
	want := binary.BigEndian.AppendUint32([]byte{0x27}, DefaultMaxPacketSize)
	if !bytesContains(connect, want) {
		t.Fatalf("CONNECT % x lacks Maximum Packet Size %d", connect, DefaultMaxPacketSize)
	}
}

func bytesContains(b, sub []byte) bool {
	for i := 0; i+len(sub) <= len(b); i++ {
		if string(b[i:i+len(sub)]) == string(sub) {
			return true
		}
	}
	return false
}
