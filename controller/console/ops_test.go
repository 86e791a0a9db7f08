package console

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// addDevices puts devices in the registry as the registry would: ids
// with a manufacturer each, cwmp, online.
func addDevices(t *testing.T, st *store.Store, manufacturer string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := st.Pool().Exec(context.Background(), `INSERT INTO devices (id, protocol, manufacturer, oui, product_class,
			serial_number, model_name, software_version, hardware_version, first_seen, last_seen, online, online_changed_at,
			transport, facts_updated_at) VALUES ($1, 'cwmp', $2, '00D09E', 'PC', 'SN-' || $1, 'Model', '1.0', '1.0',
			now(), now(), true, now(), 'cwmp', now())`, id, manufacturer); err != nil {
			t.Fatal(err)
		}
	}
}

// usersOfEveryRole makes vera (viewer), otto (operator) and ada (admin),
// each with the password "<name>s long password", and logs them in.
func usersOfEveryRole(t *testing.T, c *Console, st *store.Store) map[string]loggedIn {
	t.Helper()
	out := map[string]loggedIn{}
	for name, role := range map[string]store.Role{"vera": store.RoleViewer, "otto": store.RoleOperator, "ada": store.RoleAdmin} {
		if _, err := st.CreateUser(context.Background(), "test", name, role, name+"s long password"); err != nil {
			t.Fatal(err)
		}
		ck, csrf := logIn(t, c, name, name+"s long password", nil)
		out[name] = loggedIn{cookies: []*http.Cookie{ck}, csrf: csrf}
	}
	return out
}

type loggedIn struct {
	cookies []*http.Cookie
	csrf    string
}

// TestConsoleSearchIsTheAPIs: the device list reads its form with the
// API's parser, so every filter of GET /api/v1/devices works in the
// console too (manufacturer and last_seen_* were ignored before) and a
// bad value is refused naming it.
func TestConsoleSearchIsTheAPIs(t *testing.T) {
	c, st := newTestConsole(t)
	us := usersOfEveryRole(t, c, st)
	addDevices(t, st, "ACME", "s-acme-1", "s-acme-2")
	addDevices(t, st, "Other", "s-other-1")
	v := us["vera"]
	a := do(c, "GET", "/devices?manufacturer=ACME", nil, v.cookies, nil)
	if a.code != 200 || !strings.Contains(a.body, "s-acme-2") || strings.Contains(a.body, "s-other-1") {
		t.Fatalf("manufacturer=ACME: %d\n%s", a.code, a.body)
	}
	a = do(c, "GET", "/devices?last_seen_before=2000-01-01T00:00:00Z", nil, v.cookies, nil)
	if a.code != 200 || strings.Contains(a.body, "s-acme-1") {
		t.Fatalf("last_seen_before 2000: %d\n%s", a.code, a.body)
	}
	a = do(c, "GET", "/devices?param="+"Device.X%0A%0ADevice.Y:eq:1", nil, v.cookies, nil)
	if a.code != 400 || !strings.Contains(a.body, `&#34;param&#34; #1`) {
		t.Fatalf("bad condition: %d\n%s", a.code, a.body)
	}
	a = do(c, "GET", "/devices?online=maybe", nil, v.cookies, nil)
	if a.code != 400 || !strings.Contains(a.body, "&#34;online&#34;: must be true or false") {
		t.Fatalf("online=maybe: %d\n%s", a.code, a.body)
	}
}

// newOpsConsole is a console with a task queue and a bulk runner, as
// `duet serve` builds it, and users of every role.
func newOpsConsole(t *testing.T, settings ...Setting) (*Console, *store.Store, map[string]loggedIn) {
	t.Helper()
	return newOpsConsoleWith(t, func(o *Options) { o.Settings = settings })
}

