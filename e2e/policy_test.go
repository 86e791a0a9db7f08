package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// mustJSON sends a request and decodes a 2xx answer into out.
func (d *duet) mustJSON(method, path, body string, out any) {
	d.t.Helper()
	code, resp := d.do(method, path, body)
	if code < 200 || code > 299 {
		d.t.Fatalf("%s %s %s: %d %s", method, path, body, code, resp)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(resp), out); err != nil {
			d.t.Fatalf("%s %s: %v in %s", method, path, err, resp)
		}
	}
}

type idJSON struct {
	ID       string `json:"id"`
	Revision int    `json:"revision"`
}

type rolloutJSON struct {
	State  string `json:"state"`
	Reason string `json:"reason"`
	Batch  int    `json:"batch"`
	Counts struct {
		ByStatus map[string]int `json:"by_status"`
		Admitted int            `json:"admitted"`
		Finished int            `json:"finished"`
		Failed   int            `json:"failed"`
		Waiting  int            `json:"waiting"`
	} `json:"counts"`
}

func (d *duet) rollout(policyID string) rolloutJSON {
	d.t.Helper()
	var r rolloutJSON
	d.mustJSON("GET", "/api/v1/policies/"+policyID+"/rollout", "", &r)
	return r
}

// waitRollout polls a policy's rollout until ok says it is as wanted.
// When it never is, the devices still applying and their tasks are
// logged.
func (d *duet) waitRollout(policyID string, timeout time.Duration, ok func(rolloutJSON) bool) rolloutJSON {
	d.t.Helper()
	done := false
	defer func() {
		if done {
			return
		}
		_, body := d.get("/api/v1/policies/" + policyID + "/devices?status=applying&limit=5")
		d.t.Logf("devices still applying: %s", body)
		var list struct {
			Statuses []struct {
				DeviceID string `json:"device_id"`
			} `json:"statuses"`
		}
		_ = json.Unmarshal([]byte(body), &list)
		for _, s := range list.Statuses {
			_, tasks := d.get("/api/v1/devices/" + url.PathEscape(s.DeviceID) + "/tasks")
			_, dev := d.get("/api/v1/devices/" + url.PathEscape(s.DeviceID))
			d.t.Logf("device %s\n  %s\n  tasks %s", s.DeviceID, dev, tasks)
		}
	}()
	var r rolloutJSON
	bustest.CheckFor(d.t, timeout, 250*time.Millisecond, func() error {
		r = d.rollout(policyID)
		if !ok(r) {
			return fmt.Errorf("rollout %+v", r)
		}
		return nil
	})
	done = true
	return r
}

// deviceStatus is a device's status against one policy.
func (d *duet) deviceStatus(dev, policyID string) (status string, body string) {
	d.t.Helper()
	var list struct {
		Statuses []struct {
			PolicyID string `json:"policy_id"`
			Status   string `json:"status"`
		} `json:"statuses"`
	}
	code, body := d.get("/api/v1/devices/" + url.PathEscape(dev) + "/policies")
	if code != 200 || json.Unmarshal([]byte(body), &list) != nil {
		d.t.Fatalf("device statuses of %s: %d %s", dev, code, body)
	}
	for _, s := range list.Statuses {
		if s.PolicyID == policyID {
			return s.Status, body
		}
	}
	return "", body
}

