// Package usp is Duet's USP Controller endpoint: the logic every MTP shares.
//
// Transports (adapters/usp/mqtt, stomp, websocket) move Records and call
// HandleRecord for each one they receive; this package decodes them, keeps
// per-agent session state (return address, in-flight requests), serves bus
// commands for each agent it knows, turns Notify messages into bus events and
// onboards agents (TR-369 "Notifications", first contact/TR-181 Device.LocalAgent.Subscription.{i}.). It holds no database and talks to the
// rest of Duet only through the bus (docs/architecture.md).
package usp

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/ratelog"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

// DefaultEndpointID is the controller endpoint ID cmd/duet uses when none
// is configured.
const DefaultEndpointID = "self::duet-controller"

// CommandQueue is the NATS queue group every USP adapter process joins for
// each agent it knows, so that exactly one of them answers a command.
const CommandQueue = "duet-usp"

// MaxRecordBytes bounds a Record handed to HandleRecord; transports should
// enforce it (or less) before reading a whole frame into memory.
const MaxRecordBytes = 4 << 20

// MTP is one message transfer protocol binding. It is implemented by the
// transports and owned here (CONTRIBUTING.md, habit 5).
type MTP interface {
	// Name is "mqtt", "stomp" or "websocket"; it becomes
	// Reachability.transport and a metric label.
	Name() string
	// Send delivers one serialized Record to an agent's address. It returns
	// an error when the record surely did not leave (no connection, closed
	// WebSocket, broker refused).
	Send(ctx context.Context, to Address, record []byte) error
}

// Address is where an agent can be reached on one MTP, as the transport
// learned it from the message that carried a record.
type Address struct {
	// Reply is the MTP-level return address: the MQTT response topic (or
	// the /reply-to= suffix decoded), the STOMP reply-to-dest, or the
	// WebSocket connection key. Empty when the message carried none; the
	// endpoint then keeps the one learned earlier (Connect record or a
	// previous message).
	Reply string
	// MQTT311 marks an agent speaking MQTT 3.1.1: records to it carry the
	// reply-to address as a topic suffix (TR-369 "MQTT Binding").
	MQTT311 bool
	// Peer is the remote network address when the transport knows it
	// (WebSocket); reported in Reachability.
	Peer string
	// EndpointID is the identity the MTP itself asserted (WebSocket ?eid=).
	// When set, every record's from_id must equal it (TR-369 "WebSocket Binding").
	EndpointID string
}

func (a Address) reachability() string {
	if a.Peer != "" {
		return a.Peer
	}
	return a.Reply
}

// Options configure an Endpoint.
type Options struct {
	// EndpointID is our USP endpoint ID, the to_id agents address us by.
	// Required; cmd/duet passes DefaultEndpointID when none is configured.
	EndpointID string
	// Bus carries events out and commands in. Required.
	Bus *bus.Bus
	// Logger; default slog.Default().
	Logger *slog.Logger
	// RequestTimeout bounds a request to an agent when the command carries
	// no deadline of its own. Default 30 s.
	RequestTimeout time.Duration
	// MaxInFlightPerAgent bounds requests outstanding to one agent; further
	// commands wait for a slot until their deadline. Default 16.
	MaxInFlightPerAgent int
	// OnboardValueChange lists the parameters Duet subscribes to
	// ValueChange on during onboarding. Default
	// ["Device.DeviceInfo.SoftwareVersion"]. A nil slice means the default;
	// an empty non-nil slice means none.
	OnboardValueChange []string
	// AdapterID names this adapter process in events (source) and in
	// Reachability.adapter_id. Default "usp-" plus a random suffix.
	AdapterID string
	// EventWorkers is the number of goroutines publishing events; events of
	// one agent always go through the same worker, in order. Default 4.
	EventWorkers int
	// EventQueue bounds the events waiting per worker. When full, a Notify
	// is dropped without NotifyResp (the agent retries it, TR-369 Notify retry),
	// other events are dropped and counted. Default 1024.
	EventQueue int
	// OnboardWorkers bounds concurrent onboardings. Default 4.
	OnboardWorkers int
	// KeepAliveInterval: an agent silent this long is sent a
	// GetSupportedProtocol; no answer within RequestTimeout takes it
	// offline. Over MQTT and STOMP the broker hides the agent's connection,
	// so this is how a dead agent is noticed. Default 10 min; negative
	// disables.
	KeepAliveInterval time.Duration
	// ReplyPatterns, by MTP name ("mqtt", "stomp"), is the only reply
	// address an agent may give: the pattern with {endpoint} replaced by
	// its endpoint ID, e.g. "usp/agent/{endpoint}". A record naming
	// another address is dropped (reason reply_outside_pattern). Empty:
	// no check (docs/guide-usp.md, securing USP).
	ReplyPatterns map[string]string
	// Admission decides which endpoint IDs are served; default every one.
	Admission Admission
	// HeldRecheckInterval is how often the admission state of agents held
	// for approval is read again (held.go); default 5 s.
	HeldRecheckInterval time.Duration
}

