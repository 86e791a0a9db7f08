package bus_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// closedBus starts an embedded server with the roles' NKeys, as `duet
// serve` does, and returns it with the identities.
func closedBus(t *testing.T) (*bus.Embedded, *bus.Identities) {
	t.Helper()
	ids, err := bus.EnsureIdentities(t.TempDir() + "/bus")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{Port: -1, StoreDir: t.TempDir(), Identities: ids,
		ProtectedConsumers: []string{"duet-controller-test"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv, ids
}

// roleBus connects a Bus with role's NKey over the network.
func roleBus(t *testing.T, srv *bus.Embedded, ids *bus.Identities, r bus.Role) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bus.Connect(ctx, bus.Options{URL: srv.URL(), Role: r, CredentialsFile: ids.SeedFile(r),
		DefaultTimeout: 10 * time.Second, SealKey: bustest.SealKey(t)})
	if err != nil {
		t.Fatalf("connect as %s: %v", r, err)
	}
	t.Cleanup(b.Close)
	return b
}

// violations is a plain NATS connection with role's NKey whose permission
// errors are collected.
type watched struct {
	nc   *nats.Conn
	errs chan error
}

func roleConn(t *testing.T, srv *bus.Embedded, ids *bus.Identities, r bus.Role) *watched {
	t.Helper()
	w := &watched{errs: make(chan error, 16)}
	opt, err := nats.NkeyOptionFromSeed(ids.SeedFile(r))
	if err != nil {
		t.Fatal(err)
	}
	w.nc, err = nats.Connect(srv.URL(), opt, nats.CustomInboxPrefix(r.InboxPrefix()),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { w.errs <- err }))
	if err != nil {
		t.Fatalf("connect as %s: %v", r, err)
	}
	t.Cleanup(w.nc.Close)
	return w
}

// denied waits for the server's permissions violation naming subject.
func (w *watched) denied(t *testing.T, subject string) {
	t.Helper()
	if err := w.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-w.errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
				return
			}
		case <-deadline:
			t.Fatalf("no permissions violation for %s", subject)
		}
	}
}

