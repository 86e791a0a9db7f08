package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// Issue 14: the file repository, the file listener, firmware upgrades and
// configuration backup/restore over both protocols, with the real binary.

// fileEnv is baseEnv with the file listener on a free port.
func fileEnv(t *testing.T) map[string]string {
	env := baseEnv(t, storetest.NewDatabase(t))
	env["DUET_FILE_ADDR"] = "127.0.0.1:" + strconv.Itoa(freePort(t))
	return env
}

type apiFile struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Type     string `json:"type"`
	Version  string `json:"version"`
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`
	DeviceID string `json:"device_id"`
}

// uploadFile streams body to POST /api/v1/files?query.
func (d *duet) uploadFile(query string, body io.Reader) (int, string) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", d.HTTP+"/api/v1/files?"+query, body)
	req.Header.Set("Authorization", "Bearer "+d.Env["DUET_ADMIN_TOKEN"])
	req.Header.Set("Content-Type", "application/octet-stream")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func (d *duet) firmwareFile(version string) apiFile {
	d.t.Helper()
	code, body := d.uploadFile("type=firmware&name=fw-"+version+".bin&version="+version,
		strings.NewReader(version+"\n"+strings.Repeat("image bytes ", 20_000)))
	var f apiFile
	if code != 201 || json.Unmarshal([]byte(body), &f) != nil {
		d.t.Fatalf("upload firmware: %d %s", code, body)
	}
	return f
}

// finished waits for a task to reach a final state.
func (d *duet) finished(id string) fullTask {
	d.t.Helper()
	return d.waitFull(id, 90*time.Second, func(tk fullTask) bool { return tk.State != "dispatched" && tk.State != "queued" })
}

func (d *duet) softwareVersion(id string) string {
	d.t.Helper()
	code, body := d.get("/api/v1/devices/" + url.PathEscape(id))
	var dev struct {
		SoftwareVersion string `json:"software_version"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &dev) != nil {
		d.t.Fatalf("GET device %s: %d %s", id, code, body)
	}
	return dev.SoftwareVersion
}

// TestFirmwareUpgradeBothProtocols: one API, firmware_upgrade with a file
// of the repository: a CWMP CPE and a USP agent end on the new version; a
// device back on its old image fails version_unchanged; a corrupt image
// fails with the device's fault.
func TestFirmwareUpgradeBothProtocols(t *testing.T) {
	env := fileEnv(t)
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"
	fw := d.firmwareFile("2.0.0")

	okC := startCPEWith(t, cpe.Options{ACSURL: acs, Serial: "FW-OK", FirmwareUpdatesVersion: true})
	oldC := startCPEWith(t, cpe.Options{ACSURL: acs, Serial: "FW-OLD", FirmwareUpdatesVersion: true, FirmwareFailure: "boot_old"})
	badC := startCPEWith(t, cpe.Options{ACSURL: acs, Serial: "FW-BAD", FirmwareUpdatesVersion: true, FirmwareFailure: "checksum"})
	okU := startAgentWith(t, env, agent.Config{SerialNumber: "FWU-OK"})
	oldU := startAgentWith(t, env, agent.Config{SerialNumber: "FWU-OLD", FirmwareFailure: agent.FirmwareBootOld})
	badU := startAgentWith(t, env, agent.Config{SerialNumber: "FWU-BAD", FirmwareFailure: agent.FirmwareBadChecksum})
	for _, c := range []*cpe.CPE{okC, oldC, badC} {
		d.waitDevice(c.DeviceID())
	}
	for _, a := range []*agent.Agent{okU, oldU, badU} {
		d.waitOnline(a.EndpointID(), true)
		// Duet picks the inactive image from what it read of them.
		d.runTask(a.EndpointID(), `{"operation":"get","paths":["Device.DeviceInfo."]}`)
	}
	task := func(dev string) string {
		_, tk := d.postTask(dev, `{"operation":"firmware_upgrade","file_id":"`+fw.ID+`"}`)
		return tk.ID
	}
	ids := map[string]string{}
	for _, dev := range []string{okC.DeviceID(), oldC.DeviceID(), badC.DeviceID(), okU.EndpointID(), oldU.EndpointID(), badU.EndpointID()} {
		ids[dev] = task(dev)
	}
	for _, dev := range []string{okC.DeviceID(), okU.EndpointID()} {
		tk := d.finished(ids[dev])
		if tk.State != "succeeded" {
			_, body := d.fullTask(ids[dev])
			t.Errorf("%s: %s", dev, body)
		}
		bustest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			if v := d.softwareVersion(dev); v != "2.0.0" {
				return fmt.Errorf("%s runs %q", dev, v)
			}
			return nil
		})
	}
	for _, dev := range []string{oldC.DeviceID(), oldU.EndpointID()} {
		tk := d.finished(ids[dev])
		if tk.State != "failed" || tk.Error == nil || tk.Error.Code != "version_unchanged" {
			_, body := d.fullTask(ids[dev])
			t.Errorf("%s back on its old image: %s", dev, body)
		}
	}
	for dev, fault := range map[string]int{badC.DeviceID(): 9018, badU.EndpointID(): 7022} {
		tk := d.finished(ids[dev])
		if tk.State != "failed" || tk.Error == nil || tk.Error.DeviceFault != fault {
			_, body := d.fullTask(ids[dev])
			t.Errorf("%s with a corrupt image: %s", dev, body)
		}
	}
	// Every transfer is logged on the file.
	code, body := d.get("/api/v1/files/" + fw.ID)
	if code != 200 || !strings.Contains(body, `"outcome":"complete"`) {
		t.Fatalf("file with transfers: %d %s", code, body)
	}
	// A file in use by an open task, or a policy, cannot be deleted; this
	// one is free now.
	if code, body := d.do("DELETE", "/api/v1/files/"+fw.ID, ""); code != 204 {
		t.Fatalf("delete: %d %s", code, body)
	}
}