func (o *Options) setDefaults() error {
	if o.EndpointID == "" {
		return errors.New("usp: Options.EndpointID is required (cmd uses " + DefaultEndpointID + ")")
	}
	if o.Bus == nil {
		return errors.New("usp: Options.Bus is required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 30 * time.Second
	}
	if o.HeldRecheckInterval <= 0 {
		o.HeldRecheckInterval = 5 * time.Second
	}
	if o.RequestTimeout < 0 {
		return fmt.Errorf("usp: Options.RequestTimeout %s is negative", o.RequestTimeout)
	}
	if o.MaxInFlightPerAgent == 0 {
		o.MaxInFlightPerAgent = 16
	}
	if o.MaxInFlightPerAgent < 0 {
		return fmt.Errorf("usp: Options.MaxInFlightPerAgent %d is negative", o.MaxInFlightPerAgent)
	}
	if o.OnboardValueChange == nil {
		o.OnboardValueChange = []string{"Device.DeviceInfo.SoftwareVersion"}
	}
	for _, p := range o.OnboardValueChange {
		if _, err := devicemodel.ParsePath(p, false); err != nil {
			return fmt.Errorf("usp: Options.OnboardValueChange %q: %v", p, err)
		}
	}
	if o.AdapterID == "" {
		o.AdapterID = "usp-" + bus.NewID()[:8]
	}
	if o.EventWorkers == 0 {
		o.EventWorkers = 4
	}
	if o.EventQueue == 0 {
		o.EventQueue = 1024
	}
	if o.KeepAliveInterval == 0 {
		o.KeepAliveInterval = 10 * time.Minute
	}
	if o.OnboardWorkers == 0 {
		o.OnboardWorkers = 4
	}
	for mtp, p := range o.ReplyPatterns {
		if err := validReplyPattern(mtp, p); err != nil {
			return err
		}
	}
	if err := o.Admission.validate(); err != nil {
		return err
	}
	if o.EventWorkers < 0 || o.EventQueue < 0 || o.OnboardWorkers < 0 {
		return errors.New("usp: Options.EventWorkers, EventQueue and OnboardWorkers must be positive")
	}
	return nil
}

// Endpoint is the USP Controller endpoint shared by every MTP of a process.
type Endpoint struct {
	opts Options
	id   string
	bus  *bus.Bus
	log  *slog.Logger
	// refusals logs what a peer can cause at will (bad records) within
	// a budget (issue 15 §8: 20,000 garbage records wrote 10.5 MB).
	refusals *ratelog.Logger

	ctx    context.Context // cancelled by Shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup
	msgSeq atomic.Uint64

	mu       sync.Mutex
	closed   bool
	agents   map[string]*session
	known    *lru[struct{}]          // agents onboarded by this process
	bootSeen *lru[bootHappening]     // the last Boot! published, key eid (dedupe.go)
	notifies *lru[*notifyState]      // Notify de-duplication, key eid\x00msg_id
	reboots  *lru[[]pendingReboot]   // Reboot()/FactoryReset() awaiting Boot!, key eid
	asyncOps *lru[[]asyncOp]         // async Operates awaiting OperationComplete, key eid
	admitted *lru[admissionDecision] // admission decisions, key eid (identity.go)
	held     map[string]heldAgent    // agents held for approval (held.go)

	shards     []chan job
	onboardQ   chan string
	onboarding map[string]*onboardRun // queued or running
}

// session is what we know about one connected agent.
type session struct {
	eid  string
	mtp  MTP
	addr Address
	sub  *bus.Subscription
	sem  chan struct{}
	// pending requests by msg_id; each channel has room for one reply.
	pending map[string]chan reply
	gone    bool
	// subscribing is set while the command subscription is being made;
	// sub stays nil when that failed, and the agent's next record tries
	// again (a NATS failover can close the connection meanwhile).
	subscribing bool
	// lastHeard is when the agent last sent a valid record (unix nanos);
	// probing is set while a keep-alive probe is out.
	lastHeard atomic.Int64
	probing   atomic.Bool
	// announced: an online event was published for this session; facts
	// are the identity facts it carried (dedupe.go). onboardedAt is when
	// an onboarding last started for this session. All under Endpoint.mu.
	announced   bool
	facts       *duetv1.DeviceIdentity
	onboardedAt time.Time
}

type reply struct {
	msg *uspmsg.Msg
	err error
}

type job func(ctx context.Context)

// New builds an Endpoint and starts its workers.
func New(opts Options) (*Endpoint, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Endpoint{
		opts:       opts,
		id:         opts.EndpointID,
		bus:        opts.Bus,
		log:        opts.Logger.With("component", "usp", "adapter", opts.AdapterID),
		refusals:   ratelog.New(opts.Logger.With("component", "usp", "adapter", opts.AdapterID), 0, 0),
		ctx:        ctx,
		cancel:     cancel,
		agents:     make(map[string]*session),
		known:      newLRU[struct{}](100_000),
		bootSeen:   newLRU[bootHappening](16_384),
		notifies:   newLRU[*notifyState](16_384),
		reboots:    newLRU[[]pendingReboot](16_384),
		asyncOps:   newLRU[[]asyncOp](16_384),
		admitted:   newLRU[admissionDecision](65_536),
		held:       make(map[string]heldAgent),
		onboardQ:   make(chan string, 4096),
		onboarding: make(map[string]*onboardRun),
	}
	for range opts.EventWorkers {
		ch := make(chan job, opts.EventQueue)
		e.shards = append(e.shards, ch)
		e.wg.Add(1)
		go e.runEvents(ch)
	}
	for range opts.OnboardWorkers {
		e.wg.Add(1)
		go e.runOnboard()
	}
	if opts.KeepAliveInterval > 0 {
		e.wg.Add(1)
		go e.runKeepAlive()
	}
	if opts.Admission.Mode == AdmitHold {
		e.wg.Add(1)
		go e.runHeldRecheck()
	}
	return e, nil
}

// ID is our endpoint ID.
func (e *Endpoint) ID() string { return e.id }

// AdapterID names this adapter process.
func (e *Endpoint) AdapterID() string { return e.opts.AdapterID }

// Shutdown stops serving commands, fails in-flight requests with
// CodeUnavailable and stops the workers, waiting for them until ctx ends.
// Events still queued are dropped (counted). Safe to call twice.
func (e *Endpoint) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	sessions := make([]*session, 0, len(e.agents))
	for _, s := range e.agents {
		sessions = append(sessions, s)
	}
	e.agents = map[string]*session{}
	e.mu.Unlock()
	for _, s := range sessions {
		e.endSession(s, "adapter shutting down")
		metricAgentsOnline.Dec()
	}
	e.cancel()
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("usp: shutdown: %w", ctx.Err())
	}
}

