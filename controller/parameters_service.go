package controller

import (
	"context"
	"log/slog"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// CachedParameter is a value of the parameter cache as an operator may
// see it: Redacted says its secret value was replaced by Redacted.
type CachedParameter struct {
	store.Parameter
	Redacted bool
}

// ParametersOptions configure NewParameters.
type ParametersOptions struct {
	// Store is required.
	Store *store.Store
	// Tasks reads values live (ReadLive); without it ReadLive answers
	// CodeUnavailable.
	Tasks *TaskQueue
	// Secrets decides which values are hidden.
	Secrets SecretNames
	Logger  *slog.Logger
}

// Parameters reads the parameter cache with secret values hidden, and
// refreshes it from the device.
type Parameters struct {
	o   ParametersOptions
	log *slog.Logger
}

// NewParameters serves the parameter cache.
func NewParameters(o ParametersOptions) *Parameters {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Parameters{o: o, log: o.Logger}
}

// ReadLiveTimeout is how long ReadLive waits for the device.
const ReadLiveTimeout = 30 * time.Second

// ReadLive reads path (an object or a parameter) from the device now: a
// get task, waited for up to ReadLiveTimeout; its result lands in the cache
// (TaskQueue.settle) before the task is final. CodeTimeout when the task
// did not succeed in time, with the task's ID and state.
func (p *Parameters) ReadLive(ctx context.Context, deviceID, path string) error {
	if p.o.Tasks == nil {
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "refresh is not available")
	}
	t, err := p.o.Tasks.Create(ctx, deviceID, TaskRequest{Operation: "get", Paths: []string{path}})
	if err != nil {
		return err
	}
	t, err = p.o.Tasks.Wait(ctx, t.ID, ReadLiveTimeout)
	if err != nil {
		return err
	}
	if t.State != store.TaskSucceeded {
		msg := "the device did not answer in 30 s; task " + t.ID + " is " + string(t.State)
		if t.ErrorMessage != "" {
			msg = "task " + t.ID + " " + string(t.State) + ": " + t.ErrorMessage
		}
		return devicemodel.Errorf(devicemodel.CodeTimeout, "%s", msg)
	}
	return nil
}

// List returns one page of a device's cached parameters. Secret values
// show as Redacted unless reveal is set; revealed values are in the audit
// log under actor before they are returned (issue 15 §9): no audit, no
// values. The caller checks the role may reveal (CanReveal).
func (p *Parameters) List(ctx context.Context, f store.ParameterFilter, reveal bool, actor string) ([]CachedParameter, string, error) {
	if _, err := p.o.Store.FindDeviceByID(ctx, f.DeviceID); err != nil {
		return nil, "", err
	}
	ps, next, err := p.o.Store.FindParameters(ctx, f)
	if err != nil {
		return nil, "", err
	}
	out := make([]CachedParameter, 0, len(ps))
	var revealed []string
	for _, v := range ps {
		c := CachedParameter{Parameter: v}
		if p.o.Secrets.IsSecret(v.Path) && v.Value != "" {
			if reveal {
				revealed = append(revealed, v.Path)
			} else {
				c.Value, c.Redacted = Redacted, true
			}
		}
		out = append(out, c)
	}
	if len(revealed) > 0 {
		if actor == "" {
			return nil, "", devicemodel.Errorf(devicemodel.CodeUnauthenticated, "no authenticated actor")
		}
		if err := p.o.Store.AuditSecretReveal(ctx, actor, f.DeviceID, revealed); err != nil {
			return nil, "", err
		}
		p.log.Info("secret parameter values revealed", "actor", actor, "device", f.DeviceID, "paths", len(revealed))
	}
	return out, next, nil
}
