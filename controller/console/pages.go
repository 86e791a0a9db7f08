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
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// stateCount is one protocol's devices by state.
type stateCount struct {
	Protocol                          string
	Online, Offline, Rebooting, Total int
}

// overviewData is what the overview shows.
type overviewData struct {
	ByProtocol                   []stateCount
	Total                        stateCount
	Queued, Dispatched, Awaiting int
	Outcomes                     []store.TaskStateCount
	Versions                     []store.VersionCount
	At                           time.Time
}

// protocolNames are the words the console uses for devicemodel protocols
// (never the enum's Go or protobuf name).
var protocolNames = map[string]string{"cwmp": "TR-069 (CWMP)", "usp": "TR-369 (USP)"}

func protocolName(p string) string {
	if n, ok := protocolNames[p]; ok {
		return n
	}
	return p
}

// OutcomeTotal is the number of tasks finished in the window.
func (d overviewData) OutcomeTotal() int {
	n := 0
	for _, o := range d.Outcomes {
		n += o.Tasks
	}
	return n
}

// overviewData returns the overview's figures, computed at most once per
// LiveInterval for every viewer together: they take two scans of the
// registry (about 250 ms at 100k devices on a loaded 2-core machine,
// BenchmarkConsolePages), which a NOC's many open screens, each live,
// must not multiply. A caller waits for a computation in progress rather
// than start another.
func (c *Console) overviewData(ctx context.Context) (overviewData, error) {
	c.overviewMu.Lock()
	defer c.overviewMu.Unlock()
	if !c.overview.At.IsZero() && time.Since(c.overview.At) < c.o.LiveInterval {
		return c.overview, nil
	}
	d, err := c.computeOverview(ctx)
	if err != nil {
		return d, err
	}
	c.overview = d
	return d, nil
}

func (c *Console) computeOverview(ctx context.Context) (overviewData, error) {
	var d overviewData
	counts, err := c.st.CountDevicesByState(ctx)
	if err != nil {
		return d, err
	}
	by := map[string]*stateCount{}
	for _, p := range []string{"cwmp", "usp"} {
		by[p] = &stateCount{Protocol: p}
	}
	for _, n := range counts {
		s := by[n.Protocol]
		if s == nil {
			s = &stateCount{Protocol: n.Protocol}
			by[n.Protocol] = s
		}
		// The API's state: rebooting first, then online (DeviceState).
		switch {
		case n.Rebooting:
			s.Rebooting += n.Devices
		case n.Online:
			s.Online += n.Devices
		default:
			s.Offline += n.Devices
		}
		s.Total += n.Devices
	}
	for _, s := range by {
		d.ByProtocol = append(d.ByProtocol, *s)
		d.Total.Online += s.Online
		d.Total.Offline += s.Offline
		d.Total.Rebooting += s.Rebooting
		d.Total.Total += s.Total
	}
	sort.Slice(d.ByProtocol, func(i, j int) bool { return d.ByProtocol[i].Protocol < d.ByProtocol[j].Protocol })
	if d.Queued, d.Dispatched, d.Awaiting, err = c.st.CountOpenTasks(ctx); err != nil {
		return d, err
	}
	if d.Outcomes, err = c.st.CountTaskOutcomes(ctx, time.Now().Add(-24*time.Hour)); err != nil {
		return d, err
	}
	if d.Versions, err = c.st.TopSoftwareVersions(ctx, 10); err != nil {
		return d, err
	}
	d.At = time.Now()
	return d, nil
}

func (c *Console) overviewPage(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	d, err := c.overviewData(r.Context())
	if err != nil {
		return err
	}
	c.render(w, r, sess, http.StatusOK, "overview", "Overview", d)
	return nil
}

// overviewLive streams the overview's figures as Server-Sent Events
// (event "overview", data: the figures' HTML), which the htmx SSE
// extension swaps in. Every stream ends on Close, or when the session
// ends (checked at each tick).
func (c *Console) overviewLive(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	return c.stream(w, r, func(ctx context.Context, send func(event, html string) error) error {
		d, err := c.overviewData(ctx)
		if err != nil {
			return fmt.Errorf("cannot read the figures: %w", err)
		}
		var buf strings.Builder
		if err := c.pages["overview"].ExecuteTemplate(&buf, "figures", layout{Data: d}); err != nil {
			return err
		}
		return send("overview", buf.String())
	})
}

// deviceRow is a device as the list shows it.
type deviceRow struct {
	devicemodel.Device
	State string
	Tags  []string
}

