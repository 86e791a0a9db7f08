package bus

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Dead letters: events the controller could not apply however often it
// tried (issue 15 §1). Each is stored, with its original subject and the
// reason, in the stream DUET_DEADLETTER, so one device's bad data never
// holds back the fleet's events and an operator can still look at it
// (docs/bus.md, Dead letters).
const (
	DeadLetterStream = "DUET_DEADLETTER"
	// DeadLetterPrefix + "." + the original subject without its "duet."
	// ("duet.deadletter.evt.usp.<device>.online").
	DeadLetterPrefix = "duet.deadletter"

	HeaderDeadSubject    = "Duet-Original-Subject"
	HeaderDeadReason     = "Duet-Dead-Reason"
	HeaderDeadStreamSeq  = "Duet-Original-Stream-Seq"
	HeaderDeadDeliveries = "Duet-Deliveries"
)

// DeadLetterStreamConfig is the configuration of DUET_DEADLETTER: the
// retention of device events, a tenth of their size.
func (b *Bus) DeadLetterStreamConfig() jetstream.StreamConfig {
	cfg := b.EventStreamConfig()
	cfg.Name = DeadLetterStream
	cfg.Description = "Duet events the controller could not apply (docs/bus.md)"
	cfg.Subjects = []string{DeadLetterPrefix + ".>"}
	cfg.MaxBytes = max(cfg.MaxBytes/10, 1<<20)
	return cfg
}

// DeadLetterSubject is where an event first published on subject is kept.
func DeadLetterSubject(subject string) string {
	return DeadLetterPrefix + "." + strings.TrimPrefix(subject, "duet.")
}

// PublishDeadLetter stores a message that could not be applied, with why,
// and waits for the stream's acknowledgement. Storing the same stream
// sequence twice keeps one copy.
func (b *Bus) PublishDeadLetter(ctx context.Context, subject string, data []byte, streamSeq uint64, deliveries uint64, reason string) error {
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	if len(reason) > 1024 {
		reason = reason[:1024]
	}
	msg := &nats.Msg{
		Subject: DeadLetterSubject(subject),
		Data:    data,
		Header: nats.Header{
			jetstream.MsgIDHeader: []string{"dead-" + strconv.FormatUint(streamSeq, 10) + "-" + subject},
			HeaderDeadSubject:     []string{subject},
			// Header values are one line.
			HeaderDeadReason:     []string{strings.Join(strings.Fields(reason), " ")},
			HeaderDeadStreamSeq:  []string{strconv.FormatUint(streamSeq, 10)},
			HeaderDeadDeliveries: []string{strconv.FormatUint(deliveries, 10)},
			"Content-Type":       []string{ContentTypeEvent},
		},
	}
	if _, err := b.js.PublishMsg(ctx, msg); err != nil {
		metricBusErrors.WithLabelValues("publish").Inc()
		return fmt.Errorf("bus: dead letter %s: %w", subject, err)
	}
	return nil
}