// TestFileListenerRangeAndTokens: the URL a task hands a device serves
// HEAD and a byte range; without a valid token the listener refuses. The
// URL the task shows carries no token (it is made at dispatch).
func TestFileListenerRangeAndTokens(t *testing.T) {
	env := fileEnv(t)
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	fw := d.firmwareFile("3.1")
	// Without connection requests the task stays queued until the CPE
	// next informs.
	c := startCPEWith(t, cpe.Options{ACSURL: "http://" + env["DUET_CWMP_ADDR"] + "/", Serial: "RANGE-1"})
	d.waitDevice(c.DeviceID())
	_, tk := d.postTask(c.DeviceID(), `{"operation":"firmware_upgrade","file_id":"`+fw.ID+`","connection_request":false}`)
	shown := taskRequestURL(t, d, tk.ID)
	c.Wake()
	d.finished(tk.ID)
	var u string
	if us := c.TransferURLs(); len(us) == 1 {
		u = us[0]
	} else {
		t.Fatalf("the CPE was told %q", us)
	}
	if !strings.HasPrefix(u, "http://127.0.0.1:") || u == shown {
		t.Fatalf("the CPE was told %q; the task shows %q", u, shown)
	}
	do := func(method, u string, hdr map[string]string) (*http.Response, []byte) {
		req, _ := http.NewRequest(method, u, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, b
	}
	res, b := do("HEAD", u, nil)
	if res.StatusCode != 200 || res.Header.Get("Content-Length") != strconv.FormatInt(fw.Size, 10) || len(b) != 0 {
		t.Fatalf("HEAD: %d %v", res.StatusCode, res.Header)
	}
	res, b = do("GET", u, map[string]string{"Range": "bytes=0-4"})
	if res.StatusCode != 206 || string(b) != "3.1\ni" || res.Header.Get("Content-Range") != fmt.Sprintf("bytes 0-4/%d", fw.Size) {
		t.Fatalf("range: %d %q %v", res.StatusCode, b, res.Header)
	}
	for _, bad := range []string{
		strings.Replace(u, "/files/", "/files/A", 1),
		"http://" + env["DUET_FILE_ADDR"] + "/files/" + fw.ID,
		shown,
	} {
		if res, _ := do("GET", bad, nil); res.StatusCode != 403 && res.StatusCode != 404 {
			t.Fatalf("%s: %d, want refused", bad, res.StatusCode)
		}
	}
	if v := d.metric(`duet_files_refused_total{reason="signature"}`) + d.metric(`duet_files_refused_total{reason="malformed"}`); v < 1 {
		t.Fatalf("refusals not counted: %v", v)
	}
	// In use by a queued task: deleting it is refused.
	d.postTask(c.DeviceID(), `{"operation":"firmware_upgrade","file_id":"`+fw.ID+`","connection_request":false}`)
	if code, body := d.do("DELETE", "/api/v1/files/"+fw.ID, ""); code != 409 {
		t.Fatalf("delete of a file in use: %d %s", code, body)
	}
}

// taskRequestURL is the url of a task's request, as the API shows it; it
// must carry no token (files.TokenPlaceholder in its place).
func taskRequestURL(t *testing.T, d *duet, id string) string {
	t.Helper()
	_, body := d.fullTask(id)
	var got struct {
		Request struct {
			URL string `json:"url"`
		} `json:"request"`
	}
	if json.Unmarshal([]byte(body), &got) != nil || !strings.HasPrefix(got.Request.URL, "http://127.0.0.1:") ||
		!strings.Contains(got.Request.URL, "/files/{token}/") {
		t.Fatalf("task request: %s", body)
	}
	return got.Request.URL
}

// TestTransferTokenMadeAtDispatch: a firmware task queued for a device
// that stays away longer than the transfer URL's life still hands it a
// URL that works, because the token is made when the task is dispatched;
// and the task, read by anyone, shows no token (issue 14 §2, "expiring"
// and per-transfer). Before, the token was made when the task was
// created: the CPE's download was refused as expired (fault 9012), and
// any API reader could fetch the file with the URL the task showed.
func TestTransferTokenMadeAtDispatch(t *testing.T) {
	env := fileEnv(t)
	const ttl = time.Minute // the shortest DUET_FILE_URL_TTL
	env["DUET_FILE_URL_TTL"] = ttl.String()
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	fw := d.firmwareFile("4.0.0")
	c := startCPEWith(t, cpe.Options{ACSURL: "http://" + env["DUET_CWMP_ADDR"] + "/", Serial: "LATE-1", FirmwareUpdatesVersion: true})
	d.waitDevice(c.DeviceID())
	created := time.Now()
	_, tk := d.postTask(c.DeviceID(), `{"operation":"firmware_upgrade","file_id":"`+fw.ID+`","connection_request":false}`)
	shown := taskRequestURL(t, d, tk.ID)
	res, err := http.Get(shown)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("the URL a task shows fetched the file: %d", res.StatusCode)
	}
	// The device stays away past the URL's life (a token made at
	// creation would have expired by now), then comes back.
	time.Sleep(time.Until(created.Add(ttl + 5*time.Second)))
	c.Wake()
	if got := d.finished(tk.ID); got.State != "succeeded" {
		_, body := d.fullTask(tk.ID)
		t.Fatalf("firmware task of a device back after the URL's life: %s", body)
	}
	if v := d.softwareVersion(c.DeviceID()); v != "4.0.0" {
		t.Fatalf("%s runs %q", c.DeviceID(), v)
	}
}

