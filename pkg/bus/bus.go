package bus

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/netguard"
	"github.com/duet-dm/duet/pkg/ratelog"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// Options configure a Bus.
type Options struct {
	// URL of the NATS server(s), comma separated. Required.
	URL string
	// Name identifies this connection in NATS monitoring.
	Name string
	// EventMaxAge is how long the event stream keeps events. Default 7 days.
	EventMaxAge time.Duration
	// EventMaxBytes bounds the event stream's size. Default 1 GiB.
	EventMaxBytes int64
	// LatestOnlyKinds are event kinds of which the stream keeps only the
	// newest per device (a JetStream rollup of the event's subject): the
	// routine reports (issue 12 item 5; docs/bus.md). None by default.
	LatestOnlyKinds []string
	// Replicas of the event stream on a clustered JetStream. Default 1.
	Replicas int
	// DefaultTimeout applies to requests whose context has no deadline.
	// Default 30 s.
	DefaultTimeout time.Duration
	// MaxConcurrentHandlers bounds the handlers a Serve* subscription runs
	// at once; past it messages wait in the subscription's bounded pending
	// buffer and NATS drops (slow consumer) beyond that. Default 256.
	MaxConcurrentHandlers int
	Logger                *slog.Logger

	// Role names what this connection does; it sets the inbox prefix its
	// replies come back under (Role.InboxPrefix). Default RoleController.
	Role Role
	// Embedded, when set, connects in-process to that server instead of
	// dialling URL (no TLS needed; NKey authentication still applies).
	Embedded *Embedded
	// CredentialsFile authenticates the connection: a NATS credentials
	// file (.creds: a user JWT and its NKey seed) or an NKey seed file (as
	// the embedded bus writes under <data-dir>/bus/).
	CredentialsFile string
	// User and Password authenticate with a user and password (a URL's
	// user:password@ does too).
	User, Password string
	// TLS is the client TLS configuration: the CA that signs the server's
	// certificate and, for mutual TLS, this client's certificate.
	TLS *tls.Config
	// SealKey seals the secrets requests and replies carry: credentials
	// and connection-request passwords (seal.go). Without it they are not
	// sent at all.
	SealKey *SealKey
}

func (o *Options) setDefaults() error {
	if o.URL == "" {
		return errors.New("bus: URL is required")
	}
	if o.Name == "" {
		o.Name = "duet"
	}
	if o.EventMaxAge == 0 {
		o.EventMaxAge = 7 * 24 * time.Hour
	}
	if o.EventMaxAge < time.Minute {
		return fmt.Errorf("bus: EventMaxAge %s is below one minute", o.EventMaxAge)
	}
	if o.EventMaxBytes == 0 {
		o.EventMaxBytes = 1 << 30
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.DefaultTimeout == 0 {
		o.DefaultTimeout = 30 * time.Second
	}
	if o.MaxConcurrentHandlers == 0 {
		o.MaxConcurrentHandlers = 256
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Role == "" {
		o.Role = RoleController
	}
	if _, err := Permissions(o.Role, nil); err != nil {
		return err
	}
	return nil
}

// authOptions are the NATS options that authenticate and encrypt the
// connection.
func (o *Options) authOptions() ([]nats.Option, error) {
	out := []nats.Option{nats.CustomInboxPrefix(o.Role.InboxPrefix())}
	if o.Embedded != nil {
		if c := o.Embedded.inProcessTLS; c != nil {
			// A server with TLS does not complete a TLS handshake over its
			// in-memory pipe: dial it as any client, trusting its own
			// certificate.
			out = append(out, nats.Secure(c))
		} else {
			out = append(out, nats.InProcessServer(o.Embedded))
		}
	}
	if f := o.CredentialsFile; f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("bus: credentials file: %w", err)
		}
		if strings.Contains(string(data), "BEGIN NATS USER JWT") {
			out = append(out, nats.UserCredentials(f))
		} else {
			opt, err := nats.NkeyOptionFromSeed(f)
			if err != nil {
				return nil, fmt.Errorf("bus: credentials file %s is neither a .creds file nor an NKey seed: %w", f, err)
			}
			out = append(out, opt)
		}
	}
	if o.User != "" {
		out = append(out, nats.UserInfo(o.User, o.Password))
	}
	if o.TLS != nil {
		out = append(out, nats.Secure(o.TLS))
	}
	return out, nil
}