// endSession fails pending requests and stops the command subscription.
// The session must already be removed from e.agents.
func (e *Endpoint) endSession(s *session, why string) {
	e.mu.Lock()
	s.gone = true
	pend := s.pending
	s.pending = nil
	e.mu.Unlock()
	for id, ch := range pend {
		ch <- reply{err: devicemodel.Errorf(devicemodel.CodeUnavailable, "agent %s went away before answering %s: %s", s.eid, id, why)}
	}
	if s.sub != nil {
		// Stop waits for running handlers; they finish promptly because
		// their requests were just failed. Not in the receive path: owned
		// by e.wg, which Shutdown waits for (no new session starts after
		// closed is set, so Add never races the final Wait).
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			s.sub.Stop()
		}()
	}
}

// RecordError says why HandleRecord dropped a record. Reason is the metric
// label; transports use it to decide on a close code (WebSocket 1003).
type RecordError struct {
	Reason string
	Err    error
}

func (e *RecordError) Error() string {
	if e.Err != nil {
		return "usp: record dropped (" + e.Reason + "): " + e.Err.Error()
	}
	return "usp: record dropped (" + e.Reason + ")"
}

func (e *RecordError) Unwrap() error { return e.Err }

// Drop reasons (label values of duet_usp_records_dropped_total).
const (
	DropGarbage         = "garbage"
	DropTooLarge        = "too_large"
	DropWrongToID       = "wrong_to_id"
	DropBadFromID       = "bad_from_id"
	DropEIDMismatch     = "eid_mismatch"
	DropNoRecordType    = "no_record_type"
	DropInvalidRecord   = "invalid_record"
	DropSessionContext  = "session_context"
	DropPayloadSecurity = "payload_security"
	DropBadPayload      = "bad_payload"
	DropUnknownMsgID    = "unknown_msg_id"
	DropNoMsgID         = "no_msg_id"
	DropClosed          = "closed"
)

