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
// The task queue that fills SessionWork and the per-device credential store
// are not built yet (issue 5); until then every session is told there is
// nothing to do and every credential lookup answers "not found", which the
// CWMP adapter's per-device mode treats as an authentication failure.
type AdapterDesk struct {
	subs []*bus.Subscription
}

// StartAdapterDesk subscribes the desk's handlers in queue groups, so
// controller replicas share the load.
func StartAdapterDesk(b *bus.Bus, log *slog.Logger) (*AdapterDesk, error) {
	if log == nil {
		log = slog.Default()
	}
	d := &AdapterDesk{}
	work, err := b.ServeWork("duet-controller", func(ctx context.Context, req *duetv1.SessionWorkRequest) (*duetv1.SessionWork, error) {
		return &duetv1.SessionWork{}, nil
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
