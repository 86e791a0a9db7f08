package controller

import (
	"testing"
)

// TestPolicyTasksNameThePolicy: a task a policy queues says so in
// created_by.
func TestPolicyTasksNameThePolicy(t *testing.T) {
	e := newReconcileEnv(t, 2)
	p := e.policy(`manufacturer == "ACME"`, `{"parameters":[{"path":"`+informPath+`","value":"300"}]}`, 0)
	e.enable(p, `{"batch_size":2}`)
	e.pass()
	e.pass()
	e.pass()
	q := e.queued()
	if len(q) == 0 {
		t.Fatal("the policy queued no task")
	}
	for dev, task := range q {
		if task.CreatedBy != "policy:"+p.ID {
			t.Errorf("task of %s created_by %q, want policy:%s", dev, task.CreatedBy, p.ID)
		}
	}
}
