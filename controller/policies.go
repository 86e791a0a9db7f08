package controller

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// PoliciesOptions configure NewPolicies.
type PoliciesOptions struct {
	// Store is required.
	Store *store.Store
	// Bus gets rollout progress events of operator actions (nil: none).
	Bus *bus.Bus
	// Env is what management policies need to know of this installation
	// (the controller's USP endpoint ID), for previews.
	Env    policy.Env
	Logger *slog.Logger
}

// Policies is what operators do with groups, management policies and
// their rollouts (issue 6): every change is checked here and recorded in
// the audit log under the actor given.
type Policies struct {
	o PoliciesOptions
}

// NewPolicies serves groups, policies and rollouts.
func NewPolicies(o PoliciesOptions) *Policies {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Policies{o: o}
}

// CreateGroup checks the filter (a type error carries its line:column)
// and stores a new group.
func (p *Policies) CreateGroup(ctx context.Context, actor, name, filter string) (store.Group, error) {
	if _, err := policy.CompileFilter(filter); err != nil {
		return store.Group{}, err
	}
	return p.o.Store.CreateGroup(ctx, actor, store.Group{Name: name, Filter: filter})
}

// UpdateGroup checks the filter and replaces a group's name and filter.
func (p *Policies) UpdateGroup(ctx context.Context, actor, id, name, filter string) (store.Group, error) {
	if _, err := policy.CompileFilter(filter); err != nil {
		return store.Group{}, err
	}
	return p.o.Store.UpdateGroup(ctx, actor, store.Group{ID: id, Name: name, Filter: filter})
}

// PolicyInput is a policy as an operator writes it.
type PolicyInput struct {
	GroupID  string
	Name     string
	Priority int
	Kind     string
	Spec     json.RawMessage
	// Enabled is refused: enabling goes with a rollout strategy, through
	// EnablePolicy.
	Enabled bool
}

// checkPolicy validates a policy as written.
func checkPolicy(in PolicyInput) (store.Policy, error) {
	if _, err := policy.ValidateSpec(in.Kind, in.Spec); err != nil {
		return store.Policy{}, err
	}
	if in.Enabled {
		// Enabling starts changing devices, so it always goes with a
		// rollout strategy, through its own route.
		return store.Policy{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "enabled: a policy is enabled with POST /api/v1/policies/{id}/enable and a rollout strategy; save it, preview it, then enable it")
	}
	return store.Policy{GroupID: in.GroupID, Name: in.Name, Priority: in.Priority, Kind: in.Kind, Spec: in.Spec}, nil
}

// CreatePolicy stores a new policy, disabled, in an existing group.
func (p *Policies) CreatePolicy(ctx context.Context, actor string, in PolicyInput) (store.Policy, error) {
	pol, err := checkPolicy(in)
	if err != nil {
		return store.Policy{}, err
	}
	if _, err := p.o.Store.FindGroupByID(ctx, pol.GroupID); err != nil {
		if devicemodel.ErrorCode(err) == devicemodel.CodeNotFound {
			return store.Policy{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "group_id %q: no such group", pol.GroupID)
		}
		return store.Policy{}, err
	}
	return p.o.Store.CreatePolicy(ctx, actor, pol)
}

// UpdatePolicy replaces a policy; it cannot move to another group.
func (p *Policies) UpdatePolicy(ctx context.Context, actor, id string, in PolicyInput) (store.Policy, error) {
	cur, err := p.o.Store.FindPolicyByID(ctx, id)
	if err != nil {
		return store.Policy{}, err
	}
	// The API shows secret values as "***"; sent back, they keep theirs.
	if in.Spec, err = RestoreRedacted(in.Spec, cur.Spec); err != nil {
		return store.Policy{}, err
	}
	pol, err := checkPolicy(in)
	if err != nil {
		return store.Policy{}, err
	}
	if pol.GroupID != "" && pol.GroupID != cur.GroupID {
		return store.Policy{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "group_id: a policy cannot move to another group; create a new one")
	}
	pol.ID, pol.GroupID = cur.ID, cur.GroupID
	return p.o.Store.UpdatePolicy(ctx, actor, pol)
}

