package cwmp

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// Session states (TR-069 §3.7).
const (
	stateCPE   = iota // after InformResponse: the CPE sends its requests
	stateACS          // after the empty POST: the ACS sends requests
	stateEnded        // 204 sent, timed out or shut down
)

const cookieName = "session"

// session is one CWMP session. mu serialises its exchanges; busy marks an
// exchange in progress so the reaper leaves it alone.
type session struct {
	id       string
	deviceID string
	ident    *duetv1.DeviceIdentity
	reach    *duetv1.Reachability
	ns       string
	root     string // "Device." or "InternetGatewayDevice."
	// auth: the credentials the Inform authenticated with (kindShared,
	// kindDevice, kindPending, "" when off); bootstrap: it carried
	// 0 BOOTSTRAP.
	auth      string
	bootstrap bool
	started   time.Time
	lastSeen  atomic.Int64
	busy      atomic.Bool
	endedF    atomic.Bool

	mu       sync.Mutex
	state    int
	round    uint32
	rpcs     int
	queue    []*job // commands of the current batch not yet started
	cur      *job   // the command being executed
	sent     cwmp.Message
	msgID    int
	results  []*duetv1.CommandResult // finished commands of the current batch
	internal []*job                  // adapter's own work, run before asking the controller
}

func (s *session) isEnded() bool { return s.endedF.Load() }
func (s *session) touch()        { s.lastSeen.Store(time.Now().UnixNano()) }

func (a *ACS) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		// docs/cwmp-interop.md #30.
		metricBadRequests.WithLabelValues("method").Inc()
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "only POST", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Path != a.o.Path {
		metricBadRequests.WithLabelValues("path").Inc()
		http.NotFound(w, r)
		return
	}
	if a.isShutdown() {
		metricShed.WithLabelValues("shutdown").Inc()
		w.Header().Set("Retry-After", "60")
		w.Header().Set("Connection", "close")
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	if !sourceAllowed(a.o.AllowSources, r.RemoteAddr) {
		a.refuseSource(w, r)
		return
	}
	ci := connFrom(r.Context(), r.RemoteAddr)
	enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding")))
	// A zero-length body is the empty POST whatever Content-Encoding says
	// (docs/cwmp-interop.md #6); only a non-empty body is inflated.
	br := bufio.NewReader(r.Body)
	readEnc := enc
	if _, perr := br.Peek(1); perr != nil {
		readEnc = ""
	}
	body, err := cwmp.ReadBody(br, readEnc, int(a.o.MaxBodyBytes))
	switch {
	case errors.Is(err, cwmp.ErrUnsupportedEncoding):
		a.badRequest(w, r, http.StatusUnsupportedMediaType, "encoding", "unsupported Content-Encoding")
		return
	case errors.Is(err, cwmp.ErrBodyTooLarge):
		a.badRequest(w, r, http.StatusRequestEntityTooLarge, "too_large", "body too large")
		return
	case err != nil:
		a.badRequest(w, r, http.StatusBadRequest, "body", "unreadable body")
		return
	}

	s, byConn := ci.session(), true
	if s == nil {
		byConn = false
		if c := sessionCookie(r); c != "" {
			if s = a.sessions.get(c); s != nil && s.isEnded() {
				s = nil
			}
		}
	}
	if s == nil && a.sessions.full() {
		// Shed new sessions only; open ones continue (docs/cwmp-interop.md #31).
		metricShed.WithLabelValues("sessions").Inc()
		w.Header().Set("Retry-After", "60")
		http.Error(w, "too many sessions", http.StatusServiceUnavailable)
		return
	}
	if s == nil && a.backlogged.Load() {
		// The registry is behind (MaxBacklog): the CPE keeps its events
		// and informs again later (TR-069 §3.7), which is the backpressure.
		metricShed.WithLabelValues("backlog").Inc()
		w.Header().Set("Retry-After", "30")
		http.Error(w, "controller busy", http.StatusServiceUnavailable)
		return
	}
	env, err := cwmp.Limits{MaxBodySize: int(a.o.MaxBodyBytes)}.Decode(body, r.Header.Get("Content-Type"))
	if err != nil {
		reason := "malformed"
		switch {
		case errors.Is(err, cwmp.ErrDTD):
			reason = "dtd"
		case errors.Is(err, cwmp.ErrTooDeep), errors.Is(err, cwmp.ErrTooManyElements):
			reason = "limits"
		case errors.Is(err, cwmp.ErrUnsupportedCharset):
			reason = "charset"
		case errors.Is(err, cwmp.ErrEnvelopeNamespace):
			reason = "envelope_namespace"
		case errors.Is(err, cwmp.ErrCWMPNamespace):
			reason = "cwmp_namespace"
		case errors.Is(err, cwmp.ErrTrailingData):
			reason = "trailing_data"
		case errors.Is(err, cwmp.ErrBodyTooLarge):
			a.badRequest(w, r, http.StatusRequestEntityTooLarge, "too_large", "body too large")
			return
		}
		a.refusals.Warn("undecodable CWMP message answered 400", "remote", r.RemoteAddr, "reason", reason, "err", err)
		a.badRequest(w, r, http.StatusBadRequest, reason, "bad SOAP envelope: "+reason)
		return
	}
	if inf, ok := env.Body.(*cwmp.Inform); ok {
		if s != nil && byConn {
			// A second Inform in the same session (TR-069 §3.7).
			a.badRequest(w, r, http.StatusBadRequest, "state", "Bad session state")
			return
		}
		if s != nil {
			// The cookie names a session but this is a new connection with
			// a new Inform: the CPE gave up on the old session (a drop or a
			// reboot, TR-069 §3.7); end it and start afresh.
			a.endSession(r.Context(), s, "superseded")
		}
		a.startSession(w, r, ci, env, inf, body, enc)
		return
	}
	if s == nil {
		a.badRequest(w, r, http.StatusBadRequest, "state", "Bad session state")
		return
	}
	s.busy.Store(true)
	defer s.busy.Store(false)
	s.touch()
	if _, ok := a.authenticate(r.Context(), w, r, ci, s.deviceID, body); !ok {
		return
	}
	ci.setSession(s)
	a.exchange(w, r, s, env, enc)
}

