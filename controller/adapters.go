package controller

import (
	"context"
	"log/slog"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// AdapterDesk answers the adapters' requests to the controller on the bus:
// the CWMP adapter's "what should this device do now" and credential
// lookups.
//
// SessionWork comes from the TaskQueue (nothing to do without one).
// Credentials come from the store's per-device credentials (issue 5 §6):
// username, HA1 and realm, never a password. Without a store or a
// credentials key every lookup answers "not found", which the CWMP
// adapter's per-device mode treats as an authentication failure.
type AdapterDesk struct {
	subs []*bus.Subscription
}

// AdapterDeskOptions configure StartAdapterDeskWith.
type AdapterDeskOptions struct {
	Bus   *bus.Bus
	Tasks *TaskQueue
	// Store and CredentialKey answer credential lookups; both are needed
	// (the key's absence means per-device credentials are off).
	Store         *store.Store
	CredentialKey *store.CredentialKey
	// Enrolments, when set, is told how each CWMP session authenticated
	// (round 0 of its work) and adds pending credentials to the lookups.
	Enrolments *Enrolments
	// Backlog, when set, answers the adapters' backlog questions
	// (Registry.Backlog): they shed new sessions while it is high.
	Backlog func() uint64
	Logger  *slog.Logger
}

// StartAdapterDesk subscribes the desk's handlers in queue groups, so
// controller replicas share the load. It answers no credentials.
func StartAdapterDesk(b *bus.Bus, tasks *TaskQueue, log *slog.Logger) (*AdapterDesk, error) {
	return StartAdapterDeskWith(AdapterDeskOptions{Bus: b, Tasks: tasks, Logger: log})
}

// StartAdapterDeskWith is StartAdapterDesk with credential lookups.
func StartAdapterDeskWith(o AdapterDeskOptions) (*AdapterDesk, error) {
	b, tasks, log := o.Bus, o.Tasks, o.Logger
	if log == nil {
		log = slog.Default()
	}
	d := &AdapterDesk{}
	work, err := b.ServeWork("duet-controller", func(ctx context.Context, req *duetv1.SessionWorkRequest) (*duetv1.SessionWork, error) {
		if req.GetRound() == 0 && o.Enrolments != nil {
			// Before the work: an enrolment it starts is this session's.
			o.Enrolments.Session(ctx, req)
		}
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
		if o.Store == nil || o.CredentialKey == nil {
			return &duetv1.Credentials{Found: false}, nil
		}
		out, err := lookUpCredentials(ctx, o.Store, deviceID)
		if err != nil {
			// The adapter answers 503 and the CPE retries.
			log.Error("credential lookup failed", "device", deviceID, "err", err)
			return nil, err
		}
		return out, nil
	})
	if err != nil {
		work.Stop()
		return nil, err
	}
	d.subs = append(d.subs, creds)
	routes, err := b.ServeRoutes("duet-controller", func(ctx context.Context, req *duetv1.RoutesRequest) (*duetv1.Routes, error) {
		return answerRoutes(ctx, o.Store, req)
	})
	if err != nil {
		d.Stop()
		return nil, err
	}
	d.subs = append(d.subs, routes)
	if o.Backlog != nil {
		backlog, err := b.ServeBacklog("duet-controller", func(context.Context) uint64 { return o.Backlog() })
		if err != nil {
			d.Stop()
			return nil, err
		}
		d.subs = append(d.subs, backlog)
	}
	return d, nil
}

// lookUpCredentials answers a credential lookup: the device's own
// credentials, and those of an enrolment in progress (accepted besides
// the old ones until the CPE uses them, docs/guide-cwmp.md "Enrolment").
func lookUpCredentials(ctx context.Context, st *store.Store, deviceID string) (*duetv1.Credentials, error) {
	out := &duetv1.Credentials{}
	c, e, err := st.CredentialsForAuth(ctx, deviceID)
	if err != nil {
		return nil, err
	}
	if c != nil {
		out.Found, out.Username, out.DigestHa1, out.Realm = true, c.Username, c.DigestHA1, c.Realm
	}
	switch {
	case e != nil && e.State == store.EnrolmentEnrolled:
		out.Enrolled = out.Found
	case e != nil && e.State == store.EnrolmentPending && e.DigestHA1 != "":
		out.PendingUsername, out.PendingDigestHa1 = e.Username, e.DigestHA1
		if out.Realm == "" {
			out.Realm = e.Realm
		}
	}
	return out, nil
}

// answerRoutes tells a USP adapter on a broker which agents were last
// online over its transport (docs/bus.md, "Routes"): the registry's
// transport and address, which the adapters reported in each event's
// Reachability.
func answerRoutes(ctx context.Context, st *store.Store, req *duetv1.RoutesRequest) (*duetv1.Routes, error) {
	if st == nil {
		return &duetv1.Routes{}, nil
	}
	switch req.GetTransport() {
	case "mqtt", "stomp":
	default:
		// WebSocket agents dial Duet again by themselves; nothing else
		// keeps a connection through a broker.
		return &duetv1.Routes{}, nil
	}
	rs, more, err := st.FindUSPRoutes(ctx, req.GetTransport(), req.GetAfter(), int(req.GetLimit()))
	if err != nil {
		return nil, err
	}
	out := &duetv1.Routes{More: more, Routes: make([]*duetv1.Route, 0, len(rs))}
	for _, r := range rs {
		out.Routes = append(out.Routes, &duetv1.Route{DeviceId: r.DeviceID, Address: r.Address})
	}
	return out, nil
}

// Stop unsubscribes. Safe to call twice.
func (d *AdapterDesk) Stop() {
	for _, s := range d.subs {
		s.Stop()
	}
}