// PreviewPolicy says, per member device of its group, what a saved
// policy would change; cursor and limit page through the group.
func (p *Policies) PreviewPolicy(ctx context.Context, id, cursor string, limit int) (policy.PreviewPage, error) {
	pol, err := p.o.Store.FindPolicyByID(ctx, id)
	if err != nil {
		return policy.PreviewPage{}, err
	}
	spec, err := policy.ValidateSpec(pol.Kind, pol.Spec)
	if err != nil {
		return policy.PreviewPage{}, err
	}
	env := p.o.Env
	env.PolicyID = pol.ID
	return p.preview(ctx, pol.GroupID, spec, env, cursor, limit)
}

// PreviewUnsaved is PreviewPolicy for a policy not saved yet.
func (p *Policies) PreviewUnsaved(ctx context.Context, in PolicyInput, cursor string, limit int) (policy.PreviewPage, error) {
	spec, err := policy.ValidateSpec(in.Kind, in.Spec)
	if err != nil {
		return policy.PreviewPage{}, err
	}
	env := p.o.Env
	// Names what the policy would create (USP subscription IDs); the
	// saved policy's own ID replaces it.
	env.PolicyID = "preview"
	return p.preview(ctx, in.GroupID, spec, env, cursor, limit)
}

func (p *Policies) preview(ctx context.Context, groupID string, spec *policy.CheckedSpec, env policy.Env, cursor string, limit int) (policy.PreviewPage, error) {
	grp, err := p.o.Store.FindGroupByID(ctx, groupID)
	if err != nil {
		return policy.PreviewPage{}, err
	}
	return policy.Preview(ctx, p.o.Store, grp, spec, env, cursor, limit)
}

// RolloutProgress is where a policy's rollout stands.
type RolloutProgress struct {
	store.Rollout
	Revision int
	Counts   store.RolloutCounts
	// FailureRate is failed / finished (Counts): devices that failed
	// before admission included. The automatic stop judges admitted
	// devices only (RolloutCounts.AdmittedFailureRate).
	FailureRate float64
	// NextWindow is when the maintenance window next opens, if the
	// strategy has one.
	NextWindow *time.Time
}

// EnablePolicy starts rolling a policy out with strategy (a
// RolloutStrategy in JSON; empty: the defaults).
func (p *Policies) EnablePolicy(ctx context.Context, actor, id string, strategy json.RawMessage) (RolloutProgress, error) {
	s, err := ParseRolloutStrategy(strategy)
	if err != nil {
		return RolloutProgress{}, err
	}
	pol, err := p.o.Store.FindPolicyByID(ctx, id)
	if err != nil {
		return RolloutProgress{}, err
	}
	// The stored spec is checked again: enabling is the moment it starts
	// to change devices.
	if _, err := policy.ValidateSpec(pol.Kind, pol.Spec); err != nil {
		return RolloutProgress{}, err
	}
	// Stored with defaults filled in, so the strategy in force is the one
	// shown.
	raw, err := json.Marshal(s)
	if err != nil {
		return RolloutProgress{}, err
	}
	ro, err := p.o.Store.EnablePolicy(ctx, actor, pol.ID, raw, s.BatchSize)
	if err != nil {
		return RolloutProgress{}, err
	}
	PublishRollout(ctx, p.o.Bus, p.o.Logger, pol.ID, pol.Revision, ro, "enabled", store.RolloutCounts{})
	return p.Rollout(ctx, pol.ID)
}

