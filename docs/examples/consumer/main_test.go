package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// syncBuffer is a bytes.Buffer safe for run's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// publish stores an event the way the adapters do (bus.PublishEvent).
func publish(t *testing.T, b *bus.Bus, ev *duetv1.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.PublishEvent(ctx, ev); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// start runs the consumer in the background; the returned stop cancels
// it and returns run's error.
func start(t *testing.T, cfg config, out *syncBuffer) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, out) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = fmt.Errorf("run did not return after its context ended")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func waitFor(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(out.String(), want) {
			return fmt.Errorf("output %q lacks %q", out.String(), want)
		}
		return nil
	})
}

func TestConsumerPrintsEvents(t *testing.T) {
	b, srv := bustest.Start(t)
	t0 := time.Date(2026, 12, 5, 19, 40, 0, 123e6, time.UTC)
	// Published before the consumer exists: --deliver all replays it.
	publish(t, b, &duetv1.Event{
		Time:   timestamppb.New(t0),
		Device: &duetv1.DeviceIdentity{Id: "00D09E-ONT-SN1", Protocol: duetv1.Protocol_PROTOCOL_CWMP},
		Kind:   &duetv1.Event_Inform{Inform: &duetv1.Inform{}},
	})
	out := &syncBuffer{}
	stop := start(t, config{URL: srv.URL(), DeliverAll: true}, out)
	waitFor(t, out, "2026-12-05T19:40:00.123Z cwmp 00D09E-ONT-SN1 inform\n")

	// A message that is not a duet.v1.Event is skipped, not fatal.
	if _, err := b.JetStream().Publish(context.Background(), "duet.evt.usp.x.boot", []byte{0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	// A live event, with an ID that needs subject escaping.
	publish(t, b, &duetv1.Event{
		Time:   timestamppb.New(t0.Add(time.Second)),
		Device: &duetv1.DeviceIdentity{Id: "os::00D09E-SERIAL", Protocol: duetv1.Protocol_PROTOCOL_USP},
		Kind:   &duetv1.Event_Boot{Boot: &duetv1.Boot{}},
	})
	waitFor(t, out, "2026-12-05T19:40:01.123Z usp os::00D09E-SERIAL boot\n")
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", n, out.String())
	}
}

// A durable consumer resumes where it stopped: an event published while
// it was down is printed by the next run, and the old one is not again.
func TestConsumerDurableResumes(t *testing.T) {
	b, srv := bustest.Start(t)
	// The server may hand the next event to the stopped run's last pull
	// request; it comes back after AckWait, so keep that short here.
	cfg := config{URL: srv.URL(), Durable: "example-test", DeliverAll: true, AckWait: time.Second}
	dev := &duetv1.DeviceIdentity{Id: "00D09E-SN2", Protocol: duetv1.Protocol_PROTOCOL_CWMP}
	publish(t, b, &duetv1.Event{Device: dev, Kind: &duetv1.Event_Bootstrap{Bootstrap: &duetv1.Bootstrap{}}})
	first := &syncBuffer{}
	stop := start(t, cfg, first)
	waitFor(t, first, " cwmp 00D09E-SN2 bootstrap\n")
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}

	publish(t, b, &duetv1.Event{Device: dev, Kind: &duetv1.Event_Periodic{Periodic: &duetv1.Periodic{}}})
	second := &syncBuffer{}
	stop = start(t, cfg, second)
	waitFor(t, second, " cwmp 00D09E-SN2 periodic\n")
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	if strings.Contains(second.String(), "bootstrap") {
		t.Fatalf("the durable consumer delivered the acknowledged event again:\n%s", second.String())
	}
}

func TestConsumerConnectError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Port 1 on localhost: nothing listens there.
	if err := run(ctx, config{URL: "nats://127.0.0.1:1"}, &syncBuffer{}); err == nil {
		t.Fatal("run with no server: want an error")
	}
}