type devicesData struct {
	Form       url.Values
	Params     string
	Rows       []deviceRow
	Count      int64
	Next       string
	Unknown    map[string]int64
	Searched   bool
	FormError  string
	ThisCursor string
	// Carry is the search, as hidden fields of the selection form: "act
	// on every device the search matches" sends it on.
	Carry []field
}

type field struct{ Name, Value string }

// deviceFilter reads the search form: the search of GET /api/v1/devices
// (controller.ParseDeviceSearch), its param conditions one a line, 50 a
// page unless the form says otherwise.
func deviceFilter(q url.Values) (store.DeviceFilter, error) {
	s, err := controller.ParseDeviceSearch(searchValues(q))
	if err != nil {
		return s.Filter, err
	}
	if s.Filter.Limit == 0 {
		s.Filter.Limit = 50
	}
	return s.Filter, nil
}

// searchValues is the form's query as the API's: text fields trimmed,
// the conditions' lines as repeated param values; other keys dropped.
func searchValues(q url.Values) url.Values {
	out := url.Values{}
	for _, k := range controller.DeviceSearchKeys {
		if v := strings.TrimSpace(q.Get(k)); v != "" && k != "param" {
			out.Set(k, v)
		}
	}
	out["param"] = lines(q.Get("param"))
	return out
}

func (c *Console) devices(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	q := r.URL.Query()
	d := devicesData{Form: q, Params: q.Get("param"), ThisCursor: q.Get("cursor")}
	f, err := deviceFilter(q)
	if err != nil {
		if statusOf(err) >= 500 {
			return err
		}
		d.FormError = devicemodel.ErrorMessage(err)
		c.render(w, r, sess, http.StatusBadRequest, "devices", "Devices", d)
		return nil
	}
	// The count fragment (deviceCount) says what could not be judged.
	page, err := c.registry.Page(r.Context(), f)
	if err != nil {
		if statusOf(err) < 500 {
			d.FormError = devicemodel.ErrorMessage(err)
			c.render(w, r, sess, statusOf(err), "devices", "Devices", d)
			return nil
		}
		return err
	}
	for _, dev := range page.Devices {
		d.Rows = append(d.Rows, deviceRow{Device: dev.Device, State: controller.DeviceState(dev.Device), Tags: dev.Tags})
	}
	d.Next, d.Searched = page.Next, true
	for k, vs := range searchValues(q) {
		if k == "cursor" || k == "limit" || k == "count" || k == "sort" {
			continue
		}
		for _, v := range vs {
			d.Carry = append(d.Carry, field{k, v})
		}
	}
	sort.Slice(d.Carry, func(i, j int) bool { return d.Carry[i].Name < d.Carry[j].Name })
	c.render(w, r, sess, http.StatusOK, "devices", "Devices", d)
	return nil
}

// deviceCount answers the device list's count, which the page loads after
// itself: counting every match (and, with parameter conditions, the
// devices that could not be judged) can take seconds on a large registry
// with a broad condition, and the first page of results must not wait
// for it (BenchmarkConsolePages).
func (c *Console) deviceCount(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	q := r.URL.Query()
	q.Del("cursor")
	f, err := deviceFilter(q)
	if err != nil {
		return err
	}
	var count int64
	f.Count, f.Limit = &count, 1
	page, err := c.registry.Search(r.Context(), f)
	if err != nil {
		return err
	}
	d := devicesData{Count: count, Unknown: page.Unknown}
	c.fragment(w, r, sess, "devices", "count", d)
	return nil
}

type paramRow struct {
	store.Parameter
	Secret bool
}

type deviceData struct {
	Device     deviceRow
	Protocol   string
	Params     []paramEdit
	Prefix     string
	NextParams string
	Tasks      []store.Task
	Events     []store.DeviceEvent
	Extras     deviceExtras // device_extras.go
}

