package cwmp

import (
	"net/http"
	"strings"
	"testing"

	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// digestClient posts one Inform per fresh connection, answering the
// challenge itself so the test controls every Digest parameter.
type digestClient struct {
	t     *testing.T
	url   string
	body  []byte
	nonce string
}

func newDigestClient(t *testing.T, e *env, serial string) *digestClient {
	t.Helper()
	c := newCPE(t, e.url, "Device.", serial, true, false)
	body, err := cwmp.Encode(&cwmp.Envelope{Body: c.inform(cwmp.EventPeriodic)})
	if err != nil {
		t.Fatal(err)
	}
	return &digestClient{t: t, url: e.url, body: body}
}

func (d *digestClient) post(authz string) *http.Response {
	d.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, d.url, strings.NewReader(string(d.body)))
	req.Header.Set("Content-Type", "text/xml")
	req.Close = true
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		for _, h := range resp.Header.Values("WWW-Authenticate") {
			if strings.HasPrefix(h, "Digest ") {
				d.nonce = parseAuthParams(h[7:])["nonce"]
			}
		}
	}
	return resp
}

// rfc2069 is the Digest answer without qop (RFC 2069): no nonce count, no
// cnonce, so nothing tells a replay from the original.
func (d *digestClient) rfc2069(pass string) string {
	ha1 := md5hex("acs:Duet:" + pass)
	ha2 := md5hex("POST:/")
	return `Digest username="acs", realm="Duet", nonce="` + d.nonce + `", uri="/", response="` + md5hex(ha1+":"+d.nonce+":"+ha2) + `"`
}

// TestAuthDigestWithoutQopRefusedByDefault: the RFC 2069 form (no qop) is
// refused unless AllowDigestWithoutQop is set (issue 15 §6).
func TestAuthDigestWithoutQopRefusedByDefault(t *testing.T) {
	e := newEnv(t, sharedAuth)
	d := newDigestClient(t, e, "NQ1")
	if resp := d.post(""); resp.StatusCode != http.StatusUnauthorized || d.nonce == "" {
		t.Fatalf("no challenge: %d", resp.StatusCode)
	}
	before := testutil.ToFloat64(metricAuthNoQop)
	if resp := d.post(d.rfc2069(testPassword)); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("Digest without qop: %d, want 401", resp.StatusCode)
	}
	if got := testutil.ToFloat64(metricAuthNoQop) - before; got != 1 {
		t.Errorf("duet_cwmp_auth_no_qop_total grew by %v, want 1", got)
	}

	legacy := newEnv(t, func(o *Options) { sharedAuth(o); o.AllowDigestWithoutQop = true })
	d = newDigestClient(t, legacy, "NQ2")
	d.post("")
	if resp := d.post(d.rfc2069(testPassword)); resp.StatusCode != http.StatusOK {
		t.Fatalf("Digest without qop with AllowDigestWithoutQop: %d, want 200", resp.StatusCode)
	}
}

// TestSharedPasswordStrength: a shared password anyone could guess is
// refused when the ACS is built, naming the problem (issue 15 §6: "a" was
// accepted).
func TestSharedPasswordStrength(t *testing.T) {
	for _, tc := range []struct{ pass, want string }{
		{"a", "too short"},
		{"s3cret", "too short"},
		{"aaaaaaaaaaaaaaaa", "too weak"},
		{"121212121212", "too weak"},
		{testPassword, ""},
	} {
		err := CheckSharedPassword(tc.pass)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckSharedPassword(%q) = %v, want %q", tc.pass, err, tc.want)
		}
	}
	b := newEnv(t, nil).bus
	_, err := New(Options{Bus: b, Auth: AuthShared, Username: "acs", Password: "a"})
	if err == nil || !strings.Contains(err.Error(), "Password: too short") {
		t.Fatalf("New with password a: %v", err)
	}
}