func (e *Endpoint) drop(mtp MTP, reason string, err error, attrs ...any) error {
	metricRecordsDropped.WithLabelValues(mtp.Name(), reason).Inc()
	e.refusals.Warn("usp record dropped", append([]any{"mtp", mtp.Name(), "reason", reason, "err", err}, attrs...)...)
	return &RecordError{Reason: reason, Err: err}
}

// HandleRecord processes one Record received over mtp. from is where the
// record came from as the transport saw it. It never blocks on the bus:
// events go through bounded per-agent-ordered queues. It returns a
// *RecordError when the record was dropped, nil otherwise. Safe for
// concurrent use.
func (e *Endpoint) HandleRecord(mtp MTP, from Address, data []byte) error {
	metricRecordsReceived.WithLabelValues(mtp.Name()).Inc()
	if len(data) > MaxRecordBytes {
		return e.drop(mtp, DropTooLarge, fmt.Errorf("%d bytes", len(data)))
	}
	// pkg/usp validates the record and its message (TR-369 usp-record-1-4.proto, R-E2E.1,
	// R-E2E.26, R-E2E.41, R-MSG.10, one member per oneof).
	rec, err := pkgusp.ParseRecord(data, e.id)
	if err != nil {
		var pe *pkgusp.ParseError
		if !errors.As(err, &pe) {
			return e.drop(mtp, DropGarbage, err)
		}
		switch {
		case errors.Is(err, pkgusp.ErrWrongRecipient):
			// [R-E2E.1] drop any record not addressed to us.
			return e.drop(mtp, DropWrongToID, err, "device", pe.FromID)
		case errors.Is(err, pkgusp.ErrSessionContext):
			// E2E sessions are not supported (TR-369 "End to End Session Context").
			return e.drop(mtp, DropSessionContext, err, "device", pe.FromID)
		case pe.Code == pkgusp.ErrCodeRecordNotParsed:
			e.refusals.Warn("undecodable usp record", "mtp", mtp.Name(), "from", from.reachability(), "bytes", len(data), "err", err)
			return e.drop(mtp, DropGarbage, err)
		}
		if from.EndpointID != "" && pe.FromID != "" && from.EndpointID != pe.FromID {
			return e.drop(mtp, DropEIDMismatch, err, "device", pe.FromID)
		}
		// [R-MTP.5] answer with an Error only when from_id is valid, to_id
		// ours, the record holds a Request whose msg_id we read, and a
		// return path is known (replyError checks the last one).
		if pe.Replyable && devicemodel.ValidateDeviceID(pe.FromID) == nil {
			e.replyError(mtp, from, pe.FromID, pe.MsgID, pe.Code, pe.Reason)
		}
		if errors.Is(err, pkgusp.ErrInvalidMsg) {
			return e.drop(mtp, DropBadPayload, err, "device", pe.FromID)
		}
		return e.drop(mtp, DropInvalidRecord, err, "device", pe.FromID)
	}
	eid := rec.FromID
	if err := devicemodel.ValidateDeviceID(eid); err != nil {
		return e.drop(mtp, DropBadFromID, err)
	}
	// TR-369 "WebSocket Binding": the WebSocket eid must match Record.from_id.
	if from.EndpointID != "" && from.EndpointID != eid {
		return e.drop(mtp, DropEIDMismatch, fmt.Errorf("from_id %q on a connection of %q", eid, from.EndpointID), "device", eid)
	}
	// Where the record asks to be answered: checked against the MTP's
	// pattern before it can move the agent's session.
	reply := from.Reply
	switch {
	case reply != "":
	case rec.Kind == pkgusp.RecordMQTTConnect:
		reply = rec.SubscribedTopic
	case rec.Kind == pkgusp.RecordSTOMPConnect:
		reply = rec.SubscribedDestination
	}
	if err := e.checkReply(mtp, eid, reply); err != nil {
		return e.drop(mtp, DropReplyOutsidePattern, err, "device", eid)
	}
	e.mu.Lock()
	closed := e.closed
	s := e.agents[eid]
	if s != nil && !closed {
		s.lastHeard.Store(time.Now().UnixNano()) // keep-alive: it is talking
	}
	e.mu.Unlock()
	if closed {
		return e.drop(mtp, DropClosed, nil)
	}
	if s == nil && rec.Kind != pkgusp.RecordDisconnect {
		if ok, reason := e.admit(mtp, eid, from); !ok {
			if reason == DropHeld {
				e.hold(mtp, eid, from)
			}
			return e.drop(mtp, reason, nil, "device", eid)
		}
	}
	if rec.Kind == pkgusp.RecordMQTTConnect || rec.Kind == pkgusp.RecordSTOMPConnect ||
		rec.Kind == pkgusp.RecordWebSocketConnect || rec.Kind == pkgusp.RecordUDSConnect {
		// A new MTP connection starts a new happening: a Boot! after it
		// is a new boot even if it reads like the last one.
		e.forgetBoot(eid)
	}
	switch rec.Kind {
	case pkgusp.RecordMQTTConnect:
		if from.Reply == "" {
			from.Reply = rec.SubscribedTopic
		}
		from.MQTT311 = from.MQTT311 || rec.MQTTVersion == usprecord.MQTTConnectRecord_V3_1_1
		e.connected(mtp, eid, from)
	case pkgusp.RecordSTOMPConnect:
		if from.Reply == "" {
			from.Reply = rec.SubscribedDestination
		}
		e.connected(mtp, eid, from)
	case pkgusp.RecordWebSocketConnect, pkgusp.RecordUDSConnect:
		e.connected(mtp, eid, from)
	case pkgusp.RecordDisconnect:
		// TR-369 "Handling of Records", R-MTP.5: forget all session state for the endpoint.
		e.forget(mtp, eid, fmt.Sprintf("disconnect record: %s (%d)", rec.DisconnectReason, rec.DisconnectCode))
	case pkgusp.RecordMsg:
		return e.handleMsg(mtp, from, eid, rec.Msg)
	default:
		return e.drop(mtp, DropNoRecordType, nil, "device", eid)
	}
	return nil
}

