package controller

import (
	"context"
	"log/slog"

	"github.com/duet-dm/duet/pkg/bus"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// AdapterDesk answers the adapters' requests to the controller on the bus:
// the CWMP adapter's "what should this device do now" and credential
// lookups.
//
// SessionWork comes from the TaskQueue (nothing to do without one). The
// per-device credential store is not built yet (issue 5 §6); until then
// every credential lookup answers "not found", which the CWMP adapter's
// per-device mode treats as an authentication failure.
type AdapterDesk struct {
	subs []*bus.Subscription
}

// StartAdapterDesk subscribes the desk's handlers in queue groups, so
// controller replicas share the load.
func StartAdapterDesk(b *bus.Bus, tasks *TaskQueue, log *slog.Logger) (*AdapterDesk, error) {
	if log == nil {
		log = slog.Default()
	}
	d := &AdapterDesk{}
	work, err := b.ServeWork("duet-controller", func(ctx context.Context, req *duetv1.SessionWorkRequest) (*duetv1.SessionWork, error) {
		if tasks == nil {
			return &duetv1.SessionWork{}, nil
		}
		w, err := tasks.SessionWork(ctx, req)
		if err != nil {
			// The adapter ends the session on an error; the device's
			// tasks stay queued for its next one.
			log.Error("session work failed", "device", req.GetDeviceId(), "session", req.GetSessionId(), "err", err)
			return nil, err
		}
		return w, nil
	})
	if err != nil {
		return nil, err
	}
	d.subs = append(d.subs, work)
	creds, err := b.ServeCredentials("duet-controller", func(ctx context.Context, deviceID string) (*duetv1.Credentials, error) {
		return &duetv1.Credentials{Found: false}, nil
	})
	if err != nil {
		work.Stop()
		return nil, err
	}
	d.subs = append(d.subs, creds)
	return d, nil
}

// Stop unsubscribes. Safe to call twice.
func (d *AdapterDesk) Stop() {
	for _, s := range d.subs {
		s.Stop()
	}
}