// TestPlainClientRefusedOnClosedBus: the embedded bus refuses a client
// without one of its NKeys (issue 15 §4: anyone could connect).
func TestPlainClientRefusedOnClosedBus(t *testing.T) {
	srv, ids := closedBus(t)
	if nc, err := nats.Connect(srv.URL()); err == nil {
		nc.Close()
		t.Fatal("a client without credentials connected to the embedded bus")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("refused, but not for authorization: %v", err)
	}
	// A key the server does not know is refused too.
	other, err := bus.EnsureIdentities(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opt, _ := nats.NkeyOptionFromSeed(other.SeedFile(bus.RoleController))
	if nc, err := nats.Connect(srv.URL(), opt); err == nil {
		nc.Close()
		t.Fatal("an unknown NKey connected")
	}
	// The roles' own keys connect; a second EnsureIdentities keeps them.
	again, err := bus.EnsureIdentities(ids.Dir)
	if err != nil || again.PublicKey(bus.RoleCWMP) != ids.PublicKey(bus.RoleCWMP) {
		t.Fatalf("identities changed on a second start: %v", err)
	}
	roleBus(t, srv, ids, bus.RoleController)
}

// TestRolePermissions: each role is refused what lies outside it.
func TestRolePermissions(t *testing.T) {
	srv, ids := closedBus(t)
	ctx := context.Background()
	ctl := roleBus(t, srv, ids, bus.RoleController) // creates the streams
	cwmpBus := roleBus(t, srv, ids, bus.RoleCWMP)
	roleBus(t, srv, ids, bus.RoleUSP)

	// The adapter publishes its events; the integrator reads them, from a
	// core subscription and from a consumer of its own.
	integ := roleConn(t, srv, ids, bus.RoleIntegrator)
	sub, err := integ.nc.SubscribeSync("duet.evt.>")
	if err != nil {
		t.Fatal(err)
	}
	_ = integ.nc.Flush()
	ev := &duetv1.Event{Device: &duetv1.DeviceIdentity{Id: "00D09E-SN1", Protocol: duetv1.Protocol_PROTOCOL_CWMP},
		Kind: &duetv1.Event_Periodic{Periodic: &duetv1.Periodic{}}}
	if err := cwmpBus.PublishEvent(ctx, ev); err != nil {
		t.Fatalf("CWMP adapter cannot publish its events: %v", err)
	}
	if _, err := sub.NextMsg(30 * time.Second); err != nil {
		t.Fatalf("integrator did not receive the event: %v", err)
	}
	js, err := jetstream.New(integ.nc)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, bus.EventStream, jetstream.ConsumerConfig{Durable: "my-integration", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatalf("integrator cannot make its own consumer: %v", err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	if batch.Error() != nil {
		t.Fatalf("integrator cannot read its consumer: %v", batch.Error())
	}

	// The controller's consumer is out of an integrator's reach.
	if _, err := ctl.JetStream().CreateOrUpdateConsumer(ctx, bus.EventStream, jetstream.ConsumerConfig{Durable: "duet-controller-test", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := js.DeleteConsumer(short, bus.EventStream, "duet-controller-test"); err == nil {
		t.Fatal("an integrator deleted the controller's consumer")
	}
	integ.denied(t, "CONSUMER.DELETE.DUET_EVENTS.duet-controller-test")

	// An integrator sends no command, asks for no credentials, forges no
	// event, and does not read commands.
	for _, subj := range []string{"duet.cmd.usp.os~3A~3Avictim", bus.CredentialsSubject("00D09E-SN1"), "duet.evt.cwmp.00D09E-SN1.boot"} {
		if err := integ.nc.PublishRequest(subj, integ.nc.NewRespInbox(), []byte("x")); err != nil {
			t.Fatal(err)
		}
		integ.denied(t, subj)
	}
	if _, err := integ.nc.SubscribeSync("duet.cmd.>"); err != nil {
		t.Fatal(err)
	}
	integ.denied(t, "duet.cmd.>")
	// Nor does it read another role's replies.
	if _, err := integ.nc.SubscribeSync(bus.RoleCWMP.InboxPrefix() + ".>"); err != nil {
		t.Fatal(err)
	}
	integ.denied(t, bus.RoleCWMP.InboxPrefix())

	// An adapter keeps to its protocol and sends no commands.
	cw := roleConn(t, srv, ids, bus.RoleCWMP)
	for _, subj := range []string{"duet.evt.usp.os~3A~3Ax.boot", "duet.cmd.cwmp.00D09E-SN1", "duet.ctl.usp.routes.mqtt"} {
		if err := cw.nc.Publish(subj, []byte("x")); err != nil {
			t.Fatal(err)
		}
		cw.denied(t, subj)
	}
	if _, err := cw.nc.SubscribeSync("duet.ctl.cwmp.>"); err != nil {
		t.Fatal(err)
	}
	cw.denied(t, "duet.ctl.cwmp.>")
}

// TestCredentialsCrossTheBusSealed: a client that reads every subject of
// an open bus sees neither a device's HA1 (current or pending), nor a
// connection-request password (or its fallback), nor a secret value of a
// Set handed to a CWMP session (an enrolment's new passwords) (issue 15
// §4: anyone could ask duet.ctl.cwmp.credentials.<dev> for the HA1),
// while the adapter gets them all.
func TestCredentialsCrossTheBusSealed(t *testing.T) {
	const dev, ha1, password = "00D09E-SN1", "0123456789abcdef0123456789abcdef", "cr-secret-password"
	const pendingHA1, fallback, setSecret = "fedcba9876543210fedcba9876543210", "cr-old-secret", "new-acs-secret"
	srv := bustest.StartServer(t)
	ctl, adapter := bustest.Connect(t, srv.URL()), bustest.Connect(t, srv.URL())
	sniffer, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer sniffer.Close()
	seen, err := sniffer.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	_ = sniffer.Flush()

	if _, err := ctl.ServeCredentials("duet-controller", func(ctx context.Context, id string) (*duetv1.Credentials, error) {
		return &duetv1.Credentials{Found: true, Username: "cpe", DigestHa1: ha1, Realm: "Duet", PendingUsername: "cpe", PendingDigestHa1: pendingHA1}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.ServeWork("duet-controller", func(ctx context.Context, req *duetv1.SessionWorkRequest) (*duetv1.SessionWork, error) {
		return &duetv1.SessionWork{Commands: []*duetv1.Command{{DeviceId: dev, Op: &duetv1.Command_Set{Set: &duetv1.SetRequest{Params: []*duetv1.Parameter{
			{Path: "Device.ManagementServer.Password", Value: setSecret, Secret: true},
			{Path: "Device.ManagementServer.ConnectionRequestUsername", Value: "duet-cr"}}}}}}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	got := make(chan *duetv1.ConnectionRequest, 1)
	if _, err := adapter.ServeCommands(bus.CommandSubject(devicemodel.ProtocolCWMP, dev), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		got <- cmd.GetConnectionRequest()
		return &duetv1.CommandResult{}
	}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c, err := adapter.AskCredentials(ctx, dev)
	if err != nil || c.GetDigestHa1() != ha1 || !c.GetFound() || c.GetPendingDigestHa1() != pendingHA1 {
		t.Fatalf("adapter got %v, %v; want the HA1s", c, err)
	}
	w, err := adapter.AskWork(ctx, &duetv1.SessionWorkRequest{DeviceId: dev})
	if ps := w.GetCommands()[0].GetSet().GetParams(); err != nil || ps[0].GetValue() != setSecret || ps[1].GetValue() != "duet-cr" {
		t.Fatalf("adapter got work %v, %v; want the secret value opened", w, err)
	}
	cmd := &duetv1.Command{DeviceId: dev, Op: &duetv1.Command_ConnectionRequest{ConnectionRequest: &duetv1.ConnectionRequest{
		Url: "http://192.0.2.1:7547/", Username: "acs", Password: password, Fallback: true, FallbackPassword: fallback}}}
	if _, err := ctl.Request(ctx, devicemodel.ProtocolCWMP, cmd); err != nil {
		t.Fatal(err)
	}
	if cr := <-got; cr.GetPassword() != password || cr.GetFallbackPassword() != fallback {
		t.Fatalf("adapter got connection-request passwords %q, %q", cr.GetPassword(), cr.GetFallbackPassword())
	}
	if cmd.GetConnectionRequest().GetPassword() != password {
		t.Fatal("Request changed the caller's command")
	}
	n := 0
	for {
		m, err := seen.NextMsg(time.Second)
		if err != nil {
			break
		}
		n++
		if bytes.Contains(m.Data, []byte(ha1)) || bytes.Contains(m.Data, []byte(password)) || bytes.Contains(m.Data, []byte(pendingHA1)) ||
			bytes.Contains(m.Data, []byte(fallback)) || bytes.Contains(m.Data, []byte(setSecret)) {
			t.Fatalf("a secret crossed the bus in clear on %s", m.Subject)
		}
	}
	if n < 4 {
		t.Fatalf("the sniffer saw %d messages; want the requests and replies", n)
	}

	// An adapter with another seal key cannot open them, and says why.
	other, err := bus.NewSealKey(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	ob, err := bus.Connect(ctx, bus.Options{URL: srv.URL(), Role: bus.RoleCWMP, SealKey: other, DefaultTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	if _, err := ob.AskCredentials(ctx, dev); err == nil || !strings.Contains(err.Error(), "DUET_BUS_SEAL_KEY") {
		t.Fatalf("credentials opened with another key: %v", err)
	}
}

func TestSealBindsTheDevice(t *testing.T) {
	k := bustest.SealKey(t)
	// A value sealed for one device does not open as another's.
	sealed := k.Seal([]byte("secret"), "a")
	if _, err := k.Open(sealed, "b"); err == nil {
		t.Fatal("opened under another purpose")
	}
	if p, err := k.Open(sealed, "a"); err != nil || string(p) != "secret" {
		t.Fatalf("Open = %q, %v", p, err)
	}
	sealed[len(sealed)-1] ^= 1
	if _, err := k.Open(sealed, "a"); err == nil {
		t.Fatal("a tampered value opened")
	}
}
