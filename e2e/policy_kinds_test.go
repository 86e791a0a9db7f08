package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
)

// agentRows lists the instances of a table on a simulated agent, by
// instance number, each with the parameters asked for. The agent has no
// way to list a table, so instance numbers are probed; an instance is
// there when its first parameter reads.
func agentRows(a *agent.Agent, table string, params ...string) map[int]map[string]string {
	rows := map[int]map[string]string{}
	for i := 1; i <= 64; i++ {
		inst := table + strconv.Itoa(i) + "."
		if _, ok := a.Parameter(inst + params[0]); !ok {
			continue
		}
		row := map[string]string{}
		for _, p := range params {
			row[p], _ = a.Parameter(inst + p)
		}
		rows[i] = row
	}
	return rows
}

// valueChanges counts a device's value_change events in the API.
func (d *duet) valueChanges(id string) int {
	d.t.Helper()
	var evs struct {
		Events []json.RawMessage `json:"events"`
	}
	d.mustJSON("GET", "/api/v1/devices/"+url.PathEscape(id)+"/events?type=value_change", "", &evs)
	return len(evs.Events)
}

// TestManagementPolicyOnBothProtocols: one management policy asks every
// device of a group to report every 10 minutes and at once when its SSID
// changes. On CWMP that is PeriodicInformInterval and an active
// notification attribute; on USP the PeriodicNotifInterval of our
// Controller row and a ValueChange Subscription. Then a user changing the
// SSID on a device is reported to Duet without waiting for a periodic
// contact.
func TestManagementPolicyOnBothProtocols(t *testing.T) {
	_, d, f := startPolicyDuet(t, "MGT", 3)

	const ssid = "Device.WiFi.SSID.1.SSID"
	var g, p idJSON
	d.mustJSON("POST", "/api/v1/groups", `{"name":"mgmt","filter":"serial_number.startsWith(\"MGT\")"}`, &g)
	d.mustJSON("POST", "/api/v1/policies", `{"group_id":"`+g.ID+`","name":"report","priority":1,"kind":"management",
		"spec":{"periodic_inform_interval":600,"value_change":["`+ssid+`"]}}`, &p)
	d.mustJSON("POST", "/api/v1/policies/"+p.ID+"/enable", `{"rollout":{"batch_percent":100}}`, nil)
	r := d.waitRollout(p.ID, 90*time.Second, func(r rolloutJSON) bool {
		return r.State == "completed" && r.Counts.ByStatus["compliant"] == 6
	})
	if r.Counts.Failed != 0 {
		t.Fatalf("completed rollout: %+v", r)
	}

	for _, c := range f.cpes {
		for path, want := range map[string]string{
			"Device.ManagementServer.PeriodicInformEnable":   "true",
			"Device.ManagementServer.PeriodicInformInterval": "600",
		} {
			if got := f.value(c.DeviceID(), path); got != want {
				t.Fatalf("CPE %s: %s = %q, want %q", c.DeviceID(), path, got, want)
			}
		}
	}
	for _, a := range f.agents {
		// Onboarding's own subscriptions start "duet-" too; the policy's
		// are named after it.
		var subs []map[string]string
		for _, row := range agentRows(a, "Device.LocalAgent.Subscription.", "ID", "Enable", "NotifType", "ReferenceList", "Persistent") {
			if strings.HasPrefix(row["ID"], "duet-"+p.ID+"-") {
				subs = append(subs, row)
			}
		}
		if len(subs) != 1 || subs[0]["NotifType"] != "ValueChange" || subs[0]["ReferenceList"] != ssid ||
			subs[0]["Enable"] != "true" || subs[0]["Persistent"] != "true" {
			t.Fatalf("agent %s: the policy's subscriptions are %v", a.EndpointID(), subs)
		}
		ours := 0
		for i, row := range agentRows(a, "Device.LocalAgent.Controller.", "EndpointID", "PeriodicNotifInterval") {
			if row["EndpointID"] != tasksControllerEID {
				continue
			}
			ours++
			if row["PeriodicNotifInterval"] != "600" {
				t.Fatalf("agent %s: Controller.%d.PeriodicNotifInterval = %q", a.EndpointID(), i, row["PeriodicNotifInterval"])
			}
		}
		if ours != 1 {
			t.Fatalf("agent %s: %d Controller rows for %s", a.EndpointID(), ours, tasksControllerEID)
		}
	}

	// The notification is in force: a user's SSID change reaches Duet as
	// a value change within seconds, long before the next periodic
	// contact (600 s). The simulated CPE exposes no attributes, so this is
	// how the active notification is observed.
	c, a := f.cpes[0], f.agents[0]
	if err := c.SetParameterValue(ssid, "user-cpe"); err != nil {
		t.Fatal(err)
	}
	if err := a.SetParameter(ssid, "user-agent"); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{c.DeviceID(): "user-cpe", a.EndpointID(): "user-agent"} {
		bustest.CheckFor(t, 30*time.Second, 250*time.Millisecond, func() error {
			code, body := d.get("/api/v1/devices/" + url.PathEscape(id) + "/parameters?path=" + ssid)
			if code != 200 || !strings.Contains(body, `"value":"`+want+`"`) {
				return fmt.Errorf("%s: cached SSID %d %s", id, code, body)
			}
			if n := d.valueChanges(id); n == 0 {
				return fmt.Errorf("%s: no value_change event", id)
			}
			return nil
		})
	}
	// The SSID's value is not the policy's business: it stays compliant.
	for _, id := range []string{c.DeviceID(), a.EndpointID()} {
		if st, body := d.deviceStatus(id, p.ID); st != "compliant" {
			t.Fatalf("%s after the user's change: %s", id, body)
		}
	}
}

