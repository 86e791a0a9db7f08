package console

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// The device page's extras (issue 13 item 4, "Device page"): its policies
// and their statuses, its CWMP credentials (set or deleted, never shown),
// actions with arguments (a file from the repository, any operate
// command) behind a confirmation, its event history paged and a live
// tail of it.

// deviceOperations are the device page's action form's operations:
// reboot and factory reset have their own buttons.
var deviceOperations = []string{"firmware_upgrade", "download", "operate", "get", "set"}

// credentialsRole is the role the API asks to set or delete credentials.
var credentialsRole = api.RouteRole("PUT /api/v1/devices/{id}/credentials")

// deviceExtras is what the device page shows besides its own parts.
type deviceExtras struct {
	Policies []store.PolicyStatus
	// Credentials: the device's stored credentials, without secrets
	// (nil: none, or CredentialsError says why not known).
	Credentials      *store.DeviceCredentials
	CredentialsError string
	CanCredentials   bool
	Files            []store.File
	Operations       []string
}

func (c *Console) deviceExtras(ctx context.Context, sess *store.Session, id string, p devicemodel.Protocol) (deviceExtras, error) {
	x := deviceExtras{CanCredentials: roleAtLeast(sess.User.Role, credentialsRole), Operations: deviceOperations}
	st, err := c.st.DeviceStatuses(ctx, []string{id})
	if err != nil {
		return x, err
	}
	for _, byDevice := range st {
		if s, ok := byDevice[id]; ok {
			x.Policies = append(x.Policies, s)
		}
	}
	sort.Slice(x.Policies, func(i, j int) bool { return x.Policies[i].PolicyID < x.Policies[j].PolicyID })
	if p == devicemodel.ProtocolCWMP {
		if err := c.creds.Available(); err != nil {
			// No key configured: the page says so; the rest still shows.
			x.CredentialsError = devicemodel.ErrorMessage(err)
			return c.deviceFiles(ctx, sess, x)
		}
		switch cr, err := c.creds.Find(ctx, id); {
		case err == nil:
			x.Credentials = &cr
		case devicemodel.ErrorCode(err) == devicemodel.CodeNotFound:
		case statusOf(err) < 500:
			x.CredentialsError = devicemodel.ErrorMessage(err)
		default:
			return x, err
		}
	}
	return c.deviceFiles(ctx, sess, x)
}

// deviceFiles adds the repository's files an operator's action form
// offers.
func (c *Console) deviceFiles(ctx context.Context, sess *store.Session, x deviceExtras) (deviceExtras, error) {
	if !roleAtLeast(sess.User.Role, store.RoleOperator) {
		return x, nil
	}
	var err error
	x.Files, err = c.st.FindFiles(ctx, store.FileFilter{Limit: 200})
	return x, err
}

// deviceAction queues the action form's task for one device (the page
// asked for a confirmation) and goes back to the device page, where the
// task shows in the live task list.
func (c *Console) deviceAction(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	if c.o.Tasks == nil {
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "tasks are not available on this controller")
	}
	id := r.PathValue("id")
	t, err := taskRequestOf(r.PostForm)
	if err != nil {
		return err
	}
	if err := c.noSecrets(t); err != nil {
		return err
	}
	if _, err := c.o.Tasks.Create(r.Context(), id, t); err != nil {
		return err
	}
	http.Redirect(w, r, "/devices/"+url.PathEscape(id)+"#tasks", http.StatusSeeOther)
	return nil
}

// putCredentials stores a CWMP device's credentials (the API's
// credentials service): the form's passwords go in, never out.
func (c *Console) putCredentials(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	id := r.PathValue("id")
	in := store.CredentialsInput{Username: r.PostFormValue("username"), Password: r.PostFormValue("password"),
		ConnectionRequestUsername: r.PostFormValue("cr_username"), ConnectionRequestPassword: r.PostFormValue("cr_password")}
	if _, err := c.creds.Put(r.Context(), store.ActorFrom(r.Context()), id, in); err != nil {
		return err
	}
	http.Redirect(w, r, "/devices/"+url.PathEscape(id)+"#credentials", http.StatusSeeOther)
	return nil
}

func (c *Console) deleteCredentials(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	id := r.PathValue("id")
	if err := c.creds.Delete(r.Context(), store.ActorFrom(r.Context()), id); err != nil {
		return err
	}
	http.Redirect(w, r, "/devices/"+url.PathEscape(id)+"#credentials", http.StatusSeeOther)
	return nil
}

type eventsData struct {
	DeviceID string
	Events   []store.DeviceEvent
	Next     string
	Kind     string
	First    bool // the newest page: the live tail adds to it
}

