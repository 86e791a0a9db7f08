package controller

import (
	"maps"
	"slices"
	"strings"
	"time"

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

// WritabilityName is the API's name of a cached writability (jsonenum.go).
func WritabilityName(w int16) string {
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
