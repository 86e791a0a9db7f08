package api

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// maxGroupBody bounds a group request body: a name and a filter of at
// most policy.MaxSourceLen bytes, JSON-escaped.
const maxGroupBody = 64 << 10

// groupRoutes serves groups, their members, policies, rollouts and the
// audit log (issue 6); the service pol checks and makes every change.
type groupRoutes struct {
	store *store.Store
	pol   *controller.Policies
	// secrets hides secret values in policy specs, previews and the audit
	// log, for every role (issue 15 §9).
	secrets controller.SecretNames
}

// GroupRoutesOptions configure RegisterGroupRoutes.
type GroupRoutesOptions struct {
	Store *store.Store
	// Bus gets rollout progress events of operator actions (nil: none).
	Bus *bus.Bus
	// Env is what management policies need to know, for previews.
	Env policy.Env
	// Secrets decides which values are shown as "***".
	Secrets controller.SecretNames
	Logger  *slog.Logger
}

// RegisterGroupRoutes adds the group and audit routes. wrap registers one
// handler the way Server.route does (on mux, behind authentication, mapping
// a returned error to its status and the JSON error body); mux is the mux
// wrap registers on, taken so the call reads the same as the others.
//
//	POST   /api/v1/groups               create (201)
//	GET    /api/v1/groups               list, ?limit=&cursor=
//	GET    /api/v1/groups/{id}          one group
//	PUT    /api/v1/groups/{id}          replace name and filter
//	DELETE /api/v1/groups/{id}          delete (204); 409 while policies use it
//	GET    /api/v1/groups/{id}/devices  members, ?limit=&cursor=
//	GET    /api/v1/audit                changes, newest first, ?object_type=&object_id=&limit=&cursor=
//
// and the policy routes of registerPolicyRoutes.
//
// Changes are recorded with the request's token as the actor.
func RegisterGroupRoutes(mux *http.ServeMux, o GroupRoutesOptions, wrap func(pattern string, h func(http.ResponseWriter, *http.Request) (int, error))) {
	_ = mux
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	g := &groupRoutes{store: o.Store, secrets: o.Secrets,
		pol: controller.NewPolicies(controller.PoliciesOptions{Store: o.Store, Bus: o.Bus, Env: o.Env, Logger: o.Logger})}
	wrap("POST /api/v1/groups", g.create)
	wrap("GET /api/v1/groups", g.list)
	wrap("GET /api/v1/groups/{id}", g.get)
	wrap("PUT /api/v1/groups/{id}", g.update)
	wrap("DELETE /api/v1/groups/{id}", g.delete)
	wrap("GET /api/v1/groups/{id}/devices", g.devices)
	wrap("GET /api/v1/audit", g.audit)
	g.registerPolicyRoutes(wrap)
}

// GroupRequest is the body of POST and PUT /api/v1/groups.
type GroupRequest struct {
	Name   string `json:"name"`
	Filter string `json:"filter"`
}

