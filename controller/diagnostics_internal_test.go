package controller

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller/files"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestParseDiagnosticSameSchema: what a TR-098 CPE, a TR-181 CPE and a
// USP agent report for the same test lands in the same fields.
func TestParseDiagnosticSameSchema(t *testing.T) {
	ping098 := map[string]string{"DiagnosticsState": "Complete", "Host": "192.0.2.1", "SuccessCount": "3", "FailureCount": "1",
		"MinimumResponseTime": "1", "AverageResponseTime": "2", "MaximumResponseTime": "4"}
	ping181 := map[string]string{"Status": "Complete", "IPAddressUsed": "192.0.2.10", "SuccessCount": "3", "FailureCount": "1",
		"MinimumResponseTime": "1", "AverageResponseTime": "2", "MaximumResponseTime": "4",
		"MinimumResponseTimeDetailed": "950", "AverageResponseTimeDetailed": "2100", "MaximumResponseTimeDetailed": "3800"}
	a, p1 := ParseDiagnostic(DiagPing, ping098)
	b, p2 := ParseDiagnostic(DiagPing, ping181)
	if len(p1)+len(p2) != 0 {
		t.Fatalf("problems %v %v", p1, p2)
	}
	if a.Ping.SuccessCount != 3 || a.Ping.FailureCount != 1 || *a.Ping.MinRTTMS != 1 || *a.Ping.MaxRTTMS != 4 {
		t.Fatalf("TR-098 ping: %+v", a.Ping)
	}
	// The µs figures win where given.
	if *b.Ping.MinRTTMS != 0.95 || *b.Ping.AvgRTTMS != 2.1 || *b.Ping.MaxRTTMS != 3.8 || b.Ping.IPAddressUsed != "192.0.2.10" {
		t.Fatalf("TR-181 ping: %+v", b.Ping)
	}

	tr098 := map[string]string{"DiagnosticsState": "Complete", "ResponseTime": "12", "RouteHopsNumberOfEntries": "2",
		"RouteHops.1.HopHost": "gw", "RouteHops.1.HopHostAddress": "192.168.1.1", "RouteHops.1.HopErrorCode": "0", "RouteHops.1.HopRTTimes": "1,2,3",
		"RouteHops.2.HopHost": "", "RouteHops.2.HopHostAddress": "192.0.2.1", "RouteHops.2.HopErrorCode": "0", "RouteHops.2.HopRTTimes": "10,11,12"}
	tr181 := map[string]string{"Status": "Complete", "ResponseTime": "12",
		"RouteHops.2.Host": "", "RouteHops.2.HostAddress": "192.0.2.1", "RouteHops.2.ErrorCode": "0", "RouteHops.2.RTTimes": "10, 11, 12",
		"RouteHops.1.Host": "gw", "RouteHops.1.HostAddress": "192.168.1.1", "RouteHops.1.ErrorCode": "0", "RouteHops.1.RTTimes": "1,2,3"}
	a, _ = ParseDiagnostic(DiagTraceroute, tr098)
	b, _ = ParseDiagnostic(DiagTraceroute, tr181)
	if !reflect.DeepEqual(a.Traceroute, b.Traceroute) || len(a.Traceroute.Hops) != 2 || a.Traceroute.Hops[1].Address != "192.0.2.1" ||
		!reflect.DeepEqual(a.Traceroute.Hops[0].RTTsMS, []float64{1, 2, 3}) || *a.Traceroute.ResponseTimeMS != 12 {
		t.Fatalf("traceroute: %+v / %+v", a.Traceroute, b.Traceroute)
	}

	// TR-098 says Completed; the µs of the TR-143 times count.
	dl := map[string]string{"DiagnosticsState": "Completed", "ROMTime": "2026-12-06T01:00:00.000000Z",
		"BOMTime": "2026-12-06T01:00:00.500000Z", "EOMTime": "2026-12-06T01:00:02.500000Z",
		"TestBytesReceived": "10000000", "TotalBytesReceived": "10400000",
		"TCPOpenRequestTime": "2026-12-06T01:00:00.100000Z", "TCPOpenResponseTime": "0001-01-01T00:00:00Z"}
	a, p1 = ParseDiagnostic(DiagDownload, dl)
	th := a.Throughput
	if len(p1) != 0 || th.TestBytes != 10_000_000 || *th.TotalBytes != 10_400_000 || *th.DurationMS != 2000 || math.Abs(*th.Mbps-40) > 1e-9 ||
		th.TCPOpenResponseTime != nil || !th.BOMTime.Equal(time.Date(2026, 12, 6, 1, 0, 0, 500_000_000, time.UTC)) {
		t.Fatalf("download: %+v", th)
	}
	if !diagnosticSucceeded(diagnosticState(dl)) {
		t.Fatal("Completed is a success")
	}
	ul, _ := ParseDiagnostic(DiagUpload, map[string]string{"Status": "Complete", "TestFileLength": "5000", "TotalBytesSent": "5300",
		"BOMTime": "2026-12-06T01:00:00Z", "EOMTime": "2026-12-06T01:00:01Z"})
	if ul.Throughput.TestBytes != 5000 || *ul.Throughput.Mbps != 0.04 {
		t.Fatalf("upload: %+v", ul.Throughput)
	}

	ns, _ := ParseDiagnostic(DiagNSLookup, map[string]string{"Status": "Complete", "SuccessCount": "1",
		"Result.1.Status": "Success", "Result.1.IPAddresses": "192.0.2.5, 2001:db8::5", "Result.1.ResponseTime": "3"})
	if ns.NSLookup.SuccessCount != 1 || len(ns.NSLookup.Answers) != 1 || !reflect.DeepEqual(ns.NSLookup.Answers[0].IPAddresses, []string{"192.0.2.5", "2001:db8::5"}) {
		t.Fatalf("nslookup: %+v", ns.NSLookup)
	}

	// Garbage is left out and named, never a panic or a negative figure.
	bad, problems := ParseDiagnostic(DiagDownload, map[string]string{"TestBytesReceived": "-5", "BOMTime": "yesterday", "EOMTime": "2026-12-06T01:00:00Z"})
	if len(problems) != 2 || bad.Throughput.TestBytes != 0 || bad.Throughput.Mbps != nil {
		t.Fatalf("garbage: %+v %v", bad.Throughput, problems)
	}
}

