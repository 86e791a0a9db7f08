package api

import (
	"testing"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestRolesPerRoute: what each role may do, route by route, as the README
// table says: viewers read; operators also run tasks, batches, tags,
// groups, policies and rollouts; only admins change credentials.
func TestRolesPerRoute(t *testing.T) {
	st, _ := storetest.Open(t)
	a := New(Options{Store: st, Tasks: &controller.TaskQueue{}})
	registered := map[string]bool{}
	for _, p := range a.patterns {
		registered[p] = true
	}
	for p := range adminRoutes {
		if !registered[p] {
			t.Errorf("admin route %q is not a route", p)
		}
	}
	for _, c := range []struct {
		pattern                 string
		viewer, operator, admin bool
	}{
		{"GET /api/v1/devices", true, true, true},
		{"GET /api/v1/devices/{id}/credentials", true, true, true},
		{"POST /api/v1/devices/{id}/tasks", false, true, true},
		{"DELETE /api/v1/tasks/{id}", false, true, true},
		{"POST /api/v1/tasks/{id}/retry", false, true, true},
		{"POST /api/v1/tasks", false, true, true},
		{"DELETE /api/v1/task-batches/{id}", false, true, true},
		{"POST /api/v1/devices/{id}/tags/{tag}", false, true, true},
		{"POST /api/v1/groups", false, true, true},
		{"POST /api/v1/policies", false, true, true},
		{"POST /api/v1/policies/{id}/enable", false, true, true},
		{"PUT /api/v1/devices/{id}/credentials", false, false, true},
		{"DELETE /api/v1/devices/{id}/credentials", false, false, true},
	} {
		if !registered[c.pattern] {
			t.Errorf("%q is not a route", c.pattern)
			continue
		}
		for role, want := range map[store.Role]bool{store.RoleViewer: c.viewer, store.RoleOperator: c.operator, store.RoleAdmin: c.admin} {
			if got := allowed(role, c.pattern); got != want {
				t.Errorf("%s on %s: allowed %v, want %v", role, c.pattern, got, want)
			}
		}
	}
	for _, p := range a.patterns {
		if allowed("", p) || allowed("root", p) {
			t.Errorf("an unknown role may use %s", p)
		}
		if !allowed(store.RoleAdmin, p) {
			t.Errorf("admin may not use %s", p)
		}
	}
}