// deviceEvents is a device's history, paged, newest first, optionally of
// one kind.
func (c *Console) deviceEvents(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	id, q := r.PathValue("id"), r.URL.Query()
	if err := devicemodel.ValidateDeviceID(id); err != nil {
		return devicemodel.Errorf(devicemodel.CodeNotFound, "there is no device %q", id)
	}
	if _, err := c.registry.Get(r.Context(), id); err != nil {
		return err
	}
	d := eventsData{DeviceID: id, Kind: q.Get("kind")}
	if d.Kind != "" && !controller.IsEventKind(d.Kind) {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%q is not an event kind; one of %s", d.Kind, controller.EventKindNames())
	}
	f := store.EventFilter{DeviceID: id, Kind: d.Kind, Limit: 50}
	if v := q.Get("cursor"); v != "" {
		cur, err := store.DecodeEventCursor(v)
		if err != nil {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the page link is stale; start again")
		}
		f.Before = &cur
	}
	d.First = f.Before == nil
	var err error
	if d.Events, d.Next, err = c.st.FindDeviceEvents(r.Context(), f); err != nil {
		return err
	}
	c.render(w, r, sess, http.StatusOK, "events", "Events of "+id, d)
	return nil
}

// deviceEventsLive streams a device's new events as Server-Sent Events
// (event "device-event", data: a table row), read from its history every
// LiveInterval: the rows the page's table gains at the top. It ends on
// Close, when the browser leaves, or when the session ends.
func (c *Console) deviceEventsLive(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	id := r.PathValue("id")
	if err := devicemodel.ValidateDeviceID(id); err != nil {
		return devicemodel.Errorf(devicemodel.CodeNotFound, "there is no device %q", id)
	}
	kind := r.URL.Query().Get("kind")
	// The tail starts after the newest event the page already shows.
	var last *store.EventCursor
	latest, _, err := c.st.FindDeviceEvents(r.Context(), store.EventFilter{DeviceID: id, Kind: kind, Limit: 1})
	if err != nil {
		return err
	}
	if len(latest) == 1 {
		last = &store.EventCursor{Time: latest[0].Time, ID: latest[0].ID}
	}
	return c.stream(w, r, func(ctx context.Context, send func(event, html string) error) error {
		evs, _, err := c.st.FindDeviceEvents(ctx, store.EventFilter{DeviceID: id, Kind: kind, Limit: 100})
		if err != nil {
			return err
		}
		// Oldest first, those after the last one sent.
		for i := len(evs) - 1; i >= 0; i-- {
			e := evs[i]
			newer := last == nil || e.Time.After(last.Time) || (e.Time.Equal(last.Time) && e.ID > last.ID)
			if !newer {
				continue
			}
			var buf strings.Builder
			if err := c.pages["events"].ExecuteTemplate(&buf, "event-row", e); err != nil {
				return err
			}
			if err := send("device-event", buf.String()); err != nil {
				return err
			}
			last = &store.EventCursor{Time: e.Time, ID: e.ID}
		}
		return nil
	})
}

// stream serves Server-Sent Events: every LiveInterval, tick sends what
// is new. It ends on Close, when the browser leaves, or when the session
// ends (checked at each tick); a failing tick is logged and retried at
// the next.
func (c *Console) stream(w http.ResponseWriter, r *http.Request, tick func(ctx context.Context, send func(event, html string) error) error) error {
	rc := http.NewResponseController(w)
	// Event streams are exempt from the write timeout (as the API's are).
	_ = rc.SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()
	send := func(event, html string) error {
		fmt.Fprintf(w, "event: %s\n", event)
		for _, line := range strings.Split(html, "\n") {
			fmt.Fprintf(w, "data: %s\n", line)
		}
		fmt.Fprint(w, "\n")
		return rc.Flush()
	}
	t := time.NewTicker(c.o.LiveInterval)
	defer t.Stop()
	ck, _ := r.Cookie(sessionCookie)
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-c.stop:
			return nil
		case <-t.C:
		}
		if ck == nil {
			return nil
		}
		if _, err := c.st.FindSession(r.Context(), ck.Value, c.o.IdleTimeout+c.o.LiveInterval, c.o.SessionLifetime); err != nil {
			return nil // logged out or expired: the stream ends
		}
		if err := tick(r.Context(), send); err != nil {
			if r.Context().Err() != nil {
				return nil
			}
			c.rl.Warn("console live stream: a tick failed", "path", r.URL.Path, "err", err)
		}
	}
}
