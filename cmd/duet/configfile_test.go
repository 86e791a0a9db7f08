package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func parsed(t *testing.T, args []string, env map[string]string) (*settings, error) {
	t.Helper()
	s := newSettings()
	err := s.parse("serve", args, envOf(env), &bytes.Buffer{})
	return s, err
}

// Flag > environment > file > default, for every setting the same way.
func TestConfigPrecedence(t *testing.T) {
	file := writeFile(t, "duet.yaml", `
cwmp-auth: shared
cwmp-username: from-file
cwmp-realm: FileRealm
http-addr: ":9000"
only: [controller, cwmp]
`)
	s, err := parsed(t, []string{"--config", file, "--cwmp-realm", "FlagRealm"},
		map[string]string{"DUET_CWMP_USERNAME": "from-env", "DUET_CWMP_REALM": "EnvRealm"})
	if err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]string{
		"cwmp-auth":     "shared",                                         // file
		"cwmp-username": "from-env",                                       // env over file
		"cwmp-realm":    "FlagRealm",                                      // flag over env over file
		"http-addr":     ":9000",                                          // file over default
		"only":          "controller,cwmp",                                // a YAML list
		"ws-path":       "/usp",                                           // default
		"database-url":  "postgres://127.0.0.1:5432/duet?sslmode=disable", // default
	} {
		if got := s.str(flag); got != want {
			t.Errorf("%s = %q, want %q", flag, got, want)
		}
	}
	if src := s.byFlag["cwmp-realm"].source; src != "flag" {
		t.Errorf("cwmp-realm from %s", src)
	}
	// DUET_CONFIG names the file when --config does not.
	s, err = parsed(t, nil, map[string]string{"DUET_CONFIG": file})
	if err != nil || s.str("cwmp-username") != "from-file" {
		t.Fatalf("DUET_CONFIG: %q %v", s.str("cwmp-username"), err)
	}
}

// An unknown key is refused with its name and line, and a near miss is
// suggested; so is a key given twice and a key holding a mapping.
func TestConfigUnknownKeyRefused(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{"cwmp-auth: shared\ncwmp-auht: none\n", `:2: unknown setting "cwmp-auht" (did you mean "cwmp-auth"?)`},
		{"DUET_CWMP_AUTH: none\n", `unknown setting "DUET_CWMP_AUTH" (did you mean "cwmp-auth"?)`},
		{"frobnicate: 1\n", `:1: unknown setting "frobnicate"`},
		{"cwmp-auth: none\ncwmp-auth: shared\n", `:2: setting "cwmp-auth" is given twice`},
		{"cwmp:\n  auth: none\n", `unknown setting "cwmp"`},
		{"cwmp-auth:\n  mode: none\n", `not a mapping`},
		{"- a\n- b\n", `want a mapping`},
		{"cwmp-auth: [unclosed\n", `settings file`},
		{"cwmp-username-file: /x\n", `unknown setting "cwmp-username-file"`}, // not a secret
	} {
		file := writeFile(t, "duet.yaml", c.body)
		_, err := parsed(t, []string{"--config", file}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.body, err, c.want)
		}
	}
	// Through the binary's entry point: serve refuses to start.
	file := writeFile(t, "duet.yaml", "cwmp-auht: none\n")
	var out bytes.Buffer
	m := &Main{Stdout: &out, Stderr: &out, Getenv: envOf(nil)}
	if code := m.Run(context.Background(), []string{"serve", "--config", file}); code == 0 || !strings.Contains(out.String(), `"cwmp-auht"`) {
		t.Fatalf("serve with an unknown key: exit %d, %s", code, out.String())
	}
	// Comments only, or an empty file, set nothing.
	for _, body := range []string{"", "# nothing\n", newSettings().example()} {
		if _, err := parsed(t, []string{"--config", writeFile(t, "duet.yaml", body)}, nil); err != nil {
			t.Errorf("%.30q: %v", body, err)
		}
	}
}

