package simdiag

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// TestTransfersReallyHappen: the download test fetches the whole body and
// the upload test sends TestFileLength bytes, with ROM <= BOM <= EOM; a
// name under .invalid does not resolve.
func TestTransfersReallyHappen(t *testing.T) {
	var got atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			n, _ := io.Copy(io.Discard, r.Body)
			got.Store(n)
			return
		}
		w.Header().Set("Content-Length", "300000")
		_, _ = w.Write(make([]byte, 300000))
	}))
	defer srv.Close()
	for _, tr098 := range []bool{false, true} {
		dl := Run(t.Context(), "Device.IP.Diagnostics.DownloadDiagnostics()", map[string]string{"DownloadURL": srv.URL + "/x"}, Options{TR098: tr098})
		want := "Complete"
		if tr098 {
			want = "Completed"
		}
		if dl["Status"] != want || dl["TestBytesReceived"] != "300000" {
			t.Fatalf("download (tr098 %v): %v", tr098, dl)
		}
		checkOrder(t, dl)
		ul := Run(t.Context(), "UploadDiagnostics", map[string]string{"UploadURL": srv.URL + "/up", "TestFileLength": "123456"}, Options{TR098: tr098})
		if ul["Status"] != want || got.Load() != 123456 {
			t.Fatalf("upload (tr098 %v): %v, server got %d", tr098, ul, got.Load())
		}
		checkOrder(t, ul)
	}
	if r := Run(t.Context(), "DownloadDiagnostics", map[string]string{"DownloadURL": "http://no-such.invalid/x"}, Options{}); r["Status"] != "Error_CannotResolveHostName" {
		t.Fatalf("unresolvable download host: %v", r)
	}
	if r := Run(t.Context(), "DownloadDiagnostics", map[string]string{"DownloadURL": srv.URL + "/x"}, Options{MaxBytes: 1000}); r["Status"] != "Error_IncorrectSize" {
		t.Fatalf("oversized download: %v", r)
	}
}

func checkOrder(t *testing.T, r map[string]string) {
	t.Helper()
	var ts []time.Time
	for _, k := range []string{"ROMTime", "BOMTime", "EOMTime"} {
		v, err := time.Parse(time.RFC3339Nano, r[k])
		if err != nil {
			t.Fatalf("%s: %q", k, r[k])
		}
		ts = append(ts, v)
	}
	if ts[1].Before(ts[0]) || ts[2].Before(ts[1]) {
		t.Fatalf("ROM/BOM/EOM out of order: %v", r)
	}
}

func TestProbes(t *testing.T) {
	p := Run(t.Context(), "Device.IP.Diagnostics.IPPing()", map[string]string{"Host": "example.net", "NumberOfRepetitions": "4"}, Options{})
	if p["Status"] != "Complete" || p["SuccessCount"] != "4" || p["MinimumResponseTimeDetailed"] == "" {
		t.Fatalf("ping: %v", p)
	}
	if p := Run(t.Context(), "IPPingDiagnostics", map[string]string{"Host": "gone.invalid"}, Options{TR098: true}); p["Status"] != "Error_CannotResolveHostName" {
		t.Fatalf("ping of an unresolvable host: %v", p)
	}
	tr := Run(t.Context(), "TraceRouteDiagnostics", map[string]string{"Host": "192.0.2.77", "NumberOfTries": "2"}, Options{TR098: true})
	n, _ := strconv.Atoi(tr["RouteHopsNumberOfEntries"])
	if tr["Status"] != "Complete" || n != 3 || tr["RouteHops.3.HopHostAddress"] != "192.0.2.77" {
		t.Fatalf("traceroute: %v", tr)
	}
	ns := Run(t.Context(), "NSLookupDiagnostics", map[string]string{"HostName": "acs.example.com"}, Options{})
	if ns["SuccessCount"] != "1" || ns["Result.1.Status"] != "Success" || ns["Result.1.IPAddresses"] == "" {
		t.Fatalf("nslookup: %v", ns)
	}
}
