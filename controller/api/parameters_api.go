package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// ParameterJSON is a cached parameter in the API.
type ParameterJSON struct {
	Path      string    `json:"path"`
	Value     string    `json:"value"`
	Type      string    `json:"type,omitempty"`
	Writable  string    `json:"writable"`
	UpdatedAt time.Time `json:"updated_at"`
	// Redacted: the value is a secret and shows as "***" (an admin may
	// ask for it with reveal=true).
	Redacted bool `json:"redacted,omitempty"`
}

// ParameterList is the body of GET /api/v1/devices/{id}/parameters.
type ParameterList struct {
	Parameters []ParameterJSON `json:"parameters"`
	NextCursor string          `json:"next_cursor,omitempty"`
}

func (a *Server) listParameters(w http.ResponseWriter, r *http.Request) (int, error) {
	q, limit, cursor, err := pageParams(r, "path", "refresh", "reveal")
	if err != nil {
		return 0, err
	}
	f := store.ParameterFilter{DeviceID: r.PathValue("id"), Limit: limit}
	if v, ok := q["path"]; ok {
		if err := controller.CheckPath("path", v, false, devicemodel.PathObject, devicemodel.PathParameter); err != nil {
			return 0, err
		}
		f.Prefix = v
	}
	refresh := false
	if v, ok := q["refresh"]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return 0, badParam("refresh", "must be true or false")
		}
		refresh = b
	}
	reveal := false
	if v, ok := q["reveal"]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return 0, badParam("reveal", "must be true or false")
		}
		reveal = b
	}
	tok, _ := TokenFrom(r.Context())
	if refresh && !controller.CanCauseDeviceTraffic(tok.Role) {
		// A read-only role must not make Duet talk to a device (issue 15
		// §10): refresh creates a get task and a connection request.
		metricAuthFailures.WithLabelValues("forbidden").Inc()
		return 0, devicemodel.Errorf(devicemodel.CodeDenied, "role %s may not refresh from the device (it creates a task); read the cache without refresh", tok.Role)
	}
	if reveal && !controller.CanReveal(tok.Role) {
		metricAuthFailures.WithLabelValues("forbidden").Inc()
		return 0, devicemodel.Errorf(devicemodel.CodeDenied, "role %s may not reveal secret values", tok.Role)
	}
	if cursor != "" {
		c, err := store.DecodeCursor(cursor)
		if err != nil {
			return 0, badParam("cursor", "malformed; pass next_cursor from the previous page")
		}
		f.After = c
	}
	if refresh {
		// Reading live sends the device a command: a task, so it takes
		// the role that creates tasks.
		if t, ok := TokenFrom(r.Context()); !ok || !allowed(t.Role, "POST /api/v1/devices/{id}/tasks") {
			metricAuthFailures.WithLabelValues("forbidden").Inc()
			return 0, devicemodel.Errorf(devicemodel.CodeDenied, "refresh=true creates a task; role %s may not (needs %s)", t.Role, store.RoleOperator)
		}
		if r.Method != http.MethodGet {
			return 0, devicemodel.Errorf(devicemodel.CodeUnavailable, "refresh is not available")
		}
		if f.Prefix == "" {
			return 0, badParam("refresh", "needs path")
		}
		if _, err := a.store.FindDeviceByID(r.Context(), f.DeviceID); err != nil {
			return 0, err
		}
		if err := a.params.ReadLive(r.Context(), f.DeviceID, f.Prefix); err != nil {
			return 0, err
		}
	}
	who := ""
	if reveal {
		if who, err = actor(r); err != nil {
			return 0, err
		}
	}
	ps, next, err := a.params.List(r.Context(), f, reveal, who)
	if err != nil {
		return 0, err
	}
	out := ParameterList{Parameters: make([]ParameterJSON, 0, len(ps)), NextCursor: next}
	for _, p := range ps {
		out.Parameters = append(out.Parameters, ParameterJSON{Path: p.Path, Value: p.Value, Type: p.Type,
			Writable: controller.WritabilityName(p.Writable), UpdatedAt: p.UpdatedAt.UTC(), Redacted: p.Redacted})
	}
	return writeJSON(w, http.StatusOK, out), nil
}