// TestConfigBackupRestoreBothProtocols: backup_config lands a file in the
// repository under the device; restore_config from it puts back a value
// changed since.
func TestConfigBackupRestoreBothProtocols(t *testing.T) {
	env := fileEnv(t)
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	c := startCPEWith(t, cpe.Options{ACSURL: "http://" + env["DUET_CWMP_ADDR"] + "/", Serial: "CFG-C"})
	a := startAgentWith(t, env, agent.Config{SerialNumber: "CFG-U"})
	d.waitDevice(c.DeviceID())
	d.waitOnline(a.EndpointID(), true)
	for _, dev := range []string{c.DeviceID(), a.EndpointID()} {
		const p = "Device.WiFi.SSID.1.SSID"
		d.runTask(dev, `{"operation":"set","params":[{"path":"`+p+`","value":"before-backup"}]}`)
		_, bk := d.postTask(dev, `{"operation":"backup_config"}`)
		if tk := d.finished(bk.ID); tk.State != "succeeded" {
			_, body := d.fullTask(bk.ID)
			t.Fatalf("%s backup: %s", dev, body)
		}
		code, body := d.get("/api/v1/files?device=" + url.QueryEscape(dev))
		var list struct {
			Files []apiFile `json:"files"`
		}
		if code != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list.Files) != 1 || list.Files[0].Type != "vendor_config" {
			t.Fatalf("%s backups: %d %s", dev, code, body)
		}
		d.runTask(dev, `{"operation":"set","params":[{"path":"`+p+`","value":"after-backup"}]}`)
		_, rs := d.postTask(dev, `{"operation":"restore_config","file_id":"`+list.Files[0].ID+`"}`)
		if tk := d.finished(rs.ID); tk.State != "succeeded" {
			_, body := d.fullTask(rs.ID)
			t.Fatalf("%s restore: %s", dev, body)
		}
		tk := d.runTask(dev, `{"operation":"get","paths":["`+p+`"]}`)
		if !strings.Contains(string(tk.Result), "before-backup") {
			t.Fatalf("%s after restore: %s", dev, tk.Result)
		}
	}
}