// decodeReasons are the reasons of undecodable messages, which the caller
// logs with their error (rate-limited).
var decodeReasons = map[string]bool{"malformed": true, "dtd": true, "limits": true, "charset": true,
	"envelope_namespace": true, "cwmp_namespace": true, "trailing_data": true}

// badRequest answers a 4xx with Connection: close, as GenieACS does for
// unparseable XML and bad state (TR-069 §3.4).
func (a *ACS) badRequest(w http.ResponseWriter, r *http.Request, status int, reason, msg string) {
	metricBadRequests.WithLabelValues(reason).Inc()
	if !decodeReasons[reason] {
		// Decode failures were logged with their error by the caller.
		a.refusals.Warn("CWMP request refused", "remote", r.RemoteAddr, "status", status, "reason", reason)
	}
	w.Header().Set("Connection", "close")
	http.Error(w, msg, status)
}

// sessionCookie finds session=<id> leniently: several Cookie headers,
// cookies separated by ';' or ',', quoted values (docs/cwmp-interop.md #9).
func sessionCookie(r *http.Request) string {
	for _, h := range r.Header.Values("Cookie") {
		for _, part := range strings.FieldsFunc(h, func(c rune) bool { return c == ';' || c == ',' }) {
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if ok && strings.EqualFold(strings.TrimSpace(k), cookieName) {
				return strings.Trim(strings.TrimSpace(v), `"`)
			}
		}
	}
	return ""
}

