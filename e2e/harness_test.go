// Package e2e runs the real duet binary against the real PostgreSQL, NATS
// and brokers, with simulated devices.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
)

var duetBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "duet-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	duetBin = filepath.Join(dir, "duet")
	build := exec.Command("go", "build", "-o", duetBin, "../cmd/duet")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build duet:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a TCP port that was free a moment ago.
//
// The port is closed again before duet binds it, so something else may
// take it in between. Outgoing connections (every test's clients, in
// every package running in parallel) take their ports from the kernel's
// ephemeral range, as does a listen on port 0; so the port is drawn at
// random below that range, where only another listener can land, and
// never twice in this process.
func freePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 200 {
		p := portsLow + rand.IntN(portsHigh-portsLow)
		if portsGiven[p] {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue // taken
		}
		l.Close()
		portsGiven[p] = true
		return p
	}
	t.Fatalf("no free port between %d and %d", portsLow, portsHigh)
	return 0
}

// portsLow..portsHigh is below Linux's default ephemeral range
// (32768-60999, /proc/sys/net/ipv4/ip_local_port_range).
const portsLow, portsHigh = 20000, 32000

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// syncBuffer collects a process's output safely.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// duet is one running `duet` process.
type duet struct {
	t      testing.TB
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
	err    error
	HTTP   string // base URL of the API
	Env    map[string]string
	exited bool
}

// baseEnv is a configuration on random ports with the embedded servers.
func baseEnv(t testing.TB, dbURL string) map[string]string {
	return map[string]string{
		"DUET_DATABASE_URL": dbURL,
		"DUET_HTTP_ADDR":    "127.0.0.1:" + strconv.Itoa(freePort(t)),
		"DUET_NATS_PORT":    strconv.Itoa(freePort(t)),
		"DUET_MQTT_PORT":    strconv.Itoa(freePort(t)),
		"DUET_STOMP_PORT":   strconv.Itoa(freePort(t)),
		"DUET_WS_ADDR":      "127.0.0.1:" + strconv.Itoa(freePort(t)),
		"DUET_CWMP_ADDR":    "127.0.0.1:" + strconv.Itoa(freePort(t)),
		"DUET_CWMP_AUTH":    "none",
		// Simulated CPEs listen on loopback, refused by default.
		"DUET_CWMP_CONNREQ_ALLOW": "127.0.0.0/8",
		"DUET_DATA_DIR":           t.TempDir(),
		"DUET_LOG_FORMAT":         "json",
		"DUET_LOG_LEVEL":          "info",
		"DUET_ADMIN_TOKEN":        testAdminToken,
	}
}

// testAdminToken is the API token every harness-started duet accepts.
const testAdminToken = "duet_e2e-admin-token-0123456789abcdef"

// startDuet runs `duet args...` with exactly env (plus PATH/HOME).
func startDuet(t testing.TB, env map[string]string, args ...string) *duet {
	t.Helper()
	cmd := exec.Command(duetBin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	d := &duet{t: t, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{}), Env: env}
	cmd.Stdout, cmd.Stderr = d.out, d.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	if a := env["DUET_HTTP_ADDR"]; a != "" {
		d.HTTP = "http://" + a
	}
	t.Cleanup(func() {
		if !d.exited {
			_ = cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("duet %v output:\n%s", args, d.out.String())
		}
	})
	return d
}

// waitReady polls /readyz until 200.
func (d *duet) waitReady(timeout time.Duration) {
	d.t.Helper()
	bustest.CheckFor(d.t, timeout, 50*time.Millisecond, func() error {
		select {
		case <-d.done:
			d.exited = true
			d.t.Fatalf("duet exited before it was ready: %v\n%s", d.err, d.out.String())
		default:
		}
		res, err := http.Get(d.HTTP + "/readyz")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("readyz %d: %s", res.StatusCode, body)
		}
		return nil
	})
}

// wait waits for the process to exit and returns its exit code.
func (d *duet) wait(timeout time.Duration) int {
	d.t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.t.Fatalf("duet did not exit within %s\n%s", timeout, d.out.String())
	}
	d.exited = true
	if d.err == nil {
		return 0
	}
	if ee, ok := d.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	d.t.Fatalf("wait: %v", d.err)
	return -1
}

func (d *duet) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
}

// get fetches a URL under the API with the admin token and returns status
// and body.
func (d *duet) get(path string) (int, string) {
	d.t.Helper()
	return d.do("GET", path, "")
}

// do sends a request with the admin token (DUET_ADMIN_TOKEN of the
// process's environment) and a JSON body when body is not empty.
func (d *duet) do(method, path, body string) (int, string) {
	d.t.Helper()
	return d.doAs(d.Env["DUET_ADMIN_TOKEN"], method, path, body)
}

// doAs is do with another bearer token ("" sends none).
func (d *duet) doAs(token, method, path, body string) (int, string) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequestWithContext(ctx, method, d.HTTP+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// metric returns the value of one sample line of /metrics, or -1.
func (d *duet) metric(sample string) float64 {
	d.t.Helper()
	_, body := d.get("/metrics")
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, sample+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, sample)), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}