// TestObjectsPolicyOnBothProtocols: an objects policy creates a port
// mapping keyed by its Alias on every device of a group; a changed value
// updates the same instance in place; present:false deletes it.
func TestObjectsPolicyOnBothProtocols(t *testing.T) {
	_, d, f := startPolicyDuet(t, "OBJ", 3)

	const table, alias = "Device.NAT.PortMapping.", "duet-e2e"
	var g, p idJSON
	d.mustJSON("POST", "/api/v1/groups", `{"name":"nat","filter":"serial_number.startsWith(\"OBJ\")"}`, &g)
	spec := func(port string) string {
		return `{"group_id":"` + g.ID + `","name":"sip","priority":1,"kind":"objects","spec":{"objects":[
			{"table":"` + table + `","key":{"Alias":"` + alias + `"},
			 "parameters":{"Enable":"true","Protocol":"UDP","ExternalPort":"` + port + `","InternalPort":"5060",
			               "Description":{"expr":"\"sip-\" + serial_number"}}}]}}`
	}
	d.mustJSON("POST", "/api/v1/policies", spec("5060"), &p)
	d.mustJSON("POST", "/api/v1/policies/"+p.ID+"/enable", `{"rollout":{"batch_percent":100}}`, nil)
	d.waitRollout(p.ID, 90*time.Second, func(r rolloutJSON) bool {
		return r.State == "completed" && r.Counts.ByStatus["compliant"] == 6
	})

	// instance finds the mapping on a device: "" when there is none, and
	// a failure when there are several.
	instance := func(id string) string {
		t.Helper()
		var found []string
		for i := 1; i <= 64; i++ {
			inst := table + strconv.Itoa(i) + "."
			if f.value(id, inst+"Alias") == alias {
				found = append(found, inst)
			}
		}
		if len(found) > 1 {
			_, tasks := d.get("/api/v1/devices/" + url.PathEscape(id) + "/tasks")
			t.Fatalf("%s has %d instances with Alias %s: %v\ntasks: %s", id, len(found), alias, found, tasks)
		}
		if len(found) == 0 {
			return ""
		}
		return found[0]
	}
	serial := func(id string) string {
		var dev struct {
			SerialNumber string `json:"serial_number"`
		}
		d.mustJSON("GET", "/api/v1/devices/"+url.PathEscape(id), "", &dev)
		return dev.SerialNumber
	}
	created := map[string]string{}
	for _, id := range f.ids() {
		inst := instance(id)
		if inst == "" {
			t.Fatalf("%s: no %s instance with Alias %s", id, table, alias)
		}
		created[id] = inst
		for name, want := range map[string]string{"Enable": "true", "Protocol": "UDP", "ExternalPort": "5060",
			"InternalPort": "5060", "Description": "sip-" + serial(id)} {
			if got := f.value(id, inst+name); got != want {
				t.Fatalf("%s: %s%s = %q, want %q", id, inst, name, got, want)
			}
		}
	}

	// A new external port: a new revision, rolled out again; each device's
	// instance is set, not replaced.
	var changed idJSON
	d.mustJSON("PUT", "/api/v1/policies/"+p.ID, spec("5070"), &changed)
	if changed.Revision != p.Revision+1 {
		t.Fatalf("revision after the change: %d, was %d", changed.Revision, p.Revision)
	}
	bustest.CheckFor(t, 90*time.Second, 250*time.Millisecond, func() error {
		for _, id := range f.ids() {
			if got := f.value(id, created[id]+"ExternalPort"); got != "5070" {
				return fmt.Errorf("%s: %sExternalPort = %q", id, created[id], got)
			}
			if st, body := d.deviceStatus(id, p.ID); st != "compliant" {
				return fmt.Errorf("%s: %s", id, body)
			}
		}
		return nil
	})
	for _, id := range f.ids() {
		if inst := instance(id); inst != created[id] {
			t.Fatalf("%s: the mapping is now %q, was %q: re-created instead of updated", id, inst, created[id])
		}
	}

	// present:false deletes it, and only it.
	d.mustJSON("PUT", "/api/v1/policies/"+p.ID, `{"group_id":"`+g.ID+`","name":"sip","priority":1,"kind":"objects",
		"spec":{"objects":[{"table":"`+table+`","key":{"Alias":"`+alias+`"},"present":false}]}}`, nil)
	bustest.CheckFor(t, 90*time.Second, 250*time.Millisecond, func() error {
		for _, id := range f.ids() {
			if inst := instance(id); inst != "" {
				return fmt.Errorf("%s still has %s", id, inst)
			}
			if st, body := d.deviceStatus(id, p.ID); st != "compliant" {
				return fmt.Errorf("%s: %s", id, body)
			}
		}
		return nil
	})
	// The CPE's own mapping from its data model is untouched.
	for _, c := range f.cpes {
		if got := f.value(c.DeviceID(), table+"1.Alias"); got != "cpe-1" {
			t.Fatalf("%s: %s1.Alias = %q", c.DeviceID(), table, got)
		}
	}
	// The devices being compliant, the rollout completes on its next tick.
	r := d.waitRollout(p.ID, 30*time.Second, func(r rolloutJSON) bool { return r.State == "completed" })
	if r.Counts.Failed != 0 {
		t.Fatalf("rollout after the delete: %+v", r)
	}
}

