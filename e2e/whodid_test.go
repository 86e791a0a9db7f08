package e2e

import (
	"encoding/json"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestOperatorTokenRebootIsAudited: a token made with `duet token create
// --role operator` reboots a simulated CPE and creates a policy, is
// refused the device's credentials, and the audit log of the device says
// who rebooted it; the device's history speaks the API's vocabulary
// (issue 11 items 8 and 6).
func TestOperatorTokenRebootIsAudited(t *testing.T) {
	dbURL := storetest.NewDatabase(t)
	env := baseEnv(t, dbURL)
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	c := startCPE(t, "http://"+env["DUET_CWMP_ADDR"]+"/", "WHO1")
	dev := c.DeviceID()
	d.waitDevice(dev)

	tok := startDuet(t, map[string]string{"DUET_DATABASE_URL": dbURL, "DUET_LOG_FORMAT": "json"}, "token", "create", "--name", "noc-alice", "--role", "operator")
	if code := tok.wait(30 * time.Second); code != 0 {
		t.Fatalf("duet token create: exit %d\n%s", code, tok.out.String())
	}
	var op, opID string
	for _, line := range strings.Split(tok.out.String(), "\n") {
		if strings.HasPrefix(line, "duet_") {
			op = line
		}
		if m := regexp.MustCompile(`created token (\S+) \(noc-alice, role operator\)`).FindStringSubmatch(line); m != nil {
			opID = m[1]
		}
	}
	if op == "" || opID == "" {
		t.Fatalf("token create output:\n%s", tok.out.String())
	}
	actor := "noc-alice (" + opID + ")"
	esc := url.PathEscape(dev)

	code, out := d.doAs(op, "POST", "/api/v1/devices/"+esc+"/tasks", `{"operation":"reboot","wait":30}`)
	var task struct {
		ID        string `json:"id"`
		State     string `json:"state"`
		CreatedBy string `json:"created_by"`
	}
	if code != 200 || json.Unmarshal([]byte(out), &task) != nil || task.State != "succeeded" || task.CreatedBy != actor {
		t.Fatalf("operator reboot: %d %s", code, out)
	}
	code, out = d.get("/api/v1/audit?device=" + url.QueryEscape(dev))
	var audit struct {
		Entries []struct {
			Actor      string          `json:"actor"`
			Action     string          `json:"action"`
			ObjectType string          `json:"object_type"`
			ObjectID   string          `json:"object_id"`
			After      json.RawMessage `json:"after"`
		} `json:"entries"`
	}
	if code != 200 || json.Unmarshal([]byte(out), &audit) != nil || len(audit.Entries) != 1 {
		t.Fatalf("audit of %s: %d %s", dev, code, out)
	}
	if en := audit.Entries[0]; en.Actor != actor || en.Action != "create" || en.ObjectType != "task" || en.ObjectID != task.ID ||
		!strings.Contains(string(en.After), `"operation":"reboot"`) {
		t.Fatalf("audit entry %+v %s", en, en.After)
	}

	code, out = d.doAs(op, "POST", "/api/v1/groups", `{"name":"all","filter":"true"}`)
	var g struct {
		ID string `json:"id"`
	}
	if code != 201 || json.Unmarshal([]byte(out), &g) != nil {
		t.Fatalf("operator group: %d %s", code, out)
	}
	if code, out = d.doAs(op, "POST", "/api/v1/policies", `{"group_id":"`+g.ID+`","name":"pi","kind":"parameters",
		"spec":{"parameters":[{"path":"Device.ManagementServer.PeriodicInformInterval","value":"3600"}]}}`); code != 201 {
		t.Fatalf("operator policy: %d %s", code, out)
	}
	if code, out = d.doAs(op, "PUT", "/api/v1/devices/"+esc+"/credentials",
		`{"username":"u","password":"p","connection_request_username":"c","connection_request_password":"q"}`); code != 403 || !strings.Contains(out, `"denied"`) {
		t.Fatalf("operator credentials: %d %s", code, out)
	}

	// The device's history: short names, no protobuf constants.
	code, out = d.get("/api/v1/devices/" + esc + "/events")
	if code != 200 || !strings.Contains(out, `"protocol":"cwmp"`) || regexp.MustCompile(`"(PROTOCOL|PARAM_TYPE|WRITABILITY|ERROR_CODE|NOTIFICATION)_[A-Z_]+"`).MatchString(out) {
		t.Fatalf("history: %d %s", code, out)
	}
}
