package controller

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// EnableRequest is the body of POST /api/v1/policies/{id}/enable.
type EnableRequest struct {
	// Rollout is the strategy (RolloutStrategy); omitted: the defaults.
	Rollout json.RawMessage `json:"rollout"`
}

// RolloutActionRequest is the body of pause, resume and abort (all
// fields optional).
type RolloutActionRequest struct {
	Reason string `json:"reason,omitempty"`
	// RetryFailed (resume): the failed devices are tried again, as the
	// operator says the cause is fixed. A changed policy retries them
	// anyway (its revision moved).
	RetryFailed bool `json:"retry_failed,omitempty"`
}

// RolloutView is the body of GET /api/v1/policies/{id}/rollout.
type RolloutView struct {
	store.Rollout
	Revision int                 `json:"revision"`
	Counts   store.RolloutCounts `json:"counts"`
	// FailureRate is failed / finished (Counts): devices that failed
	// before admission included. The automatic stop judges admitted
	// devices only (RolloutCounts.AdmittedFailureRate).
	FailureRate float64 `json:"failure_rate"`
	// NextWindow is when the maintenance window next opens, if the
	// strategy has one.
	NextWindow *time.Time `json:"next_window,omitempty"`
}

// StatusList is the body of GET /api/v1/policies/{id}/devices and
// GET /api/v1/devices/{id}/policies.
type StatusList struct {
	Statuses   []store.PolicyStatus `json:"statuses"`
	NextCursor string               `json:"next_cursor,omitempty"`
}

// registerRolloutRoutes is called by registerPolicyRoutes.
//
//	POST /api/v1/policies/{id}/enable          enable with a rollout strategy
//	GET  /api/v1/policies/{id}/rollout         progress
//	POST /api/v1/policies/{id}/rollout/pause   no new work until resumed
//	POST /api/v1/policies/{id}/rollout/resume  after a pause or an automatic stop; with retry_failed, also a completed one
//	POST /api/v1/policies/{id}/rollout/abort   stop for good: the policy is disabled
//	GET  /api/v1/policies/{id}/devices         per-device status, ?status=&limit=&cursor=
//	GET  /api/v1/devices/{id}/policies         a device's status per policy
func (g *groupRoutes) registerRolloutRoutes(wrap func(pattern string, h func(http.ResponseWriter, *http.Request) (int, error))) {
	wrap("POST /api/v1/policies/{id}/enable", g.enablePolicy)
	wrap("GET /api/v1/policies/{id}/rollout", g.getRollout)
	wrap("POST /api/v1/policies/{id}/rollout/pause", g.rolloutAction(store.RolloutPaused, "paused", store.RolloutRunning))
	wrap("POST /api/v1/policies/{id}/rollout/resume", g.rolloutAction(store.RolloutRunning, "resumed", store.RolloutPaused, store.RolloutStopped))
	wrap("POST /api/v1/policies/{id}/rollout/abort", g.rolloutAction(store.RolloutAborted, "aborted",
		store.RolloutRunning, store.RolloutPaused, store.RolloutStopped, store.RolloutCompleted))
	wrap("GET /api/v1/policies/{id}/devices", g.policyStatuses)
	wrap("GET /api/v1/devices/{id}/policies", g.deviceStatuses)
}

func (g *groupRoutes) enablePolicy(w http.ResponseWriter, r *http.Request) (int, error) {
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	var req EnableRequest
	if err := decodeBody(w, r, maxPolicyBody, &req); err != nil {
		return 0, err
	}
	s, err := ParseRolloutStrategy(req.Rollout)
	if err != nil {
		return 0, err
	}
	p, err := g.store.FindPolicyByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	// The stored spec is checked again: enabling is the moment it starts
	// to change devices.
	if _, err := policy.ValidateSpec(p.Kind, p.Spec); err != nil {
		return 0, err
	}
	// Stored with defaults filled in, so the strategy in force is the one
	// shown.
	strategy, err := json.Marshal(s)
	if err != nil {
		return 0, err
	}
	ro, err := g.store.EnablePolicy(r.Context(), who, p.ID, strategy, s.BatchSize)
	if err != nil {
		return 0, err
	}
	PublishRollout(r.Context(), g.bus, g.log, p.ID, p.Revision, ro, "enabled", store.RolloutCounts{})
	return g.rolloutView(w, r, p.ID)
}

func (g *groupRoutes) getRollout(w http.ResponseWriter, r *http.Request) (int, error) {
	return g.rolloutView(w, r, r.PathValue("id"))
}