// TestDiagnosticOutcome: a state other than Complete fails the task with
// the device's word; a timeout or a fault stays as it was.
func TestDiagnosticOutcome(t *testing.T) {
	res := func(args map[string]string) []byte {
		return mustMarshal(t, &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{Async: true, OutputArgs: args}}})
	}
	o := diagnosticOutcome(store.TaskOutcome{State: store.TaskSucceeded, Result: res(map[string]string{"DiagnosticsState": "Error_CannotResolveHostName"})})
	if o.State != store.TaskFailed || o.ErrorCode != "command_failed" || o.ErrorMessage != "Error_CannotResolveHostName" {
		t.Fatalf("CWMP error state: %+v", o)
	}
	o = diagnosticOutcome(store.TaskOutcome{State: store.TaskSucceeded, Result: res(map[string]string{"Status": "Complete"})})
	if o.State != store.TaskSucceeded {
		t.Fatalf("USP complete: %+v", o)
	}
	o = diagnosticOutcome(store.TaskOutcome{State: store.TaskFailed, ErrorCode: "timeout"})
	if o.State != store.TaskFailed || o.ErrorCode != "timeout" {
		t.Fatalf("timeout: %+v", o)
	}
}

// TestDiagnosticCommands: the command and inputs per kind and root, and
// what is refused.
func TestDiagnosticCommands(t *testing.T) {
	cwmp098 := devicemodel.Device{ID: "c", Protocol: devicemodel.ProtocolCWMP, DataModel: "InternetGatewayDevice."}
	uspDev := devicemodel.Device{ID: "u", Protocol: devicemodel.ProtocolUSP, DataModel: "Device."}
	build := func(d devicemodel.Device, dr DiagnosticRequest) (*duetv1.OperateRequest, error) {
		cmd, err := buildCommand(&TaskRequest{Operation: "diagnostic", Diagnostic: &dr}, d, "id1")
		return cmd.GetOperate(), err
	}
	op, err := build(cwmp098, DiagnosticRequest{Kind: "ping", Host: "192.0.2.1", Count: 5})
	if err != nil || op.GetCommand() != "InternetGatewayDevice.IPPingDiagnostics()" || op.GetInputArgs()["NumberOfRepetitions"] != "5" ||
		op.GetInputArgs()["Host"] != "192.0.2.1" || op.GetInputArgs()["ProtocolVersion"] != "" {
		t.Fatalf("TR-098 ping: %v %v", op, err)
	}
	op, err = build(uspDev, DiagnosticRequest{Kind: "traceroute", Host: "example.com", MaxHops: 12})
	if err != nil || op.GetCommand() != "Device.IP.Diagnostics.TraceRoute()" || op.GetInputArgs()["MaxHopCount"] != "12" || op.GetInputArgs()["ProtocolVersion"] != "Any" {
		t.Fatalf("USP traceroute: %v %v", op, err)
	}
	op, err = build(uspDev, DiagnosticRequest{Kind: "upload", ListenerURL: "http://duet:7548/diagnostics/upload/tok", Size: 2048})
	if err != nil || op.GetCommand() != "Device.IP.Diagnostics.UploadDiagnostics()" || op.GetInputArgs()["UploadURL"] != "http://duet:7548/diagnostics/upload/tok" ||
		op.GetInputArgs()["TestFileLength"] != "2048" {
		t.Fatalf("USP upload: %v %v", op, err)
	}
	op, err = build(uspDev, DiagnosticRequest{Kind: "nslookup", Host: "acs.example.com", DNSServer: "192.0.2.53"})
	if err != nil || op.GetCommand() != "Device.DNS.Diagnostics.NSLookupDiagnostics()" || op.GetInputArgs()["HostName"] != "acs.example.com" {
		t.Fatalf("nslookup: %v %v", op, err)
	}
	for _, c := range []struct {
		d    devicemodel.Device
		dr   DiagnosticRequest
		code devicemodel.Code
	}{
		{cwmp098, DiagnosticRequest{Kind: "nslookup", Host: "x.example"}, devicemodel.CodeUnsupported},
		{uspDev, DiagnosticRequest{Kind: "speed"}, devicemodel.CodeInvalidArgument},
		{uspDev, DiagnosticRequest{Kind: "ping"}, devicemodel.CodeInvalidArgument},
		{uspDev, DiagnosticRequest{Kind: "ping", Host: "http://x/"}, devicemodel.CodeInvalidArgument},
		{uspDev, DiagnosticRequest{Kind: "ping", Host: "a b"}, devicemodel.CodeInvalidArgument},
		{uspDev, DiagnosticRequest{Kind: "download", URL: "file:///etc/passwd"}, devicemodel.CodeInvalidArgument},
		{uspDev, DiagnosticRequest{Kind: "download", URL: "tftp://x/y"}, devicemodel.CodeInvalidArgument},
		{uspDev, DiagnosticRequest{Kind: "download", Size: 1 << 40}, devicemodel.CodeInvalidArgument},
		{uspDev, DiagnosticRequest{Kind: "traceroute", Host: "x.example", Count: 4}, devicemodel.CodeInvalidArgument},
		{uspDev, DiagnosticRequest{Kind: "udp_echo", Host: "x.example"}, devicemodel.CodeInvalidArgument},
		{uspDev, DiagnosticRequest{Kind: "ping", Host: "x.example", ProtocolVersion: "IPv5"}, devicemodel.CodeInvalidArgument},
	} {
		if _, err := build(c.d, c.dr); devicemodel.ErrorCode(err) != c.code {
			t.Errorf("%+v: %v, want %s", c.dr, err, c.code)
		}
	}
	if _, err := buildCommand(&TaskRequest{Operation: "diagnostic"}, uspDev, "id"); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Fatalf("no diagnostic object: %v", err)
	}
}

