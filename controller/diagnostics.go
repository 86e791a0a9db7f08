package controller

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/controller/files"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// On-device diagnostics (issue 14 §6), one operation over both protocols:
// "diagnostic" with a kind (ping, traceroute, download, upload, nslookup,
// udp_echo). The task runs the data model's diagnostic:
//
//   - USP: the async command (TR-181 Device.IP.Diagnostics.IPPing(),
//     TraceRoute(), DownloadDiagnostics(), UploadDiagnostics(),
//     UDPEchoDiagnostics(), Device.DNS.Diagnostics.NSLookupDiagnostics()),
//     ending on its OperationComplete with the output arguments;
//   - CWMP: the inputs and DiagnosticsState=Requested in one
//     SetParameterValues (TR-069 Annex A "DiagnosticsState", TR-143),
//     ending on the "8 DIAGNOSTICS COMPLETE" Inform, after which the CWMP
//     adapter reads the object; on TR-181 the same objects, on TR-098
//     InternetGatewayDevice.IPPingDiagnostics., TraceRouteDiagnostics.,
//     DownloadDiagnostics., UploadDiagnostics. (TR-098 has no NSLookup or
//     UDP echo diagnostic; those kinds are refused for it).
//
// A state other than Complete (or TR-098's Completed) fails the task with
// the device's word (Error_CannotResolveHostName, …). Each diagnostic
// task that ends is stored in one schema (DiagnosticResult) and listed
// at GET /api/v1/devices/{id}/diagnostics.

var metricDiagnostics = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_diagnostics_total",
	Help: "On-device diagnostics that ended, by kind and outcome (succeeded, failed, unparsable: the device's figures did not parse).",
}, []string{"kind", "outcome"})

// DiagnosticRequest is the "diagnostic" argument of a diagnostic task.
type DiagnosticRequest struct {
	// Kind is ping, traceroute, download, upload, nslookup or udp_echo.
	Kind string `json:"kind"`
	// Host is what ping, traceroute and udp_echo probe, or the name
	// nslookup looks up.
	Host string `json:"host,omitempty"`
	// URL is where download fetches from or upload sends to (http, https
	// or ftp); empty: Duet's file listener serves the test.
	URL string `json:"url,omitempty"`
	// Count is NumberOfRepetitions (ping, nslookup, udp_echo) or
	// NumberOfTries (traceroute, 1–3).
	Count uint32 `json:"count,omitempty"`
	// TimeoutMS is each probe's Timeout in milliseconds.
	TimeoutMS uint32 `json:"timeout_ms,omitempty"`
	// Size is DataBlockSize (ping, traceroute, udp_echo: 1–65535), or the
	// bytes of a throughput test on the file listener (download: the
	// test file's length; upload: TestFileLength).
	Size uint64 `json:"size,omitempty"`
	// Interface is the path of the IP interface to test from
	// ("Device.IP.Interface.1"); empty: the device's routing decides.
	Interface string `json:"interface,omitempty"`
	// DSCP marks the test traffic (0–63).
	DSCP *uint32 `json:"dscp,omitempty"`
	// ProtocolVersion is Any, IPv4 or IPv6 (TR-181 only).
	ProtocolVersion string `json:"protocol_version,omitempty"`
	// MaxHops is traceroute's MaxHopCount (1–64).
	MaxHops uint32 `json:"max_hops,omitempty"`
	// Port is udp_echo's UDP port.
	Port uint32 `json:"port,omitempty"`
	// DNSServer is the server nslookup asks (empty: the device's).
	DNSServer string `json:"dns_server,omitempty"`
	// ListenerURL is the file listener URL Duet made for a throughput
	// test without URL (set when the task is created; a retry makes a new
	// one).
	ListenerURL string `json:"listener_url,omitempty"`
}

// Diagnostic kinds.
const (
	DiagPing       = "ping"
	DiagTraceroute = "traceroute"
	DiagDownload   = "download"
	DiagUpload     = "upload"
	DiagNSLookup   = "nslookup"
	DiagUDPEcho    = "udp_echo"
)

