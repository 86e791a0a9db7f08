package usp

import (
	"context"
	"time"
)

// An agent held for approval (DUET_USP_ADMISSION=hold) usually stays
// connected: a WebSocket agent keeps its connection, a broker agent its
// subscription, and neither sends again until it has a reason to. So the
// endpoint remembers where each held agent was heard (heldAgent) and reads
// its admission state again every HeldRecheckInterval: once approved it
// is served as if its Connect record had just come (session, online,
// onboarding); once rejected, an MTP that can (Disconnecter, the
// WebSocket) closes its connection.

// Disconnecter is an MTP that can close one agent's connection.
type Disconnecter interface {
	DisconnectAgent(eid, why string)
}

// heldAgent is where a held agent was last heard.
type heldAgent struct {
	mtp  MTP
	from Address
	at   time.Time
}

// Bounds of the held set: agents heard within heldTTL, at most maxHeld.
const (
	heldTTL = 10 * time.Minute
	maxHeld = 10_000
)

// hold remembers a held agent's latest address.
func (e *Endpoint) hold(mtp MTP, eid string, from Address) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.held[eid]; !ok && len(e.held) >= maxHeld {
		return // the rest are re-checked when they send again
	}
	e.held[eid] = heldAgent{mtp: mtp, from: from, at: time.Now()}
}

// unhold forgets eid if it was held on mtp (its connection closed).
func (e *Endpoint) unhold(mtp MTP, eid string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if h, ok := e.held[eid]; ok && h.mtp == mtp {
		delete(e.held, eid)
	}
}

// runHeldRecheck reads the admission state of held agents again.
func (e *Endpoint) runHeldRecheck() {
	defer e.wg.Done()
	tick := time.NewTicker(e.opts.HeldRecheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-tick.C:
		}
		e.recheckHeld()
	}
}

func (e *Endpoint) recheckHeld() {
	now := time.Now()
	e.mu.Lock()
	due := make(map[string]heldAgent, len(e.held))
	for eid, h := range e.held {
		if now.Sub(h.at) > heldTTL {
			delete(e.held, eid)
			continue
		}
		due[eid] = h
	}
	e.mu.Unlock()
	for eid, h := range due {
		if e.ctx.Err() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
		st, err := e.opts.Admission.Directory.AdmissionState(ctx, eid)
		cancel()
		if err != nil {
			e.log.Warn("re-reading a held agent's admission failed", "device", eid, "err", err)
			continue
		}
		switch st {
		case "approved":
			e.decided(eid, h, true)
			metricAdmission.WithLabelValues("approved").Inc()
			e.log.Info("held usp agent approved; serving it on its open connection", "device", eid, "mtp", h.mtp.Name())
			e.connected(h.mtp, eid, h.from)
		case "rejected":
			e.decided(eid, h, false)
			metricAdmission.WithLabelValues("rejected").Inc()
			e.log.Info("held usp agent rejected", "device", eid, "mtp", h.mtp.Name())
			if d, ok := h.mtp.(Disconnecter); ok {
				d.DisconnectAgent(eid, "rejected by an operator")
			}
		}
	}
}

// decided ends eid's hold (unless it was heard again elsewhere meanwhile)
// and caches the decision for its next records.
func (e *Endpoint) decided(eid string, h heldAgent, admit bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if cur, ok := e.held[eid]; ok && cur.mtp == h.mtp {
		delete(e.held, eid)
	}
	e.admitted.put(eid, admissionDecision{admit: admit, until: time.Now().Add(admissionTTL)})
}