// TestDiagnosticsCompleteWaitsForItsObject: the CWMP adapter reads every
// diagnostics object after "8 DIAGNOSTICS COMPLETE"; a task whose object
// is still Requested is not the one that completed.
func TestDiagnosticsCompleteWaitsForItsObject(t *testing.T) {
	tk := store.Task{ID: "d", AwaitKey: "Device.IP.Diagnostics.TraceRoute.", SubState: store.SubStateAwaitingCompletion,
		Result: mustMarshal(t, &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{Async: true, RequestPath: "Device.IP.Diagnostics.TraceRoute."}}})}
	ev := func(state string) Completion {
		return Completion{DeviceID: "dev", Time: time.Now(), Event: &duetv1.Event{Kind: &duetv1.Event_DiagnosticsComplete{DiagnosticsComplete: &duetv1.DiagnosticsComplete{
			Params: []*duetv1.Parameter{{Path: "Device.IP.Diagnostics.IPPing.DiagnosticsState", Value: "Complete"},
				{Path: "Device.IP.Diagnostics.TraceRoute.DiagnosticsState", Value: state}}}}}}
	}
	if _, _, match := completionMatcher(ev("Requested")); match(tk) {
		t.Fatal("a traceroute still running was completed by a ping's 8 DIAGNOSTICS COMPLETE")
	}
	if _, _, match := completionMatcher(ev("Complete")); !match(tk) {
		t.Fatal("the traceroute's own completion did not match")
	}
}