// Bus is a connection to the NATS bus with Duet's contract on top.
type Bus struct {
	opts Options
	nc   *nats.Conn
	js   jetstream.JetStream
	log  *slog.Logger
	// refusals logs texts SanitizeEvent refused, within a budget.
	refusals *ratelog.Logger

	mu     sync.Mutex
	subs   map[*Subscription]struct{}
	closed bool
	// shared carries the per-device command subscriptions (shared.go).
	shared sharedQueue
}

// Connect dials NATS and makes sure the event stream exists (idempotently:
// concurrent starts and restarts are fine).
func Connect(ctx context.Context, opts Options) (*Bus, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	log := opts.Logger.With("component", "bus")
	auth, err := opts.authOptions()
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(opts.URL, append(auth,
		nats.Name(opts.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500*time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			metricBusErrors.WithLabelValues("async").Inc()
			log.Error("nats async error", "subject", subj, "err", err)
		}),
	)...)
	if err != nil {
		return nil, fmt.Errorf("bus: connect to %s: %w", netguard.RedactURL(opts.URL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	b := &Bus{opts: opts, nc: nc, js: js, log: log, refusals: ratelog.New(log, 0, 0), subs: map[*Subscription]struct{}{}}
	if err := b.ensureStreams(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return b, nil
}

// EventStreamConfig is the configuration of the DUET_EVENTS stream.
func (b *Bus) EventStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        EventStream,
		Description: "Duet device events (docs/bus.md)",
		Subjects:    []string{EventPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      b.opts.EventMaxAge,
		MaxBytes:    b.opts.EventMaxBytes,
		Discard:     jetstream.DiscardOld,
		Replicas:    b.opts.Replicas,
		// Publishers set Nats-Msg-Id to the event ID, so an adapter that
		// retries a publish after a lost ack stores the event once.
		Duplicates: 2 * time.Minute,
		// Routine events replace the previous one of their subject
		// (Options.LatestOnlyKinds), as a KV bucket's values do.
		AllowRollup: true,
	}
}

// ensureStreams creates Duet's streams, or brings their configuration up to
// date. The controller owns them: an adapter only creates a stream that is
// missing (it may not change the controller's; on the closed embedded bus
// it may only ask whether they exist).
func (b *Bus) ensureStreams(ctx context.Context) error {
	cfgs := []jetstream.StreamConfig{b.EventStreamConfig(), b.PolicyStreamConfig(), b.DeadLetterStreamConfig()}
	switch b.opts.Role {
	case RoleController:
		for _, cfg := range cfgs {
			if err := b.ensureStream(ctx, cfg); err != nil {
				return fmt.Errorf("bus: create stream %s: %w", cfg.Name, err)
			}
		}
	case RoleCWMP, RoleUSP:
		for _, cfg := range cfgs {
			if err := b.retryNotReady(ctx, cfg.Name, func() error {
				_, err := b.js.Stream(ctx, cfg.Name)
				if !errors.Is(err, jetstream.ErrStreamNotFound) {
					return err
				}
				if _, err := b.js.CreateStream(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
					return err
				}
				return nil
			}); err != nil {
				return fmt.Errorf("bus: stream %s: %w", cfg.Name, err)
			}
		}
	}
	return nil
}

// streamStartBudget is how long a start waits for a clustered JetStream
// that does not answer yet: several Duet processes starting with a NATS
// cluster that is still electing its leaders (docs/scaling.md) see the
// JetStream API time out or say it is unavailable for a while.
const streamStartBudget = 90 * time.Second

// ensureStream creates or updates one stream, trying again while
// JetStream only times out or is temporarily unavailable. Any other
// refusal (too few servers for the replicas, say) fails at once.
func (b *Bus) ensureStream(ctx context.Context, cfg jetstream.StreamConfig) error {
	return b.retryNotReady(ctx, cfg.Name, func() error {
		_, err := b.js.CreateOrUpdateStream(ctx, cfg)
		return err
	})
}

// RetryNotReady gives other JetStream set-up (an object store bucket, say)
// the patience stream creation has: op runs again while JetStream times
// out or is not available yet, for up to 90 s.
func (b *Bus) RetryNotReady(ctx context.Context, what string, op func() error) error {
	return b.retryNotReady(ctx, what, op)
}

// retryNotReady runs op until it succeeds, fails otherwise than with
// JetStream not being ready yet, or streamStartBudget passes.
func (b *Bus) retryNotReady(ctx context.Context, stream string, op func() error) error {
	deadline := time.Now().Add(streamStartBudget)
	wait := 250 * time.Millisecond
	for {
		err := op()
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) || !jetStreamNotReady(err) {
			return err
		}
		b.log.Warn("JetStream not ready; trying again", "stream", stream, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// jsErrClusterNotAvail is the server's JSClusterNotAvailErr, "JetStream
// system temporarily unavailable" (nats.go names no constant for it).
const jsErrClusterNotAvail jetstream.ErrorCode = 10008

// jetStreamNotReady: the JetStream API timed out, or said it is not
// available yet (JSClusterNotAvail 10008, no meta leader).
func jetStreamNotReady(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrClusterNotAvail {
		return true
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, nats.ErrNoResponders)
}

// Conn is the underlying NATS connection.
func (b *Bus) Conn() *nats.Conn { return b.nc }

// JetStream is the JetStream context.
func (b *Bus) JetStream() jetstream.JetStream { return b.js }

// Ping checks that the server answers (used by /readyz).
func (b *Bus) Ping(ctx context.Context) error {
	if b.nc.Status() != nats.CONNECTED {
		return fmt.Errorf("bus: nats %s", b.nc.Status())
	}
	d := 2 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl)
	}
	return b.nc.FlushTimeout(d)
}

// Close drains the connection — every subscription at once, so requests
// already delivered are still answered — then stops the Serve* handlers and
// closes. One connection-wide drain instead of one per subscription keeps
// shutdown fast with many per-device subscriptions. Safe to call twice.
func (b *Bus) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	subs := b.subs
	b.subs = nil
	b.mu.Unlock()
	_ = b.nc.Drain()
	// Drain is asynchronous; wait for it so callers can rely on Close.
	deadline := time.Now().Add(5 * time.Second)
	for !b.nc.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	b.nc.Close()
	for s := range subs {
		s.once.Do(func() {
			s.stop()
			s.end()
			s.wg.Wait()
		})
	}
	b.shared.stop()
}

// NewID returns a random 128-bit identifier in hex, for events and commands.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return hex.EncodeToString(b[:])
}

