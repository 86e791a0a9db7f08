package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TaskJSON is the API's representation of a task.
type TaskJSON struct {
	ID        string `json:"id"`
	DeviceID  string `json:"device_id"`
	Operation string `json:"operation"`
	State     string `json:"state"`
	// SubState says what a dispatched task the device accepted waits for:
	// awaiting_completion (a transfer, an async command) or awaiting_boot
	// (a reboot or factory reset).
	SubState          string          `json:"sub_state,omitempty"`
	Request           json.RawMessage `json:"request"`
	UniqueKey         string          `json:"unique_key,omitempty"`
	ConnectionRequest bool            `json:"connection_request"`
	ExpiresAt         *time.Time      `json:"expires_at,omitempty"`
	CreatedAt         time.Time       `json:"created_at"`
	UpdatedAt         time.Time       `json:"updated_at"`
	DispatchedAt      *time.Time      `json:"dispatched_at,omitempty"`
	FinishedAt        *time.Time      `json:"finished_at,omitempty"`
	Attempts          int             `json:"attempts"`
	RetryOf           string          `json:"retry_of,omitempty"`
	// BatchID is the task batch (POST /api/v1/tasks) that created it.
	BatchID string `json:"batch_id,omitempty"`
	// CreatedBy is who made it: the API token's owner ("name (id)"), the
	// batch's actor, or "policy:<id>".
	CreatedBy string `json:"created_by"`
	// Result is the device's answer, a duet.v1.CommandResult as protoJSON
	// renders it (enum values by their API names).
	Result json.RawMessage `json:"result,omitempty"`
	Error  *TaskErrorJSON  `json:"error,omitempty"`
	// Redacted: secret values in request or result show as "***".
	Redacted bool `json:"redacted,omitempty"`
	// LastAttemptAt is the task's last delivery attempt (a dispatch).
	LastAttemptAt *time.Time `json:"last_attempt_at,omitempty"`
	// Waiting says why a queued task waits, when that is known.
	Waiting *TaskWaitingJSON `json:"waiting,omitempty"`
}

// TaskWaitingJSON is why a queued task waits (issue 11 §5): reason is
// device_offline, no_adapter, "connection_request_failed: <why>",
// awaiting_session, awaiting_inform, device_busy or no_answer; since is
// when that reason was first given.
type TaskWaitingJSON struct {
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// TaskErrorJSON says why a task failed (or was cancelled or expired).
type TaskErrorJSON struct {
	Code        string `json:"code"`
	Message     string `json:"message"`
	DeviceFault int    `json:"device_fault,omitempty"`
}

// TaskList is the body of GET /api/v1/devices/{id}/tasks.
type TaskList struct {
	Tasks      []TaskJSON `json:"tasks"`
	NextCursor string     `json:"next_cursor,omitempty"`
}

// taskJSON renders a task with its secret values hidden (issue 15 §9):
// task results and requests are never revealed; an admin reads a secret
// from the parameter cache with ?reveal=true, audited.
func (a *Server) taskJSON(t store.Task) TaskJSON {
	out := taskJSON(t, a.secrets)
	return out
}

func taskJSON(t store.Task, secrets controller.SecretNames) TaskJSON {
	out := TaskJSON{
		ID: t.ID, DeviceID: t.DeviceID, Operation: t.Operation, State: string(t.State), SubState: subStateOf(t), Request: t.Request,
		UniqueKey: t.UniqueKey, ConnectionRequest: t.ConnectionRequest, ExpiresAt: utcPtr(t.ExpiresAt),
		CreatedAt: t.CreatedAt.UTC(), UpdatedAt: t.UpdatedAt.UTC(), DispatchedAt: utcPtr(t.DispatchedAt),
		FinishedAt: utcPtr(t.FinishedAt), Attempts: t.Attempts, RetryOf: t.RetryOf, BatchID: t.BatchID,
		CreatedBy: t.CreatedBy,
	}
	out.Request, out.Redacted = secrets.RedactTaskRequest(t.Request)
	if len(t.Result) > 0 {
		res := &duetv1.CommandResult{}
		if proto.Unmarshal(t.Result, res) == nil {
			m, hidden := secrets.RedactProto(res)
			out.Redacted = out.Redacted || hidden
			if b, err := controller.ProtoJSON(m); err == nil {
				out.Result = b
			}
		}
	}
	out.LastAttemptAt = utcPtr(t.LastAttemptAt)
	if t.State == store.TaskQueued && t.WaitingReason != "" && t.WaitingSince != nil {
		out.Waiting = &TaskWaitingJSON{Reason: t.WaitingReason, Since: t.WaitingSince.UTC()}
	}
	if t.ErrorCode != "" && t.State != store.TaskSucceeded {
		out.Error = &TaskErrorJSON{Code: t.ErrorCode, Message: t.ErrorMessage, DeviceFault: t.DeviceFault}
	}
	return out
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// maxBody bounds a request body.
const maxBody = 1 << 20

func (a *Server) createTask(w http.ResponseWriter, r *http.Request) (int, error) {
	var req controller.TaskRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return 0, errBodyTooLarge(maxBody)
		}
		return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "body: more than one JSON value")
	}
	t, err := a.o.Tasks.Create(r.Context(), r.PathValue("id"), req)
	if err != nil {
		return 0, err
	}
	w.Header().Set("Location", "/api/v1/tasks/"+t.ID)
	if req.Wait > 0 {
		t, err = a.o.Tasks.Wait(r.Context(), t.ID, time.Duration(req.Wait*float64(time.Second)))
		if err != nil {
			return 0, err
		}
		if t.State.Terminal() {
			return writeJSON(w, http.StatusOK, a.taskJSON(t)), nil
		}
	}
	return writeJSON(w, http.StatusAccepted, a.taskJSON(t)), nil
}

