package controller_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestConsumerTakesOverTheLegacyPosition: an upgraded installation's
// consumer starts right after what the previous release's "duet-controller"
// acknowledged — nothing replayed, nothing skipped — and the legacy one is
// removed (docs/bus.md, "Upgrading to per-installation consumers").
func TestConsumerTakesOverTheLegacyPosition(t *testing.T) {
	b, _ := bustest.Start(t)
	s, _ := storetest.Open(t)
	ctx := context.Background()
	js := b.JetStream()
	legacy, err := js.CreateOrUpdateConsumer(ctx, bus.EventStream, jetstream.ConsumerConfig{Durable: controller.LegacyDurable,
		FilterSubject: bus.EventPrefix + ".>", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		ev := &duetv1.Event{Device: &duetv1.DeviceIdentity{Id: "dev-legacy", Protocol: duetv1.Protocol_PROTOCOL_CWMP},
			Kind: &duetv1.Event_Boot{Boot: &duetv1.Boot{}}}
		if err := b.PublishEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	// The old release applied three.
	batch, err := legacy.Fetch(3, jetstream.FetchMaxWait(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	durable := controller.InstallationDurable("0123456789abcdef")
	if _, err := controller.NewRegistry(ctx, controller.RegistryOptions{Bus: b, Store: s, Durable: durable,
		AdoptLegacy: controller.LegacyDurable, StartTime: time.Now()}); err != nil {
		t.Fatal(err)
	}
	c, err := js.Consumer(ctx, bus.EventStream, durable)
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.CachedInfo().Config
	if cfg.DeliverPolicy != jetstream.DeliverByStartSequencePolicy || cfg.OptStartSeq != 4 {
		t.Fatalf("new consumer starts %v at %d, want by sequence at 4", cfg.DeliverPolicy, cfg.OptStartSeq)
	}
	if _, err := js.Consumer(ctx, bus.EventStream, controller.LegacyDurable); err == nil {
		t.Fatal("the legacy consumer is still there")
	}
	// A restart keeps the consumer as it is.
	if _, err := controller.NewRegistry(ctx, controller.RegistryOptions{Bus: b, Store: s, Durable: durable,
		AdoptLegacy: controller.LegacyDurable}); err != nil {
		t.Fatalf("restart: %v", err)
	}

	// A second installation on the same bus gets a consumer of its own,
	// starting shortly before it was made, and the first keeps its own.
	other := controller.InstallationDurable("fedcba9876543210")
	made := time.Now()
	if _, err := controller.NewRegistry(ctx, controller.RegistryOptions{Bus: b, Store: s, Durable: other, StartTime: made}); err != nil {
		t.Fatal(err)
	}
	oc, err := js.Consumer(ctx, bus.EventStream, other)
	if err != nil {
		t.Fatal(err)
	}
	ocfg := oc.CachedInfo().Config
	if ocfg.DeliverPolicy != jetstream.DeliverByStartTimePolicy || ocfg.OptStartTime == nil || !ocfg.OptStartTime.Before(made) {
		t.Fatalf("second installation's consumer: %v %v", ocfg.DeliverPolicy, ocfg.OptStartTime)
	}
	if _, err := js.Consumer(ctx, bus.EventStream, durable); err != nil {
		t.Fatalf("the first installation's consumer went: %v", err)
	}
}

// TestInstallationIDIsStable: generated once, the same on every read.
func TestInstallationIDIsStable(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	a, err := s.Installation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.ID) != 16 || a.AdoptLegacyConsumer {
		t.Fatalf("fresh installation %+v: want a 16-digit ID and nothing to adopt", a)
	}
	b, err := s.Installation(ctx)
	if err != nil || b.ID != a.ID {
		t.Fatalf("second read %+v, %v; want %s", b, err, a.ID)
	}
}