// campaignFleet is the number of devices of each protocol in the
// campaign test (issue 14, done-when: 100 CWMP and 100 USP).
const campaignFleet = 100

// TestFirmwareCampaignStopsAndResumes: a firmware policy over CWMP and USP
// devices, 10 % rigged to fail, rolled out in batches: it stops itself
// when the failure rate passes the threshold; the failed devices are not
// retried until the operator resumes, after which (the fault fixed) the
// campaign converges on the target version. A device already on it is
// compliant without a transfer.
func TestFirmwareCampaignStopsAndResumes(t *testing.T) {
	env := fileEnv(t)
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"
	fw := d.firmwareFile("9.9.9")

	var cpes []*cpe.CPE
	var agents []*agent.Agent
	rigged := func(i int) bool { return i%10 == 3 }
	for i := 0; i < campaignFleet; i++ {
		o := cpe.Options{ACSURL: acs, Serial: fmt.Sprintf("CMP-C%03d", i), FirmwareUpdatesVersion: true}
		if rigged(i) {
			o.FirmwareFailure = "checksum"
		}
		cpes = append(cpes, startCPEWith(t, o))
		cfg := agent.Config{SerialNumber: fmt.Sprintf("CMP-U%03d", i)}
		if rigged(i) {
			cfg.FirmwareFailure = agent.FirmwareBadChecksum
		}
		if i == 0 {
			cfg.SoftwareVersion = "9.9.9" // already there: no transfer
		}
		agents = append(agents, startAgentWith(t, env, cfg))
	}
	for _, c := range cpes {
		d.waitDevice(c.DeviceID())
	}
	for _, a := range agents {
		d.waitOnline(a.EndpointID(), true)
	}

	var g, p idJSON
	d.mustJSON("POST", "/api/v1/groups", `{"name":"campaign","filter":"serial_number.startsWith(\"CMP-\")"}`, &g)
	d.mustJSON("POST", "/api/v1/policies", `{"group_id":"`+g.ID+`","name":"fw 9.9.9","kind":"firmware",
		"spec":{"file_id":"`+fw.ID+`","version":"9.9.9"}}`, &p)
	// In-use files cannot be deleted.
	if code, body := d.do("DELETE", "/api/v1/files/"+fw.ID, ""); code != 409 {
		t.Fatalf("delete of a campaign's file: %d %s", code, body)
	}
	d.mustJSON("POST", "/api/v1/policies/"+p.ID+"/enable",
		`{"rollout":{"batch_size":50,"max_in_flight":50,"failure_threshold":0.05,"min_finished":40}}`, nil)
	r := d.waitRollout(p.ID, 240*time.Second, func(r rolloutJSON) bool { return r.State == "stopped" })
	if !strings.Contains(r.Reason, "failure rate") || r.Counts.Failed == 0 {
		t.Fatalf("stopped campaign: %+v", r)
	}
	// Failed devices stay failed: nothing is retried while stopped.
	failedBefore := r.Counts.Failed
	time.Sleep(2 * time.Second)
	if r2 := d.rollout(p.ID); r2.State != "stopped" || r2.Counts.Failed != failedBefore {
		t.Fatalf("stopped campaign moved: %+v", r2)
	}
	// The operator fixes the cause and resumes: every device converges.
	for i := range cpes {
		cpes[i].SetFirmwareFailure("")
		agents[i].SetFirmwareFailure("")
	}
	d.mustJSON("POST", "/api/v1/policies/"+p.ID+"/rollout/resume", `{"reason":"image re-signed","retry_failed":true}`, nil)
	r = d.waitRollout(p.ID, 300*time.Second, func(r rolloutJSON) bool { return r.State == "completed" })
	if r.Counts.ByStatus["compliant"] != 2*campaignFleet || r.Counts.Failed != 0 {
		t.Fatalf("completed campaign: %+v", r)
	}
	for _, c := range cpes {
		if v := d.softwareVersion(c.DeviceID()); v != "9.9.9" {
			t.Fatalf("%s runs %q", c.DeviceID(), v)
		}
	}
	// The device already on the version got no task.
	var tasks struct {
		Tasks []struct {
			Operation string `json:"operation"`
		} `json:"tasks"`
	}
	d.mustJSON("GET", "/api/v1/devices/"+url.PathEscape(agents[0].EndpointID())+"/tasks", "", &tasks)
	for _, tk := range tasks.Tasks {
		if tk.Operation == "firmware_upgrade" {
			t.Fatalf("%s was already on 9.9.9 and got a firmware_upgrade", agents[0].EndpointID())
		}
	}
}
