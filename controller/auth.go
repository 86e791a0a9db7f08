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

// allowed says whether role may use method. Viewers read; operators and
// admins do everything the API offers today (token management is on the
// command line, so nothing is admin-only yet).
func allowed(role store.Role, method string) bool {
	switch role {
	case store.RoleAdmin, store.RoleOperator:
		return true
	case store.RoleViewer:
		return method == http.MethodGet || method == http.MethodHead
	}
	return false
}

// authenticate wraps the API: every request needs "Authorization: Bearer
// <token>" (RFC 6750 §2.1) of a live token whose role allows the method.
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
		if !allowed(t.Role, r.Method) {
			metricAuthFailures.WithLabelValues("forbidden").Inc()
			writeError(w, http.StatusForbidden, devicemodel.Errorf(devicemodel.CodeDenied, "role %s may not %s", t.Role, r.Method))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tokenKey{}, t)))
	})
}