// diagObjects names each kind's diagnostic under a root: TR-181 (Device.,
// both protocols) and TR-098 (InternetGatewayDevice., CWMP).
var diagObjects = map[string][2]string{ // kind -> {TR-181, TR-098}
	DiagPing:       {"Device.IP.Diagnostics.IPPing", "InternetGatewayDevice.IPPingDiagnostics"},
	DiagTraceroute: {"Device.IP.Diagnostics.TraceRoute", "InternetGatewayDevice.TraceRouteDiagnostics"},
	DiagDownload:   {"Device.IP.Diagnostics.DownloadDiagnostics", "InternetGatewayDevice.DownloadDiagnostics"},
	DiagUpload:     {"Device.IP.Diagnostics.UploadDiagnostics", "InternetGatewayDevice.UploadDiagnostics"},
	DiagNSLookup:   {"Device.DNS.Diagnostics.NSLookupDiagnostics", ""},
	DiagUDPEcho:    {"Device.IP.Diagnostics.UDPEchoDiagnostics", ""},
}

// Defaults of a throughput test on the file listener.
const defaultTestSize = 10 << 20

// diagCommand is the command a kind runs on a device whose root is root.
func diagCommand(kind, root string) (string, error) {
	objs, ok := diagObjects[kind]
	if !ok {
		return "", invalid("diagnostic.kind: %q is not one of ping, traceroute, download, upload, nslookup, udp_echo", kind)
	}
	obj := objs[0]
	if root == "InternetGatewayDevice." {
		obj = objs[1]
	}
	if obj == "" {
		return "", devicemodel.Errorf(devicemodel.CodeUnsupported, "diagnostic.kind: %s has no diagnostic in the TR-098 data model (InternetGatewayDevice.)", kind)
	}
	return obj + "()", nil
}

// checkHost accepts a host name or an IP literal: what a device resolves
// or probes, never a URL or a path.
func checkHost(field, h string) error {
	if h == "" {
		return invalid("%s is required", field)
	}
	if len(h) > 253 {
		return invalid("%s: longer than 253 characters", field)
	}
	if net.ParseIP(h) != nil {
		return nil
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 {
			return invalid("%s: %q is not a host name or IP address", field, h)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return invalid("%s: %q is not a host name or IP address", field, h)
			}
		}
	}
	return nil
}

// checkDiagnostic validates a diagnostic request's shape.
func checkDiagnostic(dr *DiagnosticRequest) error {
	if dr == nil {
		return invalid("diagnostic needs the diagnostic object (kind and its arguments)")
	}
	if _, ok := diagObjects[dr.Kind]; !ok {
		return invalid("diagnostic.kind: %q is not one of ping, traceroute, download, upload, nslookup, udp_echo", dr.Kind)
	}
	switch dr.Kind {
	case DiagPing, DiagTraceroute, DiagNSLookup, DiagUDPEcho:
		if err := checkHost("diagnostic.host", dr.Host); err != nil {
			return err
		}
		if dr.URL != "" {
			return invalid("diagnostic.url: %s takes a host, not a URL", dr.Kind)
		}
	case DiagDownload, DiagUpload:
		if dr.Host != "" {
			return invalid("diagnostic.host: %s takes a url (or none, for Duet's file listener)", dr.Kind)
		}
		if dr.URL != "" {
			if err := checkTransferURL("diagnostic.url", dr.URL); err != nil {
				return err
			}
		}
		if dr.Size > files.MaxTestSize {
			return invalid("diagnostic.size: %d bytes is more than the %d a throughput test may move", dr.Size, int64(files.MaxTestSize))
		}
	}
	switch {
	case dr.Kind == DiagTraceroute && dr.Count > 3:
		return invalid("diagnostic.count: traceroute sends 1 to 3 tries per hop (NumberOfTries)")
	case dr.Kind != DiagDownload && dr.Kind != DiagUpload && dr.Size > 65535:
		return invalid("diagnostic.size: DataBlockSize is 1 to 65535 bytes")
	case dr.MaxHops > 64:
		return invalid("diagnostic.max_hops: 1 to 64")
	case dr.DSCP != nil && *dr.DSCP > 63:
		return invalid("diagnostic.dscp: 0 to 63")
	case dr.Port > 65535:
		return invalid("diagnostic.port: 1 to 65535")
	case dr.Kind == DiagUDPEcho && dr.Port == 0:
		return invalid("diagnostic.port is required for udp_echo")
	}
	switch dr.ProtocolVersion {
	case "", "Any", "IPv4", "IPv6":
	default:
		return invalid("diagnostic.protocol_version: %q is not Any, IPv4 or IPv6", dr.ProtocolVersion)
	}
	if dr.Interface != "" {
		if err := CheckPath("diagnostic.interface", strings.TrimSuffix(dr.Interface, ".")+".", false, devicemodel.PathObject); err != nil {
			return err
		}
	}
	if dr.DNSServer != "" {
		if err := checkHost("diagnostic.dns_server", dr.DNSServer); err != nil {
			return err
		}
	}
	return nil
}

