// Package simdiag runs the diagnostics of the simulated CPE (pkg/sim/cpe)
// and agent (pkg/sim/agent) the way devices implement them, with
// plausible figures: ping, traceroute, NSLookup and UDP echo send no
// packet (a name under .invalid, RFC 2606, does not resolve; anything
// else answers), while the TR-143 download and upload tests really fetch
// and send over HTTP and measure, so the server side is exercised.
//
// Results use the TR-181 names relative to the diagnostic
// (Device.IP.Diagnostics.IPPing. or the IPPing() output arguments), with
// the TR-098 names where that model differs (TR098 true): TraceRoute hops
// are HopHost, HopHostAddress, HopErrorCode, HopRTTimes, and Download and
// Upload end in "Completed". The state is under "Status".
package simdiag

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"time"
)

// Kind names a diagnostic by its object or command name without "()":
// IPPing, TraceRoute, DownloadDiagnostics, UploadDiagnostics,
// NSLookupDiagnostics, UDPEchoDiagnostics (TR-098: IPPingDiagnostics,
// TraceRouteDiagnostics).
func Kind(name string) string {
	name = strings.TrimSuffix(strings.TrimSuffix(name, "()"), ".")
	if i := strings.LastIndex(name, "."); i >= 0 {
		name = name[i+1:]
	}
	switch name {
	case "IPPingDiagnostics":
		return "IPPing"
	case "TraceRouteDiagnostics":
		return "TraceRoute"
	}
	return name
}

// Options tune a run.
type Options struct {
	// Client does the HTTP transfers; default http.DefaultClient.
	Client *http.Client
	TR098  bool
	// MaxBytes bounds a test download (default 256 MiB).
	MaxBytes int64
}

// Run performs the diagnostic kind with input args in and returns its
// results. An unknown kind gives Status Error_Internal.
func Run(ctx context.Context, kind string, in map[string]string, o Options) map[string]string {
	if o.Client == nil {
		o.Client = http.DefaultClient
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 256 << 20
	}
	switch Kind(kind) {
	case "IPPing":
		return ping(in, o, false)
	case "UDPEchoDiagnostics":
		return ping(in, o, true)
	case "TraceRoute":
		return traceroute(in, o)
	case "NSLookupDiagnostics":
		return nslookup(in)
	case "DownloadDiagnostics":
		return download(ctx, in, o)
	case "UploadDiagnostics":
		return upload(ctx, in, o)
	}
	return map[string]string{"Status": "Error_Internal"}
}

// resolve gives the address a host answers from: an IP literal itself,
// localhost 127.0.0.1, a name under .invalid nothing, any other name a
// stable address in TEST-NET-2 (RFC 5737).
func resolve(host string) (string, bool) {
	host = strings.TrimSuffix(strings.TrimSpace(host), ".")
	switch {
	case host == "":
		return "", false
	case net.ParseIP(host) != nil:
		return host, true
	case host == "localhost":
		return "127.0.0.1", true
	case host == "invalid" || strings.HasSuffix(host, ".invalid"):
		return "", false
	}
	h := sha256.Sum256([]byte(host))
	return fmt.Sprintf("198.51.100.%d", 1+int(h[0])%254), true
}

func count(in map[string]string, name string, def int) int {
	n, err := strconv.Atoi(strings.TrimSpace(in[name]))
	if err != nil || n <= 0 {
		return def
	}
	return min(n, 100)
}

// rtt is a plausible round trip in µs for probe i to hop (1-based).
func rtt(hop, i int) int { return 800*hop + 150*(i%3) + 90 }

