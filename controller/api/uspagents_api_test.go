package api_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/duet-dm/duet/pkg/store"
)

// TestUSPAgentRoutesAdminOnly: identities are handed out and decided by
// admins only; the secret appears once; a decision is audited.
func TestUSPAgentRoutesAdminOnly(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, viewer, err := e.store.CreateToken(ctx, "viewer", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	_, operator, err := e.store.CreateToken(ctx, "operator", store.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	do := func(tok, method, path string) (int, string) {
		res, err := e.doAs(tok, method, path, "")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	for _, r := range []struct{ method, path string }{
		{"PUT", "/api/v1/usp/agents/os::1-A/secret"},
		{"GET", "/api/v1/usp/agents/os::1-A/secret"},
		{"POST", "/api/v1/usp/admission/os::1-A/approve"},
		{"POST", "/api/v1/usp/enrolment-keys"},
	} {
		if code, _ := do(operator, r.method, r.path); code != http.StatusForbidden {
			t.Errorf("%s %s by an operator: %d, want 403", r.method, r.path, code)
		}
	}
	code, body := do(e.token, "PUT", "/api/v1/usp/agents/os::1-A/secret")
	if code != http.StatusOK || !strings.Contains(body, `"secret":`) {
		t.Fatalf("admin set secret: %d %s", code, body)
	}
	if code, body := do(e.token, "GET", "/api/v1/usp/agents/os::1-A/secret"); code != http.StatusOK || strings.Contains(body, `"secret":`) {
		t.Fatalf("get shows the secret or fails: %d %s", code, body)
	}
	if code, _ := do(e.token, "POST", "/api/v1/usp/admission/os::1-B/approve"); code != http.StatusOK {
		t.Fatalf("admin approve: %d", code)
	}
	if code, body := do(viewer, "GET", "/api/v1/usp/admission?state=all"); code != http.StatusOK || !strings.Contains(body, "os::1-B") {
		t.Fatalf("viewer list: %d %s", code, body)
	}
	if code, body := do(e.token, "GET", "/api/v1/audit"); code != http.StatusOK || !strings.Contains(body, "usp_agent_admission") || strings.Contains(body, "hash") {
		t.Fatalf("audit: %d %s", code, body)
	}
}
