package cwmp

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

func TestOptionsValidation(t *testing.T) {
	b, _ := bustest.Start(t)
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Bus: b}, "Auth is required"},
		{Options{Bus: b, Auth: "foo"}, `cwmp: Auth "foo" is not one of none, shared, per-device`},
		{Options{Bus: b, Auth: AuthShared}, "needs Username and Password"},
		{Options{Auth: AuthNone}, "Bus is required"},
		{Options{Bus: b, Auth: AuthNone, TLSCertFile: "x"}, "TLSCertFile and TLSKeyFile"},
		{Options{Bus: b, Auth: AuthNone, MaxSessions: -1}, "MaxSessions"},
		{Options{Bus: b, Auth: AuthNone, Path: "acs"}, "Path"},
	} {
		_, err := New(tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.o, err, tc.want)
		}
	}
	a, err := New(Options{Bus: b, Auth: AuthNone})
	if err != nil {
		t.Fatal(err)
	}
	if a.o.Addr != ":7547" || a.o.Path != "/" || a.o.MaxSessions != 1000 || a.o.SessionTimeout != 30*time.Second ||
		a.o.MaxRPCsPerSession != 256 || a.o.ConnReqTimeout != 2*time.Second {
		t.Errorf("defaults %+v", a.o)
	}
}

func TestStartPortInUseAndShutdownTwice(t *testing.T) {
	e := newEnv(t, nil)
	a, err := New(Options{Addr: e.acs.Addr(), Auth: AuthNone, Bus: e.bus})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Start on a used port = %v, want EADDRINUSE", err)
	}
	ctx := context.Background()
	if err := e.acs.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.acs.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
}

func TestLoadSheddingSessions(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxSessions = 1 })
	a := newCPE(t, e.url, "Device.", "L1", true, false)
	if resp, _ := a.post(a.inform()); resp.StatusCode != http.StatusOK {
		t.Fatal(resp.Status)
	}
	b := newCPE(t, e.url, "Device.", "L2", true, false)
	resp, _ := b.post(b.inform())
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("second session: %d Retry-After=%q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	// The open session continues and ends normally; then there is room.
	if resp, _ = a.post(nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("open session: %d", resp.StatusCode)
	}
	b.session(b.inform())
}

func TestLoadSheddingInformInterval(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MinInformInterval = time.Hour })
	c := newCPE(t, e.url, "Device.", "I1", true, false)
	c.session(c.inform(cwmp.EventPeriodic))
	resp, _ := c.post(c.inform(cwmp.EventPeriodic))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("early inform: %d", resp.StatusCode)
	}
	other := newCPE(t, e.url, "Device.", "I2", true, false)
	other.session(other.inform(cwmp.EventPeriodic))
}

func TestControllerDownEndsSession(t *testing.T) {
	e := newEnv(t, nil)
	e.failWork = true
	c := newCPE(t, e.url, "Device.", "CD", true, false)
	c.post(c.inform())
	start := time.Now()
	if resp, _ := c.post(nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("empty POST with the controller down: %d", resp.StatusCode)
	}
	if time.Since(start) > 4*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}
	if n := e.acs.sessions.len(); n != 0 {
		t.Fatalf("%d sessions left", n)
	}
}

func TestIdleSessionReaped(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.SessionTimeout = 300 * time.Millisecond })
	e.queue(cmdGet("Device.DeviceInfo.ModelName"))
	c := newCPE(t, e.url, "Device.", "R1", true, false)
	c.post(c.inform())
	if resp, envl := c.post(nil); resp.StatusCode != 200 || envl.Body.MethodName() != "GetParameterValues" {
		t.Fatalf("no GPV: %d", resp.StatusCode)
	}
	// The CPE goes silent: the session is reaped and the command in flight
	// gets an outcome-unknown result.
	ev := e.waitEvent("command_result", c.id(), nil)
	if ev.GetCommandResult().GetError().GetCode() != duetv1.ErrorCode(devicemodel.CodeOutcomeUnknown) {
		t.Fatalf("reaped result %v", ev.GetCommandResult())
	}
	bustest.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() error {
		if n := e.acs.sessions.len(); n != 0 {
			return errorf("%d sessions", n)
		}
		return nil
	})
}

func TestMaxRPCsPerSession(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxRPCsPerSession = 2 })
	e.queue(cmdGet("Device.DeviceInfo.ModelName"), cmdGet("Device.DeviceInfo.SoftwareVersion"), cmdGet("Device.DeviceInfo.HardwareVersion"))
	c := newCPE(t, e.url, "Device.", "M1", true, false)
	c.session(c.inform())
	if len(c.handled) != 2 {
		t.Fatalf("%d RPCs, want 2", len(c.handled))
	}
	res := e.waitEvent("command_result", c.id(), func(ev *duetv1.Event) bool { return ev.GetCommandResult().GetError() != nil })
	if res.GetCommandResult().Error.Code != duetv1.ErrorCode_ERROR_CODE_RESOURCES_EXCEEDED {
		t.Fatalf("over-limit result %v", res.GetCommandResult())
	}
}

