package usp

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	pkgusp "github.com/duet-dm/duet/pkg/usp"
)

// Drop reasons of identity checks (issue 15 §2; docs/guide-usp.md, securing USP).
const (
	// DropReplyOutsidePattern: the record asks to be answered at an address
	// other than its endpoint's own (Options.ReplyPatterns).
	DropReplyOutsidePattern = "reply_outside_pattern"
	// DropNotAdmitted: admission refused the unknown endpoint ID.
	DropNotAdmitted = "not_admitted"
	// DropHeld: the endpoint ID waits for an operator's approval.
	DropHeld = "held"
)

var metricAdmission = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_usp_admission_total",
	Help: "Admission decisions on endpoint IDs without a session, by outcome (allowed, known, approved, held, refused, rejected, error).",
}, []string{"outcome"})

// Admission modes (DUET_USP_ADMISSION).
const (
	AdmitAccept = "accept" // every endpoint ID
	AdmitHold   = "hold"   // unknown ones wait for approval
	AdmitRefuse = "refuse" // unknown ones are refused
)

// AgentDirectory is what admission asks of the registry (cmd/duet backs
// it with PostgreSQL).
type AgentDirectory interface {
	// KnownUSPAgent: a device of the registry, or an agent with a secret.
	KnownUSPAgent(ctx context.Context, eid string) (bool, error)
	// AdmissionState: "approved", "rejected", "pending" or "".
	AdmissionState(ctx context.Context, eid string) (string, error)
	// HoldUSPAgent records an attempt of an unknown agent and returns its
	// state ("" when no more agents can be held).
	HoldUSPAgent(ctx context.Context, eid, mtp, peer string) (string, error)
}

// Admission decides which endpoint IDs the Controller talks to.
type Admission struct {
	// Mode is AdmitAccept (the default), AdmitHold or AdmitRefuse.
	Mode string
	// Allow lists endpoint-ID patterns ('*' wildcards) admitted without a
	// look-up, in every mode.
	Allow []string
	// Directory is required with AdmitHold and AdmitRefuse.
	Directory AgentDirectory
}

func (a *Admission) validate() error {
	switch a.Mode {
	case "":
		a.Mode = AdmitAccept
	case AdmitAccept:
	case AdmitHold, AdmitRefuse:
		if a.Directory == nil {
			return fmt.Errorf("usp: Options.Admission.Mode %q needs a Directory", a.Mode)
		}
	default:
		return fmt.Errorf("usp: Options.Admission.Mode %q: accepted values are accept, hold and refuse", a.Mode)
	}
	return nil
}

// admissionTTL is how long a decision is remembered: a refused agent
// retrying costs no query within it, and an operator's approval takes
// effect within it.
const admissionTTL = 30 * time.Second

type admissionDecision struct {
	admit bool
	until time.Time
}

// admit decides whether a record of eid (that has no session) is
// processed. It fails closed: a look-up error refuses.
func (e *Endpoint) admit(mtp MTP, eid string, from Address) (ok bool, reason string) {
	adm := e.opts.Admission
	if adm.Mode == AdmitAccept {
		return true, ""
	}
	if pkgusp.MatchAnyEndpointPattern(adm.Allow, eid) {
		metricAdmission.WithLabelValues("allowed").Inc()
		return true, ""
	}
	now := time.Now()
	e.mu.Lock()
	d, cached := e.admitted.get(eid)
	e.mu.Unlock()
	if cached && now.Before(d.until) {
		if d.admit {
			return true, ""
		}
		return false, DropNotAdmitted
	}
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	outcome, reason := e.lookUpAdmission(ctx, mtp, eid, from)
	metricAdmission.WithLabelValues(outcome).Inc()
	ok = reason == ""
	e.mu.Lock()
	e.admitted.put(eid, admissionDecision{admit: ok, until: now.Add(admissionTTL)})
	e.mu.Unlock()
	if !ok {
		e.refusals.Warn("usp agent not admitted", "device", eid, "mtp", mtp.Name(), "outcome", outcome, "mode", adm.Mode)
	}
	return ok, reason
}

func (e *Endpoint) lookUpAdmission(ctx context.Context, mtp MTP, eid string, from Address) (outcome, reason string) {
	dir := e.opts.Admission.Directory
	st, err := dir.AdmissionState(ctx, eid)
	if err != nil {
		e.log.Error("usp admission look-up failed; agent refused", "device", eid, "err", err)
		return "error", DropNotAdmitted
	}
	switch st {
	case "approved":
		return "approved", ""
	case "rejected":
		return "rejected", DropNotAdmitted
	}
	known, err := dir.KnownUSPAgent(ctx, eid)
	if err != nil {
		e.log.Error("usp admission look-up failed; agent refused", "device", eid, "err", err)
		return "error", DropNotAdmitted
	}
	if known {
		return "known", ""
	}
	if e.opts.Admission.Mode == AdmitRefuse {
		return "refused", DropNotAdmitted
	}
	st, err = dir.HoldUSPAgent(ctx, eid, mtp.Name(), from.reachability())
	switch {
	case err != nil:
		e.log.Error("usp admission: cannot hold agent; refused", "device", eid, "err", err)
		return "error", DropNotAdmitted
	case st == "approved": // decided between the two queries
		return "approved", ""
	case st == "pending":
		e.log.Info("usp agent held for approval", "device", eid, "mtp", mtp.Name())
		return "held", DropHeld
	}
	return "refused", DropNotAdmitted
}

// checkReply refuses a reply address outside the pattern of its MTP
// (Options.ReplyPatterns): with a broker, whoever can publish to the
// Controller's topic can name any response topic, and Duet would send
// the agent's next requests there (issue 15 §2).
func (e *Endpoint) checkReply(mtp MTP, eid, reply string) error {
	pattern := e.opts.ReplyPatterns[mtp.Name()]
	if pattern == "" || reply == "" {
		return nil
	}
	want, ok := pkgusp.ExpandTopicPattern(pattern, eid)
	if ok && reply == want {
		return nil
	}
	return fmt.Errorf("reply address %q is not %q (%s reply pattern %q)", reply, want, mtp.Name(), pattern)
}

// validReplyPattern checks a pattern of Options.ReplyPatterns.
func validReplyPattern(mtp, p string) error {
	if p == "" {
		return nil
	}
	if !strings.Contains(p, "{endpoint}") {
		return fmt.Errorf("usp: Options.ReplyPatterns[%s] %q must contain {endpoint}", mtp, p)
	}
	if strings.ContainsAny(strings.ReplaceAll(p, "{endpoint}", ""), "+#") {
		return fmt.Errorf("usp: Options.ReplyPatterns[%s] %q must not contain MQTT wildcards", mtp, p)
	}
	return nil
}