// resolveDiagnostic makes the file listener URL of a throughput test
// that names none.
func (q *TaskQueue) resolveDiagnostic(r *TaskRequest, d devicemodel.Device) error {
	if r.Operation != "diagnostic" {
		return nil
	}
	dr := r.Diagnostic
	if err := checkDiagnostic(dr); err != nil {
		return err
	}
	dr.ListenerURL = ""
	if (dr.Kind != DiagDownload && dr.Kind != DiagUpload) || dr.URL != "" {
		return nil
	}
	if q.o.FileURLs == nil {
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "a %s test without url needs the file listener, which this controller does not run", dr.Kind)
	}
	// The token is made when the task is dispatched (signDiagnostic), as
	// for file transfers (firmware.go): the task keeps the placeholder.
	if dr.Kind == DiagDownload {
		dr.ListenerURL = q.o.FileURLs.TestDownloadShape()
	} else {
		dr.ListenerURL = q.o.FileURLs.TestUploadShape()
	}
	return nil
}

// signDiagnostic puts a freshly signed file listener URL into the command
// of a throughput test being dispatched, in place of the placeholder the
// task keeps: nobody reading tasks gets a working URL, and the token's
// life starts when the device is told.
func (q *TaskQueue) signDiagnostic(t store.Task, cmd *duetv1.Command) error {
	args := transferArgs(cmd)
	name := "DownloadURL"
	if !strings.Contains(args[name], files.TokenPlaceholder) {
		name = "UploadURL"
	}
	if !strings.Contains(args[name], files.TokenPlaceholder) {
		return nil // a URL of the operator's, or stored with its token
	}
	if q.o.FileURLs == nil {
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "this controller does not run the file listener, so the test URL was not signed before the command ran")
	}
	var r TaskRequest
	if err := json.Unmarshal(t.Request, &r); err != nil || r.Diagnostic == nil {
		return devicemodel.Errorf(devicemodel.CodeInternal, "stored diagnostic request is undecodable: %v", err)
	}
	size := int64(r.Diagnostic.Size)
	if size == 0 {
		size = defaultTestSize
	}
	if name == "DownloadURL" {
		args[name] = q.o.FileURLs.TestDownload(t.DeviceID, size)
	} else {
		args[name] = q.o.FileURLs.TestUpload(t.DeviceID, size)
	}
	return nil
}

