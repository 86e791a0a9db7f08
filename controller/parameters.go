package controller

import (
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// paramTypeName is the API's name of a parameter type (jsonenum.go), ""
// for an unknown one: the cache leaves it out.
func paramTypeName(t duetv1.ParamType) string {
	if t == duetv1.ParamType_PARAM_TYPE_UNSPECIFIED {
		return ""
	}
	return APIEnumName(t.Descriptor(), t.String())
}

// writabilityName is the API's name of a cached writability (jsonenum.go).
func writabilityName(w int16) string {
	v := duetv1.Writability(w)
	return APIEnumName(v.Descriptor(), v.String())
}

// cacheParams turns learned values into parameter-cache rows.
func cacheParams(deviceID string, at time.Time, ps []*duetv1.Parameter) []store.Parameter {
	out := make([]store.Parameter, 0, len(ps))
	for _, p := range ps {
		if p.GetPath() == "" || strings.HasSuffix(p.GetPath(), ".") {
			continue
		}
		out = append(out, store.Parameter{DeviceID: deviceID, Path: p.GetPath(), Value: p.GetValue(),
			Type: paramTypeName(p.GetType()), Writable: int16(p.GetWritable()), UpdatedAt: at})
	}
	return out
}

// learnedParams returns the values an event carries: an Inform's
// parameters, value changes, diagnostics results, a Get's result.
func learnedParams(ev *duetv1.Event, deviceID string, at time.Time) []store.Parameter {
	switch {
	case ev.GetInform() != nil:
		return cacheParams(deviceID, at, ev.GetInform().GetParams())
	case ev.GetValueChange() != nil:
		return cacheParams(deviceID, at, ev.GetValueChange().GetParams())
	case ev.GetDiagnosticsComplete() != nil:
		return cacheParams(deviceID, at, ev.GetDiagnosticsComplete().GetParams())
	case ev.GetCommandResult().GetGet() != nil:
		return cacheParams(deviceID, at, ev.GetCommandResult().GetGet().GetParams())
	case ev.GetObjectCreated() != nil:
		// A new instance's unique keys (TR-369 Notify ObjectCreation):
		// the instance shows in the cache, so a policy finds it.
		c := ev.GetObjectCreated()
		if !strings.HasSuffix(c.GetPath(), ".") {
			return nil
		}
		var ps []*duetv1.Parameter
		for _, k := range slices.Sorted(maps.Keys(c.GetUniqueKeys())) {
			ps = append(ps, &duetv1.Parameter{Path: c.GetPath() + k, Value: c.GetUniqueKeys()[k]})
		}
		return cacheParams(deviceID, at, ps)
	case ev.GetOnline() != nil && ev.GetDevice().GetProtocol() == duetv1.Protocol_PROTOCOL_USP:
		return cacheParams(deviceID, at, onboardingParams(ev.GetDevice()))
	}
	return nil
}

// onboardingParams are the Device.DeviceInfo. values a USP agent's
// onboarding read (adapters/usp onboard: a Get of Device.DeviceInfo.),
// which its online event carries as identity facts: they are the first
// values Duet learns of an agent and belong in the cache as an Inform's
// do (issue 12 item 1). An online event without facts (a reconnection)
// teaches nothing.
func onboardingParams(d *duetv1.DeviceIdentity) []*duetv1.Parameter {
	var out []*duetv1.Parameter
	for _, f := range []struct{ name, value string }{
		{"Manufacturer", d.GetManufacturer()}, {"ManufacturerOUI", d.GetOui()}, {"ModelName", d.GetModelName()},
		{"ProductClass", d.GetProductClass()}, {"SerialNumber", d.GetSerialNumber()},
		{"SoftwareVersion", d.GetSoftwareVersion()}, {"HardwareVersion", d.GetHardwareVersion()},
		{"ProvisioningCode", d.GetProvisioningCode()},
	} {
		if f.value != "" {
			out = append(out, &duetv1.Parameter{Path: "Device.DeviceInfo." + f.name, Value: f.value})
		}
	}
	return out
}

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

func (a *API) listParameters(w http.ResponseWriter, r *http.Request) (int, error) {
	q, limit, cursor, err := pageParams(r, "path", "refresh", "reveal")
	if err != nil {
		return 0, err
	}
	f := store.ParameterFilter{DeviceID: r.PathValue("id"), Limit: limit}
	if v, ok := q["path"]; ok {
		if err := checkPath("path", v, false, devicemodel.PathObject, devicemodel.PathParameter); err != nil {
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
	if refresh && !canCauseDeviceTraffic(tok.Role) {
		// A read-only role must not make Duet talk to a device (issue 15
		// §10): refresh creates a get task and a connection request.
		metricAuthFailures.WithLabelValues("forbidden").Inc()
		return 0, devicemodel.Errorf(devicemodel.CodeDenied, "role %s may not refresh from the device (it creates a task); read the cache without refresh", tok.Role)
	}
	if reveal && !canReveal(tok.Role) {
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
	if _, err := a.store.FindDeviceByID(r.Context(), f.DeviceID); err != nil {
		return 0, err
	}
	if refresh {
		// Reading live sends the device a command: a task, so it takes
		// the role that creates tasks.
		if t, ok := TokenFrom(r.Context()); !ok || !allowed(t.Role, "POST /api/v1/devices/{id}/tasks") {
			metricAuthFailures.WithLabelValues("forbidden").Inc()
			return 0, devicemodel.Errorf(devicemodel.CodeDenied, "refresh=true creates a task; role %s may not (needs %s)", t.Role, store.RoleOperator)
		}
		// Read live first: a get task, waited for; its result lands in
		// the cache (TaskQueue.settle) before the task is final.
		if r.Method != http.MethodGet || a.o.Tasks == nil {
			return 0, devicemodel.Errorf(devicemodel.CodeUnavailable, "refresh is not available")
		}
		path := f.Prefix
		if path == "" {
			return 0, badParam("refresh", "needs path")
		}
		t, err := a.o.Tasks.Create(r.Context(), f.DeviceID, TaskRequest{Operation: "get", Paths: []string{path}})
		if err != nil {
			return 0, err
		}
		t, err = a.o.Tasks.Wait(r.Context(), t.ID, 30*time.Second)
		if err != nil {
			return 0, err
		}
		if t.State != store.TaskSucceeded {
			msg := "the device did not answer in 30 s; task " + t.ID + " is " + string(t.State)
			if t.ErrorMessage != "" {
				msg = "task " + t.ID + " " + string(t.State) + ": " + t.ErrorMessage
			}
			return 0, devicemodel.Errorf(devicemodel.CodeTimeout, "%s", msg)
		}
	}
	ps, next, err := a.store.FindParameters(r.Context(), f)
	if err != nil {
		return 0, err
	}
	out := ParameterList{Parameters: make([]ParameterJSON, 0, len(ps)), NextCursor: next}
	var revealed []string
	for _, p := range ps {
		pj := ParameterJSON{Path: p.Path, Value: p.Value, Type: p.Type,
			Writable: writabilityName(p.Writable), UpdatedAt: p.UpdatedAt.UTC()}
		if a.secrets.secret(p.Path) && p.Value != "" {
			if reveal {
				revealed = append(revealed, p.Path)
			} else {
				pj.Value, pj.Redacted = Redacted, true
			}
		}
		out.Parameters = append(out.Parameters, pj)
	}
	if len(revealed) > 0 {
		// Audited before the values leave (issue 15 §9); no audit, no values.
		who, err := actor(r)
		if err != nil {
			return 0, err
		}
		if err := a.store.AuditSecretReveal(r.Context(), who, f.DeviceID, revealed); err != nil {
			return 0, err
		}
		a.log.Info("secret parameter values revealed", "actor", who, "device", f.DeviceID, "paths", len(revealed))
	}
	return writeJSON(w, http.StatusOK, out), nil
}
