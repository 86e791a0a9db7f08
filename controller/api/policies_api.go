package api

import (
	"encoding/json"
	"net/http"

	"github.com/duet-dm/duet/controller"
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

// policyRequest decodes a policy body; the service checks it.
func policyRequest(w http.ResponseWriter, r *http.Request) (controller.PolicyInput, error) {
	var req PolicyRequest
	if err := decodeBody(w, r, maxPolicyBody, &req); err != nil {
		return controller.PolicyInput{}, err
	}
	return controller.PolicyInput{GroupID: req.GroupID, Name: req.Name, Priority: req.Priority, Kind: req.Kind, Spec: req.Spec, Enabled: req.Enabled}, nil
}

func (g *groupRoutes) createPolicy(w http.ResponseWriter, r *http.Request) (int, error) {
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	in, err := policyRequest(w, r)
	if err != nil {
		return 0, err
	}
	out, err := g.pol.CreatePolicy(r.Context(), who, in)
	if err != nil {
		return 0, err
	}
	w.Header().Set("Location", "/api/v1/policies/"+out.ID)
	return writeJSON(w, http.StatusCreated, g.secrets.RedactPolicy(out)), nil
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
	for i := range ps {
		ps[i] = g.secrets.RedactPolicy(ps[i])
	}
	return writeJSON(w, http.StatusOK, PolicyList{Policies: ps}), nil
}

func (g *groupRoutes) getPolicy(w http.ResponseWriter, r *http.Request) (int, error) {
	p, err := g.store.FindPolicyByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, g.secrets.RedactPolicy(p)), nil
}

func (g *groupRoutes) updatePolicy(w http.ResponseWriter, r *http.Request) (int, error) {
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	in, err := policyRequest(w, r)
	if err != nil {
		return 0, err
	}
	out, err := g.pol.UpdatePolicy(r.Context(), who, r.PathValue("id"), in)
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, g.secrets.RedactPolicy(out)), nil
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
	_, limit, cursor, err := previewParams(r)
	if err != nil {
		return 0, err
	}
	page, err := g.pol.PreviewPolicy(r.Context(), r.PathValue("id"), cursor, limit)
	if err != nil {
		return 0, err
	}
	return g.writeRedacted(w, page)
}

func (g *groupRoutes) previewUnsaved(w http.ResponseWriter, r *http.Request) (int, error) {
	_, limit, cursor, err := previewParams(r)
	if err != nil {
		return 0, err
	}
	in, err := policyRequest(w, r)
	if err != nil {
		return 0, err
	}
	page, err := g.pol.PreviewUnsaved(r.Context(), in, cursor, limit)
	if err != nil {
		return 0, err
	}
	return g.writeRedacted(w, page)
}

// previewParams are a preview's paging parameters, the cursor checked.
func previewParams(r *http.Request) (map[string]string, int, string, error) {
	q, limit, cursor, err := pageParams(r)
	if err == nil && cursor != "" {
		if _, cerr := store.DecodeCursor(cursor); cerr != nil {
			err = badParam("cursor", "malformed; pass next_cursor from the previous page")
		}
	}
	return q, limit, cursor, err
}

// writeRedacted answers 200 with v, its secret values hidden (a preview
// shows the current and desired values of the parameters it would set).
func (g *groupRoutes) writeRedacted(w http.ResponseWriter, v any) (int, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	b, _ = g.secrets.RedactJSON(b)
	return writeJSON(w, http.StatusOK, json.RawMessage(b)), nil
}
