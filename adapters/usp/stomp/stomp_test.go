package stomp

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gostomp "github.com/go-stomp/stomp/v3"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/testagent"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

const rabbitSTOMP = "127.0.0.1:61613"

// RabbitMQ tests use /topic/ destinations: each subscription gets an
// exclusive auto-delete queue, so nothing is left behind on the shared
// broker. /queue/ works the same way (checked by hand) but RabbitMQ declares
// those durable, and auto-delete cannot be asked for without every sender
// repeating it (RabbitMQ closes the connection on a mismatch).

func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		_ = c.Close()
	}
	return err == nil
}

// needRabbitSTOMP starts RabbitMQ and its STOMP plugin when they are down
// (docs/testing.md); never skips.
func needRabbitSTOMP(t testing.TB) {
	t.Helper()
	if dialable(rabbitSTOMP) {
		return
	}
	if !dialable("127.0.0.1:5672") {
		if out, err := exec.Command("rabbitmq-server", "-detached").CombinedOutput(); err != nil {
			t.Fatalf("start rabbitmq: %v %s", err, out)
		}
		bustest.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
			if dialable("127.0.0.1:5672") {
				return nil
			}
			return fmt.Errorf("rabbitmq not up")
		})
	}
	if out, err := exec.Command("rabbitmq-plugins", "enable", "rabbitmq_stomp").CombinedOutput(); err != nil {
		t.Fatalf("enable rabbitmq_stomp: %v %s", err, out)
	}
	bustest.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
		if dialable(rabbitSTOMP) {
			return nil
		}
		return fmt.Errorf("rabbitmq stomp not listening")
	})
}

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
		if err := tr.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		_ = tr.Shutdown(ctx)
	})
	return tr
}

// stompAgent behaves like obuspa on STOMP (docs/testing.md): STOMP frame with
// endpoint-id, SUBSCRIBE to its destination, SEND with content-type and
// reply-to-dest.
type stompAgent struct {
	*testagent.Agent
	conn         *gostomp.Conn
	dest         string
	noCT, noRepl atomic.Int64
}

func startAgent(t testing.TB, addr, ctrlID, ctrlDest, eid, prefix string) *stompAgent {
	t.Helper()
	conn, err := gostomp.Dial("tcp", addr, gostomp.ConnOpt.UseStomp, gostomp.ConnOpt.Login("guest", "guest"), gostomp.ConnOpt.Host("/"),
		gostomp.ConnOpt.Header(pkgusp.STOMPEndpointIDHeader, eid), gostomp.ConnOpt.Logger(quietLogger{usptest.Discard}))
	if err != nil {
		t.Fatal(err)
	}
	sa := &stompAgent{Agent: testagent.New(eid, ctrlID), conn: conn, dest: prefix + "agent-" + bus.NewID()[:12]}
	sub, err := conn.Subscribe(sa.dest, gostomp.AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	// Make sure the broker has our SUBSCRIBE before telling the controller
	// where we are (the same receipt trick as the transport).
	if err := conn.Send(sa.dest, probeContentType, nil, gostomp.SendOpt.Receipt); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // ends when the connection is closed at cleanup
		defer wg.Done()
		for m := range sub.C {
			if m.Err != nil {
				return
			}
			if m.ContentType == probeContentType {
				continue
			}
			if m.ContentType != pkgusp.STOMPContentType {
				sa.noCT.Add(1)
			}
			if m.Header.Get(pkgusp.STOMPReplyToHeader) == "" {
				sa.noRepl.Add(1)
			}
			sa.Handle(m.Body)
		}
	}()
	t.Cleanup(func() { _ = conn.MustDisconnect(); wg.Wait() })
	sa.Send = func(rec []byte) error {
		return conn.Send(ctrlDest, pkgusp.STOMPContentType, rec, gostomp.SendOpt.Header(pkgusp.STOMPReplyToHeader, sa.dest))
	}
	return sa
}