// instancesWith lists, on a simulated device, the instances of table whose
// param is value.
func (f *policyFleet) instancesWith(id, table, param, value string) []string {
	var found []string
	for i := 1; i <= 64; i++ {
		inst := table + strconv.Itoa(i) + "."
		if f.value(id, inst+param) == value {
			found = append(found, inst)
		}
	}
	return found
}

// TestObjectsPolicyAdoptsAnInstanceCreatedBehindDuetsBack: a device has
// an instance with the policy's key that Duet never saw (created on the
// device, no notification), and Duet's cache holds one parameter of
// another instance of the table, read by an operator. The policy must
// not take that one cached row for the whole table: it reads the table,
// finds the instance and sets it in place instead of adding a twin, on
// both protocols (issue 12 §3). The preview says it must read the table
// first. On main the policy added a second instance and reported the
// device compliant.
func TestObjectsPolicyAdoptsAnInstanceCreatedBehindDuetsBack(t *testing.T) {
	_, d, f := startPolicyDuet(t, "ADO", 1)
	const table, key = "Device.NAT.PortMapping.", "eval-prof2"
	c, a := f.cpes[0], f.agents[0]
	// The agent starts with no mapping: give it one of its own, as the
	// CPE's data model has.
	if _, err := a.CreateInstance(table, map[string]string{"Description": "web", "ExternalPort": "8080"}); err != nil {
		t.Fatal(err)
	}
	behind := map[string]string{}
	for id, create := range map[string]func() (string, error){
		c.DeviceID(): func() (string, error) {
			return c.CreateInstance(table, map[string]string{"Description": key, "ExternalPort": "7000", "Enable": "false"})
		},
		a.EndpointID(): func() (string, error) {
			return a.CreateInstance(table, map[string]string{"Description": key, "ExternalPort": "7000", "Enable": "false"})
		},
	} {
		inst, err := create()
		if err != nil {
			t.Fatal(err)
		}
		behind[id] = inst
		// One parameter of the device's first mapping is read: the cache
		// now has a row under the table, and nothing of the new instance.
		d.runTask(id, `{"operation":"get","paths":["`+table+`1.Enable"]}`)
	}

	var g, p idJSON
	d.mustJSON("POST", "/api/v1/groups", `{"name":"adopt","filter":"serial_number.startsWith(\"ADO\")"}`, &g)
	d.mustJSON("POST", "/api/v1/policies", `{"group_id":"`+g.ID+`","name":"prof","priority":1,"kind":"objects","spec":{"objects":[
		{"table":"`+table+`","key":{"Description":"`+key+`"},"parameters":{"Enable":"true","ExternalPort":"7070"}}]}}`, &p)

	var preview struct {
		Devices []struct {
			DeviceID   string          `json:"device_id"`
			NeedsRead  []string        `json:"needs_read"`
			Incomplete bool            `json:"incomplete"`
			Plan       json.RawMessage `json:"plan"`
		} `json:"devices"`
	}
	d.mustJSON("POST", "/api/v1/policies/"+p.ID+"/preview", "", &preview)
	if len(preview.Devices) != 2 {
		t.Fatalf("preview: %+v", preview)
	}
	for _, dp := range preview.Devices {
		if !dp.Incomplete || len(dp.NeedsRead) != 1 || dp.NeedsRead[0] != table || strings.Contains(string(dp.Plan), `"add"`) {
			t.Fatalf("preview of %s: needs_read %v, incomplete %v, plan %s; want the table read first and nothing added",
				dp.DeviceID, dp.NeedsRead, dp.Incomplete, dp.Plan)
		}
	}

	d.mustJSON("POST", "/api/v1/policies/"+p.ID+"/enable", `{"rollout":{"batch_percent":100}}`, nil)
	d.waitRollout(p.ID, 90*time.Second, func(r rolloutJSON) bool {
		return r.State == "completed" && r.Counts.ByStatus["compliant"] == 2
	})
	for _, id := range f.ids() {
		found := f.instancesWith(id, table, "Description", key)
		if len(found) != 1 || found[0] != behind[id] {
			_, tasks := d.get("/api/v1/devices/" + url.PathEscape(id) + "/tasks")
			t.Fatalf("%s: instances with Description %s: %v, want only %s, adopted\ntasks: %s", id, key, found, behind[id], tasks)
		}
		for name, want := range map[string]string{"Enable": "true", "ExternalPort": "7070"} {
			if got := f.value(id, behind[id]+name); got != want {
				t.Fatalf("%s: %s%s = %q, want %q (set in place)", id, behind[id], name, got, want)
			}
		}
	}
}

