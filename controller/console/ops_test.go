package console

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/duet-dm/duet/pkg/store"
)

// addDevices puts devices in the registry as the registry would: ids
// with a manufacturer each, cwmp, online.
func addDevices(t *testing.T, st *store.Store, manufacturer string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := st.Pool().Exec(context.Background(), `INSERT INTO devices (id, protocol, manufacturer, oui, product_class,
			serial_number, model_name, software_version, hardware_version, first_seen, last_seen, online, online_changed_at,
			transport, facts_updated_at) VALUES ($1, 'cwmp', $2, '00D09E', 'PC', 'SN-' || $1, 'Model', '1.0', '1.0',
			now(), now(), true, now(), 'cwmp', now())`, id, manufacturer); err != nil {
			t.Fatal(err)
		}
	}
}

// usersOfEveryRole makes vera (viewer), otto (operator) and ada (admin),
// each with the password "<name>s long password", and logs them in.
func usersOfEveryRole(t *testing.T, c *Console, st *store.Store) map[string]loggedIn {
	t.Helper()
	out := map[string]loggedIn{}
	for name, role := range map[string]store.Role{"vera": store.RoleViewer, "otto": store.RoleOperator, "ada": store.RoleAdmin} {
		if _, err := st.CreateUser(context.Background(), "test", name, role, name+"s long password"); err != nil {
			t.Fatal(err)
		}
		ck, csrf := logIn(t, c, name, name+"s long password", nil)
		out[name] = loggedIn{cookies: []*http.Cookie{ck}, csrf: csrf}
	}
	return out
}

type loggedIn struct {
	cookies []*http.Cookie
	csrf    string
}

// TestConsoleSearchIsTheAPIs: the device list reads its form with the
// API's parser, so every filter of GET /api/v1/devices works in the
// console too (manufacturer and last_seen_* were ignored before) and a
// bad value is refused naming it.
func TestConsoleSearchIsTheAPIs(t *testing.T) {
	c, st := newTestConsole(t)
	us := usersOfEveryRole(t, c, st)
	addDevices(t, st, "ACME", "s-acme-1", "s-acme-2")
	addDevices(t, st, "Other", "s-other-1")
	v := us["vera"]
	a := do(c, "GET", "/devices?manufacturer=ACME", nil, v.cookies, nil)
	if a.code != 200 || !strings.Contains(a.body, "s-acme-2") || strings.Contains(a.body, "s-other-1") {
		t.Fatalf("manufacturer=ACME: %d\n%s", a.code, a.body)
	}
	a = do(c, "GET", "/devices?last_seen_before=2000-01-01T00:00:00Z", nil, v.cookies, nil)
	if a.code != 200 || strings.Contains(a.body, "s-acme-1") {
		t.Fatalf("last_seen_before 2000: %d\n%s", a.code, a.body)
	}
	a = do(c, "GET", "/devices?param="+"Device.X%0A%0ADevice.Y:eq:1", nil, v.cookies, nil)
	if a.code != 400 || !strings.Contains(a.body, `&#34;param&#34; #1`) {
		t.Fatalf("bad condition: %d\n%s", a.code, a.body)
	}
	a = do(c, "GET", "/devices?online=maybe", nil, v.cookies, nil)
	if a.code != 400 || !strings.Contains(a.body, "&#34;online&#34;: must be true or false") {
		t.Fatalf("online=maybe: %d\n%s", a.code, a.body)
	}
}
