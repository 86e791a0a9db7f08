package api

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// TaskBatchJSON is the API's representation of a task batch.
type TaskBatchJSON struct {
	ID     string          `json:"id"`
	Actor  string          `json:"actor"`
	State  string          `json:"state"`
	Filter json.RawMessage `json:"filter"`
	Task   json.RawMessage `json:"task"`
	Rate   float64         `json:"rate"`
	// Matched is how many matching devices the batch has gone through.
	Matched      int64      `json:"matched"`
	CreatedTasks int64      `json:"created_tasks"`
	Errors       int64      `json:"errors"`
	LastError    string     `json:"last_error,omitempty"`
	CreatedAt    time.Time  `json:"created_at"`
	UpdatedAt    time.Time  `json:"updated_at"`
	FinishedAt   *time.Time `json:"finished_at,omitempty"`
}

// TaskBatchList is the body of GET /api/v1/task-batches.
type TaskBatchList struct {
	Batches    []TaskBatchJSON `json:"batches"`
	NextCursor string          `json:"next_cursor,omitempty"`
}

func taskBatchJSON(b store.TaskBatch) TaskBatchJSON {
	out := TaskBatchJSON{
		ID: b.ID, Actor: b.Actor, State: string(b.State), Filter: b.Filter, Task: b.Request, Rate: b.Rate,
		Matched: b.Matched, CreatedTasks: b.CreatedTasks, Errors: b.Errors, LastError: b.LastError,
		CreatedAt: b.CreatedAt.UTC(), UpdatedAt: b.UpdatedAt.UTC(), FinishedAt: utcPtr(b.FinishedAt),
	}
	// Secret values of the task template are never shown (issue 15 §9).
	out.Task, _ = controller.NewSecretNames(nil).RedactTaskRequest(out.Task)
	return out
}

// errNoBulk: the API was built without a bulk runner.
var errNoBulk = devicemodel.Errorf(devicemodel.CodeUnavailable, "bulk tasks are not served by this process")

func (a *Server) bulkReady(w http.ResponseWriter) (int, bool) {
	if a.o.Bulk == nil {
		// Written here: route() would hide a 5xx message.
		writeError(w, http.StatusServiceUnavailable, errNoBulk)
		return http.StatusServiceUnavailable, false
	}
	return 0, true
}

// createTaskBatch serves POST /api/v1/tasks: one task for every device a
// filter matches, created at a bounded rate by the bulk runner. 202 with
// the batch; nothing is created when the request is invalid.
func (a *Server) createTaskBatch(w http.ResponseWriter, r *http.Request) (int, error) {
	if code, ok := a.bulkReady(w); !ok {
		return code, nil
	}
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	var req controller.BulkRequest
	if err := decodeBody(w, r, maxBody, &req); err != nil {
		return 0, err
	}
	b, err := a.o.Bulk.Submit(r.Context(), who, req)
	if err != nil {
		return 0, err
	}
	w.Header().Set("Location", "/api/v1/task-batches/"+b.ID)
	return writeJSON(w, http.StatusAccepted, taskBatchJSON(b)), nil
}

func (a *Server) getTaskBatch(w http.ResponseWriter, r *http.Request) (int, error) {
	b, err := a.store.FindTaskBatchByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, taskBatchJSON(b)), nil
}

var batchStates = map[string]bool{"running": true, "done": true, "cancelled": true, "failed": true}

func (a *Server) listTaskBatches(w http.ResponseWriter, r *http.Request) (int, error) {
	q, limit, cursor, err := pageParams(r, "state")
	if err != nil {
		return 0, err
	}
	f := store.TaskBatchFilter{Limit: limit}
	if v, ok := q["state"]; ok {
		if !batchStates[v] {
			return 0, badParam("state", "must be running, done, cancelled or failed")
		}
		f.State = store.TaskBatchState(v)
	}
	if cursor != "" {
		if f.Before, err = store.DecodeSeqCursor(cursor); err != nil {
			return 0, badParam("cursor", "malformed; pass next_cursor from the previous page")
		}
	}
	bs, next, err := a.store.FindTaskBatches(r.Context(), f)
	if err != nil {
		return 0, err
	}
	out := TaskBatchList{Batches: make([]TaskBatchJSON, 0, len(bs)), NextCursor: next}
	for _, b := range bs {
		out.Batches = append(out.Batches, taskBatchJSON(b))
	}
	return writeJSON(w, http.StatusOK, out), nil
}

// cancelTaskBatch stops a running batch; tasks it created stay (cancel
// them one by one if need be). 409 once it finished.
func (a *Server) cancelTaskBatch(w http.ResponseWriter, r *http.Request) (int, error) {
	if code, ok := a.bulkReady(w); !ok {
		return code, nil
	}
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	b, err := a.o.Bulk.Cancel(r.Context(), who, r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, taskBatchJSON(b)), nil
}
