package console

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// Selection → task batch (issue 13 item 4, "Devices"): the device list's
// checked rows, or its whole filter, become a task batch through the
// service of POST /api/v1/tasks (controller.BulkRunner), in three steps:
// the action form (/batches/new), a confirmation that says how many
// devices the batch touches (/batches/confirm), and the batch
// (POST /batches). The filter and the task travel between the steps as
// JSON in the forms; each step validates them again as the API does.

// actionOperations are the operations the console's action forms offer,
// in the order shown.
var actionOperations = []string{"reboot", "factory_reset", "get", "set", "firmware_upgrade", "download", "operate"}

// batchForm is what the action form and the confirmation show.
type batchForm struct {
	Filter     string // JSON of the controller.BulkFilter
	Scope      string // "selection" or "filter"
	Selected   int    // devices checked, for scope selection
	Operations []string
	Files      []store.File
	Form       url.Values // the action's fields, refilled after an error
	Error      string
	// Confirmation: the task as JSON, the rate, and the devices touched.
	Task    string
	Summary string
	Rate    string
	Count   int64
}

func (c *Console) bulkReady() error {
	if c.o.Bulk == nil {
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "task batches are not available on this controller")
	}
	return nil
}

// newBatch shows the action form for the device list's selection (ids)
// or its whole filter (the search in the query).
func (c *Console) newBatch(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	if err := c.bulkReady(); err != nil {
		return err
	}
	q := r.URL.Query()
	var bf controller.BulkFilter
	d := batchForm{Scope: q.Get("scope"), Operations: actionOperations, Form: url.Values{"rate": {""}}}
	switch d.Scope {
	case "selection":
		bf.IDs = q["ids"]
		d.Selected = len(bf.IDs)
		if len(bf.IDs) == 0 {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "no device is selected: tick the devices first, or act on the whole filter")
		}
		if len(bf.IDs) > controller.MaxBulkIDs {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%d devices are selected; at most %d (act on the whole filter instead)", len(bf.IDs), controller.MaxBulkIDs)
		}
	case "filter":
		f, err := deviceFilter(q)
		if err != nil {
			return err
		}
		bf = controller.BulkFilterOf(f)
	default:
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "say whether the batch is for the selected devices or the whole filter")
	}
	b, err := json.Marshal(bf)
	if err != nil {
		return err
	}
	d.Filter = string(b)
	return c.showBatchForm(w, r, sess, http.StatusOK, d)
}

func (c *Console) showBatchForm(w http.ResponseWriter, r *http.Request, sess *store.Session, code int, d batchForm) error {
	files, err := c.st.FindFiles(r.Context(), store.FileFilter{Limit: 200})
	if err != nil {
		return err
	}
	d.Files, d.Operations = files, actionOperations
	c.render(w, r, sess, code, "batchnew", "New task batch", d)
	return nil
}

// confirmBatch checks the action and counts the devices it will touch.
func (c *Console) confirmBatch(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	if err := c.bulkReady(); err != nil {
		return err
	}
	d := batchForm{Filter: r.PostFormValue("filter"), Scope: r.PostFormValue("scope"), Form: r.PostForm}
	req, err := bulkRequestOf(d.Filter, r.PostForm)
	if err == nil {
		err = c.noSecrets(*req.Task)
	}
	if err == nil {
		d.Count, err = c.o.Bulk.Count(r.Context(), req)
	}
	if err != nil {
		if statusOf(err) >= 500 {
			return err
		}
		d.Error = devicemodel.ErrorMessage(err)
		return c.showBatchForm(w, r, sess, statusOf(err), d)
	}
	task, err := json.Marshal(req.Task)
	if err != nil {
		return err
	}
	d.Task, d.Summary = string(task), actionSummary(*req.Task)
	if req.Rate != nil {
		d.Rate = strconv.FormatFloat(*req.Rate, 'f', -1, 64)
	}
	c.render(w, r, sess, http.StatusOK, "batchconfirm", "Confirm the task batch", d)
	return nil
}

