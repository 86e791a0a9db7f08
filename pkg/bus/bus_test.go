package bus_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

func TestPublishEventStoresOncePerID(t *testing.T) {
	b, _ := bustest.Start(t)
	ctx := context.Background()
	ev := &duetv1.Event{
		Device: &duetv1.DeviceIdentity{Id: "os::00D09E-SN.1", Protocol: duetv1.Protocol_PROTOCOL_USP},
		Kind:   &duetv1.Event_Online{Online: &duetv1.Online{}},
	}
	if err := b.PublishEvent(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if ev.Id == "" || ev.Time == nil {
		t.Fatal("PublishEvent did not fill id and time")
	}
	// A retried publish of the same event (lost ack) must be stored once.
	if err := b.PublishEvent(ctx, ev); err != nil {
		t.Fatal(err)
	}
	s, err := b.JetStream().Stream(ctx, bus.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want 1", info.State.Msgs)
	}
	msg, err := s.GetLastMsgForSubject(ctx, "duet.evt.usp.os~3A~3A00D09E-SN~2E1.online")
	if err != nil {
		t.Fatalf("event not under its documented subject: %v", err)
	}
	got := &duetv1.Event{}
	if err := proto.Unmarshal(msg.Data, got); err != nil || got.Id != ev.Id {
		t.Fatalf("stored payload: %v id=%q", err, got.Id)
	}
}

func TestPublishEventRejectsIncompleteEvents(t *testing.T) {
	b, _ := bustest.Start(t)
	for name, ev := range map[string]*duetv1.Event{
		"no device":   {Kind: &duetv1.Event_Online{Online: &duetv1.Online{}}},
		"no protocol": {Device: &duetv1.DeviceIdentity{Id: "x"}, Kind: &duetv1.Event_Online{Online: &duetv1.Online{}}},
		"no kind":     {Device: &duetv1.DeviceIdentity{Id: "x", Protocol: duetv1.Protocol_PROTOCOL_CWMP}},
	} {
		err := b.PublishEvent(context.Background(), ev)
		if devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
			t.Errorf("%s: got %v, want invalid_argument", name, err)
		}
	}
}

func TestEnsureStreamIsIdempotent(t *testing.T) {
	srv := bustest.StartServer(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := bus.Connect(context.Background(), bus.Options{URL: srv.URL()})
			if err != nil {
				errs <- err
				return
			}
			b.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent start: %v", err)
	}
}

func TestCommandRequestReply(t *testing.T) {
	b, _ := bustest.Start(t)
	const dev = "00D09E-ONT-SN1"
	var mu sync.Mutex
	seen := map[string]int{}
	sub, err := b.ServeCommands(bus.CommandWildcard(devicemodel.ProtocolCWMP), "q", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		mu.Lock()
		seen[cmd.DeviceId]++
		mu.Unlock()
		if g := cmd.GetGet(); g != nil {
			return &duetv1.CommandResult{Result: &duetv1.CommandResult_Get{Get: &duetv1.GetResult{
				Params: []*duetv1.Parameter{{Path: g.Paths[0], Value: "v-" + cmd.Id}},
			}}}
		}
		<-ctx.Done() // anything else: wait for the command's deadline
		return bus.ResultError(cmd, devicemodel.Errorf(devicemodel.CodeTimeout, "device did not answer"))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()

	// Many concurrent requests each get their own answer.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := &duetv1.Command{DeviceId: dev, Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.DeviceInfo.SerialNumber"}}}}
			res, err := b.Request(context.Background(), devicemodel.ProtocolCWMP, cmd)
			if err != nil {
				t.Error(err)
				return
			}
			if res.CommandId != cmd.Id || res.GetGet().Params[0].Value != "v-"+cmd.Id {
				t.Errorf("command %s got result for %s / %v", cmd.Id, res.CommandId, res.GetGet())
			}
		}()
	}
	wg.Wait()

	// The command's own timeout reaches the handler's context.
	cmd := &duetv1.Command{DeviceId: dev, Timeout: durationpb.New(200 * time.Millisecond),
		Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.Reboot()"}}}
	res, err := b.Request(context.Background(), devicemodel.ProtocolCWMP, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if bus.ErrorFromProto(res.Error).Code != devicemodel.CodeTimeout {
		t.Fatalf("want timeout result, got %v", res.Error)
	}

	// Nobody serves USP: unavailable, immediately.
	_, err = b.Request(context.Background(), devicemodel.ProtocolUSP, &duetv1.Command{DeviceId: "os::x"})
	if devicemodel.ErrorCode(err) != devicemodel.CodeUnavailable {
		t.Fatalf("want unavailable, got %v", err)
	}
}

func TestGarbageRequestIsAnsweredWithError(t *testing.T) {
	b, _ := bustest.Start(t)
	sub, err := b.ServeWork("", func(ctx context.Context, r *duetv1.SessionWorkRequest) (*duetv1.SessionWork, error) {
		return &duetv1.SessionWork{}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	msg, err := b.Conn().Request(bus.WorkSubject("dev"), []byte{0xff, 0xff, 0xff}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg.Header.Get(bus.HeaderError), "undecodable") {
		t.Fatalf("garbage request not answered with an error header: %v", msg.Header)
	}
	// And the server keeps serving.
	if _, err := b.AskWork(context.Background(), &duetv1.SessionWorkRequest{DeviceId: "dev"}); err != nil {
		t.Fatal(err)
	}
}

// TestExternalNATS runs against the machine's real nats-server (docs/testing.md),
// the way `duet serve` does with DUET_NATS_URL.
func TestExternalNATS(t *testing.T) {
	url := os.Getenv("DUET_TEST_NATS_URL")
	if url == "" {
		url = "nats://127.0.0.1:4222"
	}
	b := bustest.Connect(t, url)
	ctx := context.Background()
	id := "ext-" + bus.NewID()
	ev := &duetv1.Event{Device: &duetv1.DeviceIdentity{Id: id, Protocol: duetv1.Protocol_PROTOCOL_CWMP},
		Kind: &duetv1.Event_Periodic{Periodic: &duetv1.Periodic{}}}
	if err := b.PublishEvent(ctx, ev); err != nil {
		t.Fatal(err)
	}
	s, err := b.JetStream().Stream(ctx, bus.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, bus.EventSubject(devicemodel.ProtocolCWMP, id, "periodic"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(jetstream.MsgIDHeader) != ev.Id {
		t.Fatalf("Nats-Msg-Id = %q, want %q", m.Header.Get(jetstream.MsgIDHeader), ev.Id)
	}
}
