package api

import (
	"bytes"
	"io"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/ratelog"
)

var metricAPIRefused = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_api_refused_total",
	Help: "API requests refused before any handler ran, by reason (nul).",
}, []string{"reason"})

// rejectNUL answers 400 to a request with a NUL byte in its path, query
// or JSON body (raw, or as the escape \u0000): PostgreSQL text cannot hold
// one, so it would otherwise surface as a 500 wherever it reached a query
// (issue 15 §1). No name, path or value Duet stores needs it. A body that
// is not JSON but a file's bytes (rawBody) is not looked into: a firmware
// image holds NUL bytes, and they go to the object store, not to a query.
func rejectNUL(log *ratelog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		where := ""
		switch {
		case strings.IndexByte(r.URL.Path, 0) >= 0 || strings.Contains(strings.ToLower(r.URL.RawPath), "%00"):
			where = "path"
		case strings.Contains(strings.ToLower(r.URL.RawQuery), "%00") || strings.IndexByte(r.URL.RawQuery, 0) >= 0:
			where = "query"
		}
		if where == "" && r.Body != nil && r.Body != http.NoBody && !rawBody(r) {
			// Bounded: a larger body is refused by its handler anyway
			// (413); only what fits is checked, the rest passes on.
			head, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
			if err == nil && jsonHasNUL(head) {
				where = "body"
			}
			r.Body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(head), r.Body), r.Body}
		}
		if where != "" {
			metricAPIRefused.WithLabelValues("nul").Inc()
			log.Warn("api request refused: NUL byte", "method", r.Method, "where", where, "remote", r.RemoteAddr)
			writeError(w, http.StatusBadRequest, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "NUL byte in the request %s", where))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// rawBody reports whether r's body is a file's bytes, streamed to the
// repository (POST /api/v1/files), rather than JSON.
func rawBody(r *http.Request) bool {
	return r.Method == http.MethodPost && r.URL.Path == "/api/v1/files"
}

// jsonHasNUL finds a raw NUL or a JSON \u0000 escape that is not itself
// escaped (an odd number of backslashes before the u).
func jsonHasNUL(b []byte) bool {
	if bytes.IndexByte(b, 0) >= 0 {
		return true
	}
	for i := 0; ; {
		j := bytes.Index(b[i:], []byte(`u0000`))
		if j < 0 {
			return false
		}
		j += i
		n := 0
		for k := j - 1; k >= 0 && b[k] == '\\'; k-- {
			n++
		}
		if n%2 == 1 {
			return true
		}
		i = j + 1
	}
}