// Rollout returns the progress of a policy's rollout.
func (p *Policies) Rollout(ctx context.Context, id string) (RolloutProgress, error) {
	pol, err := p.o.Store.FindPolicyByID(ctx, id)
	if err != nil {
		return RolloutProgress{}, err
	}
	ro, err := p.o.Store.FindRollout(ctx, id)
	if err != nil {
		return RolloutProgress{}, err
	}
	c, err := p.o.Store.CountRollout(ctx, id, ro.Batch)
	if err != nil {
		return RolloutProgress{}, err
	}
	if pol.Kind == policy.KindFirmware {
		// A campaign's progress by version (issue 14 §4).
		if c.ByVersion, err = p.o.Store.CountVersions(ctx, id); err != nil {
			return RolloutProgress{}, err
		}
	}
	v := RolloutProgress{Rollout: ro, Revision: pol.Revision, Counts: c}
	if c.Finished > 0 {
		v.FailureRate = float64(c.Failed) / float64(c.Finished)
	}
	if s, err := ParseRolloutStrategy(ro.Strategy); err == nil {
		if t := s.NextWindow(time.Now()); !t.IsZero() {
			v.NextWindow = &t
		}
	}
	return v, nil
}

// RolloutAction is what an operator does to a running rollout.
type RolloutAction string

// The rollout actions.
const (
	// RolloutPause: no new work until resumed.
	RolloutPause RolloutAction = "pause"
	// RolloutResume: after a pause or an automatic stop; with
	// retryFailed, also a completed rollout.
	RolloutResume RolloutAction = "resume"
	// RolloutAbort: stop for good; the policy is disabled.
	RolloutAbort RolloutAction = "abort"
)

// MaxRolloutReason bounds the reason an operator gives for an action.
const MaxRolloutReason = 500

// ChangeRollout pauses, resumes or aborts a policy's rollout. reason is
// optional (default "<done> by <actor>"); retryFailed (resume only) tries
// the failed devices again, as the operator says the cause is fixed.
func (p *Policies) ChangeRollout(ctx context.Context, actor, id string, action RolloutAction, reason string, retryFailed bool) (RolloutProgress, error) {
	var to, change string
	var from []string
	switch action {
	case RolloutPause:
		to, change, from = store.RolloutPaused, "paused", []string{store.RolloutRunning}
	case RolloutResume:
		to, change, from = store.RolloutRunning, "resumed", []string{store.RolloutPaused, store.RolloutStopped}
	case RolloutAbort:
		to, change, from = store.RolloutAborted, "aborted", []string{store.RolloutRunning, store.RolloutPaused, store.RolloutStopped, store.RolloutCompleted}
	default:
		return RolloutProgress{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "rollout action %q: one of pause, resume, abort", action)
	}
	if len(reason) > MaxRolloutReason {
		return RolloutProgress{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "reason is longer than %d characters", MaxRolloutReason)
	}
	if retryFailed && to != store.RolloutRunning {
		return RolloutProgress{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "retry_failed is an option of resume")
	}
	pol, err := p.o.Store.FindPolicyByID(ctx, id)
	if err != nil {
		return RolloutProgress{}, err
	}
	if reason == "" && to != store.RolloutRunning {
		reason = change + " by " + actor
	}
	var ro store.Rollout
	if to == store.RolloutRunning {
		// A completed rollout resumes too, to retry its failed devices
		// (store.ResumeRollout).
		ro, _, err = p.o.Store.ResumeRollout(ctx, actor, id, retryFailed)
	} else {
		ro, err = p.o.Store.SetRolloutState(ctx, actor, id, from, to, reason)
	}
	if err != nil {
		return RolloutProgress{}, err
	}
	c, _ := p.o.Store.CountRollout(ctx, id, ro.Batch)
	if pol.Kind == policy.KindFirmware {
		c.ByVersion, _ = p.o.Store.CountVersions(ctx, id)
	}
	PublishRollout(ctx, p.o.Bus, p.o.Logger, id, pol.Revision, ro, change, c)
	if to == store.RolloutAborted {
		return RolloutProgress{Rollout: ro, Revision: pol.Revision, Counts: c}, nil
	}
	return p.Rollout(ctx, id)
}

// ValidPolicyStatus reports whether s is a per-device policy status:
// compliant, pending, applying, failed or conflicting.
func ValidPolicyStatus(s string) bool {
	switch s {
	case store.StatusCompliant, store.StatusPending, store.StatusApplying, store.StatusFailed, store.StatusConflicting:
		return true
	}
	return false
}