// Disconnected tells the endpoint that the MTP connection of endpointID is
// gone (a closed WebSocket). It publishes offline and forgets the session
// if the agent's current session is on that MTP.
func (e *Endpoint) Disconnected(mtp MTP, endpointID string) {
	e.unhold(mtp, endpointID)
	e.forget(mtp, endpointID, mtp.Name()+" connection closed")
}

// touch records that eid is reachable over mtp at from, creating the session
// (online event, command subscription, onboarding) when it is new.
func (e *Endpoint) touch(mtp MTP, eid string, from Address) *session {
	s, created, seen := e.openSession(mtp, eid, from, false)
	if !created {
		return s
	}
	e.log.Info("usp agent online", "device", eid, "mtp", mtp.Name(), "address", from.reachability())
	// One online event per connection: an agent onboarded for the first
	// time gets it from onboarding, with the DeviceInfo facts; the others
	// get it now.
	if seen || !e.startOnboarding(eid, onboardFull) {
		e.announce(s, nil)
	}
	return s
}

// openSession returns eid's session, updating its address (unless
// keepExisting: a restored route never overrides what the agent itself
// said), or creates it with its command subscription (created). seen tells
// whether this process onboarded the agent before. s is nil once the
// endpoint is closed.
func (e *Endpoint) openSession(mtp MTP, eid string, from Address, keepExisting bool) (s *session, created, seen bool) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, false, false
	}
	s = e.agents[eid]
	if s != nil {
		if !keepExisting {
			if s.mtp != mtp {
				// The agent moved to another MTP: later requests follow it.
				s.mtp = mtp
				s.addr = from
			} else if from.Reply != "" {
				s.addr = from
			}
		}
		retry := s.sub == nil && !s.subscribing && !s.gone
		s.subscribing = s.subscribing || retry
		e.mu.Unlock()
		if retry {
			e.serveCommands(s)
		}
		return s, false, true
	}
	s = &session{eid: eid, mtp: mtp, addr: from, sem: make(chan struct{}, e.opts.MaxInFlightPerAgent), pending: map[string]chan reply{}, subscribing: true}
	s.lastHeard.Store(time.Now().UnixNano())
	e.agents[eid] = s
	_, seen = e.known.get(eid)
	e.mu.Unlock()
	metricAgentsOnline.Inc()
	e.serveCommands(s)
	return s, true, seen
}

