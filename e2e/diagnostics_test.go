package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/sim/cpe"
)

// Issue 14 §6: on-device diagnostics over both protocols, one API and one
// result schema, with the real binary: ping, traceroute and TR-143
// download/upload tests against Duet's own file listener, on a TR-181 and
// a TR-098 CWMP CPE and a USP agent.

// apiDiagnostic is one entry of GET /api/v1/devices/{id}/diagnostics.
type apiDiagnostic struct {
	TaskID       string    `json:"task_id"`
	Kind         string    `json:"kind"`
	Target       string    `json:"target"`
	StartedAt    time.Time `json:"started_at"`
	FinishedAt   time.Time `json:"finished_at"`
	Success      bool      `json:"success"`
	Status       string    `json:"status"`
	ErrorCode    string    `json:"error_code"`
	ErrorMessage string    `json:"error_message"`
	Ping         *struct {
		SuccessCount int      `json:"success_count"`
		FailureCount int      `json:"failure_count"`
		MinRTTMS     *float64 `json:"min_rtt_ms"`
		AvgRTTMS     *float64 `json:"avg_rtt_ms"`
		MaxRTTMS     *float64 `json:"max_rtt_ms"`
	} `json:"ping"`
	Traceroute *struct {
		Hops []struct {
			Address string    `json:"address"`
			RTTsMS  []float64 `json:"rtts_ms"`
		} `json:"hops"`
	} `json:"traceroute"`
	Throughput *struct {
		TestBytes  int64      `json:"test_bytes"`
		DurationMS *float64   `json:"duration_ms"`
		Mbps       *float64   `json:"mbps"`
		BOMTime    *time.Time `json:"bom_time"`
		EOMTime    *time.Time `json:"eom_time"`
	} `json:"throughput"`
}