func (a *ACS) startSession(w http.ResponseWriter, r *http.Request, ci *connInfo, env *cwmp.Envelope, inf *cwmp.Inform, body []byte, enc string) {
	deviceID := devicemodel.CWMPDeviceID(inf.DeviceId.OUI, inf.DeviceId.ProductClass, inf.DeviceId.SerialNumber)
	if err := devicemodel.ValidateDeviceID(deviceID); err != nil {
		a.badRequest(w, r, http.StatusBadRequest, "device_id", "bad DeviceId")
		return
	}
	now := time.Now()
	// Per source before authenticating: a flood from one address costs no
	// credential lookups (per-device mode asks the controller).
	if ok, wait := a.perSrc.take(sourceHost(r.RemoteAddr), now); !ok {
		a.refusals.Warn("CWMP informs from one source over DUET_CWMP_INFORM_RATE_SOURCE; 503", "remote", r.RemoteAddr)
		shed(w, "source_rate", wait, "informing too often from this address")
		return
	}
	ci.forgetAuth()
	auth, ok := a.authenticate(r.Context(), w, r, ci, deviceID, body)
	if !ok {
		return
	}
	// Per device only once the identity is authenticated, so nobody can
	// spend another device's budget.
	if ok, wait := a.perDev.take(deviceID, now); !ok {
		a.refusals.Warn("CWMP informs of one device over DUET_CWMP_INFORM_RATE_DEVICE; 503", "device", deviceID, "remote", r.RemoteAddr)
		shed(w, "device_rate", wait, "informing too often")
		return
	}
	if !a.informs.allow(deviceID, now) {
		metricShed.WithLabelValues("inform_interval").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(a.o.MinInformInterval/time.Second)+1))
		http.Error(w, "informing too often", http.StatusServiceUnavailable)
		return
	}
	s := &session{
		id:        bus.NewID(),
		deviceID:  deviceID,
		ns:        env.Namespace,
		started:   now,
		state:     stateCPE,
		auth:      auth,
		bootstrap: hasEvent(inf, cwmp.EventBootstrap),
	}
	s.touch()
	s.ident, s.reach, s.root = identityFromInform(deviceID, inf, ci.remote)
	if why := a.sessions.add(s); why != "" {
		if why == "device_sessions" {
			a.refusals.Warn("CWMP device already holds DUET_CWMP_MAX_SESSIONS_PER_DEVICE open sessions; 503", "device", deviceID, "remote", r.RemoteAddr)
		}
		shed(w, why, time.Minute, "too many sessions")
		return
	}
	s.busy.Store(true)
	defer s.busy.Store(false)
	s.mu.Lock()
	defer s.mu.Unlock()
	log := a.log.With("device", deviceID, "session", s.id)
	// Events are stored before the InformResponse: until it arrives the CPE
	// keeps its events and re-sends them, so nothing is lost if the bus is
	// down (TR-069 §3.7).
	if err := a.publishInform(r.Context(), s, env, inf); err != nil {
		log.Warn("could not store Inform events; refusing the session so the CPE retries", "err", err)
		a.sessions.remove(s)
		s.endedF.Store(true)
		metricShed.WithLabelValues("bus").Inc()
		w.Header().Set("Retry-After", "60")
		http.Error(w, "event store unavailable", http.StatusServiceUnavailable)
		return
	}
	if hasEvent(inf, cwmp.EventDiagnosticsComplete) {
		s.internal = append(s.internal, a.diagnosticsJob(s))
	}
	metricInforms.Inc()
	ci.setSession(s)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: s.id, Path: a.o.Path, HttpOnly: true})
	a.reply(w, s, enc, env.Header.ID, &cwmp.InformResponse{MaxEnvelopes: 1})
	log.Debug("session started", "events", len(inf.Event), "retry", inf.RetryCount)
}

func hasEvent(inf *cwmp.Inform, code string) bool {
	for _, e := range inf.Event {
		if strings.EqualFold(strings.TrimSpace(e.EventCode), code) {
			return true
		}
	}
	return false
}

// exchange handles one POST of an open session.
func (a *ACS) exchange(w http.ResponseWriter, r *http.Request, s *session, env *cwmp.Envelope, enc string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stateEnded {
		a.badRequest(w, r, http.StatusBadRequest, "state", "Bad session state")
		return
	}
	ctx := r.Context()
	switch m := env.Body.(type) {
	case nil:
		if s.state == stateCPE {
			s.state = stateACS
		} else if s.sent != nil {
			// An empty POST while a request is outstanding: the CPE will
			// not answer it. Record that and carry on (docs/cwmp-interop.md #20).
			a.deliver(ctx, s, nil, devicemodel.Errorf(devicemodel.CodeOutcomeUnknown,
				"CPE sent an empty POST instead of answering %s", s.sent.MethodName()))
		}
		a.sendNext(w, ctx, s, enc)
	case *cwmp.UnknownMethod:
		// docs/cwmp-interop.md #19: fault 8000, the session goes on.
		a.reply(w, s, enc, env.Header.ID, cwmp.NewFault(cwmp.FaultACSMethodNotSupported, ""))
	case *cwmp.Fault:
		a.response(w, ctx, s, enc, m)
	default:
		if strings.HasSuffix(m.MethodName(), "Response") {
			a.response(w, ctx, s, enc, m)
			return
		}
		resp := a.cpeRequest(ctx, s, m)
		a.reply(w, s, enc, env.Header.ID, resp)
	}
}

