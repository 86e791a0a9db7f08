// Command consumer is a minimal integration with Duet's bus (docs/bus.md,
// docs/integrating.md): it reads device events from the JetStream stream
// DUET_EVENTS and prints one line per event.
//
//	go run ./docs/examples/consumer --server nats://127.0.0.1:4222
//	go run ./docs/examples/consumer --durable my-integration --deliver all
//
// It uses only the NATS client and the generated duet.v1 types, as an
// integrator's program would: nothing of Duet's own packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// config is what run needs; main fills it from flags.
type config struct {
	// URL of the NATS server(s), comma separated.
	URL string
	// NKeyFile is an NKey seed file: Duet's embedded bus accepts only its
	// own keys, and an integrator uses <data-dir>/bus/integrator.nk
	// (docs/bus.md, "Who may do what"). Empty: no authentication.
	NKeyFile string
	// Durable names a consumer that survives restarts and resumes where
	// it stopped; empty creates an ephemeral one, deleted by the server
	// after InactiveThreshold without a client.
	Durable string
	// Filter is the subject filter: duet.evt.> is every event;
	// duet.evt.usp.*.boot only USP boots (docs/bus.md, "Subjects").
	Filter string
	// DeliverAll replays the whole stream first; otherwise only events
	// published after the consumer is created are delivered. A durable
	// consumer that already exists keeps its position either way.
	DeliverAll bool
	// AckWait is how long the server waits for an acknowledgement before
	// delivering an event again; default 30 s. An event the server sent
	// to a process that then stopped is delivered again after it.
	AckWait time.Duration
	// Log receives the messages that could not be decoded.
	Log *slog.Logger
}

const eventStream = "DUET_EVENTS"

func main() {
	cfg := config{}
	flag.StringVar(&cfg.URL, "server", "nats://127.0.0.1:4222", "NATS server URL (Duet's DUET_NATS_URL, or the embedded server's nats-host:nats-port)")
	flag.StringVar(&cfg.NKeyFile, "nkey", "", "NKey seed file (the embedded bus: <data-dir>/bus/integrator.nk)")
	flag.StringVar(&cfg.Durable, "durable", "", "durable consumer name; empty: an ephemeral consumer")
	flag.StringVar(&cfg.Filter, "filter", "duet.evt.>", "subject filter")
	flag.DurationVar(&cfg.AckWait, "ack-wait", 30*time.Second, "redelivery delay of an unacknowledged event")
	deliver := flag.String("deliver", "new", "where a new consumer starts: new (events from now on) or all (the whole stream)")
	flag.Parse()
	switch *deliver {
	case "new":
	case "all":
		cfg.DeliverAll = true
	default:
		fmt.Fprintf(os.Stderr, "consumer: --deliver %q: accepted values are new and all\n", *deliver)
		os.Exit(2)
	}
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		os.Exit(1)
	}
}

// run consumes events until ctx ends, writing one line per event to out:
//
//	2026-12-05T19:40:00.123Z cwmp 00D09E-ONT-SN1 inform
//
// (the event's time in UTC, the protocol, the device ID as Duet's API
// knows it, and the event's kind). It returns nil when ctx ends and an
// error when it cannot connect or create the consumer.
func run(ctx context.Context, cfg config, out io.Writer) error {
	if cfg.Filter == "" {
		cfg.Filter = "duet.evt.>"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 30 * time.Second
	}
	opts := []nats.Option{nats.Name("duet-example-consumer"), nats.MaxReconnects(-1)}
	if cfg.NKeyFile != "" {
		key, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			return fmt.Errorf("nkey: %w", err)
		}
		opts = append(opts, key)
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", cfg.URL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cc := jetstream.ConsumerConfig{
		Durable:       cfg.Durable,
		FilterSubject: cfg.Filter,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		// Explicit acks: an event not acknowledged (this process died
		// before printing it) is delivered again after AckWait.
		AckPolicy: jetstream.AckExplicitPolicy,
		AckWait:   cfg.AckWait,
	}
	if cfg.DeliverAll {
		cc.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	if cfg.Durable == "" {
		cc.InactiveThreshold = 5 * time.Minute
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, eventStream, cc)
	if err != nil {
		return fmt.Errorf("create consumer on %s: %w", eventStream, err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consume %s: %w", eventStream, err)
	}
	// Next blocks; stopping the iterator when ctx ends makes it return.
	go func() {
		<-ctx.Done()
		msgs.Stop()
	}()
	for {
		msg, err := msgs.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("next event: %w", err)
		}
		line, err := formatEvent(msg.Data())
		if err != nil {
			// Never redeliver what cannot be decoded: Term drops it for
			// this consumer.
			cfg.Log.Warn("undecodable event skipped", "subject", msg.Subject(), "err", err)
			_ = msg.Term()
			continue
		}
		if _, err := fmt.Fprintln(out, line); err != nil {
			return err
		}
		// Acknowledge only once the event is handled: at-least-once.
		// A consumer that must not apply one twice keeps the event IDs
		// it applied (Event.id, docs/bus.md).
		if err := msg.Ack(); err != nil {
			cfg.Log.Warn("ack failed; the event will be delivered again", "subject", msg.Subject(), "err", err)
		}
	}
}

// formatEvent decodes a duet.v1.Event and renders its line.
func formatEvent(data []byte) (string, error) {
	var ev duetv1.Event
	if err := proto.Unmarshal(data, &ev); err != nil {
		return "", fmt.Errorf("decode duet.v1.Event: %w", err)
	}
	kind := eventKind(&ev)
	if ev.GetDevice().GetId() == "" || kind == "" {
		return "", errors.New("event without a device ID or a kind")
	}
	protocol := "unknown"
	switch ev.GetDevice().GetProtocol() {
	case duetv1.Protocol_PROTOCOL_CWMP:
		protocol = "cwmp"
	case duetv1.Protocol_PROTOCOL_USP:
		protocol = "usp"
	}
	return fmt.Sprintf("%s %s %s %s",
		ev.GetTime().AsTime().UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		protocol, ev.GetDevice().GetId(), kind), nil
}

// eventKind is the name of the Event.kind member that is set ("inform",
// "boot", …), which is also the last token of the event's subject.
func eventKind(ev *duetv1.Event) string {
	m := ev.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("kind"))
	if fd == nil {
		return ""
	}
	return string(fd.Name())
}
