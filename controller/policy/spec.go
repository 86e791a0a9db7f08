package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// Policy kinds (issue 6 §2, issue 14 §4 for firmware); a kind only has to
// validate its spec and say what it Wants of a device.
const (
	KindParameters = "parameters"
	KindObjects    = "objects"
	KindManagement = "management"
)

// Kinds lists the policy kinds, for error messages.
var Kinds = []string{KindParameters, KindObjects, KindManagement, KindFirmware}

// Env is what a policy may need to know about this Duet installation to
// compute a device's Wants.
type Env struct {
	// USPEndpointID is the controller's own USP endpoint ID: a USP
	// device's settings for this controller live in the
	// Device.LocalAgent.Controller.{i}. whose EndpointID it is.
	USPEndpointID string
	// PolicyID is the ID of the policy being evaluated. A management
	// policy names the USP Subscriptions it creates after it (so it can
	// find and delete its own stale ones, TR-181 Device.LocalAgent.Subscription.{i}.). A preview of an
	// unsaved policy may pass any non-empty placeholder: a preview
	// creates nothing.
	PolicyID string
}

// MaxParameters bounds one parameters policy: each is a Set on every
// member device.
const MaxParameters = 256

// ParameterSpec is the spec of a "parameters" policy:
//
//	{"parameters": [
//	  {"path": "Device.ManagementServer.PeriodicInformInterval", "value": "300"},
//	  {"path": "Device.PPP.Interface.1.Username", "expr": "\"pppoe-\" + serial_number"}
//	]}
type ParameterSpec struct {
	Parameters []ParameterValue `json:"parameters"`
}

// ParameterValue is one desired value: a literal (Value) or a CEL
// expression computed per device (Expr), never both.
type ParameterValue struct {
	Path  string  `json:"path"`
	Value *string `json:"value,omitempty"`
	Expr  string  `json:"expr,omitempty"`

	compiled *Value
}

// CheckedSpec is a validated policy spec, ready to compute per device.
type CheckedSpec struct {
	Kind       string
	Parameters []ParameterValue
	Objects    []ObjectSpec
	Management *ManagementSpec
	Firmware   *FirmwareSpec
}

// ValidateSpec checks a policy's kind and spec before it is stored or
// previewed: the JSON shape (unknown fields rejected, so a misspelt "expr"
// is not silently a literal), every path with devicemodel.ParsePath, and
// every expression with CompileValue. Errors are CodeInvalidArgument (or
// CodeInvalidPath from the path parser) and name the entry at fault.
func ValidateSpec(kind string, spec json.RawMessage) (*CheckedSpec, error) {
	switch kind {
	case KindParameters:
		var ps ParameterSpec
		if err := decodeStrict(spec, &ps); err != nil {
			return nil, err
		}
		return validateParameters(ps)
	case KindObjects:
		return validateObjects(spec)
	case KindManagement:
		return validateManagement(spec)
	case KindFirmware:
		return validateFirmware(spec)
	}
	return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "policy kind %q is not supported; known kinds: %s", kind, strings.Join(Kinds, ", "))
}

// decodeStrict decodes one JSON object into v, rejecting unknown fields
// (so a misspelt field is an error, not silently ignored) and trailing
// data.
func decodeStrict(spec json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "spec: %v", err)
	}
	if dec.More() {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "spec: data after the JSON object")
	}
	return nil
}

func validateParameters(ps ParameterSpec) (*CheckedSpec, error) {
	if len(ps.Parameters) == 0 {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "spec.parameters is empty")
	}
	if len(ps.Parameters) > MaxParameters {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "spec.parameters has %d entries; the limit is %d", len(ps.Parameters), MaxParameters)
	}
	seen := map[string]int{}
	for i := range ps.Parameters {
		pv := &ps.Parameters[i]
		where := fmt.Sprintf("spec.parameters[%d]", i)
		p, err := devicemodel.ParsePath(pv.Path, false)
		if err != nil {
			var se *devicemodel.PathSyntaxError
			if errors.As(err, &se) {
				return nil, devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s.path: %s", where, se.Error())
			}
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s.path: %s", where, devicemodel.ErrorMessage(err))
		}
		if p.Kind != devicemodel.PathParameter {
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s.path %q is not a parameter path (kind %s)", where, pv.Path, p.Kind)
		}
		if p.Search {
			// One desired value per concrete parameter keeps the compare
			// with cached values, and conflict detection, exact.
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidPath, "%s.path %q is a search path; give an instance number", where, pv.Path)
		}
		if j, dup := seen[pv.Path]; dup {
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s.path %q is also spec.parameters[%d]", where, pv.Path, j)
		}
		seen[pv.Path] = i
		switch {
		case pv.Value != nil && pv.Expr != "":
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s has both value and expr; give one", where)
		case pv.Value == nil && pv.Expr == "":
			return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s needs a value or an expr", where)
		case pv.Expr != "":
			v, err := CompileValue(pv.Expr)
			if err != nil {
				return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s.expr: %s", where, devicemodel.ErrorMessage(err))
			}
			pv.compiled = v
		}
	}
	return &CheckedSpec{Kind: KindParameters, Parameters: ps.Parameters}, nil
}