// ProtocolOf converts the wire enum.
func ProtocolOf(p duetv1.Protocol) (devicemodel.Protocol, error) {
	switch p {
	case duetv1.Protocol_PROTOCOL_CWMP:
		return devicemodel.ProtocolCWMP, nil
	case duetv1.Protocol_PROTOCOL_USP:
		return devicemodel.ProtocolUSP, nil
	}
	return "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "unknown protocol %v", p)
}

// ProtocolToProto converts to the wire enum.
func ProtocolToProto(p devicemodel.Protocol) duetv1.Protocol {
	switch p {
	case devicemodel.ProtocolCWMP:
		return duetv1.Protocol_PROTOCOL_CWMP
	case devicemodel.ProtocolUSP:
		return duetv1.Protocol_PROTOCOL_USP
	}
	return duetv1.Protocol_PROTOCOL_UNSPECIFIED
}

// EventKind returns the snake_case name of the event's kind, the last token
// of its subject, or "" if no kind is set.
func EventKind(ev *duetv1.Event) string {
	m := ev.ProtoReflect()
	od := m.Descriptor().Oneofs().ByName("kind")
	fd := m.WhichOneof(od)
	if fd == nil {
		return ""
	}
	return string(fd.Name())
}

// PublishEvent stores a device event in the event stream and waits for the
// stream's acknowledgement. It fills in ID and Time when empty. The event's
// device must have an ID and a protocol, and a kind must be set.
func (b *Bus) PublishEvent(ctx context.Context, ev *duetv1.Event) error {
	return b.PublishEvents(ctx, ev)
}