// Every secret reads from a file given by key, variable or flag, without
// the trailing newline; giving both forms at one level is refused; a
// missing file names the setting but the error never holds the secret.
func TestConfigSecretFiles(t *testing.T) {
	secret := writeFile(t, "pw", "s3cret-from-file\n")
	s := newSettings()
	var secrets []string
	for _, st := range s.list {
		if st.secret {
			secrets = append(secrets, st.flag)
		}
	}
	if len(secrets) < 6 {
		t.Fatalf("secrets: %v", secrets)
	}
	for _, name := range secrets {
		env := newSettings().byFlag[name].env
		for _, c := range []struct {
			how  string
			args []string
			env  map[string]string
		}{
			{"key", []string{"--config", writeFile(t, "d.yaml", name+"-file: "+secret+"\n")}, nil},
			{"env", nil, map[string]string{env + "_FILE": secret}},
			{"flag", []string{"--" + name + "-file", secret}, nil},
			// The file form at a higher level wins over the value at a lower.
			{"env over key", []string{"--config", writeFile(t, "d.yaml", name+": from-key\n")}, map[string]string{env + "_FILE": secret}},
		} {
			s, err := parsed(t, c.args, c.env)
			if err != nil {
				t.Fatalf("%s by %s: %v", name, c.how, err)
			}
			if got := s.str(name); got != "s3cret-from-file" {
				t.Errorf("%s by %s: %q", name, c.how, got)
			}
		}
		// Only the winning level's file is read: a stale path in the
		// settings file does not matter when the environment gives the value.
		s, err := parsed(t, []string{"--config", writeFile(t, "d.yaml", name+"-file: /nonexistent\n")}, map[string]string{env: "from-env"})
		if err != nil || s.str(name) != "from-env" {
			t.Errorf("%s overridden file: %q %v", name, s.str(name), err)
		}
		_, err = parsed(t, nil, map[string]string{env: "x", env + "_FILE": secret})
		if err == nil || !strings.Contains(err.Error(), "not both") {
			t.Errorf("%s and %s_FILE both: %v", env, env, err)
		}
		_, err = parsed(t, nil, map[string]string{env + "_FILE": filepath.Join(t.TempDir(), "missing")})
		if err == nil || !strings.Contains(err.Error(), env+"_FILE") {
			t.Errorf("%s_FILE missing: %v", env, err)
		}
	}
	// config check shows where each value came from and never a secret.
	var out bytes.Buffer
	m := &Main{Stdout: &out, Stderr: &out, Getenv: envOf(map[string]string{
		"DUET_CWMP_AUTH": "shared", "DUET_CWMP_USERNAME": "acs", "DUET_CWMP_PASSWORD_FILE": secret})}
	if code := m.Run(context.Background(), []string{"config", "check"}); code != 0 {
		t.Fatalf("config check: %d %s", code, out.String())
	}
	if strings.Contains(out.String(), "s3cret") || !regexp.MustCompile(`cwmp-password\s+\(secret, set\)\s+environment`).MatchString(out.String()) {
		t.Fatalf("config check output:\n%s", out.String())
	}
}

