package console

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// Tasks and batches (issue 13 item 4): every device's tasks, server-paged
// and filtered; a task's request, history, result and error in words;
// the batches with their progress. The lists refresh themselves (htmx
// polling of their rows) while the page is open.

// taskStates are the states a task list filters by, in life order.
var taskStates = []string{"queued", "dispatched", "succeeded", "failed", "expired", "cancelled"}

type tasksData struct {
	Form       url.Values
	Tasks      []store.Task
	Next       string
	Error      string
	States     []string
	Operations []string
	Live       string // the rows' polling URL
}

// taskFilter reads the task list's form: state, operation, device, batch
// and a creation time range (the browser's datetime-local, taken as UTC).
func taskFilter(q url.Values) (store.TaskListFilter, error) {
	f := store.TaskListFilter{State: store.TaskState(q.Get("state")), Operation: strings.TrimSpace(q.Get("operation")),
		DeviceID: strings.TrimSpace(q.Get("device")), BatchID: strings.TrimSpace(q.Get("batch")), Limit: 50}
	if f.State != "" && !slices.Contains(taskStates, string(f.State)) {
		return f, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "state must be one of %s", strings.Join(taskStates, ", "))
	}
	for _, x := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.CreatedAfter}, {"until", &f.CreatedBefore}} {
		if v := q.Get(x.name); v != "" {
			t, err := time.Parse("2006-01-02T15:04", v)
			if err != nil {
				return f, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s: %q is not a date and time (YYYY-MM-DDTHH:MM, UTC)", x.name, v)
			}
			*x.dst = t
		}
	}
	if v := q.Get("cursor"); v != "" {
		n, err := store.DecodeSeqCursor(v)
		if err != nil {
			return f, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the page link is stale; filter again")
		}
		f.Before = n
	}
	return f, nil
}

func (c *Console) tasks(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	q := r.URL.Query()
	d := tasksData{Form: q, States: taskStates, Operations: actionOperations, Live: "/tasks?" + pageQuery(q, q.Get("cursor")) + "&part=rows"}
	f, err := taskFilter(q)
	if err != nil {
		d.Error = devicemodel.ErrorMessage(err)
		c.render(w, r, sess, http.StatusBadRequest, "tasks", "Tasks", d)
		return nil
	}
	if d.Tasks, d.Next, err = c.st.FindAllTasks(r.Context(), f); err != nil {
		return err
	}
	if q.Get("part") == "rows" {
		c.fragment(w, r, sess, "tasks", "task-rows", d)
		return nil
	}
	c.render(w, r, sess, http.StatusOK, "tasks", "Tasks", d)
	return nil
}

// taskEvent is one step of a task's history.
type taskEvent struct {
	At   time.Time
	What string
}

type taskData struct {
	Task     store.Task
	Request  string
	Result   string
	Redacted bool
	History  []taskEvent
	Error    string
	// CanCancel / CanRetry: what the API allows in the task's state (a
	// dispatched task can be cancelled while it awaits its completion).
	CanCancel, CanRetry bool
}

func (c *Console) task(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	t, err := c.st.FindTaskByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	d := c.taskView(t)
	if r.URL.Query().Get("part") == "state" {
		c.fragment(w, r, sess, "task", "task-state", d)
		return nil
	}
	c.render(w, r, sess, http.StatusOK, "task", "Task "+t.ID, d)
	return nil
}

// taskView is a task as its page shows it: secret values hidden as the
// API's task JSON hides them (issue 15 §9).
func (c *Console) taskView(t store.Task) taskData {
	d := taskData{Task: t, CanCancel: t.State == store.TaskQueued || t.State == store.TaskDispatched && t.SubState != "",
		CanRetry: t.State == store.TaskFailed || t.State == store.TaskExpired || t.State == store.TaskCancelled}
	req, hidden := c.secrets.RedactTaskRequest(t.Request)
	d.Request, d.Redacted = indentJSON(req), hidden
	if len(t.Result) > 0 {
		res := &duetv1.CommandResult{}
		if proto.Unmarshal(t.Result, res) == nil {
			m, hidden := c.secrets.RedactProto(res)
			d.Redacted = d.Redacted || hidden
			if b, err := controller.ProtoJSON(m); err == nil {
				d.Result = indentJSON(b)
			}
		}
	}
	if t.ErrorCode != "" && t.State != store.TaskSucceeded {
		d.Error = taskErrorWords(t)
	}
	d.History = taskHistory(t)
	return d
}

// taskHistory is the task's life as its row records it: created, each
// delivery (the last one's time and the count), waiting, finished.
func taskHistory(t store.Task) []taskEvent {
	h := []taskEvent{{t.CreatedAt, "created by " + t.CreatedBy}}
	if t.RetryOf != "" {
		h[0].What += ", a retry of " + t.RetryOf
	}
	if t.WaitingSince != nil && t.State == store.TaskQueued {
		h = append(h, taskEvent{*t.WaitingSince, "waiting: " + strings.ReplaceAll(t.WaitingReason, "_", " ")})
	}
	if t.DispatchedAt != nil {
		h = append(h, taskEvent{*t.DispatchedAt, "sent to the device"})
	}
	if t.LastAttemptAt != nil && t.Attempts > 1 && (t.DispatchedAt == nil || !t.LastAttemptAt.Equal(*t.DispatchedAt)) {
		h = append(h, taskEvent{*t.LastAttemptAt, "sent again (attempt " + strconv.Itoa(t.Attempts) + ")"})
	}
	if t.State == store.TaskDispatched && t.SubState != "" {
		h = append(h, taskEvent{t.UpdatedAt, "accepted; " + strings.ReplaceAll(t.SubState, "_", " ")})
	}
	if t.FinishedAt != nil {
		h = append(h, taskEvent{*t.FinishedAt, string(t.State)})
	}
	return h
}