// PublishEvents stores several events, in order, and waits for all the
// stream's acknowledgements at once: one round trip of latency instead of
// one per event (an Inform carries several). Validation happens before
// anything is sent; an invalid event sends none.
func (b *Bus) PublishEvents(ctx context.Context, evs ...*duetv1.Event) error {
	type out struct {
		msg   *nats.Msg
		proto devicemodel.Protocol
		kind  string
	}
	msgs := make([]out, 0, len(evs))
	for _, ev := range evs {
		// Before the event is marshalled: proto3 strings must be UTF-8.
		b.noteRefusals(ev, SanitizeEvent(ev))
		m, p, kind, err := eventMsg(ev)
		if err != nil {
			return err
		}
		if slices.Contains(b.opts.LatestOnlyKinds, kind) {
			// The stream keeps this one and drops the device's earlier
			// events of the kind (subject duet.evt.<p>.<device>.<kind>).
			m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		}
		msgs = append(msgs, out{m, p, kind})
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	start := time.Now()
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, m := range msgs {
		f, err := b.js.PublishMsgAsync(m.msg)
		if err != nil {
			metricBusErrors.WithLabelValues("publish").Inc()
			return devicemodel.Errorf(devicemodel.CodeUnavailable, "publish %s: %v", m.msg.Subject, err)
		}
		futures = append(futures, f)
	}
	for i, f := range futures {
		select {
		case <-f.Ok():
			metricEventsPublished.WithLabelValues(string(msgs[i].proto), msgs[i].kind).Inc()
		case err := <-f.Err():
			metricBusErrors.WithLabelValues("publish").Inc()
			return devicemodel.Errorf(devicemodel.CodeUnavailable, "publish %s: %v", msgs[i].msg.Subject, err)
		case <-ctx.Done():
			metricBusErrors.WithLabelValues("publish").Inc()
			return devicemodel.Errorf(devicemodel.CodeUnavailable, "publish %s: no acknowledgement: %v", msgs[i].msg.Subject, ctx.Err())
		}
	}
	metricPublishSeconds.Observe(time.Since(start).Seconds())
	return nil
}

// eventMsg validates an event, fills in its ID and time, and builds the
// stream message under its documented subject.
func eventMsg(ev *duetv1.Event) (*nats.Msg, devicemodel.Protocol, string, error) {
	if ev.GetDevice().GetId() == "" {
		return nil, "", "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "event without device id")
	}
	if err := devicemodel.ValidateDeviceID(ev.GetDevice().GetId()); err != nil {
		return nil, "", "", err
	}
	p, err := ProtocolOf(ev.GetDevice().GetProtocol())
	if err != nil {
		return nil, "", "", err
	}
	kind := EventKind(ev)
	if kind == "" {
		return nil, "", "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "event without kind")
	}
	if ev.Id == "" {
		ev.Id = NewID()
	}
	if ev.Time == nil {
		ev.Time = timestamppb.Now()
	}
	data, err := proto.Marshal(ev)
	if err != nil {
		return nil, "", "", fmt.Errorf("bus: marshal event: %w", err)
	}
	return &nats.Msg{
		Subject: EventSubject(p, ev.Device.Id, kind),
		Data:    data,
		// Nats-Msg-Id = event ID: a retried publish is stored once.
		Header: nats.Header{jetstream.MsgIDHeader: []string{ev.Id}, "Content-Type": []string{ContentTypeEvent}},
	}, p, kind, nil
}

// Content types carried in the Content-Type header of bus messages.
const (
	ContentTypeEvent   = "application/x-protobuf; proto=duet.v1.Event"
	ContentTypeCommand = "application/x-protobuf; proto=duet.v1.Command"
	ContentTypeResult  = "application/x-protobuf; proto=duet.v1.CommandResult"
)

func (b *Bus) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, b.opts.DefaultTimeout)
}

// request does a protobuf request/reply and maps NATS failures to domain
// errors: no responders -> CodeUnavailable, timeout -> CodeTimeout.
func (b *Bus) request(ctx context.Context, subject string, req, resp proto.Message) error {
	data, err := proto.Marshal(req)
	if err != nil {
		return fmt.Errorf("bus: marshal request: %w", err)
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	msg, err := b.nc.RequestWithContext(ctx, subject, data)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "nobody serves %s", subject)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return devicemodel.Errorf(devicemodel.CodeTimeout, "no reply on %s in time", subject)
	case err != nil:
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "request %s: %v", subject, err)
	}
	if e := msg.Header.Get(HeaderError); e != "" {
		return devicemodel.Errorf(devicemodel.CodeInternal, "%s: %s", subject, e)
	}
	if err := proto.Unmarshal(msg.Data, resp); err != nil {
		return devicemodel.Errorf(devicemodel.CodeInternal, "bad reply on %s: %v", subject, err)
	}
	return nil
}

