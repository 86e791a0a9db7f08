package store

import (
	"context"
	"encoding/json"
)

// AuditTask is the audit log's object type for a task created or
// cancelled on its own (a batch's tasks are audited as their batch).
const AuditTask = "task"

// taskAudit is what the audit log keeps of a task: which device, what was
// asked, in what state.
type taskAudit struct {
	DeviceID  string          `json:"device_id"`
	Operation string          `json:"operation"`
	Request   json.RawMessage `json:"request"`
	State     TaskState       `json:"state"`
	RetryOf   string          `json:"retry_of,omitempty"`
}

func taskAuditOf(t Task) taskAudit {
	req := json.RawMessage(t.Request)
	if !json.Valid(req) {
		req = json.RawMessage("null")
	}
	return taskAudit{DeviceID: t.DeviceID, Operation: t.Operation, Request: req, State: t.State, RetryOf: t.RetryOf}
}

type actorKey struct{}

// ContextWithActor names who acts under ctx (an API token's owner, a
// batch's actor): CreateTask records it as the task's CreatedBy and the
// audit log's actor, CancelTask as the audit log's actor.
func ContextWithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// ActorFrom returns the actor of ContextWithActor, or "".
func ActorFrom(ctx context.Context) string {
	s, _ := ctx.Value(actorKey{}).(string)
	return s
}
