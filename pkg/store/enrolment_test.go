package store_test

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestEnrolmentLifecycle walks a device's credential enrolment through the
// store (docs/guide-cwmp.md, "Enrolment"): pending with the passwords
// sealed for the Set; once the Set is accepted only the HA1 and the sealed
// connection-request password remain; sessions on the old credentials
// past the rules fail it and discard everything pending; a session on the
// new ones makes them the device's credentials. No audit entry holds a
// secret, and deleting the credentials puts the device back on shared.
func TestEnrolmentLifecycle(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	key, err := store.NewCredentialKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	const dev, actor = "00D09E-ENR-1", "system:test"
	rules := store.EnrolmentRules{MaxOldSessions: 2, Window: time.Hour}
	in := store.CredentialsInput{Username: "acs", Password: "new-pass-A1", ConnectionRequestUsername: "duet-cr", ConnectionRequestPassword: "cr-pass-A1"}

	e, err := s.BeginEnrolment(ctx, actor, key, "Duet", dev, in, false)
	if err != nil || e.State != store.EnrolmentPending || e.DigestHA1 != store.DigestHA1("acs", "Duet", "new-pass-A1") {
		t.Fatalf("begin: %+v %v", e, err)
	}
	if _, err := s.BeginEnrolment(ctx, actor, key, "Duet", dev, in, false); devicemodel.ErrorCode(err) != devicemodel.CodeConflict {
		t.Fatalf("second begin: %v, want conflict", err)
	}
	if err := s.EnrolmentTask(ctx, dev, "task-1"); err != nil {
		t.Fatal(err)
	}
	got, pass, crPass, found, err := s.EnrolmentSecrets(ctx, key, dev)
	if err != nil || !found || pass != "new-pass-A1" || crPass != "cr-pass-A1" || got.ConnectionRequestUsername != "duet-cr" {
		t.Fatalf("secrets: %v %v %v", found, got, err)
	}
	// Before the Set is accepted: no pending connection-request
	// credentials, and old sessions do not count.
	if _, _, ok, _ := s.PendingConnectionRequestCredentials(ctx, key, dev); ok {
		t.Fatal("pending connection-request credentials before the Set was accepted")
	}
	if e, _, _ := s.EnrolmentSession(ctx, actor, dev, false, rules); e.OldSessions != 0 {
		t.Fatalf("an old session counted before the Set: %+v", e)
	}
	if _, changed, _ := s.EnrolmentSetAnswered(ctx, actor, dev, "other-task", true, ""); changed {
		t.Fatal("another task's answer changed the enrolment")
	}
	if e, changed, err := s.EnrolmentSetAnswered(ctx, actor, dev, "task-1", true, ""); err != nil || !changed || e.SetAt == nil {
		t.Fatalf("set answered: %+v %v", e, err)
	}
	if _, _, _, found, _ := s.EnrolmentSecrets(ctx, key, dev); found {
		t.Fatal("the ACS password is still kept after the Set was accepted")
	}
	if u, p, ok, err := s.PendingConnectionRequestCredentials(ctx, key, dev); !ok || u != "duet-cr" || p != "cr-pass-A1" || err != nil {
		t.Fatalf("pending connection-request credentials: %q %v %v", u, ok, err)
	}

	// Two sessions on the old credentials: rolled back.
	if e, _, _ := s.EnrolmentSession(ctx, actor, dev, false, rules); e.State != store.EnrolmentPending || e.OldSessions != 1 {
		t.Fatalf("first old session: %+v", e)
	}
	e, _, err = s.EnrolmentSession(ctx, actor, dev, false, rules)
	if err != nil || e.State != store.EnrolmentFailed || !strings.Contains(e.Reason, "old ones") || e.DigestHA1 != "" {
		t.Fatalf("second old session: %+v %v", e, err)
	}
	if _, _, ok, _ := s.PendingConnectionRequestCredentials(ctx, key, dev); ok {
		t.Fatal("a failed enrolment's connection-request credentials are still used")
	}

	// Again, and this time the CPE uses the new credentials.
	in.Password, in.ConnectionRequestPassword = "new-pass-B2", "cr-pass-B2"
	if _, err := s.BeginEnrolment(ctx, actor, key, "Duet", dev, in, false); err != nil {
		t.Fatalf("begin after a failure: %v", err)
	}
	_ = s.EnrolmentTask(ctx, dev, "task-2")
	if _, _, err := s.EnrolmentSetAnswered(ctx, actor, dev, "task-2", true, ""); err != nil {
		t.Fatal(err)
	}
	e, changed, err := s.EnrolmentSession(ctx, actor, dev, true, rules)
	if err != nil || !changed || e.State != store.EnrolmentEnrolled {
		t.Fatalf("session on the new credentials: %+v %v", e, err)
	}
	c, err := s.FindDeviceCredentials(ctx, dev)
	if err != nil || c.DigestHA1 != store.DigestHA1("acs", "Duet", "new-pass-B2") || c.ConnectionRequestUsername != "duet-cr" {
		t.Fatalf("device credentials: %+v %v", c, err)
	}
	if _, p, _, _ := s.ConnectionRequestCredentials(ctx, key, dev); p != "cr-pass-B2" {
		t.Fatal("the enrolled connection-request password is not the device's")
	}
	if _, err := s.BeginEnrolment(ctx, actor, key, "Duet", dev, in, true); devicemodel.ErrorCode(err) != devicemodel.CodeConflict {
		t.Fatalf("begin on an enrolled device: %v, want conflict", err)
	}

	entries, _, err := s.FindAudit(ctx, store.AuditFilter{ObjectID: dev, Limit: 100})
	if err != nil || len(entries) < 5 {
		t.Fatalf("audit: %d entries, %v", len(entries), err)
	}
	for _, a := range entries {
		for _, secret := range []string{"new-pass", "cr-pass", c.DigestHA1} {
			if strings.Contains(string(a.Before)+string(a.After), secret) {
				t.Fatalf("audit entry %+v holds a secret", a)
			}
		}
	}

	if err := s.DeleteDeviceCredentials(ctx, actor, dev); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindEnrolment(ctx, dev); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("enrolment after the credentials were deleted: %v", err)
	}
}
