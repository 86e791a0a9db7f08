package controller

import (
	"context"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

var metricAuthFailures = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_api_auth_failures_total",
	Help: "API requests refused by authentication (401) or authorisation (403), by reason.",
}, []string{"reason"})

// TokenFinder resolves a bearer token (store.Store does).
type TokenFinder interface {
	// FindTokenBySecret returns CodeUnauthenticated for an unknown or
	// revoked token.
	FindTokenBySecret(ctx context.Context, secret string) (store.Token, error)
}

var _ TokenFinder = (*store.Store)(nil)

type tokenKey struct{}

// TokenFrom returns the authenticated token of a request.
func TokenFrom(ctx context.Context) (store.Token, bool) {
	t, ok := ctx.Value(tokenKey{}).(store.Token)
	return t, ok
}

// tokenActor names a token's owner in the audit log and on the tasks it
// creates: "name (id)".
func tokenActor(t store.Token) string { return t.Name + " (" + t.ID + ")" }

// Roles, each allowed what the one below it is (README "Roles"):
//   - viewer reads (GET, HEAD) every route;
//   - operator also runs tasks and task batches, tags devices, and
//     manages groups and policies, rollouts included;
//   - admin also sets and deletes device credentials (and manages tokens,
//     on the command line, and later users).
var roleRank = map[store.Role]int{store.RoleViewer: 1, store.RoleOperator: 2, store.RoleAdmin: 3}

// adminRoutes are the routes only an admin may use: they hand out or
// remove a device's secrets.
var adminRoutes = map[string]bool{
	"PUT /api/v1/devices/{id}/credentials":    true,
	"DELETE /api/v1/devices/{id}/credentials": true,
}

// RouteRole is the least role a route pattern ("METHOD /path") needs.
func RouteRole(pattern string) store.Role {
	method, _, _ := strings.Cut(pattern, " ")
	switch {
	case adminRoutes[pattern]:
		return store.RoleAdmin
	case method == http.MethodGet || method == http.MethodHead:
		return store.RoleViewer
	}
	return store.RoleOperator
}

// allowed says whether role may use the route pattern.
func allowed(role store.Role, pattern string) bool {
	have, ok := roleRank[role]
	return ok && have >= roleRank[RouteRole(pattern)]
}

// authorize refuses a request whose token's role may not use the route
// pattern with 403 (and counts it); it reports whether to go on.
func authorize(w http.ResponseWriter, r *http.Request, pattern string) bool {
	t, ok := TokenFrom(r.Context())
	if ok && allowed(t.Role, pattern) {
		return true
	}
	metricAuthFailures.WithLabelValues("forbidden").Inc()
	writeError(w, http.StatusForbidden, devicemodel.Errorf(devicemodel.CodeDenied, "role %s may not %s (needs %s)", t.Role, pattern, RouteRole(pattern)))
	return false
}

// authenticate wraps the API: every request needs "Authorization: Bearer
// <token>" (RFC 6750 §2.1) of a live token; each route checks the role
// (authorize).
func authenticate(tokens TokenFinder, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		scheme, secret, ok := strings.Cut(h, " ")
		secret = strings.TrimSpace(secret)
		if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" {
			metricAuthFailures.WithLabelValues("missing").Inc()
			// RFC 6750 §3: a 401 names the scheme.
			w.Header().Set("WWW-Authenticate", `Bearer realm="duet"`)
			writeError(w, http.StatusUnauthorized, devicemodel.Errorf(devicemodel.CodeUnauthenticated, "missing bearer token (Authorization: Bearer <token>)"))
			return
		}
		t, err := tokens.FindTokenBySecret(r.Context(), secret)
		if err != nil {
			code := statusOf(err)
			if code == http.StatusUnauthorized {
				metricAuthFailures.WithLabelValues("invalid").Inc()
				w.Header().Set("WWW-Authenticate", `Bearer realm="duet", error="invalid_token"`)
				err = devicemodel.Errorf(devicemodel.CodeUnauthenticated, "invalid or revoked token")
			} else {
				err = devicemodel.Errorf(devicemodel.CodeUnavailable, "cannot check the token now")
				code = http.StatusServiceUnavailable
			}
			writeError(w, code, err)
			return
		}
		if _, ok := roleRank[t.Role]; !ok {
			metricAuthFailures.WithLabelValues("forbidden").Inc()
			writeError(w, http.StatusForbidden, devicemodel.Errorf(devicemodel.CodeDenied, "unknown role %q", t.Role))
			return
		}
		ctx := store.ContextWithActor(context.WithValue(r.Context(), tokenKey{}, t), tokenActor(t))
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