func ping(in map[string]string, o Options, udp bool) map[string]string {
	n := count(in, "NumberOfRepetitions", 3)
	if _, ok := resolve(in["Host"]); !ok {
		return map[string]string{"Status": "Error_CannotResolveHostName", "SuccessCount": "0", "FailureCount": strconv.Itoa(n)}
	}
	lo, hi, sum := 0, 0, 0
	for i := 0; i < n; i++ {
		r := rtt(1, i)
		if i == 0 || r < lo {
			lo = r
		}
		hi = max(hi, r)
		sum += r
	}
	avg := sum / n
	out := map[string]string{"Status": "Complete", "SuccessCount": strconv.Itoa(n), "FailureCount": "0",
		"AverageResponseTime": strconv.Itoa((avg + 500) / 1000), "MinimumResponseTime": strconv.Itoa((lo + 500) / 1000),
		"MaximumResponseTime": strconv.Itoa((hi + 500) / 1000)}
	if !o.TR098 {
		out["IPAddressUsed"] = "192.0.2.10"
		out["AverageResponseTimeDetailed"] = strconv.Itoa(avg)
		out["MinimumResponseTimeDetailed"] = strconv.Itoa(lo)
		out["MaximumResponseTimeDetailed"] = strconv.Itoa(hi)
	}
	if udp {
		out["PacketsSent"], out["PacketsReceived"] = strconv.Itoa(n), strconv.Itoa(n)
	}
	return out
}

func traceroute(in map[string]string, o Options) map[string]string {
	tries := count(in, "NumberOfTries", 3)
	addr, ok := resolve(in["Host"])
	if !ok {
		return map[string]string{"Status": "Error_CannotResolveHostName", "RouteHopsNumberOfEntries": "0"}
	}
	hops := []struct{ host, addr string }{{"gateway.lan", "192.168.1.1"}, {"", "203.0.113.1"}, {strings.TrimSpace(in["Host"]), addr}}
	if addr == "127.0.0.1" || addr == "::1" {
		hops = hops[2:]
	}
	pre := "RouteHops."
	names := [4]string{"Host", "HostAddress", "ErrorCode", "RTTimes"}
	if o.TR098 {
		names = [4]string{"HopHost", "HopHostAddress", "HopErrorCode", "HopRTTimes"}
	}
	out := map[string]string{"Status": "Complete", "RouteHopsNumberOfEntries": strconv.Itoa(len(hops))}
	if !o.TR098 {
		out["IPAddressUsed"] = "192.0.2.10"
	}
	last := 0
	for i, h := range hops {
		var rts []string
		for j := 0; j < tries; j++ {
			last = (rtt(i+1, j) + 500) / 1000
			rts = append(rts, strconv.Itoa(last))
		}
		p := pre + strconv.Itoa(i+1) + "."
		out[p+names[0]] = h.host
		out[p+names[1]] = h.addr
		out[p+names[2]] = "0"
		out[p+names[3]] = strings.Join(rts, ",")
	}
	out["ResponseTime"] = strconv.Itoa(last)
	return out
}

func nslookup(in map[string]string) map[string]string {
	n := count(in, "NumberOfRepetitions", 1)
	name := strings.TrimSpace(in["HostName"])
	addr, ok := resolve(name)
	out := map[string]string{"Status": "Complete", "ResultNumberOfEntries": strconv.Itoa(n)}
	succ := 0
	for i := 1; i <= n; i++ {
		p := "Result." + strconv.Itoa(i) + "."
		out[p+"DNSServerIP"] = "192.0.2.53"
		out[p+"ResponseTime"] = strconv.Itoa(3 + i%2)
		if !ok {
			out[p+"Status"], out[p+"AnswerType"] = "Error_HostNameNotResolved", "None"
			continue
		}
		succ++
		out[p+"Status"], out[p+"AnswerType"] = "Success", "NonAuthoritative"
		out[p+"HostNameReturned"] = name
		out[p+"IPAddresses"] = addr
	}
	out["SuccessCount"] = strconv.Itoa(succ)
	return out
}

// stamp is a TR-143 time: microseconds, UTC.
func stamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000Z") }

// failState maps a transfer error to a TR-143 DiagnosticsState.
func failState(err error) string {
	var dns *net.DNSError
	switch {
	case errors.As(err, &dns):
		return "Error_CannotResolveHostName"
	case errors.Is(err, context.DeadlineExceeded):
		return "Error_Timeout"
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return "Error_InitConnectionFailed"
	}
	return "Error_TransferFailed"
}

// complete is the success state of a transfer test: TR-098 says
// Completed (TR-181 deprecated it in 2.13 for Complete).
func complete(o Options) string {
	if o.TR098 {
		return "Completed"
	}
	return "Complete"
}

