package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// tableExists reports whether a fresh test database got a table.
func tableExists(t *testing.T, url, table string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var ok bool
	if err := c.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

// A bad setting of any component is refused before anything starts: no
// migration runs, no embedded server starts and no admin token is created
// or printed. Before, a bad DUET_CWMP_AUTH was only seen after migrations
// ran, NATS started and a token was printed.
func TestBadSettingStartsNothing(t *testing.T) {
	for _, c := range []struct{ env, value string }{
		{"DUET_CWMP_AUTH", "bogus"},
		{"DUET_CWMP_AUTH", ""},
		{"DUET_CWMP_MAX_SESSIONS", "lots"},
		{"DUET_USP_KEEPALIVE", "1s"},
		{"DUET_WS_PATH", "usp"},
		{"DUET_STOMP_ADDR", "nohostport"},
		{"DUET_ADMIN_TOKEN", "short"},
		{"DUET_POLICY_SWEEP", "1s"},
		{"DUET_BULK_RATE", "0"},
		{"DUET_REBOOT_TIMEOUT", "0s"},
		{"DUET_NATS_REPLICAS", "3"}, // the embedded server is one node
		{"DUET_NATS_REPLICAS", "7"},
		{"DUET_OPERATION_TIMEOUT", "soon"},
	} {
		t.Run(c.env+"="+c.value, func(t *testing.T) {
			db := storetest.NewDatabase(t)
			dataDir := t.TempDir()
			env := map[string]string{
				"DUET_DATABASE_URL": db,
				"DUET_HTTP_ADDR":    "127.0.0.1:0",
				"DUET_NATS_PORT":    "4222",
				"DUET_DATA_DIR":     dataDir,
				"DUET_CWMP_AUTH":    "none",
			}
			env[c.env] = c.value
			var out, errOut bytes.Buffer
			m := &Main{Stdout: &out, Stderr: &errOut, Getenv: envOf(env)}
			code := m.Run(context.Background(), []string{"serve"})
			if code == 0 {
				t.Fatalf("serve started with %s=%q", c.env, c.value)
			}
			if !strings.Contains(errOut.String(), c.env) {
				t.Errorf("the error does not name %s: %s", c.env, errOut.String())
			}
			if _, err := os.Stat(filepath.Join(dataDir, "nats")); err == nil {
				t.Errorf("embedded NATS was started before %s=%q was refused", c.env, c.value)
			}
			if strings.Contains(out.String(), "admin token") {
				t.Errorf("a token was printed by a start that failed: %s", out.String())
			}
			if tableExists(t, db, "schema_migrations") {
				t.Errorf("migrations ran before %s=%q was refused", c.env, c.value)
			}
		})
	}
}

// A start that fails after the settings were accepted (here: the CWMP port
// is taken) creates and prints no admin token, so the next start still
// generates one and shows it.
func TestFailedStartCreatesNoToken(t *testing.T) {
	db := storetest.NewDatabase(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	env := map[string]string{
		"DUET_DATABASE_URL": db,
		"DUET_HTTP_ADDR":    "127.0.0.1:0",
		"DUET_NATS_URL":     bustest.StartServer(t).URL(),
		"DUET_DATA_DIR":     t.TempDir(),
		"DUET_CWMP_AUTH":    "none",
		"DUET_CWMP_ADDR":    busy.Addr().String(),
		"DUET_ONLY":         "controller,cwmp",
	}
	var out, errOut bytes.Buffer
	m := &Main{Stdout: &out, Stderr: &errOut, Getenv: envOf(env)}
	if code := m.Run(context.Background(), []string{"serve"}); code == 0 {
		t.Fatal("serve started on a busy CWMP port")
	}
	if !strings.Contains(errOut.String(), "DUET_CWMP_ADDR") {
		t.Errorf("the error does not name DUET_CWMP_ADDR: %s", errOut.String())
	}
	if strings.Contains(out.String(), "admin token") {
		t.Errorf("a failed start printed a token: %s", out.String())
	}
	ctx := context.Background()
	c, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM api_tokens").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("a failed start left %d token(s)", n)
	}
}

// DUET_NATS_REPLICAS above what the NATS servers can hold stops start-up
// with a message naming the setting (here: a single, non-clustered server).
func TestNATSReplicasAboveClusterRefused(t *testing.T) {
	env := map[string]string{
		"DUET_DATABASE_URL":  storetest.NewDatabase(t),
		"DUET_HTTP_ADDR":     "127.0.0.1:0",
		"DUET_NATS_URL":      bustest.StartServer(t).URL(),
		"DUET_NATS_REPLICAS": "3",
		"DUET_ONLY":          "controller",
		"DUET_DATA_DIR":      t.TempDir(), // the bus seal key
	}
	var out bytes.Buffer
	m := &Main{Stdout: &out, Stderr: &out, Getenv: envOf(env)}
	if code := m.Run(context.Background(), []string{"serve"}); code == 0 || !strings.Contains(out.String(), "DUET_NATS_REPLICAS") {
		t.Fatalf("exit %d: %s", code, out.String())
	}
}