// TestManagementPolicyWithOneControllerParameterCached: a USP agent has
// Duet's Controller row, and Duet's cache holds one parameter of it (an
// operator read its PeriodicNotifInterval). That one row is not a
// listing of the table: the policy reads it and sets the interval, where
// on main it reported "the device has no Device.LocalAgent.Controller.
// [EndpointID==…] and the policy may not create it" (issue 12 §3).
func TestManagementPolicyWithOneControllerParameterCached(t *testing.T) {
	_, d, f := startPolicyDuet(t, "MGC", 1)
	a := f.agents[0]
	const ctrl = "Device.LocalAgent.Controller."
	ours := ""
	for i, row := range agentRows(a, ctrl, "EndpointID") {
		if row["EndpointID"] == tasksControllerEID {
			ours = ctrl + strconv.Itoa(i) + "."
		}
	}
	if ours == "" {
		t.Fatalf("agent %s has no Controller row for %s", a.EndpointID(), tasksControllerEID)
	}
	d.runTask(a.EndpointID(), `{"operation":"get","paths":["`+ours+`PeriodicNotifInterval"]}`)

	var g, p idJSON
	d.mustJSON("POST", "/api/v1/groups", `{"name":"mgmt","filter":"serial_number.startsWith(\"MGC\")"}`, &g)
	d.mustJSON("POST", "/api/v1/policies", `{"group_id":"`+g.ID+`","name":"report","priority":1,"kind":"management",
		"spec":{"periodic_inform_interval":900}}`, &p)
	d.mustJSON("POST", "/api/v1/policies/"+p.ID+"/enable", `{"rollout":{"batch_percent":100}}`, nil)
	r := d.waitRollout(p.ID, 90*time.Second, func(r rolloutJSON) bool {
		return r.State == "completed" && r.Counts.ByStatus["compliant"]+r.Counts.ByStatus["failed"] == 2
	})
	if r.Counts.ByStatus["compliant"] != 2 {
		_, body := d.get("/api/v1/policies/" + p.ID + "/devices")
		t.Fatalf("rollout %+v\nstatuses %s", r, body)
	}
	if got := f.value(a.EndpointID(), ours+"PeriodicNotifInterval"); got != "900" {
		t.Fatalf("%sPeriodicNotifInterval = %q, want 900", ours, got)
	}
}
