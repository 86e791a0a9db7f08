package api

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/duet-dm/duet/controller"
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
	wrap("POST /api/v1/policies/{id}/rollout/pause", g.rolloutAction(controller.RolloutPause))
	wrap("POST /api/v1/policies/{id}/rollout/resume", g.rolloutAction(controller.RolloutResume))
	wrap("POST /api/v1/policies/{id}/rollout/abort", g.rolloutAction(controller.RolloutAbort))
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
	v, err := g.pol.EnablePolicy(r.Context(), who, r.PathValue("id"), req.Rollout)
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, rolloutView(v)), nil
}

func (g *groupRoutes) getRollout(w http.ResponseWriter, r *http.Request) (int, error) {
	v, err := g.pol.Rollout(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, rolloutView(v)), nil
}

func rolloutView(v controller.RolloutProgress) RolloutView {
	return RolloutView{Rollout: v.Rollout, Revision: v.Revision, Counts: v.Counts, FailureRate: v.FailureRate, NextWindow: v.NextWindow}
}

// rolloutAction serves pause, resume and abort.
func (g *groupRoutes) rolloutAction(action controller.RolloutAction) func(http.ResponseWriter, *http.Request) (int, error) {
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
		v, err := g.pol.ChangeRollout(r.Context(), who, r.PathValue("id"), action, req.Reason, req.RetryFailed)
		if err != nil {
			return 0, err
		}
		return writeJSON(w, http.StatusOK, rolloutView(v)), nil
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
	if st := q["status"]; st != "" && !controller.ValidPolicyStatus(st) {
		return 0, badParam("status", "one of compliant, pending, applying, failed, conflicting")
	}
	f.Status, f.Limit = q["status"], limit
	return listPage(w, cursor, store.DecodeCursor, func(after string) ([]store.PolicyStatus, string, error) {
		f.After = after
		return g.store.FindStatuses(r.Context(), f)
	}, func(list []store.PolicyStatus, next string) any { return StatusList{Statuses: list, NextCursor: next} })
}