// diagnosticCommand sets cmd's operation for a diagnostic (buildCommand):
// the data model's command with its input arguments, which the CWMP
// adapter turns into the SetParameterValues of the object.
func diagnosticCommand(cmd *duetv1.Command, r *TaskRequest, root, key string) error {
	dr := r.Diagnostic
	if err := checkDiagnostic(dr); err != nil {
		return err
	}
	command, err := diagCommand(dr.Kind, root)
	if err != nil {
		return err
	}
	tr181 := root != "InternetGatewayDevice."
	args := map[string]string{}
	num := func(name string, v uint64, def uint64) {
		if v == 0 {
			v = def
		}
		if v != 0 {
			args[name] = strconv.FormatUint(v, 10)
		}
	}
	if dr.Interface != "" {
		args["Interface"] = strings.TrimSuffix(dr.Interface, ".")
	}
	if dr.DSCP != nil {
		args["DSCP"] = strconv.FormatUint(uint64(*dr.DSCP), 10)
	}
	// ProtocolVersion is mandatory in the TR-181 commands that have it
	// (IPPing(), TraceRoute(), UDPEchoDiagnostics()); TR-098 lacks it.
	pv := func() {
		if tr181 {
			args["ProtocolVersion"] = cmp.Or(dr.ProtocolVersion, "Any")
		}
	}
	testURL := cmp.Or(dr.URL, dr.ListenerURL)
	if testURL == "" {
		testURL = "http://unresolved.invalid/" // a batch's validation: each task makes its own
	}
	switch dr.Kind {
	case DiagPing:
		args["Host"] = dr.Host
		num("NumberOfRepetitions", uint64(dr.Count), 3)
		num("Timeout", uint64(dr.TimeoutMS), 1000)
		num("DataBlockSize", dr.Size, 64)
		pv()
	case DiagTraceroute:
		args["Host"] = dr.Host
		num("NumberOfTries", uint64(dr.Count), 3)
		num("Timeout", uint64(dr.TimeoutMS), 5000)
		num("DataBlockSize", dr.Size, 38)
		num("MaxHopCount", uint64(dr.MaxHops), 30)
		pv()
	case DiagUDPEcho:
		args["Host"] = dr.Host
		num("Port", uint64(dr.Port), 0)
		num("NumberOfRepetitions", uint64(dr.Count), 3)
		num("Timeout", uint64(dr.TimeoutMS), 1000)
		num("DataBlockSize", dr.Size, 24)
		pv()
	case DiagNSLookup:
		args["HostName"] = dr.Host
		if dr.DNSServer != "" {
			args["DNSServer"] = dr.DNSServer
		}
		num("NumberOfRepetitions", uint64(dr.Count), 1)
		num("Timeout", uint64(dr.TimeoutMS), 5000)
	case DiagDownload:
		args["DownloadURL"] = testURL
	case DiagUpload:
		args["UploadURL"] = testURL
		num("TestFileLength", dr.Size, defaultTestSize)
	}
	if tr181 && (dr.Kind == DiagDownload || dr.Kind == DiagUpload) && dr.ProtocolVersion != "" {
		args["ProtocolVersion"] = dr.ProtocolVersion
	}
	cmd.Op = &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: command, CommandKey: key, InputArgs: args}}
	return nil
}

// ---- Results ----

// DiagnosticResult is the per-kind part of a diagnostic's result, the
// same for both protocols. Times are milliseconds; the device's own
// figures are kept in Raw.
type DiagnosticResult struct {
	Ping       *EchoResult       `json:"ping,omitempty"`
	UDPEcho    *EchoResult       `json:"udp_echo,omitempty"`
	Traceroute *TracerouteResult `json:"traceroute,omitempty"`
	Throughput *ThroughputResult `json:"throughput,omitempty"`
	NSLookup   *NSLookupResult   `json:"nslookup,omitempty"`
	// Raw is what the device reported, by name relative to the
	// diagnostic (its output arguments, or the object's parameters).
	Raw map[string]string `json:"raw,omitempty"`
}

// EchoResult: ping and UDP echo (TR-181 IPPing, UDPEchoDiagnostics).
type EchoResult struct {
	IPAddressUsed string `json:"ip_address_used,omitempty"`
	SuccessCount  uint64 `json:"success_count"`
	FailureCount  uint64 `json:"failure_count"`
	// Round-trip times in ms, from the *Detailed (µs) figures when the
	// device gives them.
	MinRTTMS *float64 `json:"min_rtt_ms,omitempty"`
	AvgRTTMS *float64 `json:"avg_rtt_ms,omitempty"`
	MaxRTTMS *float64 `json:"max_rtt_ms,omitempty"`
}

// TracerouteResult: TR-181 TraceRoute, TR-098 TraceRouteDiagnostics.
type TracerouteResult struct {
	IPAddressUsed  string   `json:"ip_address_used,omitempty"`
	ResponseTimeMS *float64 `json:"response_time_ms,omitempty"`
	Hops           []Hop    `json:"hops"`
}