// The reference file is generated from the one list: every setting is in
// it at its default, uncommenting it all changes nothing, and the checked-in
// deploy/duet.example.yaml is what `duet config example` prints.
func TestConfigExample(t *testing.T) {
	ex := newSettings().example()
	var uncommented []string
	keyLine := regexp.MustCompile(`^#([a-z0-9-]+): `)
	for _, line := range strings.Split(ex, "\n") {
		if keyLine.MatchString(line) {
			uncommented = append(uncommented, strings.TrimPrefix(line, "#"))
		}
	}
	s, err := parsed(t, []string{"--config", writeFile(t, "all.yaml", strings.Join(uncommented, "\n"))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(uncommented) != len(s.list) {
		t.Fatalf("the example has %d keys, there are %d settings", len(uncommented), len(s.list))
	}
	for _, st := range s.list {
		if st.value != st.def || st.source != "file" {
			t.Errorf("%s: %q from %s, want the default %q from the file", st.flag, st.value, st.source, st.def)
		}
	}
	var out bytes.Buffer
	m := &Main{Stdout: &out, Stderr: &out, Getenv: envOf(nil)}
	if code := m.Run(context.Background(), []string{"config", "example"}); code != 0 || out.String() != ex {
		t.Fatalf("duet config example: %d", code)
	}
	const path = "../../deploy/duet.example.yaml"
	b, _ := os.ReadFile(path)
	if string(b) != ex {
		if *update {
			if err := os.WriteFile(path, []byte(ex), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Fatalf("%s is stale; run: go test ./cmd/duet -run 'README|ConfigExample' -update", path)
	}
}

// duet help <command> and duet <command> -h show that command's flags
// only; duet --version prints the version.
func TestHelpPerCommand(t *testing.T) {
	run := func(args ...string) (int, string) {
		var out bytes.Buffer
		m := &Main{Stdout: &out, Stderr: &out, Getenv: envOf(nil)}
		return m.Run(context.Background(), args), out.String()
	}
	for _, c := range []struct {
		args      []string
		want, not []string
	}{
		{[]string{"help", "migrate"}, []string{"-database-url", "-database-url-file", "-config"}, []string{"-cwmp-auth", "-ws-addr"}},
		{[]string{"migrate", "-h"}, []string{"-database-url"}, []string{"-cwmp-auth"}},
		{[]string{"help", "serve"}, []string{"-cwmp-auth", "-ws-addr", "-config", "-cwmp-password-file"}, nil},
		{[]string{"token", "create", "-h"}, []string{"-name", "-role", "-database-url"}, []string{"-cwmp-auth"}},
		{[]string{"help", "healthcheck"}, []string{"-url", "-http-addr"}, []string{"-database-url"}},
		{[]string{"help", "config"}, []string{"config example", "config check"}, nil},
	} {
		code, out := run(c.args...)
		if code != 0 {
			t.Errorf("%v: exit %d", c.args, code)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v lacks %s:\n%s", c.args, w, out)
			}
		}
		for _, n := range c.not {
			if strings.Contains(out, n+" ") || strings.Contains(out, n+"\n") {
				t.Errorf("%v shows %s, which is not its flag", c.args, n)
			}
		}
	}
	for _, a := range []string{"--version", "version"} {
		if code, out := run(a); code != 0 || !strings.HasPrefix(out, "duet ") {
			t.Errorf("%s: %d %q", a, code, out)
		}
	}
}

// Stopping logs how long the drain took in seconds, then a final "stopped";
// and healthcheck answers from /readyz while it runs.
func TestShutdownLogsSeconds(t *testing.T) {
	var out syncBuf
	env := map[string]string{
		"DUET_DATABASE_URL": storetest.NewDatabase(t),
		"DUET_HTTP_ADDR":    "127.0.0.1:0",
		"DUET_NATS_URL":     bustest.StartServer(t).URL(),
		"DUET_ONLY":         "controller",
		"DUET_LOG_FORMAT":   "json",
		"DUET_DATA_DIR":     t.TempDir(), // the bus seal key
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan Listeners, 1)
	m := &Main{Stdout: &out, Stderr: &out, Getenv: envOf(env), Ready: func(l Listeners) { ready <- l }}
	done := make(chan int, 1)
	go func() { done <- m.Run(ctx, []string{"serve"}) }()
	var ls Listeners
	select {
	case ls = <-ready:
	case code := <-done:
		t.Fatalf("serve exited %d: %s", code, out.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("serve not up: %s", out.String())
	}
	var hc bytes.Buffer
	hm := &Main{Stdout: &hc, Stderr: &hc, Getenv: envOf(map[string]string{"DUET_HTTP_ADDR": ls.HTTP})}
	bustest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		hc.Reset()
		if code := hm.Run(context.Background(), []string{"healthcheck"}); code != 0 {
			return errorString(hc.String())
		}
		return nil
	})
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatalf("last line %q: %v", lines[len(lines)-1], err)
	}
	if last["msg"] != "stopped" {
		t.Fatalf("last line is not \"stopped\": %v", last)
	}
	if sec, ok := last["shutdown_seconds"].(float64); !ok || sec < 0 || sec > ShutdownBudget.Seconds() {
		t.Fatalf("shutdown_seconds: %v", last)
	}
	if !strings.Contains(out.String(), `"budget_seconds":10`) {
		t.Fatalf("the shutting down line lacks budget_seconds: %s", out.String())
	}
	// Nothing answers any more: healthcheck fails.
	if code := hm.Run(context.Background(), []string{"healthcheck", "--timeout", "2s"}); code == 0 {
		t.Fatal("healthcheck passed against a stopped duet")
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

// syncBuf is a bytes.Buffer safe for the logger's and the test's goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