// newOpsConsoleWith is newOpsConsole with more options set by opt.
func newOpsConsoleWith(t *testing.T, opt func(*Options)) (*Console, *store.Store, map[string]loggedIn) {
	t.Helper()
	b, _ := bustest.Start(t)
	st, _ := storetest.Open(t)
	q, err := controller.NewTaskQueue(controller.TaskQueueOptions{Store: st, Bus: b, SweepInterval: 100 * time.Millisecond, CommandTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Stop)
	bulk, err := controller.NewBulkRunner(controller.BulkOptions{Store: st, Tasks: q, DefaultRate: 100})
	if err != nil {
		t.Fatal(err)
	}
	if err := bulk.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bulk.Stop)
	// The activity sampler samples once at the start, then not during a test.
	o := Options{Store: st, Tasks: q, Bulk: bulk, LiveInterval: 100 * time.Millisecond, ActivityInterval: time.Hour}
	opt(&o)
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, st, usersOfEveryRole(t, c, st)
}

var hiddenField = regexp.MustCompile(`<input type="hidden" name="(filter|task|rate|scope)" value="([^"]*)">`)

// formFields reads a page's hidden fields (filter, task, rate, scope).
func formFields(body string) url.Values {
	out := url.Values{}
	for _, m := range hiddenField.FindAllStringSubmatch(body, -1) {
		out.Set(m[1], html.UnescapeString(m[2]))
	}
	return out
}

func (u loggedIn) post(c *Console, target string, form url.Values) answer {
	f := url.Values{"csrf": {u.csrf}}
	for k, v := range form {
		f[k] = v
	}
	return do(c, "POST", target, f, u.cookies, nil)
}