// Change is one parameter whose desired value differs from what is known.
type Change struct {
	Path string `json:"path"`
	// Current is the cached value; null when the device's value is not
	// known.
	Current *string `json:"current"`
	Desired string  `json:"desired"`
}

// DevicePreview is what a policy would do to one member device.
type DevicePreview struct {
	DeviceID string `json:"device_id"`
	// Changes are the parameter values that would be set (Plan.Set, kept
	// at the top level for the common case).
	Changes []Change `json:"changes"`
	// Plan is every operation reconciliation would issue, attributes and
	// object instances included. Conflicts with other policies are not
	// resolved here (see the policy status after enabling).
	Plan *Plan `json:"plan,omitempty"`
	// Error is set when a value expression fails on this device (the
	// device would be reported failed, not given a wrong value).
	Error string `json:"error,omitempty"`
	// NeedsRead lists the tables Duet holds no complete listing of and
	// would read from the device before deciding what to add, delete or
	// report missing in them (Plan.Refresh); Incomplete says the plan
	// shown is then not the whole change: those decisions wait for the
	// read.
	NeedsRead  []string `json:"needs_read,omitempty"`
	Incomplete bool     `json:"incomplete,omitempty"`
}

// PreviewPage is one page of a policy preview.
type PreviewPage struct {
	Devices     []DevicePreview `json:"devices"`
	NextCursor  string          `json:"next_cursor,omitempty"`
	Scanned     int             `json:"scanned"`
	Unevaluable int             `json:"unevaluable"`
}

// Need is what computing the spec for a device reads from the cache: its
// own paths and tables (to compare) and whatever its expressions read.
func (s *CheckedSpec) Need() ParamNeed {
	need := ParamNeed{}
	for _, pv := range s.Parameters {
		need = need.Union(ParamNeed{Paths: []string{pv.Path}})
		if pv.compiled != nil {
			need = need.Union(pv.compiled.Params())
		}
	}
	return need.Union(s.objectsNeed()).Union(s.managementNeed()).Union(s.firmwareNeed())
}

// Wants computes what the spec asks of one device. A failing expression
// fails the whole device: applying the other values without it would
// leave it half-configured.
func (s *CheckedSpec) Wants(d DeviceFacts, env Env) ([]Want, error) {
	switch s.Kind {
	case KindObjects:
		return s.objectWants(d, env)
	case KindManagement:
		return s.managementWants(d, env)
	case KindFirmware:
		return s.firmwareWants(d), nil
	}
	wants := make([]Want, 0, len(s.Parameters))
	for _, pv := range s.Parameters {
		var want string
		if pv.compiled != nil {
			v, err := pv.compiled.Eval(d)
			if err != nil {
				return nil, devicemodel.Errorf(devicemodel.CodeInvalidValue, "%s: %s", pv.Path, devicemodel.ErrorMessage(err))
			}
			want = v
		} else {
			want = *pv.Value
		}
		wants = append(wants, Want{Param: &ParamWant{Path: pv.Path, Value: want}})
	}
	return wants, nil
}

// Preview pages through the group's members, as Members does, and gives
// for each the changes the spec would make. It creates no tasks.
//
// Current values come from the parameter cache; a parameter the device
// has never reported has a null current value and is listed as a change.
func Preview(ctx context.Context, st *store.Store, g store.Group, spec *CheckedSpec, env Env, cursor string, limit int) (PreviewPage, error) {
	f, err := CompileFilter(g.Filter)
	if err != nil {
		return PreviewPage{}, err
	}
	out := PreviewPage{Devices: []DevicePreview{}}
	now := time.Now()
	mp, err := scan(ctx, st, f, cursor, limit, scanBudget, f.Params().Union(spec.Need()), func(d DeviceFacts) {
		dp := DevicePreview{DeviceID: d.Device.ID, Changes: []Change{}}
		wants, err := spec.Wants(d, env)
		if err != nil {
			dp.Error = devicemodel.ErrorMessage(err)
		} else {
			// As for a device never reconciled: attributes not applied,
			// no table read for the policy yet (tables listed by anyone
			// count).
			plan := Diff(wants, d.Params, d.Listings, now.Add(-ListingMaxAge), false, nil)
			if plan.Set != nil {
				dp.Changes = plan.Set
			}
			dp.NeedsRead = plan.Refresh
			dp.Incomplete = len(plan.Refresh) > 0 || len(plan.Undecided) > 0
			if !plan.Empty() {
				dp.Plan = &plan
			}
		}
		out.Devices = append(out.Devices, dp)
	})
	if err != nil {
		return PreviewPage{}, err
	}
	out.NextCursor, out.Scanned, out.Unevaluable = mp.Next, mp.Scanned, mp.Unevaluable
	return out, nil
}
