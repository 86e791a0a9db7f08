package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestBulkGetOnMatchingDevices drives a task batch through the real
// binary over a mixed fleet: simulated TR-069 CPEs and USP agents, some
// tagged. Every device the filter matches gets one get task that
// succeeds; the others get none.
func TestBulkGetOnMatchingDevices(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	env["DUET_BULK_RATE"] = "100"
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"

	var match, other []string
	for i, serial := range []string{"BULK1", "BULK2"} {
		c := startCPE(t, acs, serial)
		d.waitDevice(c.DeviceID())
		if i == 0 {
			match = append(match, c.DeviceID())
		} else {
			other = append(other, c.DeviceID())
		}
	}
	for i, serial := range []string{"UBULK1", "UBULK2", "UBULK3"} {
		a, _ := startAgent(t, env, serial)
		d.waitOnline(a.EndpointID(), true)
		if i < 2 {
			match = append(match, a.EndpointID())
		} else {
			other = append(other, a.EndpointID())
		}
	}
	for _, id := range match {
		if code, body := d.do("POST", "/api/v1/devices/"+url.PathEscape(id)+"/tags/wave:1", ""); code != 200 {
			t.Fatalf("tag %s: %d %s", id, code, body)
		}
	}
	// Every device's ID contains "bulk" (any case); only the tagged match.
	code, body := d.do("POST", "/api/v1/tasks", `{"filter":{"tag":"wave:1","q":"bulk"},
		"task":{"operation":"get","paths":["Device.DeviceInfo.SoftwareVersion"]}}`)
	var batch struct {
		ID           string  `json:"id"`
		State        string  `json:"state"`
		Rate         float64 `json:"rate"`
		Matched      int     `json:"matched"`
		CreatedTasks int     `json:"created_tasks"`
		Errors       int     `json:"errors"`
	}
	if code != 202 || json.Unmarshal([]byte(body), &batch) != nil || batch.Rate != 100 {
		t.Fatalf("POST /api/v1/tasks: %d %s", code, body)
	}
	bustest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		code, body := d.get("/api/v1/task-batches/" + batch.ID)
		if code != 200 || json.Unmarshal([]byte(body), &batch) != nil || batch.State != "done" {
			return fmt.Errorf("batch: %d %s", code, body)
		}
		return nil
	})
	if batch.Matched != len(match) || batch.CreatedTasks != len(match) || batch.Errors != 0 {
		t.Fatalf("batch %+v, want %d matched and created", batch, len(match))
	}
	type taskList struct {
		Tasks []struct {
			ID      string `json:"id"`
			BatchID string `json:"batch_id"`
		} `json:"tasks"`
	}
	tasksOf := func(id string) taskList {
		t.Helper()
		code, body := d.get("/api/v1/devices/" + url.PathEscape(id) + "/tasks")
		var l taskList
		if code != 200 || json.Unmarshal([]byte(body), &l) != nil {
			t.Fatalf("tasks of %s: %d %s", id, code, body)
		}
		return l
	}
	for _, id := range match {
		l := tasksOf(id)
		if len(l.Tasks) != 1 || l.Tasks[0].BatchID != batch.ID {
			t.Fatalf("%s tasks: %+v", id, l)
		}
		tk := d.waitTask(l.Tasks[0].ID, "succeeded", 30*time.Second)
		if !strings.Contains(string(tk.Result), "Device.DeviceInfo.SoftwareVersion") {
			t.Fatalf("%s get result %s", id, tk.Result)
		}
	}
	for _, id := range other {
		if l := tasksOf(id); len(l.Tasks) != 0 {
			t.Fatalf("non-matching %s got tasks: %+v", id, l)
		}
	}
}
