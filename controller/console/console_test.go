package console

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func newTestConsole(t *testing.T) (*Console, *store.Store) {
	t.Helper()
	st, _ := storetest.Open(t)
	c, err := New(Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, st
}

type answer struct {
	code    int
	body    string
	header  http.Header
	cookies []*http.Cookie
}

func do(c *Console, method, target string, form url.Values, cookies []*http.Cookie, header map[string]string) answer {
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req := httptest.NewRequest(method, target, body)
	req.RemoteAddr = "192.0.2.10:4000"
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	for _, ck := range cookies {
		req.AddCookie(ck)
	}
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	res := rec.Result()
	return answer{code: rec.Code, body: rec.Body.String(), header: rec.Header(), cookies: res.Cookies()}
}

func cookie(cs []*http.Cookie, name string) *http.Cookie {
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	return nil
}

var csrfMeta = regexp.MustCompile(`<meta name="csrf-token" content="([^"]+)">`)
var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// logIn goes through the login form and returns the session cookie and
// the session's CSRF token.
func logIn(t *testing.T, c *Console, name, pw string, header map[string]string) (*http.Cookie, string) {
	t.Helper()
	page := do(c, "GET", "/login", nil, nil, header)
	m := csrfField.FindStringSubmatch(page.body)
	if page.code != 200 || m == nil {
		t.Fatalf("login page: %d\n%s", page.code, page.body)
	}
	res := do(c, "POST", "/login", url.Values{"name": {name}, "password": {pw}, "csrf": {m[1]}, "next": {"/devices"}},
		[]*http.Cookie{cookie(page.cookies, loginCookie)}, header)
	sess := cookie(res.cookies, sessionCookie)
	if res.code != http.StatusSeeOther || res.header.Get("Location") != "/devices" || sess == nil {
		t.Fatalf("login: %d %v\n%s", res.code, res.header, res.body)
	}
	home := do(c, "GET", "/", nil, []*http.Cookie{sess}, nil)
	m = csrfMeta.FindStringSubmatch(home.body)
	if home.code != 200 || m == nil {
		t.Fatalf("overview: %d\n%s", home.code, home.body)
	}
	return sess, m[1]
}

// TestSessionsCookiesCSRFAndRoles: the cookie's attributes, the login
// form's own CSRF token, a POST without the session's token, a role below
// a route's, an open redirect through next, logout.
func TestSessionsCookiesCSRFAndRoles(t *testing.T) {
	c, st := newTestConsole(t)
	ctx := context.Background()
	if _, err := st.CreateUser(ctx, "test", "vera", store.RoleViewer, "veras long password"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateUser(ctx, "test", "otto", store.RoleOperator, "ottos long password"); err != nil {
		t.Fatal(err)
	}

	// Without a session every page sends the browser to the login page,
	// and back afterwards; htmx gets HX-Redirect.
	if a := do(c, "GET", "/devices?q=x", nil, nil, nil); a.code != http.StatusSeeOther || a.header.Get("Location") != "/login?next=%2Fdevices%3Fq%3Dx" {
		t.Fatalf("no session: %d %v", a.code, a.header)
	}
	if a := do(c, "GET", "/devices", nil, nil, map[string]string{"HX-Request": "true"}); a.code != http.StatusUnauthorized || a.header.Get("HX-Redirect") == "" {
		t.Fatalf("no session, htmx: %d %v", a.code, a.header)
	}
	if a := do(c, "POST", "/users", url.Values{"name": {"x"}}, nil, nil); a.code != http.StatusUnauthorized {
		t.Fatalf("POST without a session: %d", a.code)
	}

	// A login form posted without its own token (login CSRF) is refused.
	if a := do(c, "POST", "/login", url.Values{"name": {"vera"}, "password": {"veras long password"}}, nil, nil); a.code != http.StatusForbidden || cookie(a.cookies, sessionCookie) != nil {
		t.Fatalf("login without the form's token: %d", a.code)
	}

	sess, csrf := logIn(t, c, "vera", "veras long password", nil)
	if !sess.HttpOnly || sess.SameSite != http.SameSiteLaxMode || sess.Secure || sess.Path != "/" {
		t.Fatalf("session cookie over HTTP: %+v", sess)
	}
	// Behind a TLS-terminating proxy the cookie is Secure.
	if s2, _ := logIn(t, c, "vera", "veras long password", map[string]string{"X-Forwarded-Proto": "https"}); !s2.Secure {
		t.Fatalf("session cookie over HTTPS: %+v", s2)
	}

	// The viewer reads, and is refused every change, even with its token.
	if a := do(c, "GET", "/devices", nil, []*http.Cookie{sess}, nil); a.code != 200 || strings.Contains(a.body, "Users</a>") {
		t.Fatalf("viewer's device list: %d", a.code)
	}
	for _, path := range []string{"/users", "/devices/dev-1/reboot", "/devices/dev-1/parameters/set"} {
		a := do(c, "POST", path, url.Values{"csrf": {csrf}, "name": {"eve"}, "role": {"admin"}}, []*http.Cookie{sess}, nil)
		if a.code != http.StatusForbidden || !strings.Contains(a.body, "Your role (viewer) may not do this") {
			t.Fatalf("viewer POST %s: %d\n%s", path, a.code, a.body)
		}
	}
	if a := do(c, "GET", "/users", nil, []*http.Cookie{sess}, nil); a.code != http.StatusForbidden {
		t.Fatalf("viewer's users page: %d", a.code)
	}

	// An operator without the session's CSRF token: refused before the role.
	osess, ocsrf := logIn(t, c, "otto", "ottos long password", nil)
	for _, tok := range []string{"", csrf, ocsrf + "x"} {
		a := do(c, "POST", "/devices/dev-1/reboot", url.Values{"csrf": {tok}}, []*http.Cookie{osess}, nil)
		if a.code != http.StatusForbidden || !strings.Contains(a.body, "CSRF") {
			t.Fatalf("operator POST with token %q: %d\n%s", tok, a.code, a.body)
		}
	}
	// With it (as a header, the way htmx sends it) the request goes on:
	// this console has no task queue, which it says in words.
	a := do(c, "POST", "/devices/dev-1/reboot", nil, []*http.Cookie{osess}, map[string]string{"X-CSRF-Token": ocsrf})
	if a.code != http.StatusServiceUnavailable || !strings.Contains(a.body, "Tasks are not available on this controller") {
		t.Fatalf("operator POST with the token: %d\n%s", a.code, a.body)
	}

	// next never leaves the site.
	for _, next := range []string{"//evil.example/", "https://evil.example/", "/\\evil.example"} {
		if got := safeNext(next); got != "/" {
			t.Errorf("safeNext(%q) = %q", next, got)
		}
	}

	// Logout ends the session in the database.
	if a := do(c, "POST", "/logout", url.Values{"csrf": {csrf}}, []*http.Cookie{sess}, nil); a.code != http.StatusSeeOther {
		t.Fatalf("logout: %d", a.code)
	}
	if a := do(c, "GET", "/", nil, []*http.Cookie{sess}, nil); a.code != http.StatusSeeOther {
		t.Fatalf("after logout: %d", a.code)
	}

	// Nothing is loaded from elsewhere, and the page cannot be framed.
	if a := do(c, "GET", "/login", nil, nil, nil); !strings.Contains(a.header.Get("Content-Security-Policy"), "default-src 'self'") || a.header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("headers: %v", a.header)
	}
}

// TestStaticAssetsEmbedded: the vendored packages are served from the
// binary.
func TestStaticAssetsEmbedded(t *testing.T) {
	c, _ := newTestConsole(t)
	for _, p := range []string{"/static/vendor/htmx/htmx.min.js", "/static/vendor/htmx-ext-sse/sse.min.js",
		"/static/vendor/pico/pico.min.css", "/static/vendor/redoc/redoc.standalone.js", "/static/app.js"} {
		if a := do(c, "GET", p, nil, nil, nil); a.code != 200 || len(a.body) < 100 {
			t.Errorf("GET %s: %d, %d bytes", p, a.code, len(a.body))
		}
	}
}

// TestTokensPage: an admin makes an API token in the console, which
// works on the API's lookup, and revokes it; both are in the audit log
// under the admin's name, without the secret.
func TestTokensPage(t *testing.T) {
	c, st := newTestConsole(t)
	ctx := context.Background()
	if _, err := st.CreateUser(ctx, "test", "ada", store.RoleAdmin, "adas long password"); err != nil {
		t.Fatal(err)
	}
	sess, csrf := logIn(t, c, "ada", "adas long password", nil)
	a := do(c, "POST", "/tokens", url.Values{"csrf": {csrf}, "name": {"grafana"}, "role": {"viewer"}}, []*http.Cookie{sess}, nil)
	m := regexp.MustCompile(`<code id="token-secret">(duet_[^<]+)</code>`).FindStringSubmatch(a.body)
	if a.code != 200 || m == nil {
		t.Fatalf("create token: %d\n%s", a.code, a.body)
	}
	tok, err := st.FindTokenBySecret(ctx, m[1])
	if err != nil || tok.Role != store.RoleViewer || tok.Name != "grafana" {
		t.Fatalf("the console's token: %+v %v", tok, err)
	}
	if a := do(c, "POST", "/tokens/"+tok.ID+"/revoke", url.Values{"csrf": {csrf}}, []*http.Cookie{sess}, nil); a.code != http.StatusSeeOther {
		t.Fatalf("revoke: %d\n%s", a.code, a.body)
	}
	if _, err := st.FindTokenBySecret(ctx, m[1]); err == nil {
		t.Fatal("a revoked token still authenticates")
	}
	var n int
	var leaked bool
	if err := st.Pool().QueryRow(ctx, `SELECT count(*), bool_or(after::text LIKE '%duet_%') FROM audit_log WHERE object_type = 'token' AND object_id = $1 AND actor = 'ada (user)'`,
		tok.ID).Scan(&n, &leaked); err != nil || n != 2 || leaked {
		t.Fatalf("token audit rows: %d (secret in them: %v) %v", n, leaked, err)
	}
	// The audit page finds them by actor and entity, and only them.
	a = do(c, "GET", "/audit?"+url.Values{"actor": {"ada (user)"}, "type": {"token"}}.Encode(), nil, []*http.Cookie{sess}, nil)
	if a.code != 200 || strings.Count(a.body, "token "+tok.ID) != 2 {
		t.Fatalf("audit page: %d\n%s", a.code, a.body)
	}
	a = do(c, "GET", "/audit?"+url.Values{"actor": {"someone else"}}.Encode(), nil, []*http.Cookie{sess}, nil)
	if a.code != 200 || !strings.Contains(a.body, "No entry matches.") {
		t.Fatalf("audit page of another actor: %d\n%s", a.code, a.body)
	}
	if a := do(c, "GET", "/audit?since=yesterday", nil, []*http.Cookie{sess}, nil); a.code != 400 || !strings.Contains(a.body, "is not a date and time") {
		t.Fatalf("audit with a bad time: %d", a.code)
	}
	// A bad role is said in words, on the page.
	if a := do(c, "POST", "/tokens", url.Values{"csrf": {csrf}, "name": {"x"}, "role": {"root"}}, []*http.Cookie{sess}, nil); a.code != 400 || !strings.Contains(a.body, "is not one of admin, operator, viewer") {
		t.Fatalf("bad role: %d\n%s", a.code, a.body)
	}
}
