package controller

import (
	"encoding/json"
	"net/http"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// maxPolicyBody bounds a policy request: up to policy.MaxParameters
// entries, each a path and a value or expression.
const maxPolicyBody = 1 << 20

// PolicyRequest is the body of POST and PUT /api/v1/policies, and of
// POST /api/v1/policies/preview (where name and priority are ignored).
type PolicyRequest struct {
	GroupID  string          `json:"group_id"`
	Name     string          `json:"name"`
	Priority int             `json:"priority"`
	Kind     string          `json:"kind"`
	Spec     json.RawMessage `json:"spec"`
	Enabled  bool            `json:"enabled"`
}

// PolicyList is the body of GET /api/v1/policies?group_id=.
type PolicyList struct {
	Policies []store.Policy `json:"policies"`
}

// registerPolicyRoutes is called by RegisterGroupRoutes, so one wiring
// line serves both.
//
//	POST   /api/v1/policies               create (201), disabled
//	GET    /api/v1/policies?group_id=     a group's policies, highest priority first
//	GET    /api/v1/policies/{id}
//	PUT    /api/v1/policies/{id}          replace (not the group)
//	DELETE /api/v1/policies/{id}          (204)
//	POST   /api/v1/policies/{id}/preview  per member device, what would change; ?limit=&cursor=
//	POST   /api/v1/policies/preview       the same for an unsaved policy (body as for create)
func (g *groupRoutes) registerPolicyRoutes(wrap func(pattern string, h func(http.ResponseWriter, *http.Request) (int, error))) {
	wrap("POST /api/v1/policies", g.createPolicy)
	wrap("GET /api/v1/policies", g.listPolicies)
	wrap("GET /api/v1/policies/{id}", g.getPolicy)
	wrap("PUT /api/v1/policies/{id}", g.updatePolicy)
	wrap("DELETE /api/v1/policies/{id}", g.deletePolicy)
	wrap("POST /api/v1/policies/{id}/preview", g.previewPolicy)
	wrap("POST /api/v1/policies/preview", g.previewUnsaved)
	g.registerRolloutRoutes(wrap)
}

// policyFromRequest decodes and validates a policy body.
func policyFromRequest(w http.ResponseWriter, r *http.Request) (store.Policy, *policy.CheckedSpec, error) {
	var req PolicyRequest
	if err := decodeBody(w, r, maxPolicyBody, &req); err != nil {
		return store.Policy{}, nil, err
	}
	spec, err := policy.ValidateSpec(req.Kind, req.Spec)
	if err != nil {
		return store.Policy{}, nil, err
	}
	if req.Enabled {
		// Enabling starts changing devices, so it always goes with a
		// rollout strategy, through its own route.
		return store.Policy{}, nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "enabled: a policy is enabled with POST /api/v1/policies/{id}/enable and a rollout strategy; save it, preview it, then enable it")
	}
	return store.Policy{GroupID: req.GroupID, Name: req.Name, Priority: req.Priority, Kind: req.Kind, Spec: req.Spec}, spec, nil
}

func (g *groupRoutes) createPolicy(w http.ResponseWriter, r *http.Request) (int, error) {
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	p, _, err := policyFromRequest(w, r)
	if err != nil {
		return 0, err
	}
	if _, err := g.store.FindGroupByID(r.Context(), p.GroupID); err != nil {
		if devicemodel.ErrorCode(err) == devicemodel.CodeNotFound {
			return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "group_id %q: no such group", p.GroupID)
		}
		return 0, err
	}
	out, err := g.store.CreatePolicy(r.Context(), who, p)
	if err != nil {
		return 0, err
	}
	w.Header().Set("Location", "/api/v1/policies/"+out.ID)
	return writeJSON(w, http.StatusCreated, out), nil
}

func (g *groupRoutes) listPolicies(w http.ResponseWriter, r *http.Request) (int, error) {
	q, _, _, err := pageParams(r, "group_id")
	if err != nil {
		return 0, err
	}
	if q["group_id"] == "" {
		return 0, badParam("group_id", "required")
	}
	ps, err := g.store.FindPolicies(r.Context(), q["group_id"])
	if err != nil {
		return 0, err
	}
	if ps == nil {
		ps = []store.Policy{}
	}
	return writeJSON(w, http.StatusOK, PolicyList{Policies: ps}), nil
}

func (g *groupRoutes) getPolicy(w http.ResponseWriter, r *http.Request) (int, error) {
	p, err := g.store.FindPolicyByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, p), nil
}

func (g *groupRoutes) updatePolicy(w http.ResponseWriter, r *http.Request) (int, error) {
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	p, _, err := policyFromRequest(w, r)
	if err != nil {
		return 0, err
	}
	cur, err := g.store.FindPolicyByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	if p.GroupID != "" && p.GroupID != cur.GroupID {
		return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "group_id: a policy cannot move to another group; create a new one")
	}
	p.ID, p.GroupID = cur.ID, cur.GroupID
	out, err := g.store.UpdatePolicy(r.Context(), who, p)
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, out), nil
}

func (g *groupRoutes) deletePolicy(w http.ResponseWriter, r *http.Request) (int, error) {
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	if err := g.store.DeletePolicy(r.Context(), who, r.PathValue("id")); err != nil {
		return 0, err
	}
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent, nil
}

func (g *groupRoutes) previewPolicy(w http.ResponseWriter, r *http.Request) (int, error) {
	_, limit, cursor, err := pageParams(r)
	if err != nil {
		return 0, err
	}
	p, err := g.store.FindPolicyByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	spec, err := policy.ValidateSpec(p.Kind, p.Spec)
	if err != nil {
		return 0, err
	}
	env := g.env
	env.PolicyID = p.ID
	return g.preview(w, r, p.GroupID, spec, env, cursor, limit)
}

func (g *groupRoutes) previewUnsaved(w http.ResponseWriter, r *http.Request) (int, error) {
	_, limit, cursor, err := pageParams(r)
	if err != nil {
		return 0, err
	}
	var req PolicyRequest
	if err := decodeBody(w, r, maxPolicyBody, &req); err != nil {
		return 0, err
	}
	spec, err := policy.ValidateSpec(req.Kind, req.Spec)
	if err != nil {
		return 0, err
	}
	env := g.env
	// Names what the policy would create (USP subscription IDs); the
	// saved policy's own ID replaces it.
	env.PolicyID = "preview"
	return g.preview(w, r, req.GroupID, spec, env, cursor, limit)
}

func (g *groupRoutes) preview(w http.ResponseWriter, r *http.Request, groupID string, spec *policy.CheckedSpec, env policy.Env, cursor string, limit int) (int, error) {
	grp, err := g.store.FindGroupByID(r.Context(), groupID)
	if err != nil {
		return 0, err
	}
	if cursor != "" {
		if _, err := store.DecodeCursor(cursor); err != nil {
			return 0, badParam("cursor", "malformed; pass next_cursor from the previous page")
		}
	}
	page, err := policy.Preview(r.Context(), g.store, grp, spec, env, cursor, limit)
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, page), nil
}