// digestCPE is a CPE's connection-request endpoint with RFC 2617 Digest,
// written independently of the ACS code. dropFirst closes the connection
// instead of answering the first authenticated GET (docs/cwmp-interop.md #27).
func digestCPE(t *testing.T, user, pass string, dropFirst bool) (*httptest.Server, *atomic.Int32) {
	var authed atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		if !strings.HasPrefix(h, "Digest ") {
			w.Header().Set("WWW-Authenticate", `Digest realm="cpe", qop="auth", nonce="n0nce", opaque="op"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		kv := map[string]string{}
		for _, part := range strings.Split(h[7:], ", ") {
			k, v, _ := strings.Cut(part, "=")
			kv[k] = strings.Trim(v, `"`)
		}
		md := func(s string) string { x := md5.Sum([]byte(s)); return hex.EncodeToString(x[:]) }
		want := md(md(user+":cpe:"+pass) + ":n0nce:" + kv["nc"] + ":" + kv["cnonce"] + ":auth:" + md("GET:"+kv["uri"]))
		if kv["response"] != want || kv["username"] != user || kv["uri"] != r.URL.RequestURI() {
			w.Header().Set("WWW-Authenticate", `Digest realm="cpe", qop="auth", nonce="n0nce"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if authed.Add(1) == 1 && dropFirst {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	return srv, &authed
}

func TestConnectionRequest(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		name       string
		pass       string
		drop       bool
		wantStatus uint32
		wantCode   duetv1.ErrorCode
		wantAuthed int32
	}{
		{"digest", "crpw", false, 200, 0, 1},
		{"drop after 401 then retry", "crpw", true, 200, 0, 2},
		{"wrong password", "bad", false, 401, duetv1.ErrorCode_ERROR_CODE_UNAUTHENTICATED, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, authed := digestCPE(t, "cruser", "crpw", tc.drop)
			dev := "00D09E-IGW-CR" + strings.ReplaceAll(tc.name, " ", "")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := e.bus.Request(ctx, devicemodel.ProtocolCWMP, &duetv1.Command{DeviceId: dev,
				Op: &duetv1.Command_ConnectionRequest{ConnectionRequest: &duetv1.ConnectionRequest{
					Url: srv.URL + "/cr/abc?x=1", Username: "cruser", Password: tc.pass}}})
			if err != nil {
				t.Fatal(err)
			}
			if res.GetConnectionRequest().GetHttpStatus() != tc.wantStatus || res.GetError().GetCode() != tc.wantCode {
				t.Fatalf("result %v", res)
			}
			if authed.Load() != tc.wantAuthed {
				t.Fatalf("%d authenticated GETs, want %d", authed.Load(), tc.wantAuthed)
			}
			ev := e.waitEvent("connection_request", dev, nil).GetConnectionRequest()
			if ev.Accepted != (tc.wantCode == 0) || ev.HttpStatus != tc.wantStatus {
				t.Fatalf("event %v", ev)
			}
		})
	}
	// Offline CPE.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := e.bus.Request(ctx, devicemodel.ProtocolCWMP, &duetv1.Command{DeviceId: "00D09E-IGW-OFF",
		Op: &duetv1.Command_ConnectionRequest{ConnectionRequest: &duetv1.ConnectionRequest{Url: "http://127.0.0.1:1/cr"}}})
	if err != nil || res.GetError().GetCode() != duetv1.ErrorCode_ERROR_CODE_UNAVAILABLE {
		t.Fatalf("offline CPE: %v %v", res, err)
	}
	// Other commands are refused outside a session.
	res, err = e.bus.Request(ctx, devicemodel.ProtocolCWMP, &duetv1.Command{DeviceId: "00D09E-IGW-OFF",
		Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device."}}}})
	if err != nil || res.GetError().GetCode() != duetv1.ErrorCode_ERROR_CODE_UNSUPPORTED {
		t.Fatalf("get outside a session: %v %v", res, err)
	}
}

// TestLoadSheddingBacklog (issue 17): while the controllers report more
// events to apply than MaxBacklog, new sessions get 503 with Retry-After
// and the CPE keeps its events; once they catch up, sessions are accepted
// again. A missing answer sheds nothing.
func TestLoadSheddingBacklog(t *testing.T) {
	var backlog atomic.Uint64
	backlog.Store(5000)
	e := newEnv(t, func(o *Options) { o.MaxBacklog = 1000; o.BacklogPoll = 20 * time.Millisecond })
	sub, err := e.bus.ServeBacklog("", func(context.Context) uint64 { return backlog.Load() })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	c := newCPE(t, e.url, "Device.", "BL1", true, false)
	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		resp, _ := c.post(c.inform(cwmp.EventPeriodic))
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			if resp.StatusCode == http.StatusOK {
				c.post(nil)
			}
			return fmt.Errorf("inform with a backlog: %d", resp.StatusCode)
		}
		return nil
	})
	backlog.Store(10)
	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		resp, _ := c.post(c.inform(cwmp.EventPeriodic))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("inform after catching up: %d", resp.StatusCode)
		}
		return nil
	})
	if resp, _ := c.post(nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("empty POST: %d", resp.StatusCode)
	}
	// Nobody answers: nothing is shed.
	backlog.Store(5000)
	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if !e.acs.backlogged.Load() {
			return errors.New("not backlogged yet")
		}
		return nil
	})
	sub.Stop()
	bustest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if e.acs.backlogged.Load() {
			return errors.New("still shedding without an answer")
		}
		return nil
	})
}
