package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestUserCommand: `duet user` creates, lists, disables, enables users and
// sets passwords, in the database the console logs in against.
func TestUserCommand(t *testing.T) {
	url := storetest.NewDatabase(t)
	ctx := context.Background()
	run := func(stdin string, args ...string) (int, string, string) {
		var out, errs bytes.Buffer
		m := &Main{Stdout: &out, Stderr: &errs, Stdin: strings.NewReader(stdin), Getenv: envOf(map[string]string{"DUET_DATABASE_URL": url})}
		return m.Run(ctx, append([]string{"user"}, args...)), out.String(), errs.String()
	}
	if code, _, errs := run("", "create", "--name", "-bad"); code == 0 || !strings.Contains(errs, "user name") {
		t.Fatalf("bad name: %d %s", code, errs)
	}
	if code, _, errs := run("short\n", "create", "--name", "dora", "--password-stdin"); code == 0 || !strings.Contains(errs, "at least 12") {
		t.Fatalf("short password: %d %s", code, errs)
	}
	if code, out, errs := run("doras long password\n", "create", "--name", "dora", "--role", "viewer", "--password-stdin"); code != 0 || out != "" {
		t.Fatalf("create dora: %d %q %s", code, out, errs)
	}
	// Generated: printed once on stdout.
	code, out, errs := run("", "create", "--name", "eve", "--role", "admin")
	pw := strings.TrimSpace(out)
	if code != 0 || len(pw) < store.MinPasswordLen || !strings.Contains(errs, "shown only now") {
		t.Fatalf("create eve: %d %q %s", code, out, errs)
	}
	code, out, _ = run("", "list")
	if code != 0 || !strings.Contains(out, "dora") || !strings.Contains(out, "viewer") || !strings.Contains(out, "eve") || strings.Contains(out, pw) {
		t.Fatalf("list: %d\n%s", code, out)
	}
	if code, out, errs := run("", "disable", "dora"); code != 0 || !strings.Contains(out, "disabled dora") {
		t.Fatalf("disable: %d %s %s", code, out, errs)
	}
	if code, _, errs := run("", "disable", "nobody"); code == 0 || !strings.Contains(errs, "not found") {
		t.Fatalf("disable nobody: %d %s", code, errs)
	}
	code, out, _ = run("", "list")
	if code != 0 || !strings.Contains(out, "dora") {
		t.Fatalf("list: %d\n%s", code, out)
	}
	if code, _, errs := run("doras newer password\n", "passwd", "--password-stdin", "dora"); code != 0 {
		t.Fatalf("passwd: %d %s", code, errs)
	}
	if code, _, errs := run("", "enable", "dora"); code != 0 {
		t.Fatalf("enable: %d %s", code, errs)
	}
	st, err := store.Open(ctx, store.Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if u, err := st.Login(ctx, "dora", "doras newer password", "cli-test", store.LoginLimit{}); err != nil || u.Role != store.RoleViewer {
		t.Fatalf("dora logs in with the new password: %+v %v", u, err)
	}
	if _, err := st.Login(ctx, "eve", pw, "cli-test", store.LoginLimit{}); err != nil {
		t.Fatalf("eve logs in with the printed password: %v", err)
	}
}