// HeaderError is set on a reply when the responder could not decode the
// request; the body is then empty.
const HeaderError = "Duet-Error"

// Request sends a command to whichever adapter serves the device and waits
// for its result. The context deadline (or the command's timeout plus a
// margin) bounds the wait. A device nobody serves gives CodeUnavailable.
func (b *Bus) Request(ctx context.Context, p devicemodel.Protocol, cmd *duetv1.Command) (*duetv1.CommandResult, error) {
	if err := devicemodel.ValidateDeviceID(cmd.GetDeviceId()); err != nil {
		return nil, err
	}
	if cmd.Id == "" {
		cmd.Id = NewID()
	}
	if cr := cmd.GetConnectionRequest(); cr.GetPassword() != "" || cr.GetFallbackPassword() != "" {
		// The passwords cross the bus sealed, never in clear (issue 15 §4).
		if b.opts.SealKey == nil {
			return nil, devicemodel.Errorf(devicemodel.CodeInternal, "bus: a connection-request password cannot be sent without a seal key (DUET_BUS_SEAL_KEY)")
		}
		cmd = proto.Clone(cmd).(*duetv1.Command)
		cr = cmd.GetConnectionRequest()
		if cr.Password != "" {
			cr.SealedPassword = b.opts.SealKey.Seal([]byte(cr.Password), purposeConnReq(cmd.DeviceId))
		}
		if cr.FallbackPassword != "" {
			cr.SealedFallbackPassword = b.opts.SealKey.Seal([]byte(cr.FallbackPassword), purposeConnReq(cmd.DeviceId))
		}
		cr.Password, cr.FallbackPassword = "", ""
	}
	if _, ok := ctx.Deadline(); !ok && cmd.Timeout != nil {
		var cancel context.CancelFunc
		// A little longer than the adapter's own wait, so the adapter's
		// timeout result wins over ours.
		ctx, cancel = context.WithTimeout(ctx, cmd.Timeout.AsDuration()+2*time.Second)
		defer cancel()
	}
	res := &duetv1.CommandResult{}
	start := time.Now()
	err := b.request(ctx, CommandSubject(p, cmd.DeviceId), cmd, res)
	metricRequestSeconds.WithLabelValues(string(p)).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, err
	}
	return res, nil
}

// CommandHandler executes one command. It must return a result (with Error
// set on failure), never nil. ctx carries the command's deadline.
type CommandHandler func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult

// ServeCommands answers commands on subject (a device's CommandSubject or a
// CommandWildcard) as part of queue group queue ("" for none). Handlers run
// concurrently, at most MaxConcurrentHandlers at once per subscription.
//
// A device's subscription (not a wildcard) costs no goroutine of its own
// while idle: its messages come through one dispatcher per Bus
// (shared.go), so an adapter may hold one per connected agent.
func (b *Bus) ServeCommands(subject, queue string, h CommandHandler) (*Subscription, error) {
	return b.serveOn(subject, queue, !strings.HasSuffix(subject, ">") && !strings.Contains(subject, "*"), func(ctx context.Context, m *nats.Msg) (proto.Message, error) {
		cmd := &duetv1.Command{}
		if err := proto.Unmarshal(m.Data, cmd); err != nil {
			return nil, fmt.Errorf("undecodable command: %w", err)
		}
		if cmd.DeviceId == "" {
			if id, err := DeviceFromSubject(m.Subject); err == nil {
				cmd.DeviceId = id
			}
		}
		if err := b.openConnReq(cmd); err != nil {
			return &duetv1.CommandResult{CommandId: cmd.Id, DeviceId: cmd.DeviceId, Error: ErrorToProto(err)}, nil
		}
		if cmd.Timeout != nil && cmd.Timeout.AsDuration() > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, cmd.Timeout.AsDuration())
			defer cancel()
		}
		res := h(ctx, cmd)
		if res == nil {
			res = &duetv1.CommandResult{Error: ErrorToProto(devicemodel.Errorf(devicemodel.CodeInternal, "handler returned no result"))}
		}
		if res.CommandId == "" {
			res.CommandId = cmd.Id
		}
		if res.DeviceId == "" {
			res.DeviceId = cmd.DeviceId
		}
		// A result carries what the device answered: bounded like an
		// event's texts before it leaves the adapter (sanitize.go).
		b.noteResultRefusals(res, SanitizeResult(res))
		return res, nil
	})
}