// response handles a CPE's answer to the request we sent.
func (a *ACS) response(w http.ResponseWriter, ctx context.Context, s *session, enc string, m cwmp.Message) {
	if s.state != stateACS || s.sent == nil {
		metricBadRequests.WithLabelValues("state").Inc()
		a.refusals.Warn("CWMP response outside the ACS's turn refused", "device", s.deviceID, "method", m.MethodName())
		w.Header().Set("Connection", "close")
		http.Error(w, "Bad session state", http.StatusBadRequest)
		return
	}
	var err *devicemodel.Error
	if f, ok := m.(*cwmp.Fault); ok {
		err = f.Err()
		metricFaults.WithLabelValues(strconv.FormatUint(uint64(f.Detail.FaultCode), 10)).Inc()
	} else if want := s.sent.MethodName() + "Response"; m.MethodName() != want {
		// docs/cwmp-interop.md #20: record a fault against the request and go on.
		err = devicemodel.Errorf(devicemodel.CodeInternal, "CPE answered %s with %s", s.sent.MethodName(), m.MethodName())
	}
	a.deliver(ctx, s, m, err)
	a.sendNext(w, ctx, s, enc)
}

// deliver hands the outcome of the outstanding request to its job.
func (a *ACS) deliver(ctx context.Context, s *session, m cwmp.Message, err *devicemodel.Error) {
	outcome := "ok"
	if err != nil {
		outcome = "fault"
		if err.DeviceFault == 0 {
			outcome = "error"
		}
	}
	metricRPCs.WithLabelValues(s.sent.MethodName(), outcome).Inc()
	s.sent = nil
	if s.cur != nil {
		if err != nil {
			s.cur.op.handle(nil, err)
		} else {
			s.cur.op.handle(m, nil)
		}
	}
}