// waitFor polls until cond holds, for up to two minutes (a loaded machine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestConsoleSelectionBecomesABatch: ticked rows, or the whole search,
// become a task batch through the API's bulk service after a confirmation
// that counts the devices; the batch, its progress and its tasks show on
// the batch and task pages; a viewer's forged POSTs are refused.
func TestConsoleSelectionBecomesABatch(t *testing.T) {
	c, st, us := newOpsConsole(t)
	ctx := context.Background()
	addDevices(t, st, "ACME", "b-1", "b-2", "b-3")
	addDevices(t, st, "Other", "b-x")
	otto, vera := us["otto"], us["vera"]

	// An operator's device list has the checkboxes and both actions; a
	// viewer's has neither.
	if a := do(c, "GET", "/devices?manufacturer=ACME", nil, otto.cookies, nil); !strings.Contains(a.body, `name="ids" value="b-1"`) ||
		!strings.Contains(a.body, `id="act-filter"`) || !strings.Contains(a.body, `<input type="hidden" name="manufacturer" value="ACME">`) {
		t.Fatalf("operator's device list:\n%s", a.body)
	}
	if a := do(c, "GET", "/devices", nil, vera.cookies, nil); strings.Contains(a.body, `name="ids"`) || strings.Contains(a.body, "act-filter") {
		t.Fatalf("viewer's device list offers actions:\n%s", a.body)
	}

	// The selection: two devices, a reboot.
	a := do(c, "GET", "/batches/new?scope=selection&ids=b-1&ids=b-2&manufacturer=ACME", nil, otto.cookies, nil)
	if a.code != 200 || !strings.Contains(a.body, "<strong>2</strong> selected devices") {
		t.Fatalf("action form: %d\n%s", a.code, a.body)
	}
	form := formFields(a.body)
	form.Set("operation", "reboot")
	form.Set("rate", "200")
	a = otto.post(c, "/batches/confirm", form)
	if a.code != 200 || !strings.Contains(a.body, `<strong id="confirm-count">2</strong>`) || !strings.Contains(a.body, "<strong>reboot</strong>") {
		t.Fatalf("confirmation: %d\n%s", a.code, a.body)
	}
	confirmed := formFields(a.body)

	// A viewer cannot create it, with a valid session and CSRF token.
	if a := vera.post(c, "/batches", confirmed); a.code != http.StatusForbidden {
		t.Fatalf("viewer's forged batch: %d", a.code)
	}
	if a := vera.post(c, "/batches/confirm", form); a.code != http.StatusForbidden {
		t.Fatalf("viewer's forged confirmation: %d", a.code)
	}
	if bs, _, err := st.FindTaskBatches(ctx, store.TaskBatchFilter{}); err != nil || len(bs) != 0 {
		t.Fatalf("a viewer made a batch: %v %v", bs, err)
	}

	a = otto.post(c, "/batches", confirmed)
	if a.code != http.StatusSeeOther || !strings.HasPrefix(a.header.Get("Location"), "/batches/") {
		t.Fatalf("create: %d %v\n%s", a.code, a.header, a.body)
	}
	batchID := strings.TrimPrefix(a.header.Get("Location"), "/batches/")
	var b store.TaskBatch
	waitFor(t, "the batch to finish", func() bool {
		var err error
		b, err = st.FindTaskBatchByID(ctx, batchID)
		return err == nil && b.State == store.BatchDone
	})
	ts, _, err := st.FindAllTasks(ctx, store.TaskListFilter{BatchID: batchID})
	if err != nil || len(ts) != 2 || b.Actor != store.UserActor("otto") || b.Rate != 200 {
		t.Fatalf("batch %+v tasks %v %v", b, ts, err)
	}
	for _, task := range ts {
		if task.Operation != "reboot" || (task.DeviceID != "b-1" && task.DeviceID != "b-2") {
			t.Fatalf("task %+v", task)
		}
	}

	// The batches list and the batch page show it with its progress; the
	// task list filters by batch; a task's page shows its request.
	if a := do(c, "GET", "/batches", nil, vera.cookies, nil); a.code != 200 || !strings.Contains(a.body, `data-batch="`+batchID+`" data-state="done"`) ||
		!strings.Contains(a.body, `data-matched="2" data-created="2"`) {
		t.Fatalf("batches page: %d\n%s", a.code, a.body)
	}
	if a := do(c, "GET", "/batches/"+batchID, nil, vera.cookies, nil); a.code != 200 || !strings.Contains(a.body, `data-task="`+ts[0].ID+`"`) {
		t.Fatalf("batch page: %d\n%s", a.code, a.body)
	}
	if a := do(c, "GET", "/tasks?batch="+batchID+"&part=rows", nil, vera.cookies, map[string]string{"HX-Request": "true"}); a.code != 200 ||
		strings.Count(a.body, "data-task=") != 2 || strings.Contains(a.body, "<html") {
		t.Fatalf("task rows: %d\n%s", a.code, a.body)
	}
	if a := do(c, "GET", "/tasks/"+ts[0].ID, nil, vera.cookies, nil); a.code != 200 || !strings.Contains(a.body, "&#34;operation&#34;: &#34;reboot&#34;") ||
		!strings.Contains(a.body, "created by otto (user)") {
		t.Fatalf("task page: %d\n%s", a.code, a.body)
	}

	// The whole search: the three ACME devices, not the other one.
	a = do(c, "GET", "/batches/new?scope=filter&manufacturer=ACME", nil, otto.cookies, nil)
	form = formFields(a.body)
	form.Set("operation", "get")
	form.Set("paths", "Device.DeviceInfo.\n\n")
	if a := otto.post(c, "/batches/confirm", form); a.code != 200 || !strings.Contains(a.body, `<strong id="confirm-count">3</strong>`) {
		t.Fatalf("filter confirmation: %d\n%s", a.code, a.body)
	}
	// A bad action is said in words on the form, nothing is counted.
	form.Set("operation", "set")
	form.Set("params", "Device.WiFi.AccessPoint.1.Security.KeyPassphrase=hunter2")
	if a := otto.post(c, "/batches/confirm", form); a.code != 400 || !strings.Contains(a.body, "holds a secret") || strings.Contains(a.body, "confirm-count") {
		t.Fatalf("secret set: %d\n%s", a.code, a.body)
	}
	form.Set("params", "Device.X")
	if a := otto.post(c, "/batches/confirm", form); a.code != 400 || !strings.Contains(a.body, "want path=value") {
		t.Fatalf("bad set: %d\n%s", a.code, a.body)
	}
	if a := do(c, "GET", "/batches/new?scope=selection", nil, otto.cookies, nil); a.code != 400 || !strings.Contains(a.body, "No device is selected") {
		t.Fatalf("empty selection: %d\n%s", a.code, a.body)
	}
	if a := do(c, "GET", "/batches/new?scope=filter", nil, vera.cookies, nil); a.code != http.StatusForbidden {
		t.Fatalf("viewer's action form: %d", a.code)
	}
}