// serveCommands subscribes to the agent's command subject. On failure
// the session stays without one and the agent's next record tries again
// (openSession): an agent that kept its connection through a NATS
// failover must not stay unserved.
func (e *Endpoint) serveCommands(s *session) {
	sub, err := e.bus.ServeCommands(bus.CommandSubject(devicemodel.ProtocolUSP, s.eid), CommandQueue, func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		return e.execute(ctx, s.eid, cmd)
	})
	if err != nil {
		e.log.Error("cannot serve commands for agent; its next record tries again", "device", s.eid, "err", err)
	}
	e.mu.Lock()
	s.subscribing = false
	if s.gone && sub != nil {
		e.mu.Unlock()
		sub.Stop()
		return
	}
	s.sub = sub
	e.mu.Unlock()
}

// connected handles a Connect record. An agent onboarded before is
// checked again: a Connect record follows a reboot, and after a factory
// reset the agent has lost Duet's subscriptions, so no Boot! will come
// (TR-369 "Notifications", first contact step 4) and only onboarding notices (it re-creates them
// and reports a bootstrap).
func (e *Endpoint) connected(mtp MTP, eid string, from Address) {
	e.mu.Lock()
	_, known := e.known.get(eid)
	e.mu.Unlock()
	e.touch(mtp, eid, from)
	if known {
		// A Connect record starts a new happening (the agent restarted, or
		// was reset); the Boot! that follows within onboardCoalesce
		// coalesces with the check started here.
		e.checkAfresh(eid)
	}
}

// forget ends eid's session if it is on mtp, publishing offline.
func (e *Endpoint) forget(mtp MTP, eid, why string) {
	e.mu.Lock()
	s := e.agents[eid]
	if s == nil || s.mtp != mtp {
		e.mu.Unlock()
		return
	}
	delete(e.agents, eid)
	e.mu.Unlock()
	metricAgentsOnline.Dec()
	e.endSession(s, why)
	e.log.Info("usp agent offline", "device", eid, "mtp", mtp.Name(), "reason", why)
	e.publish(eid, mtp, s.addr, &duetv1.Event{Kind: &duetv1.Event_Offline{Offline: &duetv1.Offline{Reason: why}}}, nil)
}

