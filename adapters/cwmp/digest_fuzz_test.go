package cwmp

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/ratelog"
)

// FuzzDigestAuthorization: whatever Authorization header a CPE sends, the
// parser stays bounded and the check neither panics nor accepts a header
// whose response was not computed from the password.
func FuzzDigestAuthorization(f *testing.F) {
	a := &ACS{o: Options{Realm: "Duet"}, nonces: newNonceStore(1024, time.Minute),
		refusals: ratelog.New(slog.New(slog.NewTextHandler(io.Discard, nil)), 0, 0)}
	nonce := a.nonces.issue(time.Now())
	ha := ha1("acs", "Duet", testPassword)
	for _, s := range []string{
		`username="acs", realm="Duet", nonce="` + nonce + `", uri="/", qop=auth, nc=00000001, cnonce="c", response="00"`,
		`username="acs", realm="Duet", nonce="` + nonce + `", uri="/", response="00"`,
		`username="a\"cs", realm=Duet, qop="auth-int", algorithm=SHA-256`,
		`, , ,=,="", k="unterminated`, `username`, "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		if p := parseAuthParams(h); len(p) > 32 {
			t.Fatalf("%d params from %q", len(p), h)
		}
		r := httptest.NewRequest("POST", "/", strings.NewReader(""))
		used, _ := a.verifyDigest(r, h, []credential{{kindShared, "acs", ha}}, nil)
		if used != nil {
			// Only a response computed from HA1 can pass: recompute it.
			p := parseAuthParams(h)
			ha2 := md5hex("POST:" + p["uri"])
			want := md5hex(ha + ":" + p["nonce"] + ":" + p["nc"] + ":" + p["cnonce"] + ":" + p["qop"] + ":" + ha2)
			if p["qop"] == "auth-int" {
				want = md5hex(ha + ":" + p["nonce"] + ":" + p["nc"] + ":" + p["cnonce"] + ":" + p["qop"] + ":" + md5hex("POST:"+p["uri"]+":"+md5hex("")))
			}
			if !strings.EqualFold(p["response"], want) {
				t.Fatalf("accepted %q", h)
			}
		}
	})
}