// TestConsoleTaskCancelRetry: the task list filters by state, operation
// and device; an operator cancels a queued task and retries it; a
// viewer's forged cancel is refused.
func TestConsoleTaskCancelRetry(t *testing.T) {
	c, st, us := newOpsConsole(t)
	ctx := store.ContextWithActor(context.Background(), "test")
	addDevices(t, st, "ACME", "t-1", "t-2")
	// Offline devices keep their tasks queued.
	if _, err := st.Pool().Exec(ctx, "UPDATE devices SET online = false"); err != nil {
		t.Fatal(err)
	}
	task, err := c.o.Tasks.Create(ctx, "t-1", controller.TaskRequest{Operation: "reboot"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.o.Tasks.Create(ctx, "t-2", controller.TaskRequest{Operation: "get", Paths: []string{"Device."}}); err != nil {
		t.Fatal(err)
	}
	otto, vera := us["otto"], us["vera"]
	// Without a credentials key the device page still shows, and says so.
	if a := do(c, "GET", "/devices/t-1", nil, otto.cookies, nil); a.code != 200 || !strings.Contains(a.body, "DUET_CREDENTIALS_KEY") {
		t.Fatalf("device page without a credentials key: %d\n%s", a.code, a.body)
	}
	for query, want := range map[string]int{"": 2, "state=queued": 2, "state=failed": 0, "operation=reboot": 1, "device=t-2": 1,
		"since=2000-01-01T00:00": 2, "until=2000-01-01T00:00": 0} {
		a := do(c, "GET", "/tasks?"+query, nil, vera.cookies, nil)
		if a.code != 200 || strings.Count(a.body, "data-task=") != want {
			t.Errorf("/tasks?%s: %d, %d tasks, want %d", query, a.code, strings.Count(a.body, "data-task="), want)
		}
	}
	if a := do(c, "GET", "/tasks?state=lost", nil, vera.cookies, nil); a.code != 400 || !strings.Contains(a.body, "state must be one of") {
		t.Fatalf("bad state: %d", a.code)
	}
	if a := vera.post(c, "/tasks/"+task.ID+"/cancel", nil); a.code != http.StatusForbidden {
		t.Fatalf("viewer's forged cancel: %d", a.code)
	}
	if a := do(c, "GET", "/tasks/"+task.ID, nil, otto.cookies, nil); !strings.Contains(a.body, `id="cancel-task"`) || strings.Contains(a.body, `id="retry-task"`) {
		t.Fatalf("queued task's page:\n%s", a.body)
	}
	if a := otto.post(c, "/tasks/"+task.ID+"/cancel", nil); a.code != http.StatusSeeOther {
		t.Fatalf("cancel: %d\n%s", a.code, a.body)
	}
	a := do(c, "GET", "/tasks/"+task.ID, nil, otto.cookies, nil)
	if !strings.Contains(a.body, `data-state="cancelled"`) || !strings.Contains(a.body, `id="retry-task"`) {
		t.Fatalf("cancelled task's page:\n%s", a.body)
	}
	if a := otto.post(c, "/tasks/"+task.ID+"/cancel", nil); a.code != http.StatusConflict || !strings.Contains(a.body, "only a queued task, or a dispatched one awaiting its completion, can be cancelled") {
		t.Fatalf("second cancel: %d", a.code)
	}
	a = otto.post(c, "/tasks/"+task.ID+"/retry", nil)
	if a.code != http.StatusSeeOther || a.header.Get("Location") == "/tasks/"+task.ID {
		t.Fatalf("retry: %d %v", a.code, a.header)
	}
	a = do(c, "GET", a.header.Get("Location"), nil, vera.cookies, nil)
	if !strings.Contains(a.body, "a retry of "+task.ID) || !strings.Contains(a.body, `data-state="queued"`) {
		t.Fatalf("the retry's page:\n%s", a.body)
	}
}

// TestConsoleSettingsPage: every role reads the settings as given (cmd/duet
// masks secrets before they reach the console).
func TestConsoleSettingsPage(t *testing.T) {
	c, _, us := newOpsConsole(t, Setting{Name: "cwmp-password", Env: "DUET_CWMP_PASSWORD", Value: "(secret, set)", Source: "environment"},
		Setting{Name: "http-addr", Env: "DUET_HTTP_ADDR", Value: ":8080", Source: "default"})
	a := do(c, "GET", "/settings", nil, us["vera"].cookies, nil)
	if a.code != 200 || !strings.Contains(a.body, `<tr data-setting="cwmp-password"><td>cwmp-password</td><td><code>DUET_CWMP_PASSWORD</code></td><td class="value">(secret, set)</td><td>environment</td>`) ||
		!strings.Contains(a.body, `href="/settings"`) {
		t.Fatalf("settings: %d\n%s", a.code, a.body)
	}
}

// TestConsoleHeldAgents: held endpoint IDs are listed; an admin (the
// API's role for admission) approves one and rejects another, audited
// with the user's name; a viewer's or an operator's forged approval is
// refused.
func TestConsoleHeldAgents(t *testing.T) {
	c, st, us := newOpsConsole(t)
	ctx := context.Background()
	for _, eid := range []string{"os::HELD-1", "os::HELD-2"} {
		if _, err := st.HoldUSPAgent(ctx, eid, "mqtt", "192.0.2.7"); err != nil {
			t.Fatal(err)
		}
	}
	vera, otto, ada := us["vera"], us["otto"], us["ada"]
	a := do(c, "GET", "/agents", nil, vera.cookies, nil)
	if a.code != 200 || !strings.Contains(a.body, `data-agent="os::HELD-1" data-state="pending"`) || strings.Contains(a.body, "/approve") {
		t.Fatalf("viewer's held agents: %d\n%s", a.code, a.body)
	}
	for _, u := range []loggedIn{vera, otto} {
		if a := u.post(c, "/agents/os::HELD-1/approve", nil); a.code != http.StatusForbidden {
			t.Fatalf("forged approval: %d", a.code)
		}
	}
	if s, _ := st.AdmissionState(ctx, "os::HELD-1"); s != store.AdmissionPending {
		t.Fatalf("after a refused approval: %s", s)
	}
	if a := do(c, "GET", "/agents", nil, otto.cookies, nil); strings.Contains(a.body, "/approve") {
		t.Fatalf("operator's held agents offer approval:\n%s", a.body)
	}
	if a := do(c, "GET", "/agents", nil, ada.cookies, nil); !strings.Contains(a.body, `action="/agents/os::HELD-1/approve"`) {
		t.Fatalf("admin's held agents:\n%s", a.body)
	}
	if a := ada.post(c, "/agents/os::HELD-1/approve", url.Values{"from": {"pending"}}); a.code != http.StatusSeeOther {
		t.Fatalf("approve: %d\n%s", a.code, a.body)
	}
	if a := ada.post(c, "/agents/os::HELD-2/reject", nil); a.code != http.StatusSeeOther {
		t.Fatalf("reject: %d\n%s", a.code, a.body)
	}
	for eid, want := range map[string]string{"os::HELD-1": store.AdmissionApproved, "os::HELD-2": store.AdmissionRejected} {
		if s, _ := st.AdmissionState(ctx, eid); s != want {
			t.Errorf("%s: %s, want %s", eid, s, want)
		}
	}
	a = do(c, "GET", "/agents?state=approved", nil, vera.cookies, nil)
	if !strings.Contains(a.body, `data-agent="os::HELD-1" data-state="approved"`) || !strings.Contains(a.body, "ada (user)") {
		t.Fatalf("approved agents:\n%s", a.body)
	}
}

// TestConsoleOwnPassword: any user changes their own password with the
// old one; a wrong old password is refused (and counts as a failed
// login); afterwards the old sessions are over and the new password logs
// in.
func TestConsoleOwnPassword(t *testing.T) {
	c, _, us := newOpsConsole(t)
	vera := us["vera"]
	if a := vera.post(c, "/account/password", url.Values{"old": {"not my password"}, "new": {"a new long password"}, "again": {"a new long password"}}); a.code != http.StatusForbidden ||
		!strings.Contains(a.body, "The current password is wrong.") {
		t.Fatalf("wrong old password: %d\n%s", a.code, a.body)
	}
	if a := vera.post(c, "/account/password", url.Values{"old": {"veras long password"}, "new": {"a new long password"}, "again": {"another one"}}); a.code != http.StatusBadRequest {
		t.Fatalf("repetition differs: %d", a.code)
	}
	if a := vera.post(c, "/account/password", url.Values{"old": {"veras long password"}, "new": {"short"}, "again": {"short"}}); a.code != http.StatusBadRequest {
		t.Fatalf("too short: %d\n%s", a.code, a.body)
	}
	if a := do(c, "POST", "/account/password", url.Values{"old": {"veras long password"}, "new": {"a new long password"}, "again": {"a new long password"}}, vera.cookies, nil); a.code != http.StatusForbidden {
		t.Fatalf("without the CSRF token: %d", a.code)
	}
	a := vera.post(c, "/account/password", url.Values{"old": {"veras long password"}, "new": {"a new long password"}, "again": {"a new long password"}})
	if a.code != http.StatusSeeOther || a.header.Get("Location") != "/login?changed=1" {
		t.Fatalf("change: %d %v\n%s", a.code, a.header, a.body)
	}
	if a := do(c, "GET", "/tasks", nil, vera.cookies, nil); a.code != http.StatusSeeOther {
		t.Fatalf("the old session lives on: %d", a.code)
	}
	logIn(t, c, "vera", "a new long password", nil)
}

// TestConsoleDeviceExtras: the device page's credentials (stored by an
// admin, never shown, refused to an operator), an operate command queued
// from its action form, its policies, its event history paged and the
// live tail of new events.
func TestConsoleDeviceExtras(t *testing.T) {
	key, err := store.NewCredentialKey([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	var st *store.Store
	c, st, us := newOpsConsoleWith(t, func(o *Options) {
		o.Credentials = controller.NewCredentials(controller.CredentialsOptions{Store: o.Store, Key: key})
	})
	ctx := context.Background()
	addDevices(t, st, "ACME", "x-1")
	ada, otto, vera := us["ada"], us["otto"], us["vera"]
	a := do(c, "GET", "/devices/x-1", nil, ada.cookies, nil)
	if a.code != 200 || !strings.Contains(a.body, "None stored for this device") || !strings.Contains(a.body, `id="credentials-form"`) ||
		!strings.Contains(a.body, "No policy applies to this device.") || !strings.Contains(a.body, `id="run-action"`) {
		t.Fatalf("admin's device page: %d\n%s", a.code, a.body)
	}
	creds := url.Values{"username": {"cpe-x1"}, "password": {"cpe-pw-s3cret"}, "cr_username": {"acs"}, "cr_password": {"cr-pw-s3cret"}}
	if a := otto.post(c, "/devices/x-1/credentials", creds); a.code != http.StatusForbidden {
		t.Fatalf("operator's forged credentials: %d", a.code)
	}
	if a := ada.post(c, "/devices/x-1/credentials", creds); a.code != http.StatusSeeOther {
		t.Fatalf("store credentials: %d\n%s", a.code, a.body)
	}
	a = do(c, "GET", "/devices/x-1", nil, ada.cookies, nil)
	if !strings.Contains(a.body, "user name <code>cpe-x1</code>") || strings.Contains(a.body, "s3cret") {
		t.Fatalf("device page after storing credentials:\n%s", a.body)
	}
	if a := do(c, "GET", "/devices/x-1", nil, otto.cookies, nil); strings.Contains(a.body, `id="credentials-form"`) {
		t.Fatal("an operator is offered the credentials form")
	}
	if a := ada.post(c, "/devices/x-1/credentials/delete", nil); a.code != http.StatusSeeOther {
		t.Fatalf("delete credentials: %d", a.code)
	}
	if _, err := st.FindDeviceCredentials(ctx, "x-1"); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("credentials after delete: %v", err)
	}

	// An operate command from the action form; a viewer's is refused.
	op := url.Values{"operation": {"operate"}, "command": {"Device.IP.Diagnostics.IPPing()"}, "input_args": {"Host=192.0.2.1\nNumberOfRepetitions=3"}}
	if a := vera.post(c, "/devices/x-1/action", op); a.code != http.StatusForbidden {
		t.Fatalf("viewer's forged action: %d", a.code)
	}
	if a := otto.post(c, "/devices/x-1/action", op); a.code != http.StatusSeeOther {
		t.Fatalf("operate: %d\n%s", a.code, a.body)
	}
	ts, _, err := st.FindTasks(ctx, store.TaskFilter{DeviceID: "x-1"})
	if err != nil || len(ts) != 1 || ts[0].Operation != "operate" || !strings.Contains(string(ts[0].Request), `"NumberOfRepetitions": "3"`) ||
		ts[0].CreatedBy != store.UserActor("otto") {
		t.Fatalf("tasks %+v %v", ts, err)
	}

	// History, paged; the live tail sends an event stored after it began.
	addEvent := func(id string, at time.Time) {
		t.Helper()
		if _, err := st.Pool().Exec(ctx, `INSERT INTO device_events (id, device_id, kind, time, stream_seq, payload)
			VALUES ($1, 'x-1', 'boot', $2, 0, ''::bytea)`, id, at); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 55 {
		addEvent(fmt.Sprintf("ev-%02d", i), time.Now().Add(-time.Hour+time.Duration(i)*time.Second))
	}
	a = do(c, "GET", "/devices/x-1/events", nil, vera.cookies, nil)
	if a.code != 200 || strings.Count(a.body, "data-event=") != 50 || !strings.Contains(a.body, `data-event="ev-54"`) || !strings.Contains(a.body, `sse-connect="/live/devices/x-1/events"`) {
		t.Fatalf("events page: %d\n%s", a.code, a.body)
	}
	next := regexp.MustCompile(`href="\?cursor=([^"&]+)"`).FindStringSubmatch(a.body)
	if next == nil {
		t.Fatalf("no next page:\n%s", a.body)
	}
	if a := do(c, "GET", "/devices/x-1/events?cursor="+next[1], nil, vera.cookies, nil); strings.Count(a.body, "data-event=") != 5 || strings.Contains(a.body, "sse-connect") {
		t.Fatalf("second page:\n%s", a.body)
	}
	srv := httptest.NewServer(c)
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/live/devices/x-1/events", nil)
	req.AddCookie(vera.cookies[0])
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("live tail: %d %v", res.StatusCode, res.Header)
	}
	addEvent("ev-new", time.Now())
	got := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(res.Body)
		var b strings.Builder
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
			if strings.Contains(b.String(), "ev-new") {
				got <- b.String()
				return
			}
		}
		got <- b.String()
	}()
	select {
	case s := <-got:
		if !strings.Contains(s, "event: device-event\ndata: <tr data-event=\"ev-new\"") || strings.Contains(s, "ev-54") {
			t.Fatalf("live tail sent:\n%s", s)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the live tail sent nothing")
	}
}

// TestConsoleCharts: the overview's chart data comes from Duet's own
// records: Informs per minute from the samples' differences, events
// stored per minute, new devices per day, task outcomes per hour.
func TestConsoleCharts(t *testing.T) {
	// Computed for each request, not shared for a while.
	c, st, us := newOpsConsoleWith(t, func(o *Options) { o.LiveInterval = time.Nanosecond })
	ctx := context.Background()
	addDevices(t, st, "ACME", "c-1", "c-2", "c-3")
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := st.Pool().Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	// Before two samples a minute apart, the activity is empty arrays
	// (uPlot cannot draw null).
	exec(`DELETE FROM console_activity`)
	if a := do(c, "GET", "/overview/charts.json", nil, us["vera"].cookies, nil); !strings.Contains(a.body, `"activity":{"x":[],"labels":["Informs","Other device events"],"series":[[],[]]}`) {
		t.Fatalf("charts before any sample: %s", a.body)
	}
	exec(`UPDATE devices SET first_seen = now() - interval '2 days' WHERE id = 'c-3'`)
	now := time.Now().UTC().Truncate(time.Minute)
	// Two samples a minute apart: 7 Informs and 2 boot events between.
	exec(`DELETE FROM console_activity`)
	exec(`UPDATE devices SET informs_total = 10`)
	if err := st.SampleActivity(ctx, now.Add(-time.Minute), chartKinds); err != nil {
		t.Fatal(err)
	}
	exec(`UPDATE devices SET informs_total = informs_total + CASE id WHEN 'c-1' THEN 5 ELSE 1 END`)
	for i := range 2 {
		exec(`INSERT INTO device_events (id, device_id, kind, time, stream_seq, payload) VALUES ($1, 'c-1', 'boot', $2, 0, ''::bytea)`,
			fmt.Sprintf("cb-%d", i), now.Add(-30*time.Second))
	}
	if err := st.SampleActivity(ctx, now, chartKinds); err != nil {
		t.Fatal(err)
	}
	// A task finished now, failed.
	exec(`INSERT INTO tasks (id, device_id, operation, request, command, non_idempotent, state, finished_at, error_code, error_message)
		VALUES ('ct-1', 'c-1', 'reboot', '{}', ''::bytea, true, 'failed', now(), 'timeout', 'no answer')`)
	a := do(c, "GET", "/overview/charts.json", nil, us["vera"].cookies, nil)
	var d chartsData
	if a.code != 200 || json.Unmarshal([]byte(a.body), &d) != nil {
		t.Fatalf("charts: %d %s", a.code, a.body)
	}
	last := func(s chartSeries, i int) int64 { return s.Series[i][len(s.Series[i])-1] }
	if len(d.Activity.X) == 0 || d.Activity.X[len(d.Activity.X)-1] != now.Unix() || last(d.Activity, 0) != 7 || last(d.Activity, 1) != 2 {
		t.Fatalf("activity %+v", d.Activity)
	}
	if len(d.NewDevices.X) != 30 || last(d.NewDevices, 0) != 2 || d.NewDevices.Series[0][27] != 1 {
		t.Fatalf("new devices %+v", d.NewDevices)
	}
	if len(d.TaskResults.X) != 24 || d.TaskResults.Labels[1] != "failed" || last(d.TaskResults, 1) != 1 || last(d.TaskResults, 0) != 0 {
		t.Fatalf("task outcomes %+v", d.TaskResults)
	}
	if a := do(c, "GET", "/", nil, us["vera"].cookies, nil); !strings.Contains(a.body, `id="chart-activity"`) || !strings.Contains(a.body, "/static/vendor/uplot/uPlot.iife.min.js") {
		t.Fatalf("overview has no charts:\n%s", a.body)
	}
}