// timings records the TR-143 instants of one HTTP exchange.
type timings struct {
	tcpReq, tcpResp, wrote, firstByte time.Time
}

func (tm *timings) trace(ctx context.Context) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		ConnectStart:         func(string, string) { tm.tcpReq = time.Now() },
		ConnectDone:          func(string, string, error) { tm.tcpResp = time.Now() },
		WroteHeaders:         func() { tm.wrote = time.Now() },
		GotFirstResponseByte: func() { tm.firstByte = time.Now() },
	})
}

func (tm *timings) tcp(out map[string]string, rom time.Time) {
	req, resp := tm.tcpReq, tm.tcpResp
	if req.IsZero() { // a kept-alive connection
		req, resp = rom, rom
	}
	out["TCPOpenRequestTime"], out["TCPOpenResponseTime"] = stamp(req), stamp(resp)
}

// download GETs DownloadURL (TR-143 §4.1: ROM when the request goes out,
// BOM at the first byte of the body, EOM at the last).
func download(ctx context.Context, in map[string]string, o Options) map[string]string {
	u := strings.TrimSpace(in["DownloadURL"])
	var tm timings
	ctx, cancel := context.WithTimeout(tm.trace(ctx), 5*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return map[string]string{"Status": "Error_InitConnectionFailed"}
	}
	rom := time.Now()
	resp, err := o.Client.Do(req)
	if err != nil {
		return map[string]string{"Status": failState(err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return map[string]string{"Status": "Error_NoResponse"}
	}
	buf := make([]byte, 32<<10)
	n, bom := int64(0), time.Time{}
	for {
		k, rerr := resp.Body.Read(buf)
		if k > 0 && bom.IsZero() {
			bom = time.Now()
		}
		n += int64(k)
		if n > o.MaxBytes {
			return map[string]string{"Status": "Error_IncorrectSize"}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return map[string]string{"Status": failState(rerr)}
		}
	}
	eom := time.Now()
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return map[string]string{"Status": "Error_IncorrectSize"}
	}
	if bom.IsZero() {
		bom = eom
	}
	out := map[string]string{"Status": complete(o), "ROMTime": stamp(rom), "BOMTime": stamp(bom), "EOMTime": stamp(eom),
		"TestBytesReceived": strconv.FormatInt(n, 10), "TotalBytesReceived": strconv.FormatInt(n+headerBytes(resp.Header), 10)}
	tm.tcp(out, rom)
	return out
}

// headerBytes estimates the bytes of a header block on the wire.
func headerBytes(h http.Header) int64 {
	n := int64(len("HTTP/1.1 200 OK\r\n\r\n"))
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}

// upload PUTs TestFileLength generated bytes to UploadURL (TR-143 §4.2:
// ROM when the request goes out, BOM when the body starts, EOM when the
// server's answer to the last byte arrives).
func upload(ctx context.Context, in map[string]string, o Options) map[string]string {
	u := strings.TrimSpace(in["UploadURL"])
	size, err := strconv.ParseInt(strings.TrimSpace(in["TestFileLength"]), 10, 64)
	if err != nil || size < 0 {
		size = 0
	}
	var tm timings
	ctx, cancel := context.WithTimeout(tm.trace(ctx), 5*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, io.LimitReader(pattern{}, size))
	if err != nil {
		return map[string]string{"Status": "Error_InitConnectionFailed"}
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	rom := time.Now()
	resp, err := o.Client.Do(req)
	if err != nil {
		return map[string]string{"Status": failState(err)}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	eom := time.Now()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return map[string]string{"Status": "Error_NoResponse"}
	}
	bom := tm.wrote
	if bom.IsZero() {
		bom = rom
	}
	out := map[string]string{"Status": complete(o), "ROMTime": stamp(rom), "BOMTime": stamp(bom), "EOMTime": stamp(eom),
		"TotalBytesSent": strconv.FormatInt(size+int64(len(u))+64, 10)}
	if !o.TR098 {
		out["TestBytesSent"] = strconv.FormatInt(size, 10)
	}
	tm.tcp(out, rom)
	return out
}

// pattern is an endless reader of non-repeating-looking bytes.
type pattern struct{}

func (pattern) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i*131 + i>>8)
	}
	return len(p), nil
}
