package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func TestPasswordHash(t *testing.T) {
	h := store.HashPassword("correct horse battery")
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q: not argon2id with the OWASP parameters", h)
	}
	if !store.VerifyPassword(h, "correct horse battery") {
		t.Fatal("the right password does not verify")
	}
	if store.VerifyPassword(h, "correct horse battery!") {
		t.Fatal("a wrong password verifies")
	}
	if h == store.HashPassword("correct horse battery") {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	// A tampered hash asking for 4 GiB of memory, or garbage, matches nothing.
	for _, bad := range []string{"", "$argon2id$v=19$m=4194304,t=3,p=4$AAAA$AAAA", "$bcrypt$x", strings.Replace(h, ",t=2,", ",t=x,", 1)} {
		if store.VerifyPassword(bad, "correct horse battery") {
			t.Fatalf("%q verifies", bad)
		}
	}
}

func TestUsersAndSessions(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()

	// First start: one admin with a one-time password, once.
	pw, err := s.EnsureFirstAdmin(ctx)
	if err != nil || len(pw) < store.MinPasswordLen {
		t.Fatalf("first admin: %q %v", pw, err)
	}
	if again, err := s.EnsureFirstAdmin(ctx); err != nil || again != "" {
		t.Fatalf("second start created another admin: %q %v", again, err)
	}
	admin, err := s.Login(ctx, store.FirstAdminName, pw, "192.0.2.1", store.LoginLimit{})
	if err != nil || admin.Role != store.RoleAdmin || admin.LastLoginAt == nil {
		t.Fatalf("first admin login: %+v %v", admin, err)
	}

	// Creating: bad names, roles and passwords are refused; names are unique.
	actor := store.UserActor("admin")
	for _, c := range []struct {
		name string
		role store.Role
		pw   string
	}{{"", store.RoleViewer, "long enough password"}, {"-x", store.RoleViewer, "long enough password"},
		{"bob", "root", "long enough password"}, {"bob", store.RoleViewer, "short"}} {
		if _, err := s.CreateUser(ctx, actor, c.name, c.role, c.pw); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
			t.Errorf("create %+v: %v, want invalid_argument", c, err)
		}
	}
	bob, err := s.CreateUser(ctx, actor, "bob", store.RoleViewer, "bobs long password")
	if err != nil || bob.Role != store.RoleViewer {
		t.Fatalf("create bob: %+v %v", bob, err)
	}
	if _, err := s.CreateUser(ctx, actor, "bob", store.RoleViewer, "bobs long password"); devicemodel.ErrorCode(err) != devicemodel.CodeConflict {
		t.Fatalf("second bob: %v", err)
	}
	users, err := s.ListUsers(ctx)
	if err != nil || len(users) != 2 || users[0].Name != "admin" || users[1].Name != "bob" {
		t.Fatalf("list: %+v %v", users, err)
	}

	// A session: found by its secret, with a CSRF token; logout ends it.
	u, err := s.Login(ctx, "bob", "bobs long password", "192.0.2.2", store.LoginLimit{})
	if err != nil {
		t.Fatal(err)
	}
	secret, sess, err := s.CreateSession(ctx, u, "192.0.2.2")
	if err != nil || len(sess.CSRF) < 40 {
		t.Fatalf("session: %+v %v", sess, err)
	}
	got, err := s.FindSession(ctx, secret, time.Hour, 24*time.Hour)
	if err != nil || got.User.Name != "bob" || got.User.Role != store.RoleViewer || got.CSRF != sess.CSRF {
		t.Fatalf("find session: %+v %v", got, err)
	}
	if _, err := s.FindSession(ctx, secret+"x", time.Hour, 24*time.Hour); devicemodel.ErrorCode(err) != devicemodel.CodeUnauthenticated {
		t.Fatalf("wrong secret: %v", err)
	}
	// Idle past the timeout: gone, and stays gone.
	if _, err := s.Pool().Exec(ctx, `UPDATE console_sessions SET last_seen_at = now() - interval '2 hours'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindSession(ctx, secret, time.Hour, 24*time.Hour); devicemodel.ErrorCode(err) != devicemodel.CodeUnauthenticated {
		t.Fatalf("idle session: %v", err)
	}
	if _, err := s.FindSession(ctx, secret, 10*time.Hour, 24*time.Hour); devicemodel.ErrorCode(err) != devicemodel.CodeUnauthenticated {
		t.Fatalf("an expired session came back: %v", err)
	}

	// Disabling ends the sessions and refuses the login; so does a new password
	// (for the old one).
	secret, _, err = s.CreateSession(ctx, u, "192.0.2.2")
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	if _, err := s.UpdateUser(ctx, actor, "bob", store.UserChange{Disabled: &yes}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindSession(ctx, secret, time.Hour, 24*time.Hour); devicemodel.ErrorCode(err) != devicemodel.CodeUnauthenticated {
		t.Fatalf("session of a disabled user: %v", err)
	}
	if _, err := s.Login(ctx, "bob", "bobs long password", "192.0.2.2", store.LoginLimit{}); devicemodel.ErrorCode(err) != devicemodel.CodeUnauthenticated {
		t.Fatalf("disabled user logged in: %v", err)
	}
	no, newPW := false, "bobs new long password"
	op := store.RoleOperator
	if u, err := s.UpdateUser(ctx, actor, "bob", store.UserChange{Disabled: &no, Password: &newPW, Role: &op}); err != nil || u.Role != op || u.DisabledAt != nil {
		t.Fatalf("enable bob: %+v %v", u, err)
	}
	if _, err := s.Login(ctx, "bob", "bobs long password", "192.0.2.3", store.LoginLimit{}); devicemodel.ErrorCode(err) != devicemodel.CodeUnauthenticated {
		t.Fatalf("old password: %v", err)
	}
	if u, err := s.Login(ctx, "bob", newPW, "192.0.2.3", store.LoginLimit{}); err != nil || u.Role != op {
		t.Fatalf("new password: %+v %v", u, err)
	}
	if _, err := s.UpdateUser(ctx, actor, "nobody", store.UserChange{Disabled: &yes}); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("update nobody: %v", err)
	}

	// Every change is audited with its actor, never with the password.
	var n int
	if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE object_type = 'user' AND object_id = 'bob' AND actor = $1`, actor).Scan(&n); err != nil || n != 3 {
		t.Fatalf("bob's audit rows: %d %v", n, err)
	}
	var leaked bool
	if err := s.Pool().QueryRow(ctx, `SELECT bool_or(after::text LIKE '%long password%' OR after::text LIKE '%argon2%') FROM audit_log`).Scan(&leaked); err != nil || leaked {
		t.Fatalf("the audit log holds a password or hash: %v %v", leaked, err)
	}
}