// AskWork asks the controller what a CWMP device in session should do next.
func (b *Bus) AskWork(ctx context.Context, req *duetv1.SessionWorkRequest) (*duetv1.SessionWork, error) {
	if err := devicemodel.ValidateDeviceID(req.GetDeviceId()); err != nil {
		return nil, err
	}
	res := &duetv1.SessionWork{}
	if err := b.request(ctx, WorkSubject(req.DeviceId), req, res); err != nil {
		return nil, err
	}
	for _, cmd := range res.GetCommands() {
		if err := b.openParams(cmd); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// sealParams moves a Set's secret values into sealed_value, so they never
// cross the bus in clear (issue 15 §4).
func (b *Bus) sealParams(cmd *duetv1.Command) error {
	for _, p := range cmd.GetSet().GetParams() {
		if !p.GetSecret() || p.GetValue() == "" {
			continue
		}
		if b.opts.SealKey == nil {
			return errors.New("no seal key (DUET_BUS_SEAL_KEY): secret values are not sent in clear")
		}
		p.SealedValue = b.opts.SealKey.Seal([]byte(p.Value), purposeParam(cmd.GetDeviceId()))
		p.Value = ""
	}
	return nil
}

// openParams opens a Set's sealed values in place; a secret value that
// arrives in clear is not believed.
func (b *Bus) openParams(cmd *duetv1.Command) error {
	for _, p := range cmd.GetSet().GetParams() {
		if !p.GetSecret() {
			continue
		}
		p.Value = ""
		if len(p.SealedValue) == 0 {
			return devicemodel.Errorf(devicemodel.CodeInternal, "bus: the secret value of %s arrived unsealed", p.GetPath())
		}
		if b.opts.SealKey == nil {
			return devicemodel.Errorf(devicemodel.CodeUnavailable, "bus: a value arrives sealed and this process has no seal key (DUET_BUS_SEAL_KEY)")
		}
		v, err := b.opts.SealKey.Open(p.SealedValue, purposeParam(cmd.GetDeviceId()))
		if err != nil {
			return devicemodel.Errorf(devicemodel.CodeInternal, "bus: the secret value of %s: %v", p.GetPath(), err)
		}
		p.Value, p.SealedValue = string(v), nil
	}
	return nil
}

// WorkHandler decides the next commands for a CWMP session.
type WorkHandler func(ctx context.Context, req *duetv1.SessionWorkRequest) (*duetv1.SessionWork, error)

// ServeWork answers AskWork requests for every device.
func (b *Bus) ServeWork(queue string, h WorkHandler) (*Subscription, error) {
	return b.serve(WorkWildcard, queue, func(ctx context.Context, m *nats.Msg) (proto.Message, error) {
		req := &duetv1.SessionWorkRequest{}
		if err := proto.Unmarshal(m.Data, req); err != nil {
			return nil, fmt.Errorf("undecodable work request: %w", err)
		}
		w, err := h(ctx, req)
		for _, cmd := range w.GetCommands() {
			if err == nil {
				err = b.sealParams(cmd)
			}
		}
		return w, err
	})
}

// AskCredentials looks up a CPE's credentials (per-device auth mode).
func (b *Bus) AskCredentials(ctx context.Context, deviceID string) (*duetv1.Credentials, error) {
	if err := devicemodel.ValidateDeviceID(deviceID); err != nil {
		return nil, err
	}
	res := &duetv1.Credentials{}
	if err := b.request(ctx, CredentialsSubject(deviceID), &duetv1.CredentialsRequest{DeviceId: deviceID}, res); err != nil {
		return nil, err
	}
	// Only a sealed HA1 is believed: a clear one crossed the bus for any
	// subscriber to read (an older controller), so it is not used.
	clear := res.DigestHa1
	res.DigestHa1 = ""
	if len(res.SealedDigestHa1) > 0 {
		if b.opts.SealKey == nil {
			return nil, devicemodel.Errorf(devicemodel.CodeUnavailable, "bus: credentials arrive sealed and this process has no seal key (DUET_BUS_SEAL_KEY)")
		}
		ha1, err := b.opts.SealKey.Open(res.SealedDigestHa1, purposeHA1(deviceID))
		if err != nil {
			return nil, devicemodel.Errorf(devicemodel.CodeUnavailable, "bus: credentials of %s: %v", deviceID, err)
		}
		res.DigestHa1, res.SealedDigestHa1 = string(ha1), nil
	} else if clear != "" {
		b.log.Warn("the controller sent a device's HA1 in clear; ignored (upgrade it with the adapters)", "device", deviceID)
		res.Found = false
	}
	if len(res.SealedPendingDigestHa1) > 0 {
		if b.opts.SealKey == nil {
			return nil, devicemodel.Errorf(devicemodel.CodeUnavailable, "bus: credentials arrive sealed and this process has no seal key (DUET_BUS_SEAL_KEY)")
		}
		ha1, err := b.opts.SealKey.Open(res.SealedPendingDigestHa1, purposeHA1(deviceID))
		if err != nil {
			return nil, devicemodel.Errorf(devicemodel.CodeUnavailable, "bus: pending credentials of %s: %v", deviceID, err)
		}
		res.PendingDigestHa1, res.SealedPendingDigestHa1 = string(ha1), nil
	}
	return res, nil
}

// CredentialsHandler answers credential lookups.
type CredentialsHandler func(ctx context.Context, deviceID string) (*duetv1.Credentials, error)

// ServeCredentials answers AskCredentials requests for every device.
func (b *Bus) ServeCredentials(queue string, h CredentialsHandler) (*Subscription, error) {
	return b.serve(CredentialsWildcard, queue, func(ctx context.Context, m *nats.Msg) (proto.Message, error) {
		req := &duetv1.CredentialsRequest{}
		if err := proto.Unmarshal(m.Data, req); err != nil {
			return nil, fmt.Errorf("undecodable credentials request: %w", err)
		}
		c, err := h(ctx, req.DeviceId)
		if err != nil || c.GetDigestHa1() == "" && c.GetPendingDigestHa1() == "" {
			return c, err
		}
		// HA1 is as good as the password for Digest: sealed, or not sent.
		if b.opts.SealKey == nil {
			return nil, errors.New("no seal key (DUET_BUS_SEAL_KEY): credentials are not sent in clear")
		}
		if c.DigestHa1 != "" {
			c.SealedDigestHa1 = b.opts.SealKey.Seal([]byte(c.DigestHa1), purposeHA1(req.DeviceId))
		}
		if c.PendingDigestHa1 != "" {
			c.SealedPendingDigestHa1 = b.opts.SealKey.Seal([]byte(c.PendingDigestHa1), purposeHA1(req.DeviceId))
		}
		c.DigestHa1, c.PendingDigestHa1 = "", ""
		return c, nil
	})
}

// openConnReq opens a connection request's sealed passwords in place.
func (b *Bus) openConnReq(cmd *duetv1.Command) error {
	cr := cmd.GetConnectionRequest()
	if cr == nil {
		return nil
	}
	// Only sealed passwords are believed.
	cr.Password, cr.FallbackPassword = "", ""
	for _, f := range []struct {
		sealed *[]byte
		clear  *string
	}{{&cr.SealedPassword, &cr.Password}, {&cr.SealedFallbackPassword, &cr.FallbackPassword}} {
		if len(*f.sealed) == 0 {
			continue
		}
		if b.opts.SealKey == nil {
			return devicemodel.Errorf(devicemodel.CodeInternal, "the connection-request password is sealed and this adapter has no seal key (DUET_BUS_SEAL_KEY)")
		}
		p, err := b.opts.SealKey.Open(*f.sealed, purposeConnReq(cmd.DeviceId))
		if err != nil {
			return devicemodel.Errorf(devicemodel.CodeInternal, "connection-request password: %v", err)
		}
		*f.clear, *f.sealed = string(p), nil
	}
	return nil
}

// Subscription is a running Serve* subscription.
type Subscription struct {
	bus  *Bus
	sub  *nats.Subscription
	wg   sync.WaitGroup
	once sync.Once
	stop context.CancelFunc
	// shared: delivered by the Bus's dispatcher (shared.go).
	shared bool
	// ended: Stop is waiting for the handlers; no new one starts.
	mu    sync.Mutex
	ended bool
}

// Stop removes the subscription and waits for running handlers. Safe to
// call twice.
//
// It drains rather than unsubscribes: a request the server already routed
// here is still handled (and answered), instead of being dropped and
// leaving its caller to wait out its whole timeout. Handlers' context is
// cancelled only once the drain is over.
func (s *Subscription) Stop() {
	s.once.Do(func() {
		if err := s.sub.Drain(); err == nil {
			deadline := time.Now().Add(5 * time.Second)
			for s.sub.IsValid() && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		}
		_ = s.sub.Unsubscribe()
		if s.shared {
			s.bus.shared.handlers.Delete(s.sub)
		}
		s.stop()
		s.end()
		s.wg.Wait()
		s.bus.mu.Lock()
		if s.bus.subs != nil {
			delete(s.bus.subs, s)
		}
		s.bus.mu.Unlock()
	})
}

// end stops new handlers from starting (Stop, Close).
func (s *Subscription) end() {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
}

func (b *Bus) serve(subject, queue string, h func(context.Context, *nats.Msg) (proto.Message, error)) (*Subscription, error) {
	return b.serveOn(subject, queue, false, h)
}

// serveOn is serve; shared delivers through the Bus's one dispatcher
// (shared.go) instead of a goroutine of the subscription's own.
func (b *Bus) serveOn(subject, queue string, shared bool, h func(context.Context, *nats.Msg) (proto.Message, error)) (*Subscription, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Subscription{bus: b, stop: cancel}
	sem := make(chan struct{}, b.opts.MaxConcurrentHandlers)
	var run func(m *nats.Msg)
	handle := func(m *nats.Msg) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		run(m)
	}
	// dispatch is handle for the shared dispatcher, which must not wait
	// on one subscription's slots: a message finding them all busy waits
	// in a goroutine of its own, of which there are boundedly many.
	dispatch := func(m *nats.Msg) {
		select {
		case sem <- struct{}{}:
			run(m)
			return
		default:
		}
		select {
		case b.shared.waiters <- struct{}{}:
		case <-ctx.Done():
			return
		}
		go func() {
			defer func() { <-b.shared.waiters }()
			handle(m)
		}()
	}
	run = func(m *nats.Msg) {
		// A message may reach here from a waiting goroutine (dispatch)
		// while Stop waits for the handlers: none starts after it.
		s.mu.Lock()
		if s.ended {
			s.mu.Unlock()
			<-sem
			return
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() { <-sem }()
			resp, err := h(ctx, m)
			if m.Reply == "" {
				return
			}
			out := nats.NewMsg(m.Reply)
			if err != nil {
				metricBusErrors.WithLabelValues("serve").Inc()
				b.log.Warn("bad request on bus", "subject", m.Subject, "err", err)
				out.Header.Set(HeaderError, err.Error())
			} else if out.Data, err = proto.Marshal(resp); err != nil {
				out.Header.Set(HeaderError, "marshal reply: "+err.Error())
			}
			if err := m.RespondMsg(out); err != nil {
				b.log.Warn("reply failed", "subject", m.Subject, "err", err)
			}
		}()
	}
	var sub *nats.Subscription
	var err error
	switch {
	case shared:
		b.shared.start()
		sub, err = b.nc.ChanQueueSubscribe(subject, queue, b.shared.ch)
		if err == nil {
			b.shared.handlers.Store(sub, dispatch)
			s.shared = true
		}
	case queue == "":
		sub, err = b.nc.Subscribe(subject, handle)
	default:
		sub, err = b.nc.QueueSubscribe(subject, queue, handle)
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("bus: subscribe %s: %w", subject, err)
	}
	if !shared {
		// Bound what waits for a handler: past this NATS reports a slow consumer
		// and drops, rather than growing without limit (CONTRIBUTING.md, habit 8).
		// A shared subscription is bounded by the shared channel.
		_ = sub.SetPendingLimits(64*1024, 256<<20)
	}
	// When Serve* returns, the server has the subscription: a request sent
	// from another connection right after finds a responder.
	if err := b.nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		cancel()
		return nil, fmt.Errorf("bus: subscribe %s: %w", subject, err)
	}
	s.sub = sub
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		s.Stop()
		return nil, errors.New("bus: closed")
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s, nil
}