// sendNext replies with the next ACS request, or ends the session with 204
// when there is nothing left (TR-069 §3.7).
func (a *ACS) sendNext(w http.ResponseWriter, ctx context.Context, s *session, enc string) {
	msg := a.next(ctx, s)
	if msg == nil {
		a.endLocked(ctx, s, "done")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	s.sent = msg
	s.msgID++
	a.reply(w, s, enc, "duet-"+strconv.Itoa(s.msgID), msg)
}

// next runs the work loop until an RPC is ready or the session has no more
// work: finish jobs, publish their results, and ask the controller for the
// next batch with the previous batch's results.
func (a *ACS) next(ctx context.Context, s *session) cwmp.Message {
	for asks := 0; ; {
		if s.cur != nil {
			if msg := s.cur.op.next(); msg != nil {
				if s.rpcs >= a.o.MaxRPCsPerSession {
					s.cur.op.fail(devicemodel.Errorf(devicemodel.CodeResourcesExceeded,
						"session reached its limit of %d RPCs", a.o.MaxRPCsPerSession))
				} else {
					s.rpcs++
					return msg
				}
			}
			a.finish(ctx, s, s.cur)
			s.cur = nil
		}
		switch {
		case len(s.internal) > 0:
			s.cur, s.internal = s.internal[0], s.internal[1:]
			continue
		case len(s.queue) > 0:
			s.cur, s.queue = s.queue[0], s.queue[1:]
			continue
		}
		if s.rpcs >= a.o.MaxRPCsPerSession || asks > 64 {
			return nil
		}
		asks++
		cmds, err := a.askWork(ctx, s)
		if err != nil {
			// Controller down or slow: end the session, never hang
			// (the CPE informs again later).
			a.log.Warn("asking for session work failed; ending the session", "device", s.deviceID, "session", s.id, "err", err)
			return nil
		}
		if len(cmds) == 0 {
			return nil
		}
		for _, c := range cmds {
			s.queue = append(s.queue, a.newJob(s, c))
		}
	}
}

func (a *ACS) askWork(ctx context.Context, s *session) ([]*duetv1.Command, error) {
	ctx, cancel := context.WithTimeout(ctx, a.o.SessionTimeout)
	defer cancel()
	req := &duetv1.SessionWorkRequest{DeviceId: s.deviceID, SessionId: s.id, Round: s.round, Results: s.results}
	if s.round == 0 {
		// The controller's credential enrolment acts on these.
		req.Auth, req.Bootstrap = s.auth, s.bootstrap
	}
	s.round++
	s.results = nil
	work, err := a.o.Bus.AskWork(ctx, req)
	if err != nil {
		return nil, err
	}
	// Commands past MaxRPCsPerSession are not dropped: each gets a
	// resources_exceeded result so the controller knows to re-issue it.
	return work.GetCommands(), nil
}

// finish records a finished job: its result goes into the next work
// request and, for controller commands, onto the bus as a command_result
// event so it is durable.
func (a *ACS) finish(ctx context.Context, s *session, j *job) {
	if j.internal != nil {
		j.internal(ctx, j)
		return
	}
	res := j.op.result()
	res.CommandId, res.DeviceId = j.cmd.GetId(), s.deviceID
	s.results = append(s.results, res)
	a.publish(ctx, s, &duetv1.Event{Kind: &duetv1.Event_CommandResult{CommandResult: res}})
}

// endSession ends s from outside an exchange (reaper, shutdown, a new
// Inform on another connection).
func (a *ACS) endSession(ctx context.Context, s *session, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a.endLocked(ctx, s, why)
}

// endLocked ends the session once. Commands that did not finish get a
// result anyway: the one in flight may or may not have run (outcome
// unknown), the others never started (unavailable); the controller decides
// whether to re-issue them (TR-069 §3.7).
func (a *ACS) endLocked(ctx context.Context, s *session, why string) {
	if s.state == stateEnded {
		return
	}
	s.state = stateEnded
	s.endedF.Store(true)
	if s.cur != nil && s.cur.internal == nil {
		if s.sent != nil {
			s.cur.op.fail(devicemodel.Errorf(devicemodel.CodeOutcomeUnknown, "session ended (%s) while waiting for %s", why, s.sent.MethodName()))
		} else {
			s.cur.op.fail(devicemodel.Errorf(devicemodel.CodeUnavailable, "session ended (%s)", why))
		}
		a.finish(ctx, s, s.cur)
	}
	for _, j := range s.queue {
		j.op.fail(devicemodel.Errorf(devicemodel.CodeUnavailable, "session ended (%s) before the command ran", why))
		a.finish(ctx, s, j)
	}
	s.cur, s.queue, s.internal, s.sent = nil, nil, nil, nil
	if a.sessions.remove(s) {
		metricSessionsTotal.WithLabelValues(why).Inc()
		metricSessionSeconds.Observe(time.Since(s.started).Seconds())
	}
	a.log.Debug("session ended", "device", s.deviceID, "session", s.id, "why", why, "rpcs", s.rpcs)
}

// reply encodes msg in the CPE's namespace and writes it, compressed like
// the request was (docs/cwmp-interop.md #8).
func (a *ACS) reply(w http.ResponseWriter, s *session, enc, id string, msg cwmp.Message) {
	b, err := cwmp.Encode(&cwmp.Envelope{Namespace: s.ns, Header: cwmp.Header{ID: id}, Body: msg})
	if err != nil {
		a.log.Error("encoding a CWMP message failed", "method", msg.MethodName(), "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", cwmp.ContentType)
	switch enc {
	case "gzip", "x-gzip", "deflate":
		var buf bytes.Buffer
		if enc == "deflate" {
			zw := zlib.NewWriter(&buf)
			zw.Write(b)
			zw.Close()
		} else {
			zw := gzip.NewWriter(&buf)
			zw.Write(b)
			zw.Close()
		}
		h.Set("Content-Encoding", enc)
		b = buf.Bytes()
	}
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}