func (e *Endpoint) session(eid string) *session {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.agents[eid]
}

// handleMsg dispatches a decoded USP Msg.
func (e *Endpoint) handleMsg(mtp MTP, from Address, eid string, msg *uspmsg.Msg) error {
	msgID := msg.GetHeader().GetMsgId()
	switch body := msg.GetBody().GetMsgBody().(type) {
	case *uspmsg.Body_Response, *uspmsg.Body_Error:
		// Responses are correlated by msg_id; one with an unknown msg_id is
		// ignored (TR-369 "Message structure"). It does not make the agent known: with a
		// shared MQTT subscription it may be another process's answer.
		e.mu.Lock()
		var ch chan reply
		if s := e.agents[eid]; s != nil {
			ch = s.pending[msgID]
			delete(s.pending, msgID)
		}
		e.mu.Unlock()
		if ch == nil {
			return e.drop(mtp, DropUnknownMsgID, fmt.Errorf("msg_id %q", msgID), "device", eid)
		}
		ch <- reply{msg: msg}
		return nil
	case *uspmsg.Body_Request:
		s := e.touch(mtp, eid, from)
		if s == nil {
			return e.drop(mtp, DropClosed, nil)
		}
		if msgID == "" {
			// [R-MTP.5] no msg_id, no Error reply.
			return e.drop(mtp, DropNoMsgID, nil, "device", eid)
		}
		if n := body.Request.GetNotify(); n != nil {
			e.handleNotify(mtp, from, eid, msgID, n)
			return nil
		}
		// Register/Deregister and Controller-bound Get/Set... are not
		// served by a device-management Controller (TR-369 "Register"): answer
		// 7001 since every R-MTP.5 condition holds.
		e.replyError(mtp, from, eid, msgID, pkgusp.ErrCodeMessageNotSupported, "message not supported by this controller")
		return nil
	default:
		return e.drop(mtp, DropBadPayload, errors.New("msg without body"), "device", eid)
	}
}

// send builds a record around msg and sends it to eid over its session.
func (e *Endpoint) send(ctx context.Context, mtp MTP, addr Address, eid string, msg *uspmsg.Msg) error {
	data, err := e.buildRecord(eid, msg)
	if err != nil {
		return err
	}
	return mtp.Send(ctx, addr, data)
}

// currentAddr returns the session's mtp and address, or the fallback.
func (e *Endpoint) currentAddr(eid string, mtp MTP, from Address) (MTP, Address) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s := e.agents[eid]; s != nil && s.mtp == mtp && from.Reply == "" {
		return s.mtp, s.addr
	}
	return mtp, from
}

func (e *Endpoint) replyError(mtp MTP, from Address, eid, msgID string, code uint32, text string) {
	m, addr := e.currentAddr(eid, mtp, from)
	if addr.Reply == "" && addr.EndpointID == "" {
		return // no return path: drop silently [R-MTP.5]
	}
	msg := &uspmsg.Msg{
		Header: &uspmsg.Header{MsgId: msgID, MsgType: uspmsg.Header_ERROR},
		Body:   &uspmsg.Body{MsgBody: &uspmsg.Body_Error{Error: &uspmsg.Error{ErrCode: code, ErrMsg: text}}},
	}
	// Sent from the agent's event shard, not the receive path: a transport
	// may not publish from inside its receive callback (paho QoS 1 would
	// wait for a PUBACK its own reader has to deliver).
	e.submit(eid, func(ctx context.Context) {
		if err := e.send(ctx, m, addr, eid, msg); err != nil {
			e.log.Warn("cannot send usp error", "device", eid, "msg_id", msgID, "err", err)
		}
	})
}

func (e *Endpoint) buildRecord(to string, msg *uspmsg.Msg) ([]byte, error) {
	return pkgusp.MarshalMsgRecord(e.id, to, msg)
}

