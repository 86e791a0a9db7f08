package console

import (
	"crypto/subtle"
	"net/http"
	"net/url"
	"strings"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// sessionCookie holds the session's secret; the database keeps only its
// SHA-256 (store.CreateSession).
const sessionCookie = "duet_session"

// secure says whether the browser reached Duet over TLS, directly or
// through a proxy that says so: only then is the cookie marked Secure
// (a Secure cookie over plain HTTP would never come back).
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (c *Console) setSessionCookie(w http.ResponseWriter, r *http.Request, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteLaxMode})
}

// session finds the request's live session. Without one, a page request
// is sent to the login page (and back after it); an htmx request or a
// live stream gets 401 with HX-Redirect, so the browser goes there too.
func (c *Console) session(w http.ResponseWriter, r *http.Request) (*store.Session, bool) {
	ck, err := r.Cookie(sessionCookie)
	if err == nil && ck.Value != "" {
		sess, err := c.st.FindSession(r.Context(), ck.Value, c.o.IdleTimeout, c.o.SessionLifetime)
		if err == nil {
			return &sess, true
		}
		if devicemodel.ErrorCode(err) != devicemodel.CodeUnauthenticated {
			c.fail(w, r, nil, err)
			return nil, false
		}
		c.setSessionCookie(w, r, "", -1)
	}
	next := "/"
	if r.Method == http.MethodGet && !strings.HasPrefix(r.URL.Path, "/live/") {
		next = r.URL.RequestURI()
	}
	to := "/login?next=" + url.QueryEscape(next)
	if r.Header.Get("HX-Request") == "true" || strings.HasPrefix(r.URL.Path, "/live/") {
		w.Header().Set("HX-Redirect", to)
		http.Error(w, "log in first", http.StatusUnauthorized)
		return nil, false
	}
	if r.Method != http.MethodGet {
		c.fail(w, r, nil, devicemodel.Errorf(devicemodel.CodeUnauthenticated, "you are not logged in, or your session ended; log in and try again"))
		return nil, false
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
	return nil, false
}

// checkCSRF: every POST carries the session's CSRF token, in the form
// (field "csrf") or, from htmx, the X-CSRF-Token header (static/app.js).
// SameSite=Lax already keeps the cookie off cross-site POSTs; the token
// also covers browsers without SameSite and same-site attackers.
func (c *Console) checkCSRF(r *http.Request, sess *store.Session) bool {
	tok := r.Header.Get("X-CSRF-Token")
	if tok == "" {
		r.Body = http.MaxBytesReader(nil, r.Body, 1<<20)
		tok = r.PostFormValue("csrf")
	}
	return tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(sess.CSRF)) == 1
}

// safeNext keeps a post-login redirect on this site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

// loginCookie carries the login form's CSRF token (double submit): the
// login form has no session yet, and a forged login would put the victim
// in the attacker's session.
const loginCookie = "duet_login"

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	data := map[string]any{"Next": safeNext(r.URL.Query().Get("next"))}
	if r.URL.Query().Get("changed") != "" {
		data["Notice"] = "Your password was changed. Log in with the new one."
	}
	c.showLogin(w, r, http.StatusOK, data)
}

func (c *Console) showLogin(w http.ResponseWriter, r *http.Request, code int, data map[string]any) {
	tok := store.NewPassword()
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: tok, Path: "/login", MaxAge: 3600,
		HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode})
	data["LoginCSRF"] = tok
	c.render(w, r, nil, code, "login", "Log in", data)
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	name, password, next := r.PostFormValue("name"), r.PostFormValue("password"), safeNext(r.PostFormValue("next"))
	ck, err := r.Cookie(loginCookie)
	if err != nil || r.PostFormValue("csrf") == "" || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(r.PostFormValue("csrf"))) != 1 {
		metricLogins.WithLabelValues("refused").Inc()
		c.showLogin(w, r, http.StatusForbidden, map[string]any{"Next": next, "Name": name,
			"Error": "The login form had expired or did not come from this console; try again."})
		return
	}
	u, err := c.st.Login(r.Context(), name, password, clientAddress(r), c.o.LoginLimit)
	if err != nil {
		code, msg := statusOf(err), devicemodel.ErrorMessage(err)
		switch devicemodel.ErrorCode(err) {
		case devicemodel.CodeUnauthenticated:
			metricLogins.WithLabelValues("refused").Inc()
			msg = "Wrong user name or password."
		case devicemodel.CodeResourcesExceeded:
			metricLogins.WithLabelValues("rate_limited").Inc()
			c.rl.Warn("console login refused: too many failures", "user", name, "address", clientAddress(r))
			w.Header().Set("Retry-After", "60")
			msg = "Too many failed logins. Wait a few minutes, then try again."
		default:
			c.fail(w, r, nil, err)
			return
		}
		c.showLogin(w, r, code, map[string]any{"Next": next, "Name": name, "Error": msg})
		return
	}
	secret, _, err := c.st.CreateSession(r.Context(), u, clientAddress(r))
	if err != nil {
		c.fail(w, r, nil, err)
		return
	}
	metricLogins.WithLabelValues("ok").Inc()
	c.log.Info("console login", "user", u.Name, "role", u.Role, "address", clientAddress(r))
	c.setSessionCookie(w, r, secret, int(c.o.SessionLifetime.Seconds()))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	if ck, err := r.Cookie(sessionCookie); err == nil {
		if err := c.st.DeleteSession(r.Context(), ck.Value); err != nil {
			return err
		}
	}
	c.setSessionCookie(w, r, "", -1)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
	return nil
}
