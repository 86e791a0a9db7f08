package stomp

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	gostomp "github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// secrets is an in-memory AgentAuthenticator; cmd/duet's is PostgreSQL.
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

func securedBroker(t *testing.T, mod func(*BrokerOptions)) (*Broker, *secrets, *usp.Endpoint, *Transport, *bus.Bus) {
	t.Helper()
	ep, b := usptest.Endpoint(t, func(o *usp.Options) { o.RequestTimeout = 5 * time.Second })
	sec := &secrets{}
	o := BrokerOptions{Addr: "127.0.0.1:0", Auth: sec, ControllerDestination: "/queue/usp.controller"}
	if mod != nil {
		mod(&o)
	}
	br, err := StartBroker(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	addr := br.Addr()
	if addr == "" {
		addr = br.TLSAddr()
	}
	login, pass := br.ControllerCredentials()
	tr := startTransport(t, ep, Options{BrokerAddr: br.Addr(), Login: login, Passcode: pass, Destination: o.ControllerDestination})
	return br, sec, ep, tr, b
}

func dialAgent(t *testing.T, ctx context.Context, br *Broker, a *agent.Agent, secret string) (*agent.Client, error) {
	t.Helper()
	return agent.DialSTOMP(ctx, a, agent.STOMPConfig{Server: br.Addr(), Destination: "/queue/agent-" + a.EndpointID(),
		ControllerDestination: "/queue/usp.controller", Login: a.EndpointID(), Passcode: secret})
}

// TestEmbeddedBrokerAuth: an anonymous client and a wrong passcode are
// refused; a logged-in agent cannot subscribe to another destination nor
// send a Connect record in a victim's name (before: any client could
// read everything and re-point any agent).
func TestEmbeddedBrokerAuth(t *testing.T) {
	br, sec, ep, _, b := securedBroker(t, nil)
	if c, err := gostomp.Dial("tcp", br.Addr()); err == nil {
		_ = c.Disconnect()
		t.Fatal("an anonymous client connected")
	}
	victim := usptest.SimAgent(t, ep.ID(), "STOMP")
	sec.add(victim.EndpointID(), "victim secret of twenty chars")
	w := usptest.Watch(t, b, victim.EndpointID())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dialAgent(t, ctx, br, victim, "a wrong secret of twenty chars"); err == nil {
		t.Fatal("a wrong passcode connected")
	}
	c, err := dialAgent(t, ctx, br, victim, "victim secret of twenty chars")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	w.Wait("online", func(ev *duetv1.Event) bool { return ev.GetDevice().GetSerialNumber() != "" })

	sec.add("os::EVIL-1", "evil secret of twenty chars!")
	evil, err := gostomp.Dial("tcp", br.Addr(), gostomp.ConnOpt.Login("os::EVIL-1", "evil secret of twenty chars!"))
	if err != nil {
		t.Fatal(err)
	}
	// Subscribing to the victim's destination ends the connection.
	sub, err := evil.Subscribe("/queue/agent-"+victim.EndpointID(), gostomp.AckAuto)
	if err == nil {
		select {
		case m := <-sub.C:
			if m != nil && m.Err == nil {
				t.Fatal("the attacker read the victim's destination")
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the attacker's subscription to another destination was not refused")
		}
	}
	_ = evil.MustDisconnect()

	evil, err = gostomp.Dial("tcp", br.Addr(), gostomp.ConnOpt.Login("os::EVIL-1", "evil secret of twenty chars!"))
	if err != nil {
		t.Fatal(err)
	}
	defer evil.MustDisconnect()
	labels := map[string]string{"mtp": "stomp", "reason": usp.RefuseFromID}
	before := usptest.MetricValue(t, "duet_usp_agent_refused_total", labels)
	rec, _ := pkgusp.MarshalSTOMPConnect(victim.EndpointID(), ep.ID(), "/queue/agent-os::EVIL-1")
	_ = evil.Send("/queue/usp.controller", pkgusp.STOMPContentType, rec, gostomp.SendOpt.Header(pkgusp.STOMPReplyToHeader, "/queue/agent-os::EVIL-1"))
	bustest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if usptest.MetricValue(t, "duet_usp_agent_refused_total", labels) <= before {
			return fmt.Errorf("not refused yet")
		}
		return nil
	})
	if got := usptest.MustGet(t, b, victim.EndpointID(), "Device.DeviceInfo.SerialNumber"); got["Device.DeviceInfo.SerialNumber"] == "" {
		t.Fatal(got)
	}
}

// TestEmbeddedBrokerRefusesOversizedFrame: a SEND announcing a 2 GB
// content-length is refused from its headers (go-stomp alone allocates
// the announced size first).
func TestEmbeddedBrokerRefusesOversizedFrame(t *testing.T) {
	br, err := StartEmbeddedBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	c, err := net.Dial("tcp", br.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("STOMP\naccept-version:1.2\nhost:/\n\n\x00SEND\ndestination:/queue/x\ncontent-length:2000000000\n\nxxxx"))
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	var all bytes.Buffer
	_, _ = all.ReadFrom(r) // until the broker closes
	if !strings.Contains(all.String(), "ERROR") || !strings.Contains(all.String(), "frame body above") {
		t.Fatalf("answer %q", all.String())
	}
}

// TestEmbeddedBrokerTLSWithClientCertificate: STOMP over TLS, the agent
// logging in with a certificate naming it instead of a passcode.
func TestEmbeddedBrokerTLSWithClientCertificate(t *testing.T) {
	pki := usptest.NewPKI(t)
	br, _, ep, _, b := securedBroker(t, func(o *BrokerOptions) { o.TLSAddr = "127.0.0.1:0"; o.TLS = pki.ServerTLS() })
	a := usptest.SimAgent(t, ep.ID(), "STOMP")
	w := usptest.Watch(t, b, a.EndpointID())
	cert := pki.Agent(a.EndpointID())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.DialSTOMP(ctx, a, agent.STOMPConfig{Server: br.TLSAddr(), Destination: "/queue/agent-" + a.EndpointID(),
		ControllerDestination: "/queue/usp.controller", TLS: pki.ClientTLS(&cert)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	w.Wait("online", func(ev *duetv1.Event) bool { return ev.GetDevice().GetSerialNumber() != "" })
}

// FuzzReadFrame: the guard reads every frame an agent sends with it, and
// Duet's client every frame of an external broker (readServerFrame).
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte("CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\x00MESSAGE\ndestination:/queue/a\ncontent-length:3\n\nabc\x00"))
	f.Add([]byte("STOMP\naccept-version:1.2\nlogin:os::1-A\npasscode:x\n\n\x00"))
	f.Add([]byte("SEND\ndestination:/queue/a\ncontent-length:3\n\nabc\x00"))
	f.Add([]byte("SEND\ndestination:/queue/a\nreply-to-dest:/queue/b\\c\n\nabc\x00\n\n"))
	f.Add([]byte("SUBSCRIBE\nid:0\ndestination:/queue/a\nack:auto\n\n\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, read := range []func(*bufio.Reader, int) (*frame.Frame, error){readFrame, readServerFrame} {
			br := newFrameReader(bytes.NewReader(b))
			for range 16 {
				fr, err := read(br, 1024)
				if err != nil {
					break
				}
				if fr != nil && len(fr.Body) > 1024 {
					t.Fatalf("body of %d bytes past the bound", len(fr.Body))
				}
			}
		}
	})
}