// GroupList is the body of GET /api/v1/groups.
type GroupList struct {
	Groups     []store.Group `json:"groups"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

// GroupMembers is the body of GET /api/v1/groups/{id}/devices. A page can
// hold fewer than limit devices and still have a next_cursor: each request
// evaluates a bounded slice of the registry.
type GroupMembers struct {
	DeviceIDs  []string `json:"device_ids"`
	NextCursor string   `json:"next_cursor,omitempty"`
	// Scanned is how many devices this page evaluated.
	Scanned int `json:"scanned"`
	// Unevaluable counts devices the filter could not be evaluated on
	// (for example a params key the device has not reported); they are
	// not members.
	Unevaluable int `json:"unevaluable"`
}

// AuditList is the body of GET /api/v1/audit.
type AuditList struct {
	Entries    []store.AuditEntry `json:"entries"`
	NextCursor string             `json:"next_cursor,omitempty"`
}

// actor names who is making a change: the owner of the request's token.
func actor(r *http.Request) (string, error) {
	t, ok := TokenFrom(r.Context())
	if !ok {
		return "", devicemodel.Errorf(devicemodel.CodeUnauthenticated, "no authenticated token")
	}
	return controller.TokenActor(t), nil
}

// decodeBody reads one JSON object into v, rejecting unknown fields,
// trailing data and bodies over limit, each as a 400 that says which.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return errBodyTooLarge(limit)
		}
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "request body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "request body: data after the JSON object")
	}
	return nil
}

// groupRequest decodes a group body; the service checks the filter.
func groupRequest(w http.ResponseWriter, r *http.Request) (GroupRequest, error) {
	var req GroupRequest
	err := decodeBody(w, r, maxGroupBody, &req)
	return req, err
}

func (g *groupRoutes) create(w http.ResponseWriter, r *http.Request) (int, error) {
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	req, err := groupRequest(w, r)
	if err != nil {
		return 0, err
	}
	out, err := g.pol.CreateGroup(r.Context(), who, req.Name, req.Filter)
	if err != nil {
		return 0, err
	}
	w.Header().Set("Location", "/api/v1/groups/"+out.ID)
	return writeJSON(w, http.StatusCreated, out), nil
}

func (g *groupRoutes) list(w http.ResponseWriter, r *http.Request) (int, error) {
	_, limit, cursor, err := pageParams(r)
	if err != nil {
		return 0, err
	}
	f := store.PageFilter{Limit: limit}
	if cursor != "" {
		if f.After, err = store.DecodeCursor(cursor); err != nil {
			return 0, badParam("cursor", "malformed; pass next_cursor from the previous page")
		}
	}
	groups, next, err := g.store.FindGroups(r.Context(), f)
	if err != nil {
		return 0, err
	}
	if groups == nil {
		groups = []store.Group{}
	}
	return writeJSON(w, http.StatusOK, GroupList{Groups: groups, NextCursor: next}), nil
}

func (g *groupRoutes) get(w http.ResponseWriter, r *http.Request) (int, error) {
	grp, err := g.store.FindGroupByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, grp), nil
}

func (g *groupRoutes) update(w http.ResponseWriter, r *http.Request) (int, error) {
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	req, err := groupRequest(w, r)
	if err != nil {
		return 0, err
	}
	out, err := g.pol.UpdateGroup(r.Context(), who, r.PathValue("id"), req.Name, req.Filter)
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, out), nil
}

func (g *groupRoutes) delete(w http.ResponseWriter, r *http.Request) (int, error) {
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	if err := g.store.DeleteGroup(r.Context(), who, r.PathValue("id")); err != nil {
		return 0, err
	}
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent, nil
}

func (g *groupRoutes) devices(w http.ResponseWriter, r *http.Request) (int, error) {
	_, limit, cursor, err := pageParams(r)
	if err != nil {
		return 0, err
	}
	grp, err := g.store.FindGroupByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	if cursor != "" {
		if _, err := store.DecodeCursor(cursor); err != nil {
			return 0, badParam("cursor", "malformed; pass next_cursor from the previous page")
		}
	}
	p, err := policy.Members(r.Context(), g.store, grp, cursor, limit)
	if err != nil {
		return 0, err
	}
	if p.IDs == nil {
		p.IDs = []string{}
	}
	return writeJSON(w, http.StatusOK, GroupMembers{DeviceIDs: p.IDs, NextCursor: p.Next, Scanned: p.Scanned, Unevaluable: p.Unevaluable}), nil
}

func (g *groupRoutes) audit(w http.ResponseWriter, r *http.Request) (int, error) {
	q, limit, cursor, err := pageParams(r, "object_type", "object_id", "device")
	if err != nil {
		return 0, err
	}
	f := store.AuditFilter{ObjectType: q["object_type"], ObjectID: q["object_id"], DeviceID: q["device"], Limit: limit}
	if cursor != "" {
		if f.Before, err = store.DecodeSeqCursor(cursor); err != nil {
			return 0, badParam("cursor", "malformed; pass next_cursor from the previous page")
		}
	}
	entries, next, err := g.store.FindAudit(r.Context(), f)
	if err != nil {
		return 0, err
	}
	if entries == nil {
		entries = []store.AuditEntry{}
	}
	g.secrets.RedactAudit(entries)
	return writeJSON(w, http.StatusOK, AuditList{Entries: entries, NextCursor: next}), nil
}