func (a *Server) getTask(w http.ResponseWriter, r *http.Request) (int, error) {
	t, err := a.store.FindTaskByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, a.taskJSON(t)), nil
}

var taskStates = map[string]bool{"queued": true, "dispatched": true, "succeeded": true, "failed": true, "expired": true, "cancelled": true}

func (a *Server) listTasks(w http.ResponseWriter, r *http.Request) (int, error) {
	q, limit, cursor, err := pageParams(r, "state")
	if err != nil {
		return 0, err
	}
	f := store.TaskFilter{DeviceID: r.PathValue("id"), Limit: limit}
	if v, ok := q["state"]; ok {
		if !taskStates[v] {
			return 0, badParam("state", "must be queued, dispatched, succeeded, failed, expired or cancelled")
		}
		f.State = store.TaskState(v)
	}
	if cursor != "" {
		n, err := store.DecodeSeqCursor(cursor)
		if err != nil {
			return 0, badParam("cursor", "malformed; pass next_cursor from the previous page")
		}
		f.Before = n
	}
	if _, err := a.store.FindDeviceByID(r.Context(), f.DeviceID); err != nil {
		return 0, err
	}
	ts, next, err := a.store.FindTasks(r.Context(), f)
	if err != nil {
		return 0, err
	}
	out := TaskList{Tasks: make([]TaskJSON, 0, len(ts)), NextCursor: next}
	for _, t := range ts {
		out.Tasks = append(out.Tasks, a.taskJSON(t))
	}
	return writeJSON(w, http.StatusOK, out), nil
}

// subStateOf is the sub-state a task shows: a task cancelled while it
// waited keeps its sub-state in the store (for a late completion), which
// is no longer what it waits for.
func subStateOf(t store.Task) string {
	if t.State != store.TaskDispatched {
		return ""
	}
	return t.SubState
}

func (a *Server) cancelTask(w http.ResponseWriter, r *http.Request) (int, error) {
	t, err := a.o.Tasks.Cancel(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, a.taskJSON(t)), nil
}

func (a *Server) retryTask(w http.ResponseWriter, r *http.Request) (int, error) {
	t, err := a.o.Tasks.Retry(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	w.Header().Set("Location", "/api/v1/tasks/"+t.ID)
	return writeJSON(w, http.StatusAccepted, a.taskJSON(t)), nil
}
