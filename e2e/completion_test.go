package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// Issue 11 §1: a task ends on the device's real outcome, not on the
// first reply.

// fullTask is a task with the fields these tests look at.
type fullTask struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	SubState string `json:"sub_state"`
	Result   struct {
		Transfer *struct {
			CommandKey   string `json:"command_key"`
			Status       int    `json:"status"`
			FaultCode    int    `json:"fault_code"`
			FaultString  string `json:"fault_string"`
			StartTime    string `json:"start_time"`
			CompleteTime string `json:"complete_time"`
		} `json:"transfer"`
		Reboot *struct {
			CommandKey string `json:"command_key"`
			Cause      string `json:"cause"`
			BootTime   string `json:"boot_time"`
		} `json:"reboot"`
		Operate *struct {
			ExecutedCommand string            `json:"executed_command"`
			OutputArgs      map[string]string `json:"output_args"`
		} `json:"operate"`
		Get *struct {
			Errors []json.RawMessage `json:"errors"`
		} `json:"get"`
	} `json:"result"`
	Error *struct {
		Code        string `json:"code"`
		Message     string `json:"message"`
		DeviceFault int    `json:"device_fault"`
	} `json:"error"`
}

func (d *duet) fullTask(id string) (fullTask, string) {
	d.t.Helper()
	code, body := d.get("/api/v1/tasks/" + id)
	var tk fullTask
	if code != 200 || json.Unmarshal([]byte(body), &tk) != nil {
		d.t.Fatalf("GET task %s: %d %s", id, code, body)
	}
	return tk, body
}

// waitFull polls a task until ok says yes.
func (d *duet) waitFull(id string, timeout time.Duration, ok func(fullTask) bool) fullTask {
	d.t.Helper()
	var tk fullTask
	bustest.CheckFor(d.t, timeout, 100*time.Millisecond, func() error {
		var body string
		tk, body = d.fullTask(id)
		if !ok(tk) {
			return fmt.Errorf("task %s: %s", id, body)
		}
		return nil
	})
	return tk
}