// taskErrorWords says why a task did not succeed, for an operator.
func taskErrorWords(t store.Task) string {
	s := t.ErrorMessage
	if s == "" {
		s = "the task " + string(t.State)
	}
	if t.ErrorCode != "" {
		s += " (" + strings.ReplaceAll(t.ErrorCode, "_", " ") + ")"
	}
	if t.DeviceFault != 0 {
		s += "; the device answered fault " + strconv.Itoa(t.DeviceFault)
	}
	return s
}

func (c *Console) cancelTask(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	if c.o.Tasks == nil {
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "tasks are not available on this controller")
	}
	t, err := c.o.Tasks.Cancel(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	http.Redirect(w, r, "/tasks/"+url.PathEscape(t.ID), http.StatusSeeOther)
	return nil
}

func (c *Console) retryTask(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	if c.o.Tasks == nil {
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "tasks are not available on this controller")
	}
	t, err := c.o.Tasks.Retry(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	http.Redirect(w, r, "/tasks/"+url.PathEscape(t.ID), http.StatusSeeOther)
	return nil
}

// batchRow is a batch with the states of the tasks it created.
type batchRow struct {
	store.TaskBatch
	Operation string
	// Open, Succeeded, Failed count its tasks by state (failed includes
	// expired and cancelled).
	Open, Succeeded, Failed int64
}

// Finished counts the batch's tasks that ended, whatever their outcome.
func (b batchRow) Finished() int64 { return b.Succeeded + b.Failed }

type batchesData struct {
	Form    url.Values
	Batches []batchRow
	Next    string
	Error   string
	Live    string
}

func (c *Console) batchRows(r *http.Request, bs []store.TaskBatch) ([]batchRow, error) {
	ids := make([]string, len(bs))
	for i, b := range bs {
		ids[i] = b.ID
	}
	states, err := c.st.BatchTaskStates(r.Context(), ids)
	if err != nil {
		return nil, err
	}
	out := make([]batchRow, len(bs))
	for i, b := range bs {
		var t controller.TaskRequest
		_ = json.Unmarshal(b.Request, &t)
		s := states[b.ID]
		out[i] = batchRow{TaskBatch: b, Operation: t.Operation, Open: s[store.TaskQueued] + s[store.TaskDispatched],
			Succeeded: s[store.TaskSucceeded], Failed: s[store.TaskFailed] + s[store.TaskExpired] + s[store.TaskCancelled]}
	}
	return out, nil
}

func (c *Console) batches(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	q := r.URL.Query()
	d := batchesData{Form: q, Live: "/batches?" + pageQuery(q, q.Get("cursor")) + "&part=rows"}
	f := store.TaskBatchFilter{Limit: 50, State: store.TaskBatchState(q.Get("state"))}
	if f.State != "" && !slices.Contains([]string{"running", "done", "cancelled", "failed"}, string(f.State)) {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "state must be running, done, cancelled or failed")
	}
	if v := q.Get("cursor"); v != "" {
		n, err := store.DecodeSeqCursor(v)
		if err != nil {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the page link is stale; filter again")
		}
		f.Before = n
	}
	bs, next, err := c.st.FindTaskBatches(r.Context(), f)
	if err != nil {
		return err
	}
	if d.Batches, err = c.batchRows(r, bs); err != nil {
		return err
	}
	d.Next = next
	if q.Get("part") == "rows" {
		c.fragment(w, r, sess, "batches", "batch-rows", d)
		return nil
	}
	c.render(w, r, sess, http.StatusOK, "batches", "Task batches", d)
	return nil
}

type batchData struct {
	Batch  batchRow
	Filter string
	Task   string
	Tasks  tasksData
}

func (c *Console) batch(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	b, err := c.st.FindTaskBatchByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	rows, err := c.batchRows(r, []store.TaskBatch{b})
	if err != nil {
		return err
	}
	task, _ := c.secrets.RedactTaskRequest(b.Request)
	d := batchData{Batch: rows[0], Filter: indentJSON(b.Filter), Task: indentJSON(task)}
	q := url.Values{"batch": {b.ID}}
	if v := r.URL.Query().Get("cursor"); v != "" {
		q.Set("cursor", v)
	}
	d.Tasks = tasksData{Form: q, Live: "/tasks?" + q.Encode() + "&part=rows"}
	f, err := taskFilter(q)
	if err != nil {
		return err
	}
	if d.Tasks.Tasks, d.Tasks.Next, err = c.st.FindAllTasks(r.Context(), f); err != nil {
		return err
	}
	if r.URL.Query().Get("part") == "progress" {
		c.fragment(w, r, sess, "batch", "batch-progress", d)
		return nil
	}
	c.render(w, r, sess, http.StatusOK, "batch", "Task batch "+b.ID, d)
	return nil
}

func (c *Console) cancelBatch(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	if err := c.bulkReady(); err != nil {
		return err
	}
	b, err := c.o.Bulk.Cancel(r.Context(), store.ActorFrom(r.Context()), r.PathValue("id"))
	if err != nil {
		return err
	}
	http.Redirect(w, r, "/batches/"+url.PathEscape(b.ID), http.StatusSeeOther)
	return nil
}
