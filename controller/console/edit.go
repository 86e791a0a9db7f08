package console

import (
	"net/http"
	"net/url"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// Inline edit of a writable value (issue 13 item 4): the row's form
// queues a set task and, behind it on the device's queue, a get of the
// same path, so the value shown afterwards is the one the device reports,
// not the one typed. The row then polls until both are final.

// paramEdit is one row of the parameter table while (or after) it is
// being set.
type paramEdit struct {
	DeviceID string
	Row      paramRow
	Set, Get *store.Task
	// Done: both tasks are final; the row stops polling.
	Done bool
	// Error says, in words, why the value was not set.
	Error string
	// CanEdit: the user may set it (operator or admin), and the device
	// did not say it is read-only.
	CanEdit bool
}

func canEdit(sess *store.Session, row paramRow) bool {
	return sess != nil && roleAtLeast(sess.User.Role, store.RoleOperator) && !row.Secret && row.Writable != 1
}

// Poll is the row's polling URL.
func (p paramEdit) Poll() string {
	q := url.Values{"path": {p.Row.Path}}
	if p.Set != nil {
		q.Set("set", p.Set.ID)
	}
	if p.Get != nil {
		q.Set("get", p.Get.ID)
	}
	return "/devices/" + url.PathEscape(p.DeviceID) + "/parameters/row?" + q.Encode()
}

func (c *Console) setParameter(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	if c.o.Tasks == nil {
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "tasks are not available on this controller")
	}
	id, path, value := r.PathValue("id"), r.PostFormValue("path"), r.PostFormValue("value")
	if c.secrets.IsSecret(path) {
		// Secrets are set through the API, where the request is not shown
		// back; the console never holds their values.
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s holds a secret; set it through the API", path)
	}
	set, err := c.o.Tasks.Create(r.Context(), id, controller.TaskRequest{Operation: "set", Params: []controller.ParamJSON{{Path: path, Value: value}}})
	if err != nil {
		return err
	}
	get, err := c.o.Tasks.Create(r.Context(), id, controller.TaskRequest{Operation: "get", Paths: []string{path}})
	if err != nil {
		return err
	}
	return c.paramRowOf(w, r, sess, id, path, &set, &get)
}

func (c *Console) parameterRow(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	q := r.URL.Query()
	id := r.PathValue("id")
	var set, get *store.Task
	for _, x := range []struct {
		key string
		dst **store.Task
	}{{"set", &set}, {"get", &get}} {
		if tid := q.Get(x.key); tid != "" {
			t, err := c.st.FindTaskByID(r.Context(), tid)
			if err != nil {
				return err
			}
			if t.DeviceID != id {
				return devicemodel.Errorf(devicemodel.CodeNotFound, "task %s is not this device's", tid)
			}
			*x.dst = &t
		}
	}
	return c.paramRowOf(w, r, sess, id, q.Get("path"), set, get)
}

func (c *Console) paramRowOf(w http.ResponseWriter, r *http.Request, sess *store.Session, id, path string, set, get *store.Task) error {
	ps, _, err := c.st.FindParameters(r.Context(), store.ParameterFilter{DeviceID: id, Prefix: path, Limit: 1})
	if err != nil {
		return err
	}
	e := paramEdit{DeviceID: id, Row: paramRow{Parameter: store.Parameter{DeviceID: id, Path: path}}, Set: set, Get: get}
	if len(ps) == 1 && ps[0].Path == path {
		e.Row = paramRow{Parameter: ps[0], Secret: c.secrets.IsSecret(path)}
	}
	if e.Row.Secret {
		e.Row.Value = ""
	}
	final := func(t *store.Task) bool { return t == nil || t.State.Terminal() }
	e.Done = final(set) && final(get)
	switch {
	case set != nil && set.State.Terminal() && set.State != store.TaskSucceeded:
		e.Error = "Not set: " + taskFailure(*set)
		e.Done = true
	case get != nil && get.State.Terminal() && get.State != store.TaskSucceeded:
		e.Error = "Set, but reading it back failed: " + taskFailure(*get)
	}
	e.CanEdit = canEdit(sess, e.Row)
	c.writeData(w, http.StatusOK, "device", "param-row", e)
	return nil
}

// taskFailure says why a task did not succeed, in words.
func taskFailure(t store.Task) string {
	if t.ErrorMessage != "" {
		return t.ErrorMessage
	}
	return "the task " + string(t.State)
}

// readLive reads a subtree (or one parameter) from the device now and
// shows it (controller.Parameters.ReadLive: a get task, waited for up to
// 30 s, its values in the cache before the task is final).
func (c *Console) readLive(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	id, prefix := r.PathValue("id"), r.PostFormValue("prefix")
	if prefix == "" {
		prefix = "Device."
	}
	// The REST API's refresh=true: the same service.
	if err := c.params.ReadLive(r.Context(), id, prefix); err != nil {
		return err
	}
	http.Redirect(w, r, "/devices/"+url.PathEscape(id)+"?prefix="+url.QueryEscape(prefix), http.StatusSeeOther)
	return nil
}