// createBatch submits the confirmed batch.
func (c *Console) createBatch(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	if err := c.bulkReady(); err != nil {
		return err
	}
	var req controller.BulkRequest
	if err := json.Unmarshal([]byte(r.PostFormValue("filter")), &req.Filter); err != nil {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the form's device filter is damaged; start again from the device list")
	}
	if err := json.Unmarshal([]byte(r.PostFormValue("task")), &req.Task); err != nil {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the form's task is damaged; start again from the device list")
	}
	if req.Filter == nil || req.Task == nil {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the form has no device filter or no task; start again from the device list")
	}
	if err := c.noSecrets(*req.Task); err != nil {
		return err
	}
	if v := r.PostFormValue("rate"); v != "" {
		rate, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "rate %q is not a number", v)
		}
		req.Rate = &rate
	}
	b, err := c.o.Bulk.Submit(r.Context(), store.ActorFrom(r.Context()), req)
	if err != nil {
		return err
	}
	http.Redirect(w, r, "/batches/"+url.PathEscape(b.ID), http.StatusSeeOther)
	return nil
}

// noSecrets refuses to set a secret from the console, which never holds
// their values (as the parameter table's inline edit).
func (c *Console) noSecrets(t controller.TaskRequest) error {
	for _, p := range t.Params {
		if c.secrets.IsSecret(p.Path) {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s holds a secret; set it through the API", p.Path)
		}
	}
	return nil
}

// bulkRequestOf reads the action form: the filter (JSON) and the task.
func bulkRequestOf(filter string, form url.Values) (controller.BulkRequest, error) {
	var req controller.BulkRequest
	if err := json.Unmarshal([]byte(filter), &req.Filter); err != nil || req.Filter == nil {
		return req, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the form's device filter is damaged; start again from the device list")
	}
	t, err := taskRequestOf(form)
	if err != nil {
		return req, err
	}
	req.Task = &t
	if v := strings.TrimSpace(form.Get("rate")); v != "" {
		rate, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return req, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "rate %q is not a number of tasks per second", v)
		}
		req.Rate = &rate
	}
	return req, nil
}

// taskRequestOf reads an action form's operation and its arguments, one
// a line where there can be several: paths (get), path=value (set),
// name=value (operate's input arguments).
func taskRequestOf(form url.Values) (controller.TaskRequest, error) {
	t := controller.TaskRequest{Operation: form.Get("operation")}
	switch t.Operation {
	case "reboot", "factory_reset":
	case "get":
		t.Paths = lines(form.Get("paths"))
	case "set":
		for i, l := range lines(form.Get("params")) {
			path, value, ok := strings.Cut(l, "=")
			if !ok {
				return t, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "line %d of the values: want path=value", i+1)
			}
			t.Params = append(t.Params, controller.ParamJSON{Path: strings.TrimSpace(path), Value: value})
		}
	case "firmware_upgrade":
		t.FileID = form.Get("file_id")
	case "download":
		t.FileID, t.URL, t.FileType = form.Get("file_id"), strings.TrimSpace(form.Get("url")), strings.TrimSpace(form.Get("file_type"))
	case "operate":
		t.Command = strings.TrimSpace(form.Get("command"))
		for i, l := range lines(form.Get("input_args")) {
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				return t, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "line %d of the input arguments: want name=value", i+1)
			}
			if t.InputArgs == nil {
				t.InputArgs = map[string]string{}
			}
			t.InputArgs[strings.TrimSpace(k)] = v
		}
	case "":
		return t, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "choose an operation")
	default:
		return t, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the console does not offer the operation %q", t.Operation)
	}
	return t, nil
}

// actionSummary says what a task does, for a confirmation.
func actionSummary(t controller.TaskRequest) string {
	s := strings.ReplaceAll(t.Operation, "_", " ")
	switch t.Operation {
	case "get":
		s += " " + strings.Join(t.Paths, ", ")
	case "set":
		var ps []string
		for _, p := range t.Params {
			ps = append(ps, p.Path+" = "+p.Value)
		}
		s += " " + strings.Join(ps, ", ")
	case "firmware_upgrade", "download":
		if t.FileID != "" {
			s += " of file " + t.FileID
		}
		if t.URL != "" {
			s += " from " + t.URL
		}
	case "operate":
		s += " " + t.Command
	}
	return s
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