// TestDiagnosticRecord: the stored row hides the listener's token and
// carries the parsed figures.
func TestDiagnosticRecord(t *testing.T) {
	req, _ := json.Marshal(TaskRequest{Operation: "diagnostic", Diagnostic: &DiagnosticRequest{Kind: "download", ListenerURL: "http://duet:7548/diagnostics/download/SECRET"}})
	now := time.Now().UTC()
	tk := store.Task{ID: "t1", DeviceID: "dev", Operation: "diagnostic", Request: req, State: store.TaskSucceeded, CreatedAt: now, FinishedAt: &now,
		Result: mustMarshal(t, &duetv1.CommandResult{Result: &duetv1.CommandResult_Operate{Operate: &duetv1.OperateResult{Async: true,
			OutputArgs: map[string]string{"Status": "Complete", "TestBytesReceived": "100", "BOMTime": "2026-12-06T01:00:00Z", "EOMTime": "2026-12-06T01:00:01Z"}}}})}
	d, problems, err := diagnosticRecord(tk)
	if err != nil || len(problems) != 0 || !d.Success || d.Status != "Complete" || strings.Contains(d.Target, "SECRET") || !strings.Contains(string(d.Result), `"test_bytes":100`) {
		t.Fatalf("%+v %v %v", d, problems, err)
	}
}

// FuzzParseDiagnostic: whatever a device reports, parsing never panics
// and every figure it keeps is finite and not negative.
func FuzzParseDiagnostic(f *testing.F) {
	f.Add("download", "TestBytesReceived=100\nBOMTime=2026-12-06T01:00:00Z\nEOMTime=2026-12-06T01:00:01.5Z")
	f.Add("traceroute", "RouteHops.1.RTTimes=1,2,x\nRouteHops.99999999999.Host=a\nRouteHops.2.HopRTTimes=NaN")
	f.Add("ping", "AverageResponseTimeDetailed=1e400\nSuccessCount=-1")
	f.Add("nslookup", "Result.1.IPAddresses=,,\nResult.1.ResponseTime=Inf")
	f.Fuzz(func(t *testing.T, kind, lines string) {
		raw := map[string]string{}
		for _, l := range strings.Split(lines, "\n") {
			k, v, _ := strings.Cut(l, "=")
			raw[k] = v
		}
		res, _ := ParseDiagnostic(kind, raw)
		b, err := json.Marshal(res)
		if err != nil {
			t.Fatalf("result does not marshal (a NaN or Inf kept?): %v", err)
		}
		var back DiagnosticResult
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if th := res.Throughput; th != nil && (th.TestBytes < 0 || th.Mbps != nil && *th.Mbps < 0 || th.DurationMS != nil && *th.DurationMS < 0) {
			t.Fatalf("negative throughput figures: %+v", th)
		}
	})
}

// TestDiagnosticInBatch: a batch's task is checked like a device's, for
// either protocol, before any device's URL exists.
func TestDiagnosticInBatch(t *testing.T) {
	if err := checkBulkTask(&TaskRequest{Operation: "diagnostic", Diagnostic: &DiagnosticRequest{Kind: "download"}}); err != nil {
		t.Fatalf("download on the listener: %v", err)
	}
	if err := checkBulkTask(&TaskRequest{Operation: "diagnostic", Diagnostic: &DiagnosticRequest{Kind: "ping", Host: "ftp://x"}}); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Fatalf("bad host: %v", err)
	}
}

// TestDiagnosticTestURLSignedAtDispatch: a throughput test on the file
// listener keeps the URL with files.TokenPlaceholder in its request and
// command (so reading tasks gives no working URL, and a test queued for
// an offline device longer than the URL's life does not get an expired
// one); the command sent to the device carries a freshly signed URL.
func TestDiagnosticTestURLSignedAtDispatch(t *testing.T) {
	signer, err := files.NewSigner([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	q := &TaskQueue{o: TaskQueueOptions{FileURLs: &files.URLs{Signer: signer, Base: "http://duet:7548", TTL: time.Hour}}}
	for _, kind := range []string{DiagDownload, DiagUpload} {
		r := TaskRequest{Operation: "diagnostic", Diagnostic: &DiagnosticRequest{Kind: kind, Size: 1000}}
		if err := q.resolveDiagnostic(&r, devicemodel.Device{ID: "dev"}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(r.Diagnostic.ListenerURL, files.TokenPlaceholder) {
			t.Fatalf("%s: the task keeps a signed URL: %s", kind, r.Diagnostic.ListenerURL)
		}
		cmd := &duetv1.Command{}
		if err := diagnosticCommand(cmd, &r, "Device.", "key"); err != nil {
			t.Fatal(err)
		}
		req, _ := json.Marshal(r)
		if err := q.signTransfer(t.Context(), store.Task{ID: "t", DeviceID: "dev", Operation: "diagnostic", Request: req}, cmd); err != nil {
			t.Fatal(err)
		}
		args := cmd.GetOperate().InputArgs
		sent := args["DownloadURL"] + args["UploadURL"]
		if strings.Contains(sent, files.TokenPlaceholder) || !strings.HasPrefix(sent, "http://duet:7548/diagnostics/"+kind+"/") {
			t.Fatalf("%s: the device is sent %q", kind, sent)
		}
	}
}
