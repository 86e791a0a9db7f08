package cwmp

import (
	"net/http"
	"net/netip"
	"strconv"
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

// noRates turns the inform rate limits off, to test another limit alone.
func noRates(o *Options) {
	o.InformRateDevice, o.InformRateSource = Rate{PerMinute: -1}, Rate{PerMinute: -1}
}

// TestSessionsPerDeviceCapped: 1,005 never-finished Informs for one device
// filled the session table and failed other CPEs (issue 15 §6). Now one
// identity holds at most MaxSessionsPerDevice sessions; its further
// Informs get 503 + Retry-After and another CPE still gets through.
func TestSessionsPerDeviceCapped(t *testing.T) {
	e := newEnv(t, func(o *Options) { noRates(o); o.MaxSessions = 20 })
	d := newDigestClient(t, e, "HOG")
	before := testutil.ToFloat64(metricShed.WithLabelValues("device_sessions"))
	ok, refused := 0, 0
	for i := 0; i < 60; i++ { // three times the whole table
		switch resp := d.post(""); resp.StatusCode {
		case http.StatusOK:
			ok++
		case http.StatusServiceUnavailable:
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("503 without Retry-After")
			}
			refused++
		default:
			t.Fatalf("unfinished Inform %d: %d", i, resp.StatusCode)
		}
	}
	if ok != 2 || refused != 58 {
		t.Fatalf("accepted %d, refused %d; want 2 and 58", ok, refused)
	}
	if got := testutil.ToFloat64(metricShed.WithLabelValues("device_sessions")) - before; got != 58 {
		t.Errorf(`duet_cwmp_shed_total{reason="device_sessions"} grew by %v, want 58`, got)
	}
	e.queue(cmdGet("Device.DeviceInfo.ModelName"))
	other := newCPE(t, e.url, "Device.", "OTHER", true, false)
	other.session(other.inform(cwmp.EventPeriodic))
	if len(other.handled) != 1 {
		t.Fatalf("another CPE's session: handled %v", other.handled)
	}
}

// TestInformRateLimits: token buckets per device identity and per source
// address answer 503 + Retry-After past their burst; another device is
// not affected by one device's budget.
func TestInformRateLimits(t *testing.T) {
	t.Run("per device", func(t *testing.T) {
		e := newEnv(t, func(o *Options) {
			o.InformRateDevice, o.InformRateSource, o.MaxSessionsPerDevice = Rate{PerMinute: 1, Burst: 3}, Rate{PerMinute: -1}, 100
		})
		d := newDigestClient(t, e, "FAST")
		for i := 0; i < 3; i++ {
			if resp := d.post(""); resp.StatusCode != http.StatusOK {
				t.Fatalf("inform %d within the burst: %d", i, resp.StatusCode)
			}
		}
		resp := d.post("")
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("inform past the burst: %d, want 503", resp.StatusCode)
		}
		if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
			t.Errorf("Retry-After %q, want 1..60 s (one token a minute)", resp.Header.Get("Retry-After"))
		}
		if resp := newDigestClient(t, e, "SLOW").post(""); resp.StatusCode != http.StatusOK {
			t.Fatalf("another device: %d", resp.StatusCode)
		}
	})
	t.Run("per source", func(t *testing.T) {
		e := newEnv(t, func(o *Options) {
			o.InformRateDevice, o.InformRateSource = Rate{PerMinute: -1}, Rate{PerMinute: 1, Burst: 5}
		})
		before := testutil.ToFloat64(metricShed.WithLabelValues("source_rate"))
		for i := 0; i < 5; i++ {
			if resp := newDigestClient(t, e, "SRC"+strconv.Itoa(i)).post(""); resp.StatusCode != http.StatusOK {
				t.Fatalf("device %d within the source's burst: %d", i, resp.StatusCode)
			}
		}
		resp := newDigestClient(t, e, "SRC5").post("")
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("sixth device from one source: %d %v, want 503 + Retry-After", resp.StatusCode, resp.Header)
		}
		if got := testutil.ToFloat64(metricShed.WithLabelValues("source_rate")) - before; got != 1 {
			t.Errorf(`duet_cwmp_shed_total{reason="source_rate"} grew by %v, want 1`, got)
		}
	})
}

// TestAllowSources: with DUET_CWMP_ALLOW_SOURCES set, a CPE from another
// network gets 403 and the connection is closed, counted in
// duet_cwmp_source_refused_total.
func TestAllowSources(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.AllowSources = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} })
	before := testutil.ToFloat64(metricSourceRefused)
	resp := newDigestClient(t, e, "OUTSIDE").post("")
	if resp.StatusCode != http.StatusForbidden || !resp.Close {
		t.Fatalf("from 127.0.0.1 with only 10.0.0.0/8 allowed: %d close=%v", resp.StatusCode, resp.Close)
	}
	if got := testutil.ToFloat64(metricSourceRefused) - before; got != 1 {
		t.Errorf("duet_cwmp_source_refused_total grew by %v, want 1", got)
	}
	e = newEnv(t, func(o *Options) {
		o.AllowSources = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.0/8")}
	})
	if resp := newDigestClient(t, e, "INSIDE").post(""); resp.StatusCode != http.StatusOK {
		t.Fatalf("from an allowed network: %d", resp.StatusCode)
	}
	for remote, want := range map[string]bool{"10.1.2.3:7547": true, "[::ffff:10.1.2.3]:1": true, "192.168.1.1:1": false, "junk": false} {
		if got := sourceAllowed([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, remote); got != want {
			t.Errorf("sourceAllowed(%q) = %v", remote, got)
		}
	}
}