func TestLoginRateLimit(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	if _, err := s.CreateUser(ctx, "test", "carol", store.RoleOperator, "carols long password"); err != nil {
		t.Fatal(err)
	}
	limit := store.LoginLimit{Failures: 3, Window: time.Hour}
	for i := range 3 {
		if _, err := s.Login(ctx, "carol", "wrong password", "198.51.100.1", limit); devicemodel.ErrorCode(err) != devicemodel.CodeUnauthenticated {
			t.Fatalf("wrong password %d: %v", i, err)
		}
	}
	// Over the limit, even the right password is refused, from any address.
	if _, err := s.Login(ctx, "carol", "carols long password", "198.51.100.2", limit); devicemodel.ErrorCode(err) != devicemodel.CodeResourcesExceeded {
		t.Fatalf("over the limit: %v", err)
	}
	// An unknown name counts as a failure too (and says the same).
	_, err := s.Login(ctx, "mallory", "whatever password", "198.51.100.9", limit)
	if devicemodel.ErrorCode(err) != devicemodel.CodeUnauthenticated || !strings.Contains(err.Error(), "wrong user name or password") {
		t.Fatalf("unknown user: %v", err)
	}
	// Many names from one address: the address limit.
	for i := range 12 {
		_, _ = s.Login(ctx, "guess"+string(rune('a'+i)), "x", "203.0.113.7", limit)
	}
	if _, err := s.Login(ctx, "someone", "x", "203.0.113.7", limit); devicemodel.ErrorCode(err) != devicemodel.CodeResourcesExceeded {
		t.Fatalf("address over the limit: %v", err)
	}
	// When the window has passed, carol may log in again.
	if _, err := s.Pool().Exec(ctx, `UPDATE console_login_failures SET at = now() - interval '2 hours'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Login(ctx, "carol", "carols long password", "198.51.100.2", limit); err != nil {
		t.Fatalf("after the window: %v", err)
	}
}
