package store_test

import (
	"context"
	"testing"

	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
	"github.com/duet-dm/duet/pkg/usp"
)

func TestUSPAgentSecretsAndEnrolment(t *testing.T) {
	ctx := context.Background()
	st, _ := storetest.Open(t)
	ck := newCredKey(t)
	_, secret, err := st.SetUSPAgentSecret(ctx, "admin", "os::1-A", "")
	if err != nil || len(secret) < store.MinAgentSecretLen {
		t.Fatalf("set: %q %v", secret, err)
	}
	if ok, err := st.CheckUSPAgentSecret(ctx, ck, "os::1-A", secret); !ok || err != nil {
		t.Fatalf("own secret refused: %v", err)
	}
	if ok, _ := st.CheckUSPAgentSecret(ctx, ck, "os::1-B", secret); ok {
		t.Fatal("A's secret accepted for B")
	}
	if _, _, err := st.SetUSPAgentSecret(ctx, "admin", "os::1-A", "short"); err == nil {
		t.Fatal("a short secret accepted")
	}
	// Rotation: the old secret stops working.
	_, secret2, err := st.SetUSPAgentSecret(ctx, "admin", "os::1-A", "")
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := st.CheckUSPAgentSecret(ctx, ck, "os::1-A", secret); ok {
		t.Fatal("the rotated-out secret still works")
	}
	if ok, _ := st.CheckUSPAgentSecret(ctx, ck, "os::1-A", secret2); !ok {
		t.Fatal("the new secret is refused")
	}

	k, key, err := st.CreateUSPEnrolmentKey(ctx, "admin", ck, "os::2-*")
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := st.CheckUSPAgentSecret(ctx, ck, "os::2-X", usp.EnrolmentPassword(key, "os::2-X")); !ok {
		t.Fatal("enrolment password refused")
	}
	if ok, _ := st.CheckUSPAgentSecret(ctx, ck, "os::2-Y", usp.EnrolmentPassword(key, "os::2-X")); ok {
		t.Fatal("X's enrolment password accepted for Y")
	}
	if ok, _ := st.CheckUSPAgentSecret(ctx, ck, "os::3-X", usp.EnrolmentPassword(key, "os::3-X")); ok {
		t.Fatal("enrolment password accepted outside the pattern")
	}
	if _, _, err := st.CreateUSPEnrolmentKey(ctx, "admin", ck, "*"); err == nil {
		t.Fatal("a pattern of only '*' accepted")
	}
	if err := st.DeleteUSPEnrolmentKey(ctx, "admin", k.ID); err != nil {
		t.Fatal(err)
	}
	if ok, _ := st.CheckUSPAgentSecret(ctx, ck, "os::2-X", usp.EnrolmentPassword(key, "os::2-X")); ok {
		t.Fatal("a deleted key still enrols")
	}
}

func TestUSPAdmission(t *testing.T) {
	ctx := context.Background()
	st, _ := storetest.Open(t)
	if s, err := st.HoldUSPAgent(ctx, "os::9-Z", "mqtt", ""); err != nil || s != store.AdmissionPending {
		t.Fatalf("hold: %q %v", s, err)
	}
	if s, err := st.HoldUSPAgent(ctx, "os::9-Z", "mqtt", ""); err != nil || s != store.AdmissionPending {
		t.Fatalf("hold again: %q %v", s, err)
	}
	l, err := st.ListUSPAdmission(ctx, store.AdmissionPending, 10, "")
	if err != nil || len(l) != 1 || l[0].Attempts != 2 {
		t.Fatalf("list: %+v %v", l, err)
	}
	if _, err := st.DecideUSPAgent(ctx, "admin", "os::9-Z", true); err != nil {
		t.Fatal(err)
	}
	if s, _ := st.AdmissionState(ctx, "os::9-Z"); s != store.AdmissionApproved {
		t.Fatalf("state %q", s)
	}
	if s, _ := st.HoldUSPAgent(ctx, "os::9-Z", "mqtt", ""); s != store.AdmissionApproved {
		t.Fatalf("an approved agent's attempt reads %q", s)
	}
}