// waitRegistered waits until every id is a device in the API.
func (d *duet) waitRegistered(ids []string, timeout time.Duration) {
	d.t.Helper()
	bustest.CheckFor(d.t, timeout, 250*time.Millisecond, func() error {
		missing := 0
		for _, id := range ids {
			// Registered with its identity: a USP agent's row exists from
			// its connection, its serial number (which groups match on)
			// only once onboarding has read DeviceInfo.
			if code, body := d.get("/api/v1/devices/" + url.PathEscape(id)); code != 200 || strings.Contains(body, `"serial_number":""`) {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d devices not registered", missing, len(ids))
		}
		return nil
	})
}

// policyFleet is simulated devices of both protocols.
type policyFleet struct {
	cpes   []*cpe.CPE
	agents []*agent.Agent
}

func (f *policyFleet) ids() []string {
	var out []string
	for _, c := range f.cpes {
		out = append(out, c.DeviceID())
	}
	for _, a := range f.agents {
		out = append(out, a.EndpointID())
	}
	return out
}

// value reads a parameter on the simulated device itself.
func (f *policyFleet) value(id, path string) string {
	for _, c := range f.cpes {
		if c.DeviceID() == id {
			v, _ := c.Value(path)
			return v
		}
	}
	for _, a := range f.agents {
		if a.EndpointID() == id {
			v, _ := a.Parameter(path)
			return v
		}
	}
	return "<no such device>"
}

// startPolicyDuet starts Duet on a database of its own and a policy fleet
// of n devices per protocol, and waits until every device is registered.
func startPolicyDuet(t *testing.T, prefix string, n int) (map[string]string, *duet, *policyFleet) {
	t.Helper()
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	f := startPolicyFleet(t, env, prefix, n)
	d.waitRegistered(f.ids(), 60*time.Second)
	return env, d, f
}

// startPolicyFleet starts n TR-181 CPEs and n USP agents (MQTT), serials
// prefix+"C%04d" and prefix+"U%04d".
func startPolicyFleet(t *testing.T, env map[string]string, prefix string, n int) *policyFleet {
	t.Helper()
	fleet, err := cpe.NewFleet(cpe.FleetOptions{N: n, SerialPrefix: prefix + "C", Template: cpe.Options{
		ACSURL: "http://" + env["DUET_CWMP_ADDR"] + "/", DataModelPath: cwmpModels[0].path, OUI: "00D09E",
		ProductClass: "POLICY", Manufacturer: "SimCo Device2", SoftwareVersion: "181.1.0",
		PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := fleet.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fleet.Stop)
	agents, err := agent.StartFleet(context.Background(), n, func(i int) agent.Config {
		return agent.Config{SerialNumber: fmt.Sprintf("%sU%04d", prefix, i), ControllerID: tasksControllerEID}
	}, func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
		return agent.DialMQTT(ctx, a, agent.MQTTConfig{
			Broker: "127.0.0.1:" + env["DUET_MQTT_PORT"], ControllerTopic: "usp/controller/" + tasksControllerEID,
			AgentTopic: "usp/agent/" + a.EndpointID(),
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agents.Close() })
	return &policyFleet{cpes: fleet.CPEs(), agents: agents.Agents()}
}

// TestPolicyConvergesOnBothProtocols: a policy on a group of 200 devices
// (100 TR-069 CPEs, 100 USP agents) is previewed, enabled with a staged
// rollout, and converges: every device compliant, every device holding
// exactly what the preview announced. Then a CPE and an agent are factory
// reset and are provisioned again.
func TestPolicyConvergesOnBothProtocols(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	const perProtocol = 100
	f := startPolicyFleet(t, env, "PCV", perProtocol)
	// A device outside the group, which the policy must leave alone.
	outsider, _ := startAgent(t, env, "OUTSIDE1")
	d.waitRegistered(append(f.ids(), outsider.EndpointID()), 120*time.Second)

	var g idJSON
	d.mustJSON("POST", "/api/v1/groups", `{"name":"converge","filter":"serial_number.startsWith(\"PCV\")"}`, &g)
	const ssid = "Device.WiFi.SSID.1.SSID"
	var p idJSON
	d.mustJSON("POST", "/api/v1/policies", `{"group_id":"`+g.ID+`","name":"ssid","priority":1,"kind":"parameters",
		"spec":{"parameters":[{"path":"`+ssid+`","expr":"\"duet-\" + serial_number"}]}}`, &p)

	// Preview: every member, each with the one change it will get.
	preview := map[string]string{}
	cursor := ""
	for {
		var page struct {
			Devices []struct {
				DeviceID string `json:"device_id"`
				Changes  []struct {
					Path    string `json:"path"`
					Desired string `json:"desired"`
				} `json:"changes"`
				Error string `json:"error"`
			} `json:"devices"`
			NextCursor string `json:"next_cursor"`
		}
		d.mustJSON("POST", "/api/v1/policies/"+p.ID+"/preview?limit=1000&cursor="+url.QueryEscape(cursor), "", &page)
		for _, dv := range page.Devices {
			if dv.Error != "" || len(dv.Changes) != 1 || dv.Changes[0].Path != ssid {
				t.Fatalf("preview of %s: %+v", dv.DeviceID, dv)
			}
			preview[dv.DeviceID] = dv.Changes[0].Desired
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	if len(preview) != 2*perProtocol {
		t.Fatalf("preview covers %d devices, want %d", len(preview), 2*perProtocol)
	}

	d.mustJSON("POST", "/api/v1/policies/"+p.ID+"/enable",
		`{"rollout":{"batch_percent":25,"max_in_flight":60,"failure_threshold":0.2}}`, nil)
	start := time.Now()
	r := d.waitRollout(p.ID, 100*time.Second, func(r rolloutJSON) bool { return r.State == "completed" })
	t.Logf("200 devices converged in %v over %d batches", time.Since(start).Round(time.Millisecond), r.Batch)
	if r.Counts.ByStatus["compliant"] != 2*perProtocol || r.Counts.Failed != 0 || r.Batch < 4 {
		t.Fatalf("completed rollout: %+v", r)
	}
	// What enabling did is what the preview said, on the devices
	// themselves.
	for id, want := range preview {
		if got := f.value(id, ssid); got != want {
			t.Fatalf("device %s has %s = %q, preview said %q", id, ssid, got, want)
		}
	}
	if v, _ := outsider.Parameter(ssid); strings.HasPrefix(v, "duet-") {
		t.Fatalf("a device outside the group was changed: %q", v)
	}
	if st, body := d.deviceStatus(outsider.EndpointID(), p.ID); st != "" {
		t.Fatalf("outsider has a status: %s", body)
	}

	// Factory resets: a CPE by a task, an agent by itself. Both come back
	// with their defaults and are provisioned again.
	c, a := f.cpes[3], f.agents[5]
	d.mustJSON("POST", "/api/v1/devices/"+url.PathEscape(c.DeviceID())+"/tasks", `{"operation":"factory_reset"}`, nil)
	a.FactoryReset()
	for _, id := range []string{c.DeviceID(), a.EndpointID()} {
		bustest.CheckFor(t, 60*time.Second, 250*time.Millisecond, func() error {
			if got := f.value(id, ssid); got != preview[id] {
				_, st := d.get("/api/v1/devices/" + url.PathEscape(id) + "/policies")
				_, tasks := d.get("/api/v1/devices/" + url.PathEscape(id) + "/tasks?limit=3")
				_, evs := d.get("/api/v1/devices/" + url.PathEscape(id) + "/events?limit=4")
				return fmt.Errorf("%s has %s = %q after its factory reset\nstatus %s\ntasks %s\nevents %s", id, ssid, got, st, tasks, evs)
			}
			if st, body := d.deviceStatus(id, p.ID); st != "compliant" {
				return fmt.Errorf("status %s", body)
			}
			return nil
		})
	}
	// The resets really happened: each device's history has a second
	// bootstrap (the first was its first contact).
	for _, id := range []string{c.DeviceID(), a.EndpointID()} {
		var evs struct {
			Events []json.RawMessage `json:"events"`
		}
		d.mustJSON("GET", "/api/v1/devices/"+url.PathEscape(id)+"/events?type=bootstrap", "", &evs)
		if len(evs.Events) < 2 {
			t.Fatalf("%s: %d bootstrap events", id, len(evs.Events))
		}
	}
}

// TestRolloutStopsAtFailureThresholdAndResumes: a policy whose value the
// devices reject stops itself after its first batch; the devices not yet
// admitted are untouched. The policy is fixed and the rollout resumed: it
// completes on every device, the failed ones included.
func TestRolloutStopsAtFailureThresholdAndResumes(t *testing.T) {
	env, d, f := startPolicyDuet(t, "RST", 8)

	// Integrators follow the rollout on the bus.
	b := connectEmbeddedBus(t, env)
	var mu sync.Mutex
	var changes []string
	sub, err := b.Conn().Subscribe("duet.policy.>", func(m *nats.Msg) {
		var ev duetv1.PolicyEvent
		if proto.Unmarshal(m.Data, &ev) == nil && strings.HasSuffix(m.Subject, ".rollout") {
			mu.Lock()
			changes = append(changes, ev.GetRollout().GetChange())
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	var g idJSON
	d.mustJSON("POST", "/api/v1/groups", `{"name":"staged","filter":"serial_number.startsWith(\"RST\")"}`, &g)
	const enable = "Device.WiFi.SSID.2.Enable"
	var p idJSON
	// "maybe" is no boolean: CPEs answer 9007, agents 7012 (TR-369).
	d.mustJSON("POST", "/api/v1/policies", `{"group_id":"`+g.ID+`","name":"ssid2","kind":"parameters",
		"spec":{"parameters":[{"path":"`+enable+`","value":"maybe"}]}}`, &p)
	d.mustJSON("POST", "/api/v1/policies/"+p.ID+"/enable",
		`{"rollout":{"batch_size":4,"failure_threshold":0.5,"min_finished":4}}`, nil)
	r := d.waitRollout(p.ID, 90*time.Second, func(r rolloutJSON) bool { return r.State == "stopped" })
	if r.Batch != 1 || r.Counts.Failed != 4 || r.Counts.Waiting != 12 || !strings.Contains(r.Reason, "failure rate 100%") {
		t.Fatalf("stopped rollout: %+v", r)
	}
	// Nothing reached the devices outside the first batch.
	var pending struct {
		Statuses []struct {
			DeviceID string `json:"device_id"`
		} `json:"statuses"`
	}
	d.mustJSON("GET", "/api/v1/policies/"+p.ID+"/devices?status=pending", "", &pending)
	if len(pending.Statuses) != 12 {
		t.Fatalf("pending: %+v", pending)
	}
	for _, s := range pending.Statuses {
		var tasks struct {
			Tasks []json.RawMessage `json:"tasks"`
		}
		d.mustJSON("GET", "/api/v1/devices/"+url.PathEscape(s.DeviceID)+"/tasks", "", &tasks)
		if len(tasks.Tasks) != 0 {
			t.Fatalf("device %s, never admitted, has tasks: %s", s.DeviceID, tasks.Tasks)
		}
	}
	var failed struct {
		Statuses []struct {
			ErrorMessage string `json:"error_message"`
			DeviceFault  int    `json:"device_fault"`
		} `json:"statuses"`
	}
	d.mustJSON("GET", "/api/v1/policies/"+p.ID+"/devices?status=failed", "", &failed)
	if len(failed.Statuses) != 4 || failed.Statuses[0].ErrorMessage == "" {
		t.Fatalf("failed: %+v", failed)
	}
	// Still stopped a while later: a stopped rollout admits nobody.
	time.Sleep(2 * time.Second)
	if r := d.rollout(p.ID); r.State != "stopped" || r.Counts.Admitted != 4 {
		t.Fatalf("stopped rollout moved: %+v", r)
	}

	// Fix the value; the change alone does not restart the rollout.
	var fixed idJSON
	d.mustJSON("PUT", "/api/v1/policies/"+p.ID, `{"name":"ssid2","kind":"parameters",
		"spec":{"parameters":[{"path":"`+enable+`","value":"false"}]}}`, &fixed)
	if fixed.Revision != p.Revision+1 {
		t.Fatalf("revision after the fix: %d", fixed.Revision)
	}
	if r := d.rollout(p.ID); r.State != "stopped" {
		t.Fatalf("a fix restarted the rollout by itself: %+v", r)
	}
	d.mustJSON("POST", "/api/v1/policies/"+p.ID+"/rollout/resume", `{"reason":"value fixed"}`, nil)
	r = d.waitRollout(p.ID, 120*time.Second, func(r rolloutJSON) bool { return r.State == "completed" })
	if r.Counts.ByStatus["compliant"] != 16 || r.Counts.Failed != 0 {
		t.Fatalf("completed: %+v", r)
	}
	for _, id := range f.ids() {
		if v := f.value(id, enable); v != "false" {
			t.Fatalf("%s: %s = %q", id, enable, v)
		}
	}
	bustest.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		got := strings.Join(changes, ",")
		for _, want := range []string{"enabled", "batch_started", "stopped", "resumed", "batch_finished", "completed"} {
			if !strings.Contains(got, want) {
				return fmt.Errorf("rollout events %s lack %s", got, want)
			}
		}
		return nil
	})
	// Every operator action is in the audit log.
	code, body := d.get("/api/v1/audit?object_type=rollout&object_id=" + p.ID)
	if code != 200 || !strings.Contains(body, `"action":"enable"`) || !strings.Contains(body, `"action":"running"`) {
		t.Fatalf("audit: %d %s", code, body)
	}
}

// TestConflictingPoliciesResolveByPriority: two policies on one group want
// different values of one parameter: the higher priority's value is
// applied and the lower one reports the conflict; the lower one's other
// parameter is still applied.
func TestConflictingPoliciesResolveByPriority(t *testing.T) {
	_, d, f := startPolicyDuet(t, "CFL", 2)

	var g idJSON
	d.mustJSON("POST", "/api/v1/groups", `{"name":"both","filter":"serial_number.startsWith(\"CFL\")"}`, &g)
	const code, ssid = "Device.DeviceInfo.ProvisioningCode", "Device.WiFi.SSID.1.SSID"
	var hi, lo idJSON
	d.mustJSON("POST", "/api/v1/policies", `{"group_id":"`+g.ID+`","name":"high","priority":10,"kind":"parameters",
		"spec":{"parameters":[{"path":"`+code+`","value":"HIGH"}]}}`, &hi)
	d.mustJSON("POST", "/api/v1/policies", `{"group_id":"`+g.ID+`","name":"low","priority":1,"kind":"parameters",
		"spec":{"parameters":[{"path":"`+code+`","value":"LOW"},{"path":"`+ssid+`","value":"low-wins-this"}]}}`, &lo)
	for _, id := range []string{lo.ID, hi.ID} {
		d.mustJSON("POST", "/api/v1/policies/"+id+"/enable", `{"rollout":{"batch_percent":100}}`, nil)
	}
	d.waitRollout(hi.ID, 60*time.Second, func(r rolloutJSON) bool { return r.State == "completed" && r.Counts.ByStatus["compliant"] == 4 })
	d.waitRollout(lo.ID, 60*time.Second, func(r rolloutJSON) bool {
		return r.State == "completed" && r.Counts.ByStatus["conflicting"] == 4
	})
	for _, id := range f.ids() {
		if v := f.value(id, code); v != "HIGH" {
			t.Fatalf("%s: %s = %q", id, code, v)
		}
		if v := f.value(id, ssid); v != "low-wins-this" {
			t.Fatalf("%s: %s = %q", id, ssid, v)
		}
		st, body := d.deviceStatus(id, lo.ID)
		if st != "conflicting" || !strings.Contains(body, `"policy_id":"`+hi.ID+`"`) || !strings.Contains(body, code) {
			t.Fatalf("%s: low policy status %s", id, body)
		}
	}
	// A type error is refused with its position, and changes nothing.
	c, body := d.do("PUT", "/api/v1/groups/"+g.ID, `{"name":"both","filter":"serial_number + 1 == 2"}`)
	if c != 400 || !strings.Contains(body, "1:15") {
		t.Fatalf("bad filter: %d %s", c, body)
	}
}