func startDiagCPE(t *testing.T, acs, serial, model string) *cpe.CPE {
	t.Helper()
	c, err := cpe.New(cpe.Options{ACSURL: acs, Serial: serial, DataModelPath: model, OUI: "00D09E", ProductClass: "DIAG",
		PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond, Bootstrapped: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (d *duet) diagnostics(dev string) []apiDiagnostic {
	d.t.Helper()
	var page struct {
		Diagnostics []apiDiagnostic `json:"diagnostics"`
	}
	d.mustJSON("GET", "/api/v1/devices/"+url.PathEscape(dev)+"/diagnostics", "", &page)
	return page.Diagnostics
}

// TestDiagnosticsBothProtocols: the same diagnostic requests on a TR-181
// CPE, a TR-098 CPE and a USP agent end with results in one schema at
// GET /api/v1/devices/{id}/diagnostics (newest first); the throughput
// tests really move the bytes through the file listener; an unresolvable
// host fails with the device's Error_CannotResolveHostName; the test URL
// is refused without its valid token.
func TestDiagnosticsBothProtocols(t *testing.T) {
	env := fileEnv(t)
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"
	c181 := startDiagCPE(t, acs, "DIAG-C181", cwmpModels[0].path)
	c098 := startDiagCPE(t, acs, "DIAG-C098", cwmpModels[1].path)
	a := startAgentWith(t, env, agent.Config{SerialNumber: "DIAG-U"})
	d.waitDevice(c181.DeviceID())
	d.waitDevice(c098.DeviceID())
	d.waitOnline(a.EndpointID(), true)
	devs := []string{c181.DeviceID(), c098.DeviceID(), a.EndpointID()}

	const dlSize, ulSize = 2_000_000, 700_000
	steps := []struct {
		kind, body string
	}{
		{"ping", `{"kind":"ping","host":"192.0.2.1","count":4}`},
		{"traceroute", `{"kind":"traceroute","host":"acs.example.net","count":2}`},
		{"download", `{"kind":"download","size":` + strconv.Itoa(dlSize) + `}`},
		{"upload", `{"kind":"upload","size":` + strconv.Itoa(ulSize) + `}`},
		{"ping", `{"kind":"ping","host":"no-such-host.invalid"}`},
	}
	var listenerURL string
	for i, s := range steps {
		ids := map[string]string{}
		for _, dev := range devs {
			_, tk := d.postTask(dev, `{"operation":"diagnostic","diagnostic":`+s.body+`}`)
			ids[dev] = tk.ID
		}
		for _, dev := range devs {
			tk := d.finished(ids[dev])
			_, body := d.fullTask(ids[dev])
			failing := i == len(steps)-1
			if !failing && tk.State != "succeeded" {
				t.Fatalf("%s %s: %s", dev, s.kind, body)
			}
			if failing && (tk.State != "failed" || tk.Error == nil || tk.Error.Message != "Error_CannotResolveHostName") {
				t.Fatalf("%s ping of an unresolvable host: %s", dev, body)
			}
			if s.kind == "download" && listenerURL == "" {
				var got struct {
					Request struct {
						Diagnostic struct {
							ListenerURL string `json:"listener_url"`
						} `json:"diagnostic"`
					} `json:"request"`
				}
				_ = json.Unmarshal([]byte(body), &got)
				// The task shows the URL without its token (made when the
				// task is dispatched); the device was sent a signed one.
				if shown := got.Request.Diagnostic.ListenerURL; !strings.HasSuffix(shown, "/diagnostics/download/{token}") {
					t.Fatalf("the task shows the test URL %q, want it without a token", shown)
				}
				listenerURL, _ = c181.Value("Device.IP.Diagnostics.DownloadDiagnostics.DownloadURL")
			}
		}
	}

	// One schema for the three devices, newest first.
	for _, dev := range devs {
		ds := d.diagnostics(dev)
		if len(ds) != len(steps) {
			t.Fatalf("%s: %d diagnostics, want %d: %+v", dev, len(ds), len(steps), ds)
		}
		for i := range ds {
			want := steps[len(steps)-1-i].kind
			if ds[i].Kind != want || (i > 0 && ds[i].FinishedAt.After(ds[i-1].FinishedAt)) {
				t.Fatalf("%s: entry %d is %s at %v, want %s newest first", dev, i, ds[i].Kind, ds[i].FinishedAt, want)
			}
		}
		fail, up, down, tr, ping := ds[0], ds[1], ds[2], ds[3], ds[4]
		if fail.Success || fail.Status != "Error_CannotResolveHostName" || fail.ErrorCode != "command_failed" || fail.Target != "no-such-host.invalid" {
			t.Errorf("%s failed ping: %+v", dev, fail)
		}
		if !ping.Success || ping.Ping == nil || ping.Ping.SuccessCount != 4 || ping.Ping.MinRTTMS == nil || ping.Ping.AvgRTTMS == nil ||
			ping.Ping.MaxRTTMS == nil || *ping.Ping.MinRTTMS > *ping.Ping.MaxRTTMS || ping.StartedAt.After(ping.FinishedAt) {
			t.Errorf("%s ping: %+v %+v", dev, ping, ping.Ping)
		}
		if !tr.Success || tr.Traceroute == nil || len(tr.Traceroute.Hops) == 0 || len(tr.Traceroute.Hops[0].RTTsMS) != 2 {
			t.Errorf("%s traceroute: %+v %+v", dev, tr, tr.Traceroute)
		}
		for _, x := range []struct {
			r    apiDiagnostic
			size int64
		}{{down, dlSize}, {up, ulSize}} {
			th := x.r.Throughput
			if !x.r.Success || th == nil || th.TestBytes != x.size || th.Mbps == nil || *th.Mbps <= 0 || th.BOMTime == nil || th.EOMTime == nil ||
				th.EOMTime.Before(*th.BOMTime) || x.r.Target != "duet file listener" {
				t.Errorf("%s %s: %+v %+v", dev, x.r.Kind, x.r, th)
			}
		}
	}
	// The bytes went through the listener: three downloads, three uploads.
	if v := d.metric(`duet_files_transfers_total{direction="test_download",outcome="complete"}`); v < 3 {
		t.Fatalf("test downloads served: %v", v)
	}
	if v := d.metric(`duet_files_transfer_bytes_total{direction="test_upload"}`); v < 3*ulSize {
		t.Fatalf("test upload bytes received: %v", v)
	}

	// The test URL: HEAD tells the size; without a valid token, refused.
	if !strings.Contains(listenerURL, "/diagnostics/download/") {
		t.Fatalf("listener URL %q", listenerURL)
	}
	do := func(method, u string) *http.Response {
		req, _ := http.NewRequest(method, u, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	if res := do("HEAD", listenerURL); res.StatusCode != 200 || res.Header.Get("Content-Length") != strconv.Itoa(dlSize) {
		t.Fatalf("HEAD of the test download: %d %v", res.StatusCode, res.Header)
	}
	tok := listenerURL[strings.LastIndex(listenerURL, "/")+1:]
	for _, bad := range []string{
		strings.Replace(listenerURL, tok, "A"+tok, 1),
		strings.Replace(listenerURL, tok, tok[:len(tok)-2], 1),
		"http://" + env["DUET_FILE_ADDR"] + "/diagnostics/download/",
		strings.Replace(listenerURL, "/diagnostics/download/", "/diagnostics/upload/", 1),
	} {
		method := "GET"
		if strings.Contains(bad, "/upload/") {
			method = "PUT"
		}
		if res := do(method, bad); res.StatusCode != 403 && res.StatusCode != 404 {
			t.Fatalf("%s %s: %d, want refused", method, bad, res.StatusCode)
		}
	}
	if v := d.metric(`duet_files_refused_total{reason="signature"}`) + d.metric(`duet_files_refused_total{reason="malformed"}`) +
		d.metric(`duet_files_refused_total{reason="wrong_kind"}`); v < 2 {
		t.Fatalf("refusals not counted: %v", v)
	}

	// Validation: refused before anything is queued.
	for _, body := range []string{
		`{"operation":"diagnostic","diagnostic":{"kind":"download","url":"file:///etc/shadow"}}`,
		`{"operation":"diagnostic","diagnostic":{"kind":"ping","host":"http://x/"}}`,
		`{"operation":"diagnostic","diagnostic":{"kind":"nope"}}`,
		`{"operation":"diagnostic"}`,
	} {
		if code, out := d.do("POST", "/api/v1/devices/"+url.PathEscape(a.EndpointID())+"/tasks", body); code != 400 {
			t.Errorf("%s: %d %s", body, code, out)
		}
	}
	if code, out := d.do("POST", "/api/v1/devices/"+url.PathEscape(c098.DeviceID())+"/tasks",
		`{"operation":"diagnostic","diagnostic":{"kind":"nslookup","host":"acs.example.net"}}`); code == 200 || code == 202 {
		t.Errorf("nslookup on a TR-098 device: %d %s", code, out)
	}
	// Paging.
	var page struct {
		Diagnostics []apiDiagnostic `json:"diagnostics"`
		NextCursor  string          `json:"next_cursor"`
	}
	d.mustJSON("GET", "/api/v1/devices/"+url.PathEscape(a.EndpointID())+"/diagnostics?limit=2&kind=ping", "", &page)
	if len(page.Diagnostics) != 2 || page.NextCursor == "" {
		t.Fatalf("page 1: %+v", page)
	}
	first := page.Diagnostics[1].TaskID
	d.mustJSON("GET", "/api/v1/devices/"+url.PathEscape(a.EndpointID())+"/diagnostics?limit=2&kind=ping&cursor="+page.NextCursor, "", &page)
	if len(page.Diagnostics) != 0 || first == "" {
		t.Fatalf("page 2: %+v", page)
	}

}