// publish queues an event for eid on its ordered shard. after runs once the
// event is stored (ok=true) or failed (ok=false). It returns false when the
// queue is full; the event is then dropped and counted.
func (e *Endpoint) publish(eid string, mtp MTP, addr Address, ev *duetv1.Event, after func(ok bool)) bool {
	ev.Source = e.opts.AdapterID
	if ev.Device == nil {
		ev.Device = &duetv1.DeviceIdentity{}
	}
	ev.Device.Id = eid
	ev.Device.Protocol = duetv1.Protocol_PROTOCOL_USP
	if ev.Reachability == nil && mtp != nil {
		ev.Reachability = &duetv1.Reachability{Transport: mtp.Name(), Address: addr.reachability(), AdapterId: e.opts.AdapterID}
	}
	return e.submit(eid, func(ctx context.Context) {
		err := e.bus.PublishEvent(ctx, ev)
		if err != nil {
			e.log.Error("cannot publish usp event", "device", eid, "kind", bus.EventKind(ev), "err", err)
		}
		if after != nil {
			after(err == nil)
		}
	})
}

// submit queues j on eid's shard. Policy when full: drop and count.
func (e *Endpoint) submit(eid string, j job) bool {
	h := fnv.New32a()
	_, _ = h.Write([]byte(eid))
	ch := e.shards[int(h.Sum32()%uint32(len(e.shards)))]
	select {
	case <-e.ctx.Done():
		return false
	default:
	}
	select {
	case ch <- j:
		return true
	default:
		metricQueueDropped.WithLabelValues("events").Inc()
		e.refusals.Warn("usp event queue full, dropping", "device", eid)
		return false
	}
}

func (e *Endpoint) runEvents(ch chan job) {
	defer e.wg.Done()
	for {
		select {
		case <-e.ctx.Done():
			return
		case j := <-ch:
			ctx, cancel := context.WithTimeout(e.ctx, 15*time.Second)
			j(ctx)
			cancel()
		}
	}
}

func (e *Endpoint) nextMsgID(kind string) string {
	return fmt.Sprintf("duet-%s-%s-%d", kind, e.opts.AdapterID, e.msgSeq.Add(1))
}

// maxKeepAliveProbes bounds the probes out at once; the rest wait for the
// next sweep.
const maxKeepAliveProbes = 64

// runKeepAlive sweeps the agents a few times per interval and probes the
// silent ones (TR-369 "GetSupportedProtocol" GetSupportedProtocol: every agent answers it).
func (e *Endpoint) runKeepAlive() {
	defer e.wg.Done()
	every := e.opts.KeepAliveInterval / 4
	if every < 10*time.Millisecond {
		every = 10 * time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	sem := make(chan struct{}, maxKeepAliveProbes)
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-tick.C:
		}
		cutoff := time.Now().Add(-e.opts.KeepAliveInterval).UnixNano()
		e.mu.Lock()
		var silent []*session
		for _, s := range e.agents {
			if s.lastHeard.Load() < cutoff && !s.probing.Load() {
				silent = append(silent, s)
			}
		}
		e.mu.Unlock()
	probes:
		for _, s := range silent {
			select {
			case sem <- struct{}{}:
			default:
				break probes // bounded: the rest are probed on a later sweep
			}
			s.probing.Store(true)
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer func() { <-sem; s.probing.Store(false) }()
				e.probe(s)
			}()
		}
	}
}

func (e *Endpoint) probe(s *session) {
	ctx, cancel := context.WithTimeout(e.ctx, e.opts.RequestTimeout)
	defer cancel()
	_, err := e.request(ctx, s.eid, uspmsg.Header_GET_SUPPORTED_PROTO, &uspmsg.Request{ReqType: &uspmsg.Request_GetSupportedProtocol{
		GetSupportedProtocol: &uspmsg.GetSupportedProtocol{ControllerSupportedProtocolVersions: pkgusp.ControllerSupportedVersions}}})
	if err == nil || e.ctx.Err() != nil {
		return // the answer itself refreshed lastHeard
	}
	metricKeepAliveLost.Inc()
	e.mu.Lock()
	mtp := s.mtp
	e.mu.Unlock()
	e.forget(mtp, s.eid, "keep-alive: no answer to GetSupportedProtocol: "+devicemodel.ErrorMessage(err))
}
