package api

import (
	"context"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

var metricAuthFailures = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_api_auth_failures_total",
	Help: "API requests refused by authentication (401) or authorisation (403), by reason.",
}, []string{"reason"})

type tokenKey struct{}

// TokenFrom returns the authenticated token of a request.
func TokenFrom(ctx context.Context) (store.Token, bool) {
	t, ok := ctx.Value(tokenKey{}).(store.Token)
	return t, ok
}

// Which role may use which route: the role ranks and rights are the
// service's (controller roles.go); the routes are the API's.
//
// adminRoutes are the routes only an admin may use: they hand out or
// remove a device's secrets.
var adminRoutes = map[string]bool{
	"PUT /api/v1/devices/{id}/credentials":    true,
	"DELETE /api/v1/devices/{id}/credentials": true,
	// Hands the CPE new secrets.
	"POST /api/v1/devices/{id}/credentials/enrolment": true,
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
	return controller.RoleAtLeast(role, RouteRole(pattern))
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
func authenticate(tokens controller.TokenFinder, next http.Handler) http.Handler {
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
		t, err := controller.Authenticate(r.Context(), tokens, secret)
		if err != nil {
			code := StatusOf(err)
			switch code {
			case http.StatusUnauthorized:
				metricAuthFailures.WithLabelValues("invalid").Inc()
				w.Header().Set("WWW-Authenticate", `Bearer realm="duet", error="invalid_token"`)
				err = devicemodel.Errorf(devicemodel.CodeUnauthenticated, "invalid or revoked token")
			case http.StatusForbidden:
				// A role this version does not know.
				metricAuthFailures.WithLabelValues("forbidden").Inc()
			default:
				err = devicemodel.Errorf(devicemodel.CodeUnavailable, "cannot check the token now")
				code = http.StatusServiceUnavailable
			}
			writeError(w, code, err)
			return
		}
		ctx := store.ContextWithActor(context.WithValue(r.Context(), tokenKey{}, t), controller.TokenActor(t))
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