// Hop is one RouteHops entry.
type Hop struct {
	Host      string    `json:"host,omitempty"`
	Address   string    `json:"address,omitempty"`
	ErrorCode uint64    `json:"error_code,omitempty"`
	RTTsMS    []float64 `json:"rtts_ms"`
}

// ThroughputResult: TR-143 DownloadDiagnostics / UploadDiagnostics.
type ThroughputResult struct {
	// TestBytes are the test's payload bytes between BOM and EOM
	// (TestBytesReceived, TestBytesSent, else TestFileLength).
	TestBytes int64 `json:"test_bytes"`
	// TotalBytes is the interface's count over the same time
	// (TotalBytesReceived, TotalBytesSent), when given.
	TotalBytes *int64 `json:"total_bytes,omitempty"`
	// DurationMS is EOMTime - BOMTime.
	DurationMS *float64 `json:"duration_ms,omitempty"`
	// Mbps is TestBytes·8 over the duration, in Mbit/s.
	Mbps                *float64   `json:"mbps,omitempty"`
	ROMTime             *time.Time `json:"rom_time,omitempty"`
	BOMTime             *time.Time `json:"bom_time,omitempty"`
	EOMTime             *time.Time `json:"eom_time,omitempty"`
	TCPOpenRequestTime  *time.Time `json:"tcp_open_request_time,omitempty"`
	TCPOpenResponseTime *time.Time `json:"tcp_open_response_time,omitempty"`
}

// NSLookupResult: TR-181 NSLookupDiagnostics.
type NSLookupResult struct {
	SuccessCount uint64           `json:"success_count"`
	Answers      []NSLookupAnswer `json:"answers"`
}

// NSLookupAnswer is one Result entry.
type NSLookupAnswer struct {
	Status           string   `json:"status,omitempty"`
	AnswerType       string   `json:"answer_type,omitempty"`
	HostNameReturned string   `json:"host_name_returned,omitempty"`
	IPAddresses      []string `json:"ip_addresses,omitempty"`
	DNSServerIP      string   `json:"dns_server_ip,omitempty"`
	ResponseTimeMS   *float64 `json:"response_time_ms,omitempty"`
}

// diagnosticState is the device's state word: DiagnosticsState (CWMP) or
// Status (USP output argument).
func diagnosticState(raw map[string]string) string {
	if s, ok := raw["DiagnosticsState"]; ok {
		return strings.TrimSpace(s)
	}
	return strings.TrimSpace(raw["Status"])
}

// diagnosticSucceeded: Complete, or Completed, which TR-098 Download and
// Upload diagnostics report (TR-181 2.13 deprecated it as a typo).
func diagnosticSucceeded(state string) bool {
	return state == "Complete" || state == "Completed"
}