// deviceState returns the device's state and online fields.
func (d *duet) deviceState(id string) (string, bool) {
	d.t.Helper()
	code, body := d.get("/api/v1/devices/" + url.PathEscape(id))
	var dev struct {
		State  string `json:"state"`
		Online bool   `json:"online"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &dev) != nil {
		d.t.Fatalf("GET device %s: %d %s", id, code, body)
	}
	return dev.State, dev.Online
}

func startCPEWith(t *testing.T, o cpe.Options) *cpe.CPE {
	t.Helper()
	o.DataModelPath = cwmpModels[0].path
	o.OUI, o.ProductClass = "00D09E", "DONE"
	o.PeriodicInterval, o.RetryMinWait, o.Bootstrapped = time.Hour, 200*time.Millisecond, true
	c, err := cpe.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func startAgentWith(t *testing.T, env map[string]string, cfg agent.Config) *agent.Agent {
	t.Helper()
	cfg.ControllerID = tasksControllerEID
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := agent.DialMQTT(ctx, a, agent.MQTTConfig{
		Broker: "127.0.0.1:" + env["DUET_MQTT_PORT"], ControllerTopic: "usp/controller/" + tasksControllerEID,
		AgentTopic: "usp/agent/" + a.EndpointID(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(); _ = a.Close() })
	return a
}

// gatedFiles serves /fw.bin only once release is closed, so a test can
// look at a transfer while the CPE is still downloading.
func gatedFiles(t *testing.T) (srv *httptest.Server, release func()) {
	gate := make(chan struct{})
	var once sync.Once
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write([]byte("fw-2.0\n"))
	}))
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(func() { release(); srv.Close() })
	return srv, release
}

// TestCWMPDownloadEndsOnTransferComplete: a CPE answers Download with
// Status 1 and reports TransferComplete in a later session of its own.
// The task stays dispatched (awaiting_completion) meanwhile and ends with
// the device's outcome: success with the times, or the fault (9016).
func TestCWMPDownloadEndsOnTransferComplete(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"
	files, release := gatedFiles(t)

	ok := startCPEWith(t, cpe.Options{ACSURL: acs, Serial: "DL-OK"})
	bad := startCPEWith(t, cpe.Options{ACSURL: acs, Serial: "DL-BAD", TransferFault: 9016, TransferFaultString: "Unexpected response 404"})
	d.waitDevice(ok.DeviceID())
	d.waitDevice(bad.DeviceID())

	_, good := d.postTask(ok.DeviceID(), `{"operation":"download","url":"`+files.URL+`/fw.bin"}`)
	// Accepted, the file still downloading: not succeeded.
	tk := d.waitFull(good.ID, 60*time.Second, func(tk fullTask) bool { return tk.SubState == "awaiting_completion" })
	if tk.State != "dispatched" || tk.Result.Transfer == nil || tk.Result.Transfer.Status != 1 {
		t.Fatalf("accepted download: %+v", tk)
	}
	release()
	tk = d.waitFull(good.ID, 60*time.Second, func(tk fullTask) bool { return tk.State != "dispatched" })
	if tk.State != "succeeded" || tk.SubState != "" || tk.Result.Transfer == nil || tk.Result.Transfer.FaultCode != 0 ||
		tk.Result.Transfer.StartTime == "" || tk.Result.Transfer.CompleteTime == "" || tk.Result.Transfer.CommandKey != good.ID {
		_, body := d.fullTask(good.ID)
		t.Fatalf("completed download: %s", body)
	}

	// Upload: the same, to a server taking the PUT.
	_, up := d.postTask(ok.DeviceID(), `{"operation":"upload","url":"`+files.URL+`/cfg"}`)
	tk = d.waitFull(up.ID, 60*time.Second, func(tk fullTask) bool { return tk.State != "dispatched" && tk.State != "queued" })
	if tk.State != "succeeded" || tk.Result.Transfer == nil || tk.Result.Transfer.CompleteTime == "" {
		_, body := d.fullTask(up.ID)
		t.Fatalf("upload: %s", body)
	}

	_, failed := d.postTask(bad.DeviceID(), `{"operation":"download","url":"`+files.URL+`/fw.bin"}`)
	tk = d.waitFull(failed.ID, 60*time.Second, func(tk fullTask) bool { return tk.State != "dispatched" && tk.State != "queued" })
	if tk.State != "failed" || tk.Error == nil || tk.Error.DeviceFault != 9016 || !strings.Contains(tk.Error.Message, "404") ||
		tk.Result.Transfer == nil || tk.Result.Transfer.FaultCode != 9016 {
		_, body := d.fullTask(failed.ID)
		t.Fatalf("failed download: %s", body)
	}
}

// TestUSPRebootWaitsForBoot: the agent's Reboot() takes it away for a
// while; the task stays dispatched (awaiting_boot) and the device shows
// rebooting, until the Boot! with the task's CommandKey.
func TestUSPRebootWaitsForBoot(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	a := startAgentWith(t, env, agent.Config{SerialNumber: "RB-USP", RebootDowntime: 4 * time.Second})
	dev := a.EndpointID()
	d.waitOnline(dev, true)

	_, rb := d.postTask(dev, `{"operation":"reboot"}`)
	tk := d.waitFull(rb.ID, 60*time.Second, func(tk fullTask) bool { return tk.SubState == "awaiting_boot" })
	if tk.State != "dispatched" {
		t.Fatalf("reboot while the agent is away: %+v", tk)
	}
	if st, online := d.deviceState(dev); st != "rebooting" || online {
		t.Fatalf("device while rebooting: state %q online %v", st, online)
	}
	if a.Boots() != 1 {
		t.Fatalf("agent boots %d", a.Boots())
	}
	tk = d.waitFull(rb.ID, 60*time.Second, func(tk fullTask) bool { return tk.State != "dispatched" })
	if tk.State != "succeeded" || tk.Result.Reboot == nil || tk.Result.Reboot.CommandKey != rb.ID ||
		tk.Result.Reboot.Cause != "RemoteReboot" || tk.Result.Reboot.BootTime == "" {
		_, body := d.fullTask(rb.ID)
		t.Fatalf("reboot after Boot!: %s", body)
	}
	bustest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if st, online := d.deviceState(dev); st != "online" || !online {
			return fmt.Errorf("device back: state %q online %v", st, online)
		}
		return nil
	})
	// A factory reset wipes Duet's subscriptions; the agent's factory
	// Boot! subscription still reports it back.
	_, fr := d.postTask(dev, `{"operation":"factory_reset"}`)
	tk = d.waitFull(fr.ID, 60*time.Second, func(tk fullTask) bool { return tk.State != "dispatched" && tk.State != "queued" })
	if tk.State != "succeeded" || tk.Result.Reboot == nil || tk.Result.Reboot.Cause != "RemoteFactoryReset" {
		_, body := d.fullTask(fr.ID)
		t.Fatalf("factory reset after Boot!: %s", body)
	}
}

// TestCWMPRebootWaitsForBoot: the CPE reboots after the session and is
// away a while; the task ends on its 1 BOOT + M Reboot with the
// CommandKey, a factory reset on its 0 BOOTSTRAP.
func TestCWMPRebootWaitsForBoot(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	c := startCPEWith(t, cpe.Options{ACSURL: "http://" + env["DUET_CWMP_ADDR"] + "/", Serial: "RB-CWMP", RebootDowntime: 4 * time.Second})
	dev := c.DeviceID()
	d.waitDevice(dev)

	_, rb := d.postTask(dev, `{"operation":"reboot"}`)
	tk := d.waitFull(rb.ID, 60*time.Second, func(tk fullTask) bool { return tk.SubState == "awaiting_boot" || tk.State == "succeeded" })
	if tk.State != "dispatched" {
		_, body := d.fullTask(rb.ID)
		t.Fatalf("reboot while the CPE is away: %s", body)
	}
	if st, online := d.deviceState(dev); st != "rebooting" || online {
		t.Fatalf("device while rebooting: state %q online %v", st, online)
	}
	tk = d.waitFull(rb.ID, 60*time.Second, func(tk fullTask) bool { return tk.State != "dispatched" })
	if tk.State != "succeeded" || tk.Result.Reboot == nil || tk.Result.Reboot.CommandKey != rb.ID || tk.Result.Reboot.BootTime == "" || tk.Result.Operate != nil {
		_, body := d.fullTask(rb.ID)
		t.Fatalf("reboot after 1 BOOT: %s", body)
	}
	_, fr := d.postTask(dev, `{"operation":"factory_reset"}`)
	tk = d.waitFull(fr.ID, 60*time.Second, func(tk fullTask) bool { return tk.State != "dispatched" && tk.State != "queued" })
	if tk.State != "succeeded" || tk.Result.Reboot == nil {
		_, body := d.fullTask(fr.ID)
		t.Fatalf("factory reset after 0 BOOTSTRAP: %s", body)
	}
}

// TestRebootThatNeverComesBackTimesOut: on both protocols, a device that
// does not come back fails its reboot with timeout (DUET_REBOOT_TIMEOUT).
func TestRebootThatNeverComesBackTimesOut(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	env["DUET_REBOOT_TIMEOUT"] = "3s"
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	a := startAgentWith(t, env, agent.Config{SerialNumber: "RB-GONE", RebootNeverReturns: true})
	c := startCPEWith(t, cpe.Options{ACSURL: "http://" + env["DUET_CWMP_ADDR"] + "/", Serial: "RB-GONE", RebootNeverReturns: true})
	d.waitOnline(a.EndpointID(), true)
	d.waitDevice(c.DeviceID())

	_, usp := d.postTask(a.EndpointID(), `{"operation":"reboot"}`)
	_, cwmp := d.postTask(c.DeviceID(), `{"operation":"reboot"}`)
	for _, id := range []string{usp.ID, cwmp.ID} {
		tk := d.waitFull(id, 90*time.Second, func(tk fullTask) bool { return tk.State != "dispatched" && tk.State != "queued" })
		if tk.State != "failed" || tk.Error == nil || tk.Error.Code != "timeout" {
			_, body := d.fullTask(id)
			t.Fatalf("reboot of a device that never came back: %s", body)
		}
	}
	if st, _ := d.deviceState(a.EndpointID()); st == "rebooting" {
		t.Fatal("device still rebooting after its reboot task failed")
	}
}

// TestUSPAsyncOperateEndsOnOperationComplete: an async command's task
// waits for OperationComplete and ends with its output arguments.
func TestUSPAsyncOperateEndsOnOperationComplete(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	a := startAgentWith(t, env, agent.Config{SerialNumber: "ASYNC1", AsyncDelay: 3 * time.Second, TimerUnit: 100 * time.Millisecond})
	dev := a.EndpointID()
	d.waitOnline(dev, true)

	_, ping := d.postTask(dev, `{"operation":"operate","command":"Device.IP.Diagnostics.IPPing()","input_args":{"ProtocolVersion":"Any","Host":"192.0.2.1","NumberOfRepetitions":"3","Timeout":"1000","DataBlockSize":"64"}}`)
	tk := d.waitFull(ping.ID, 60*time.Second, func(tk fullTask) bool {
		return tk.SubState == "awaiting_completion" || tk.State != "queued" && tk.State != "dispatched"
	})
	if tk.State != "dispatched" {
		_, body := d.fullTask(ping.ID)
		t.Fatalf("async IPPing() before OperationComplete: %s", body)
	}
	tk = d.waitFull(ping.ID, 60*time.Second, func(tk fullTask) bool { return tk.State != "dispatched" })
	if tk.State != "succeeded" || tk.Result.Operate == nil || tk.Result.Operate.OutputArgs["SuccessCount"] != "3" ||
		tk.Result.Operate.OutputArgs["Status"] != "Complete" {
		_, body := d.fullTask(ping.ID)
		t.Fatalf("IPPing() after OperationComplete: %s", body)
	}

	// ScheduleTimer(): no output arguments, ends when the timer fired.
	_, timer := d.postTask(dev, `{"operation":"operate","command":"Device.LocalAgent.ScheduleTimer()","input_args":{"DelaySeconds":"20"}}`)
	tk = d.waitFull(timer.ID, 60*time.Second, func(tk fullTask) bool {
		return tk.SubState == "awaiting_completion" || tk.State != "queued" && tk.State != "dispatched"
	})
	if tk.State != "dispatched" {
		_, body := d.fullTask(timer.ID)
		t.Fatalf("ScheduleTimer() before it fired: %s", body)
	}
	d.waitFull(timer.ID, 60*time.Second, func(tk fullTask) bool { return tk.State == "succeeded" })
	// A timer of 0 s completes at once: its OperationComplete may reach
	// the controller before the OperateResp does; the task still ends.
	for range 3 {
		_, quick := d.postTask(dev, `{"operation":"operate","command":"Device.LocalAgent.ScheduleTimer()","input_args":{"DelaySeconds":"0"}}`)
		d.waitFull(quick.ID, 60*time.Second, func(tk fullTask) bool { return tk.State == "succeeded" })
	}
}

// TestGetOfOnlyInvalidPathFails: one rule for operations on several
// paths; all failed is failed, some failed is succeeded with errors.
func TestGetOfOnlyInvalidPathFails(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	a := startAgentWith(t, env, agent.Config{SerialNumber: "GETBAD"})
	dev := a.EndpointID()
	d.waitOnline(dev, true)

	code, bad := d.postTask(dev, `{"operation":"get","paths":["Device.NoSuchObject.X"],"wait":30}`)
	tk, body := d.fullTask(bad.ID)
	if code != 200 || tk.State != "failed" || tk.Error == nil || tk.Error.Code != "invalid_path" {
		t.Fatalf("get of an invalid path: %d %s", code, body)
	}
	code, part := d.postTask(dev, `{"operation":"get","paths":["Device.WiFi.SSID.1.SSID","Device.NoSuchObject.X"],"wait":30}`)
	tk, body = d.fullTask(part.ID)
	if code != 200 || tk.State != "succeeded" || tk.Result.Get == nil || len(tk.Result.Get.Errors) != 1 {
		t.Fatalf("get with one invalid path of two: %d %s", code, body)
	}
}

// TestCWMPDiagnosticsEndOnDiagnosticsComplete: a CWMP diagnostics run
// (SetParameterValues DiagnosticsState=Requested) ends on the CPE's
// "8 DIAGNOSTICS COMPLETE", with the results as output arguments.
func TestCWMPDiagnosticsEndOnDiagnosticsComplete(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	c := startCPEWith(t, cpe.Options{ACSURL: "http://" + env["DUET_CWMP_ADDR"] + "/", Serial: "DIAG1"})
	dev := c.DeviceID()
	d.waitDevice(dev)
	_, ping := d.postTask(dev, `{"operation":"operate","command":"Device.IP.Diagnostics.IPPing()","input_args":{"Host":"127.0.0.1","NumberOfRepetitions":"2"}}`)
	tk := d.waitFull(ping.ID, 60*time.Second, func(tk fullTask) bool { return tk.State != "dispatched" && tk.State != "queued" })
	if tk.State != "succeeded" || tk.Result.Operate == nil || tk.Result.Operate.OutputArgs["DiagnosticsState"] != "Complete" ||
		tk.Result.Operate.OutputArgs["SuccessCount"] != "2" {
		_, body := d.fullTask(ping.ID)
		t.Fatalf("diagnostics: %s", body)
	}
}
