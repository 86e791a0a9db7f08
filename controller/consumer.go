package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duet-dm/duet/pkg/bus"
)

// LegacyDurable is the consumer name of releases before installation IDs
// (migration 0073): every Duet on one NATS shared it.
const LegacyDurable = "duet-controller"

// InstallationDurable is the controller's consumer name for an
// installation: a second Duet on the same NATS has another, so it does not
// split the first one's events (issue 15 §4).
func InstallationDurable(installationID string) string {
	return LegacyDurable + "-" + installationID
}

// consumerStart is where a new durable consumer begins.
type consumerStart struct {
	policy jetstream.DeliverPolicy
	seq    uint64
	time   *time.Time
	// adopted deletes the legacy consumer once the new one exists.
	adopted func(context.Context) error
}

// newInstallationMargin: a new installation's consumer starts this long
// before the installation was made, for events adapters published while
// its first controller was starting (and clocks that disagree).
const newInstallationMargin = 10 * time.Minute

// startPosition keeps an existing consumer's start (JetStream refuses to
// change it); starts a new one where the legacy consumer acknowledged up
// to, so an upgrade neither replays the retained stream nor skips an event;
// a new installation's at o.StartTime; or else at the beginning.
func startPosition(ctx context.Context, js jetstream.JetStream, o RegistryOptions, log *slog.Logger) (consumerStart, error) {
	durable, legacy := o.Durable, o.AdoptLegacy
	none := func(context.Context) error { return nil }
	if c, err := js.Consumer(ctx, bus.EventStream, durable); err == nil {
		cfg := c.CachedInfo().Config
		return consumerStart{policy: cfg.DeliverPolicy, seq: cfg.OptStartSeq, time: cfg.OptStartTime, adopted: none}, nil
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return consumerStart{}, fmt.Errorf("controller: consumer %s: %w", durable, err)
	}
	all := consumerStart{policy: jetstream.DeliverAllPolicy, adopted: none}
	if legacy == "" || legacy == durable {
		if !o.StartTime.IsZero() && legacy == "" {
			t := o.StartTime.Add(-newInstallationMargin)
			return consumerStart{policy: jetstream.DeliverByStartTimePolicy, time: &t, adopted: none}, nil
		}
		return all, nil
	}
	old, err := js.Consumer(ctx, bus.EventStream, legacy)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return all, nil
	}
	if err != nil {
		return consumerStart{}, fmt.Errorf("controller: consumer %s: %w", legacy, err)
	}
	floor := old.CachedInfo().AckFloor.Stream
	log.Info("taking over the position of the previous release's consumer",
		"legacy", legacy, "consumer", durable, "start_seq", floor+1)
	return consumerStart{policy: jetstream.DeliverByStartSequencePolicy, seq: floor + 1,
		adopted: func(ctx context.Context) error {
			err := js.DeleteConsumer(ctx, bus.EventStream, legacy)
			if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("controller: delete consumer %s: %w", legacy, err)
			}
			return nil
		}}, nil
}