// ParseDiagnostic turns what the device reported for a diagnostic of kind
// (output arguments or parameters, named relative to the diagnostic)
// into the common schema. Figures that do not parse are left out and
// named in the returned problems; nothing panics on bad input.
func ParseDiagnostic(kind string, raw map[string]string) (DiagnosticResult, []string) {
	p := &figures{raw: raw}
	res := DiagnosticResult{Raw: raw}
	switch kind {
	case DiagPing, DiagUDPEcho:
		e := &EchoResult{IPAddressUsed: raw["IPAddressUsed"], SuccessCount: p.uint("SuccessCount"), FailureCount: p.uint("FailureCount")}
		e.MinRTTMS = p.rtt("MinimumResponseTime")
		e.AvgRTTMS = p.rtt("AverageResponseTime")
		e.MaxRTTMS = p.rtt("MaximumResponseTime")
		if kind == DiagPing {
			res.Ping = e
		} else {
			res.UDPEcho = e
		}
	case DiagTraceroute:
		tr := &TracerouteResult{IPAddressUsed: raw["IPAddressUsed"], ResponseTimeMS: p.ms("ResponseTime"), Hops: []Hop{}}
		for _, i := range p.instances("RouteHops.") {
			// TR-181 names, or TR-098's Hop-prefixed ones.
			pre := "RouteHops." + strconv.Itoa(i) + "."
			name := func(n string) string {
				if _, ok := raw[pre+n]; ok {
					return pre + n
				}
				return pre + "Hop" + n
			}
			h := Hop{Host: raw[name("Host")], Address: raw[name("HostAddress")], ErrorCode: p.uint(name("ErrorCode")), RTTsMS: []float64{}}
			for _, s := range strings.Split(raw[name("RTTimes")], ",") {
				if s = strings.TrimSpace(s); s == "" {
					continue
				}
				if v, ok := p.number(name("RTTimes"), s); ok {
					h.RTTsMS = append(h.RTTsMS, v)
				}
			}
			tr.Hops = append(tr.Hops, h)
		}
		res.Traceroute = tr
	case DiagDownload, DiagUpload:
		res.Throughput = p.throughput(kind)
	case DiagNSLookup:
		ns := &NSLookupResult{SuccessCount: p.uint("SuccessCount"), Answers: []NSLookupAnswer{}}
		for _, i := range p.instances("Result.") {
			pre := "Result." + strconv.Itoa(i) + "."
			a := NSLookupAnswer{Status: raw[pre+"Status"], AnswerType: raw[pre+"AnswerType"], HostNameReturned: raw[pre+"HostNameReturned"],
				DNSServerIP: raw[pre+"DNSServerIP"], ResponseTimeMS: p.ms(pre + "ResponseTime")}
			for _, ip := range strings.Split(raw[pre+"IPAddresses"], ",") {
				if ip = strings.TrimSpace(ip); ip != "" {
					a.IPAddresses = append(a.IPAddresses, ip)
				}
			}
			ns.Answers = append(ns.Answers, a)
		}
		res.NSLookup = ns
	}
	return res, p.problems
}

// figures reads numbers and times out of a device's strings.
type figures struct {
	raw      map[string]string
	problems []string
}

func (p *figures) bad(name, v string) {
	if len(p.problems) < 20 {
		p.problems = append(p.problems, fmt.Sprintf("%s=%q", name, truncate(v, 64)))
	}
}

// number parses a non-negative, finite decimal.
func (p *figures) number(name, s string) (float64, bool) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		p.bad(name, s)
		return 0, false
	}
	return v, true
}

func (p *figures) uint(name string) uint64 {
	s, ok := p.raw[name]
	if !ok || strings.TrimSpace(s) == "" {
		return 0
	}
	v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		p.bad(name, s)
	}
	return v
}

// ms reads a figure in milliseconds.
func (p *figures) ms(name string) *float64 {
	s, ok := p.raw[name]
	if !ok || strings.TrimSpace(s) == "" {
		return nil
	}
	v, ok := p.number(name, s)
	if !ok {
		return nil
	}
	return &v
}

// rtt reads a round-trip time: name+"Detailed" (µs, TR-181) when given,
// else name (ms).
func (p *figures) rtt(name string) *float64 {
	if us := p.ms(name + "Detailed"); us != nil {
		v := *us / 1000
		return &v
	}
	return p.ms(name)
}

// time reads a TR-143 dateTime (microseconds allowed); the unknown time
// (0001-01-01T00:00:00Z, TR-106 §3.2.1) is none.
func (p *figures) time(name string) *time.Time {
	s := strings.TrimSpace(p.raw[name])
	if s == "" {
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		p.bad(name, s)
		return nil
	}
	if t.Year() <= 1 {
		return nil
	}
	t = t.UTC()
	return &t
}