func (c *Console) device(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	id := r.PathValue("id")
	if err := devicemodel.ValidateDeviceID(id); err != nil {
		return devicemodel.Errorf(devicemodel.CodeNotFound, "there is no device %q", id)
	}
	dev, err := c.registry.Get(r.Context(), id)
	if err != nil {
		return err
	}
	d := deviceData{Device: deviceRow{Device: dev.Device, State: controller.DeviceState(dev.Device), Tags: dev.Tags},
		Protocol: protocolName(string(dev.Protocol)), Prefix: r.URL.Query().Get("prefix")}
	// Never revealed here: the console shows no secret value (the API's
	// admins can, audited).
	ps, next, err := c.params.List(r.Context(), store.ParameterFilter{DeviceID: id, Prefix: d.Prefix, After: r.URL.Query().Get("after"), Limit: 200},
		false, store.ActorFrom(r.Context()))
	if err != nil {
		return err
	}
	for _, p := range ps {
		row := paramRow{Parameter: p.Parameter, Secret: p.Redacted || c.secrets.IsSecret(p.Path)}
		if row.Secret {
			row.Value = ""
		}
		d.Params = append(d.Params, paramEdit{DeviceID: id, Row: row, Done: true, CanEdit: canEdit(sess, row)})
	}
	d.NextParams = next
	if d.Tasks, err = c.deviceTasks(r.Context(), id); err != nil {
		return err
	}
	if d.Events, _, err = c.st.FindDeviceEvents(r.Context(), store.EventFilter{DeviceID: id, Limit: 20}); err != nil {
		return err
	}
	if r.URL.Query().Get("part") == "tasks" {
		c.fragment(w, r, sess, "device", "tasks", d)
		return nil
	}
	if d.Extras, err = c.deviceExtras(r.Context(), sess, id, dev.Protocol); err != nil {
		return err
	}
	c.render(w, r, sess, http.StatusOK, "device", dev.ID, d)
	return nil
}

func (c *Console) deviceTasks(ctx context.Context, id string) ([]store.Task, error) {
	ts, _, err := c.st.FindTasks(ctx, store.TaskFilter{DeviceID: id, Limit: 20})
	return ts, err
}

// deviceOperate queues a reboot or factory reset (the page asked for a
// confirmation first) and answers the device's task list.
func (c *Console) deviceOperate(op string) func(http.ResponseWriter, *http.Request, *store.Session) error {
	return func(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
		if c.o.Tasks == nil {
			return devicemodel.Errorf(devicemodel.CodeUnavailable, "tasks are not available on this controller")
		}
		id := r.PathValue("id")
		if _, err := c.o.Tasks.Create(r.Context(), id, controller.TaskRequest{Operation: op}); err != nil {
			return err
		}
		if r.Header.Get("HX-Request") == "true" {
			ts, err := c.deviceTasks(r.Context(), id)
			if err != nil {
				return err
			}
			c.fragment(w, r, sess, "device", "tasks", deviceData{Device: deviceRow{Device: devicemodel.Device{ID: id}}, Tasks: ts})
			return nil
		}
		http.Redirect(w, r, "/devices/"+url.PathEscape(id), http.StatusSeeOther)
		return nil
	}
}

type usersData struct {
	Users []store.User
	Error string
	Made  string
}

func (c *Console) users(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	us, err := c.st.ListUsers(r.Context())
	if err != nil {
		return err
	}
	c.render(w, r, sess, http.StatusOK, "users", "Users", usersData{Users: us})
	return nil
}

func (c *Console) createUser(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	name, role := strings.TrimSpace(r.PostFormValue("name")), store.Role(r.PostFormValue("role"))
	password := store.NewPassword()
	_, err := c.st.CreateUser(r.Context(), store.ActorFrom(r.Context()), name, role, password)
	us, lerr := c.st.ListUsers(r.Context())
	if lerr != nil {
		return lerr
	}
	d := usersData{Users: us}
	code := http.StatusOK
	if err != nil {
		if statusOf(err) >= 500 {
			return err
		}
		code, d.Error = statusOf(err), devicemodel.ErrorMessage(err)
	} else {
		// Shown once, to the admin who made the user, to pass on.
		d.Made = fmt.Sprintf("User %s (%s) was created. Their password, shown only now: %s", name, role, password)
	}
	c.render(w, r, sess, code, "users", "Users", d)
	return nil
}

func (c *Console) updateUser(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	name := r.PathValue("name")
	var ch store.UserChange
	switch r.PostFormValue("action") {
	case "disable", "enable":
		off := r.PostFormValue("action") == "disable"
		if off && name == sess.User.Name {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "you cannot disable yourself")
		}
		ch.Disabled = &off
	case "role":
		role := store.Role(r.PostFormValue("role"))
		ch.Role = &role
	default:
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "unknown action")
	}
	if _, err := c.st.UpdateUser(r.Context(), store.ActorFrom(r.Context()), name, ch); err != nil {
		return err
	}
	http.Redirect(w, r, "/users", http.StatusSeeOther)
	return nil
}

func (c *Console) apiDocs(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	// Redoc builds its page with inline styles and a blob: worker; this
	// page alone allows them.
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'")
	c.render(w, r, sess, http.StatusOK, "apidocs", "API documentation", nil)
	return nil
}

func (c *Console) openAPI(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	if len(c.o.OpenAPI) == 0 {
		return devicemodel.Errorf(devicemodel.CodeNotFound, "this controller has no API document")
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(c.o.OpenAPI)
	return nil
}