func scenario(t *testing.T, addr, prefix string) {
	ep, b := usptest.Endpoint(t)
	tr := startTransport(t, ep, Options{BrokerAddr: addr, Login: "guest", Passcode: "guest", Destination: prefix + "ctrl-" + bus.NewID()[:12]})
	a := startAgent(t, addr, ep.ID(), tr.Destination(), "os::00D09E-"+bus.NewID()[:8], prefix)
	w := usptest.Watch(t, b, a.ID)
	rec, _ := pkgusp.MarshalSTOMPConnect(a.ID, ep.ID(), a.dest)
	if err := a.Send(rec); err != nil {
		t.Fatal(err)
	}
	// One online event for the connection, with the facts onboarding read.
	on := w.Wait("online", nil)
	if r := on.GetReachability(); r.GetTransport() != "stomp" || r.GetAddress() != a.dest {
		t.Fatalf("reachability %v", r)
	}
	if on.GetDevice().GetSerialNumber() != "SN-"+a.ID {
		t.Fatalf("online without the DeviceInfo facts: %v", on.GetDevice())
	}
	bustest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if len(a.Subscriptions()) == 5 {
			return nil
		}
		return fmt.Errorf("subscriptions %v", a.Subscriptions())
	})
	if got := usptest.MustGet(t, b, a.ID, "Device.DeviceInfo.ModelName"); got["Device.DeviceInfo.ModelName"] != "TA-1" {
		t.Fatal(got)
	}
	res, err := usptest.Do(b, a.ID, &duetv1.Command{Op: &duetv1.Command_Add{Add: &duetv1.AddRequest{ObjectPath: "Device.IP.Interface.", Params: []*duetv1.Parameter{{Path: "Alias", Value: "stomp"}}}}})
	if err != nil || res.GetAdd().GetInstancePath() != "Device.IP.Interface.2." {
		t.Fatalf("add: %v %v", res, err)
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := []string{"Device.IP.Interface.2.Alias", "Device.DeviceInfo.ModelName"}[i%2]
			if got := usptest.MustGet(t, b, a.ID, p); len(got) != 1 || got[p] == "" {
				t.Errorf("asked %s got %v", p, got)
			}
		}()
	}
	wg.Wait()
	if _, err := a.Boot("boot-1", "", "LocalReboot"); err != nil {
		t.Fatal(err)
	}
	w.Wait("boot", nil)
	bustest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if len(a.NotifyResps()) == 1 {
			return nil
		}
		return fmt.Errorf("no NotifyResp")
	})
	if a.noCT.Load() != 0 || a.noRepl.Load() != 0 {
		t.Fatalf("messages without content-type: %d, without reply-to-dest: %d", a.noCT.Load(), a.noRepl.Load())
	}
	rec, _ = pkgusp.MarshalDisconnect(a.ID, ep.ID(), "bye", 0)
	if err := a.Send(rec); err != nil {
		t.Fatal(err)
	}
	w.Wait("offline", nil)
}

func TestRabbitMQ(t *testing.T) {
	needRabbitSTOMP(t)
	scenario(t, rabbitSTOMP, "/topic/")
}

func TestEmbeddedBroker(t *testing.T) {
	br, err := StartEmbeddedBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close(); _ = br.Close() })
	scenario(t, br.Addr(), "/queue/")
	if _, err := StartEmbeddedBroker(br.Addr()); err == nil || !strings.Contains(err.Error(), "cannot listen on "+br.Addr()) {
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
	tr, err := New(Options{Endpoint: ep, BrokerAddr: addr, ConnectTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Start(); err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("start without broker: %v", err)
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Wrong credentials on RabbitMQ are reported too.
	needRabbitSTOMP(t)
	tr, _ = New(Options{Endpoint: ep, BrokerAddr: rabbitSTOMP, Login: "guest", Passcode: "wrong", ConnectTimeout: 5 * time.Second})
	if err := tr.Start(); err == nil || !strings.Contains(err.Error(), rabbitSTOMP) {
		t.Fatalf("bad credentials: %v", err)
	}
}