// instances lists the instance numbers under table ("RouteHops.") that
// the raw names use, ascending.
func (p *figures) instances(table string) []int {
	seen := map[int]bool{}
	for k := range p.raw {
		rest, ok := strings.CutPrefix(k, table)
		if !ok {
			continue
		}
		n, _, _ := strings.Cut(rest, ".")
		i, err := strconv.Atoi(n)
		if err != nil || i <= 0 || i > 1024 {
			continue
		}
		seen[i] = true
	}
	out := make([]int, 0, len(seen))
	for i := range seen {
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}

func (p *figures) int64(name string) (int64, bool) {
	s, ok := p.raw[name]
	if !ok || strings.TrimSpace(s) == "" {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || v < 0 {
		p.bad(name, s)
		return 0, false
	}
	return v, true
}

func (p *figures) throughput(kind string) *ThroughputResult {
	tr := &ThroughputResult{ROMTime: p.time("ROMTime"), BOMTime: p.time("BOMTime"), EOMTime: p.time("EOMTime"),
		TCPOpenRequestTime: p.time("TCPOpenRequestTime"), TCPOpenResponseTime: p.time("TCPOpenResponseTime")}
	test, total := "TestBytesReceived", "TotalBytesReceived"
	if kind == DiagUpload {
		test, total = "TestBytesSent", "TotalBytesSent"
	}
	if n, ok := p.int64(test); ok {
		tr.TestBytes = n
	} else if n, ok := p.int64("TestFileLength"); ok && kind == DiagUpload {
		tr.TestBytes = n
	}
	if n, ok := p.int64(total); ok {
		tr.TotalBytes = &n
	}
	if tr.BOMTime != nil && tr.EOMTime != nil && !tr.EOMTime.Before(*tr.BOMTime) {
		d := float64(tr.EOMTime.Sub(*tr.BOMTime).Microseconds()) / 1000
		tr.DurationMS = &d
		if d > 0 {
			mbps := float64(tr.TestBytes) * 8 / (d / 1000) / 1e6
			tr.Mbps = &mbps
		}
	}
	return tr
}

// ---- Task outcome and storage ----

// diagnosticOutcome fails a diagnostic task whose device reported a state
// other than Complete, with that state as the message.
func diagnosticOutcome(o store.TaskOutcome) store.TaskOutcome {
	if o.State != store.TaskSucceeded {
		return o
	}
	res := decodeResult(o.Result)
	state := diagnosticState(res.GetOperate().GetOutputArgs())
	if diagnosticSucceeded(state) {
		return o
	}
	o.State = store.TaskFailed
	o.ErrorCode = devicemodel.CodeCommandFailed.String()
	if state == "" {
		o.ErrorMessage = "the device reported no DiagnosticsState or Status for the diagnostic"
	} else {
		o.ErrorMessage = state
	}
	return o
}

func decodeResult(b []byte) *duetv1.CommandResult {
	return interimResult(store.Task{Result: b})
}

// diagnosticRecord is the stored form of a diagnostic task that ended.
func diagnosticRecord(t store.Task) (store.Diagnostic, []string, error) {
	var r TaskRequest
	if err := json.Unmarshal(t.Request, &r); err != nil || r.Diagnostic == nil {
		return store.Diagnostic{}, nil, fmt.Errorf("controller: diagnostic task %s has no diagnostic request", t.ID)
	}
	dr := r.Diagnostic
	d := store.Diagnostic{TaskID: t.ID, DeviceID: t.DeviceID, Kind: dr.Kind, Target: cmp.Or(dr.Host, cmp.Or(dr.URL, dr.ListenerURL)),
		Success: t.State == store.TaskSucceeded, ErrorCode: t.ErrorCode, ErrorMessage: t.ErrorMessage,
		StartedAt: t.CreatedAt, FinishedAt: time.Now().UTC()}
	if t.DispatchedAt != nil {
		d.StartedAt = *t.DispatchedAt
	}
	if t.FinishedAt != nil {
		d.FinishedAt = *t.FinishedAt
	}
	if dr.ListenerURL != "" && dr.URL == "" {
		// The token is a credential: the listing shows where, not it.
		d.Target = "duet file listener"
	}
	var problems []string
	raw := decodeResult(t.Result).GetOperate().GetOutputArgs()
	if len(raw) > 0 {
		d.Status = diagnosticState(raw)
		parsed, p := ParseDiagnostic(dr.Kind, raw)
		problems = p
		b, err := json.Marshal(parsed)
		if err != nil {
			return d, problems, err
		}
		d.Result = b
	}
	return d, problems, nil
}

// recordDiagnostic stores the result of a diagnostic task that ended.
func (q *TaskQueue) recordDiagnostic(ctx context.Context, t store.Task) {
	if t.Operation != "diagnostic" {
		return
	}
	d, problems, err := diagnosticRecord(t)
	if err != nil {
		q.log.Error("a diagnostic's result cannot be stored", "task", t.ID, "device", t.DeviceID, "err", err)
		return
	}
	outcome := "failed"
	if d.Success {
		outcome = "succeeded"
	}
	if len(problems) > 0 {
		metricDiagnostics.WithLabelValues(d.Kind, "unparsable").Inc()
		q.log.Warn("a device reported diagnostic figures that do not parse; they are left out", "task", t.ID, "device", t.DeviceID,
			"kind", d.Kind, "figures", problems)
	}
	metricDiagnostics.WithLabelValues(d.Kind, outcome).Inc()
	if err := q.o.Store.RecordDiagnostic(ctx, d); err != nil {
		q.log.Error("storing a diagnostic's result failed", "task", t.ID, "device", t.DeviceID, "err", err)
	}
}

// ---- Listing ----

// Diagnostic is one stored diagnostic in the API.
type Diagnostic struct {
	TaskID     string    `json:"task_id"`
	DeviceID   string    `json:"device_id"`
	Kind       string    `json:"kind"`
	Target     string    `json:"target"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	// Success: the device ran the test and reported Complete.
	Success bool `json:"success"`
	// Status is the device's own state word (Complete,
	// Error_CannotResolveHostName, …); empty when the test never ran.
	Status       string `json:"status,omitempty"`
	ErrorCode    string `json:"error_code,omitempty"`
	ErrorMessage string `json:"error_message,omitempty"`
	DiagnosticResult
}

// DiagnosticPage is one page of a device's diagnostics, newest first.
type DiagnosticPage struct {
	Diagnostics []Diagnostic `json:"diagnostics"`
	NextCursor  string       `json:"next_cursor,omitempty"`
}

// ListDiagnostics lists a device's stored diagnostics, newest first;
// cursor is the previous page's NextCursor. Errors: CodeNotFound (device),
// CodeInvalidArgument (kind, cursor).
func ListDiagnostics(ctx context.Context, st *store.Store, deviceID, kind, cursor string, limit int) (DiagnosticPage, error) {
	if _, err := st.FindDeviceByID(ctx, deviceID); err != nil {
		return DiagnosticPage{}, err
	}
	if _, ok := diagObjects[kind]; kind != "" && !ok {
		return DiagnosticPage{}, invalid("kind: %q is not one of ping, traceroute, download, upload, nslookup, udp_echo", kind)
	}
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	f := store.DiagnosticFilter{DeviceID: deviceID, Kind: kind, Limit: limit}
	if cursor != "" {
		raw, derr := base64.RawURLEncoding.DecodeString(cursor)
		ts, id, ok := strings.Cut(string(raw), "|")
		t, err := time.Parse(time.RFC3339Nano, ts)
		if derr != nil || !ok || err != nil {
			return DiagnosticPage{}, invalid("cursor: malformed; pass next_cursor from the previous page")
		}
		f.BeforeTime, f.BeforeID = t, id
	}
	rows, err := st.FindDiagnostics(ctx, f)
	if err != nil {
		return DiagnosticPage{}, err
	}
	page := DiagnosticPage{Diagnostics: make([]Diagnostic, 0, len(rows))}
	for _, r := range rows {
		d := Diagnostic{TaskID: r.TaskID, DeviceID: r.DeviceID, Kind: r.Kind, Target: r.Target, StartedAt: r.StartedAt,
			FinishedAt: r.FinishedAt, Success: r.Success, Status: r.Status, ErrorCode: r.ErrorCode, ErrorMessage: r.ErrorMessage}
		if err := json.Unmarshal(r.Result, &d.DiagnosticResult); err != nil {
			return page, fmt.Errorf("controller: stored diagnostic %s: %w", r.TaskID, err)
		}
		page.Diagnostics = append(page.Diagnostics, d)
	}
	if len(rows) == limit {
		last := rows[len(rows)-1]
		page.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(last.FinishedAt.Format(time.RFC3339Nano) + "|" + last.TaskID))
	}
	return page, nil
}
