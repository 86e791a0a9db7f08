package api

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/duet-dm/duet/pkg/ratelog"
)

// TestRejectNULPassesFileBytes: a file streamed to POST /api/v1/files is
// bytes, not JSON; a firmware image's NUL bytes reach the handler whole.
// Before, the guard answered 400 to every binary upload holding a NUL (any
// real firmware image), while a NUL in the upload's query or in a JSON
// body elsewhere is still refused.
func TestRejectNULPassesFileBytes(t *testing.T) {
	var got []byte
	h := rejectNUL(ratelog.New(slog.New(slog.DiscardHandler), 0, 0), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = io.ReadAll(r.Body)
		w.WriteHeader(http.StatusCreated)
	}))
	image := "\x7fELF\x00\x00\x01" + strings.Repeat("\x00", 4096) + "end"
	for _, c := range []struct {
		method, target, body string
		want                 int
	}{
		{"POST", "/api/v1/files?name=fw.bin&type=firmware", image, http.StatusCreated},
		{"POST", "/api/v1/files?name=fw%00.bin&type=firmware", image, http.StatusBadRequest},
		{"POST", "/api/v1/groups", "{\"name\":\"a\x00\"}", http.StatusBadRequest},
		{"PUT", "/api/v1/files", image, http.StatusBadRequest},
	} {
		got = nil
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, c.target, strings.NewReader(c.body)))
		if rec.Code != c.want {
			t.Errorf("%s %s: %d, want %d", c.method, c.target, rec.Code, c.want)
		}
		if c.want == http.StatusCreated && string(got) != c.body {
			t.Errorf("%s %s: the handler read %d bytes of %d", c.method, c.target, len(got), len(c.body))
		}
	}
}
