package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// cancelAwaiting cancels a task through DELETE /api/v1/tasks/{id} and
// checks it ended cancelled, its message saying what the device was left
// with.
func (d *duet) cancelAwaiting(id, leftWith string) {
	d.t.Helper()
	code, body := d.do("DELETE", "/api/v1/tasks/"+id, "")
	var tk apiTask
	if code != 200 || json.Unmarshal([]byte(body), &tk) != nil || tk.State != "cancelled" || tk.Error == nil ||
		!strings.Contains(tk.Error.Message, leftWith) {
		d.t.Fatalf("cancel of an awaiting task: %d %s", code, body)
	}
}

// TestCancelAwaitingTask: a task the device accepted and that awaits its
// completion (a CWMP transfer, a USP asynchronous operation) can be
// cancelled: it ends cancelled, saying the device may still carry the
// command out; the device's next task goes out; the completion
// that comes later is recorded on the task without reopening it. Before,
// DELETE answered 409 until the completion or the timeout (an hour).
func TestCancelAwaitingTask(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	files, release := gatedFiles(t)
	c := startCPEWith(t, cpe.Options{ACSURL: "http://" + env["DUET_CWMP_ADDR"] + "/", Serial: "CANCEL-C"})
	a := startAgentWith(t, env, agent.Config{SerialNumber: "CANCEL-U"})
	d.waitDevice(c.DeviceID())
	d.waitOnline(a.EndpointID(), true)
	awaiting := func(id string) {
		d.waitFull(id, 60*time.Second, func(tk fullTask) bool {
			if tk.State != "queued" && tk.State != "dispatched" {
				t.Fatalf("task %s ended before it was cancelled: %+v", id, tk)
			}
			return tk.SubState == "awaiting_completion"
		})
	}

	// CWMP: the CPE accepted the Download (Status 1); its file server
	// holds the transfer.
	_, dl := d.postTask(c.DeviceID(), `{"operation":"download","url":"`+files.URL+`/fw.bin"}`)
	awaiting(dl.ID)
	d.cancelAwaiting(dl.ID, "may still carry it out")
	if tk, _ := d.fullTask(dl.ID); tk.SubState != "" {
		t.Fatalf("a cancelled task shows sub_state %q", tk.SubState)
	}
	release()
	tk := d.waitFull(dl.ID, 90*time.Second, func(tk fullTask) bool {
		return tk.Error != nil && strings.Contains(tk.Error.Message, "reported its transfer completion afterwards: succeeded")
	})
	if tk.State != "cancelled" || tk.Result.Transfer == nil || tk.Result.Transfer.CompleteTime == "" {
		_, body := d.fullTask(dl.ID)
		t.Fatalf("late TransferComplete of a cancelled task: %s", body)
	}

	// USP: an asynchronous command (ScheduleTimer() of 15 s) accepted;
	// its OperationComplete comes after the cancel.
	_, timer := d.postTask(a.EndpointID(), `{"operation":"operate","command":"Device.LocalAgent.ScheduleTimer()","input_args":{"DelaySeconds":"15"}}`)
	awaiting(timer.ID)
	d.cancelAwaiting(timer.ID, "may still carry it out")
	// The agent takes its next task while the timer runs.
	d.runTask(a.EndpointID(), `{"operation":"get","paths":["Device.DeviceInfo.SoftwareVersion"]}`)
	tk = d.waitFull(timer.ID, 90*time.Second, func(tk fullTask) bool {
		return tk.Error != nil && strings.Contains(tk.Error.Message, "reported its operation completion afterwards: succeeded")
	})
	if tk.State != "cancelled" {
		_, body := d.fullTask(timer.ID)
		t.Fatalf("late OperationComplete of a cancelled task: %s", body)
	}

	// A finished task still cannot be cancelled.
	if code, body := d.do("DELETE", "/api/v1/tasks/"+timer.ID, ""); code != 409 {
		t.Fatalf("cancel of a cancelled task: %d %s", code, body)
	}
}