func (g *groupRoutes) rolloutView(w http.ResponseWriter, r *http.Request, id string) (int, error) {
	p, err := g.store.FindPolicyByID(r.Context(), id)
	if err != nil {
		return 0, err
	}
	ro, err := g.store.FindRollout(r.Context(), id)
	if err != nil {
		return 0, err
	}
	c, err := g.store.CountRollout(r.Context(), id, ro.Batch)
	if err != nil {
		return 0, err
	}
	if p.Kind == policy.KindFirmware {
		if c.ByVersion, err = g.store.CountVersions(r.Context(), id); err != nil {
			return 0, err
		}
	}
	v := RolloutView{Rollout: ro, Revision: p.Revision, Counts: c}
	if c.Finished > 0 {
		v.FailureRate = float64(c.Failed) / float64(c.Finished)
	}
	if s, err := ParseRolloutStrategy(ro.Strategy); err == nil {
		if t := s.NextWindow(time.Now()); !t.IsZero() {
			v.NextWindow = &t
		}
	}
	return writeJSON(w, http.StatusOK, v), nil
}

// rolloutAction moves a rollout to state `to` from one of `from`.
func (g *groupRoutes) rolloutAction(to, change string, from ...string) func(http.ResponseWriter, *http.Request) (int, error) {
	return func(w http.ResponseWriter, r *http.Request) (int, error) {
		who, err := actor(r)
		if err != nil {
			return 0, err
		}
		var req RolloutActionRequest
		if r.ContentLength != 0 {
			if err := decodeBody(w, r, 4096, &req); err != nil {
				return 0, err
			}
		}
		if len(req.Reason) > 500 {
			return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "reason is longer than 500 characters")
		}
		if req.RetryFailed && to != store.RolloutRunning {
			return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "retry_failed is an option of resume")
		}
		id := r.PathValue("id")
		p, err := g.store.FindPolicyByID(r.Context(), id)
		if err != nil {
			return 0, err
		}
		reason := req.Reason
		if reason == "" && to != store.RolloutRunning {
			reason = change + " by " + who
		}
		var ro store.Rollout
		if to == store.RolloutRunning {
			// A completed rollout resumes too, to retry its failed
			// devices (store.ResumeRollout).
			ro, _, err = g.store.ResumeRollout(r.Context(), who, id, req.RetryFailed)
		} else {
			ro, err = g.store.SetRolloutState(r.Context(), who, id, from, to, reason)
		}
		if err != nil {
			return 0, err
		}
		c, _ := g.store.CountRollout(r.Context(), id, ro.Batch)
		if p.Kind == policy.KindFirmware {
			c.ByVersion, _ = g.store.CountVersions(r.Context(), id)
		}
		PublishRollout(r.Context(), g.bus, g.log, id, p.Revision, ro, change, c)
		if to == store.RolloutAborted {
			return writeJSON(w, http.StatusOK, RolloutView{Rollout: ro, Revision: p.Revision, Counts: c}), nil
		}
		return g.rolloutView(w, r, id)
	}
}

func (g *groupRoutes) policyStatuses(w http.ResponseWriter, r *http.Request) (int, error) {
	return g.statuses(w, r, func(id string) (store.StatusFilter, error) {
		_, err := g.store.FindPolicyByID(r.Context(), id)
		return store.StatusFilter{PolicyID: id}, err
	})
}

func (g *groupRoutes) deviceStatuses(w http.ResponseWriter, r *http.Request) (int, error) {
	return g.statuses(w, r, func(id string) (store.StatusFilter, error) {
		_, err := g.store.FindDeviceByID(r.Context(), id)
		return store.StatusFilter{DeviceID: id}, err
	})
}

// statuses lists statuses of the policy or device named in the path;
// scope checks it exists and says which.
func (g *groupRoutes) statuses(w http.ResponseWriter, r *http.Request, scope func(id string) (store.StatusFilter, error)) (int, error) {
	q, limit, cursor, err := pageParams(r, "status")
	if err != nil {
		return 0, err
	}
	f, err := scope(r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	if st := q["status"]; st != "" && !validStatus(st) {
		return 0, badParam("status", "one of compliant, pending, applying, failed, conflicting")
	}
	f.Status, f.Limit = q["status"], limit
	if cursor != "" {
		after, err := store.DecodeCursor(cursor)
		if err != nil {
			return 0, badParam("cursor", "malformed; pass next_cursor from the previous page")
		}
		f.After = after
	}
	list, next, err := g.store.FindStatuses(r.Context(), f)
	if err != nil {
		return 0, err
	}
	if list == nil {
		list = []store.PolicyStatus{}
	}
	return writeJSON(w, http.StatusOK, StatusList{Statuses: list, NextCursor: next}), nil
}

func validStatus(s string) bool {
	switch s {
	case store.StatusCompliant, store.StatusPending, store.StatusApplying, store.StatusFailed, store.StatusConflicting:
		return true
	}
	return false
}
