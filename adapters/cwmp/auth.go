package cwmp

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// nonceStore holds the Digest nonces this ACS issued, each valid for ttl.
// It is bounded: when full, expired nonces are dropped, then arbitrary
// ones (their CPEs get a stale=true challenge and retry).
type nonceStore struct {
	mu  sync.Mutex
	max int
	ttl time.Duration
	m   map[string]*nonceState
}

type nonceState struct {
	exp time.Time
	nc  uint64 // highest nonce count accepted so far
}

func newNonceStore(max int, ttl time.Duration) *nonceStore {
	return &nonceStore{max: max, ttl: ttl, m: make(map[string]*nonceState)}
}

func (n *nonceStore) issue(now time.Time) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	nonce := hex.EncodeToString(b[:])
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.m) >= n.max {
		n.purgeLocked(now)
		for k := range n.m {
			if len(n.m) < n.max {
				break
			}
			delete(n.m, k)
		}
	}
	n.m[nonce] = &nonceState{exp: now.Add(n.ttl)}
	return nonce
}

// check reports whether nonce is known, and whether it is known but expired.
func (n *nonceStore) check(nonce string, now time.Time) (ok, stale bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st, found := n.m[nonce]
	if !found {
		return false, false
	}
	if now.After(st.exp) {
		delete(n.m, nonce)
		return false, true
	}
	return true, false
}

// useCount records nonce count nc for nonce and reports whether it is
// higher than every count accepted before: with qop the client increments
// nc on each request under one nonce, so a repeated or lower count is a
// replay of a captured Authorization header (RFC 2617 §3.2.2).
func (n *nonceStore) useCount(nonce string, nc uint64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	st, ok := n.m[nonce]
	if !ok || nc <= st.nc {
		return false
	}
	st.nc = nc
	return true
}

func (n *nonceStore) purge(now time.Time) {
	n.mu.Lock()
	n.purgeLocked(now)
	n.mu.Unlock()
}

func (n *nonceStore) purgeLocked(now time.Time) {
	for k, st := range n.m {
		if now.After(st.exp) {
			delete(n.m, k)
		}
	}
}

// credential is one set of credentials a device may present: username and
// HA1 = MD5(username:realm:password), so no password crosses the bus. kind
// says which (kindShared, kindDevice, kindPending).
type credential struct{ kind, user, ha1 string }

// How a session authenticated (SessionWorkRequest.auth).
const (
	kindShared  = "shared"
	kindDevice  = "device"
	kindPending = "pending"
)

// expected returns the credentials a device may present: the shared ones,
// or (per-device) those the controller holds, and those of an enrolment
// in progress (docs/guide-cwmp.md, "Enrolment"). In the shared mode with
// Enrol, an enrolled device is refused the shared ones.
// None means the controller knows no credentials for the device.
func (a *ACS) expected(ctx context.Context, deviceID string) ([]credential, error) {
	shared := credential{kindShared, a.o.Username, a.shared}
	if a.o.Auth == AuthShared && !a.o.Enrol {
		return []credential{shared}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, a.o.SessionTimeout)
	defer cancel()
	c, err := a.o.Bus.AskCredentials(ctx, deviceID)
	if err != nil {
		return nil, err
	}
	// The challenge went out before the device was known, with our realm;
	// an HA1 made for another realm cannot match (TR-069 §3.4.4).
	if c.GetRealm() != "" && c.GetRealm() != a.o.Realm {
		a.log.Warn("per-device credentials use another realm; set the ACS Realm to match",
			"device", deviceID, "realm", c.GetRealm(), "acs_realm", a.o.Realm)
		return nil, nil
	}
	var out []credential
	switch {
	case c.GetFound() && c.GetUsername() != "" && c.GetDigestHa1() != "" && (a.o.Auth == AuthPerDevice || c.GetEnrolled()):
		// In the shared mode only enrolled credentials replace the shared
		// ones (docs/guide-cwmp.md, "Enrolment").
		out = append(out, credential{kindDevice, c.GetUsername(), strings.ToLower(c.GetDigestHa1())})
	case a.o.Auth == AuthShared:
		out = append(out, shared)
	}
	if c.GetPendingUsername() != "" && c.GetPendingDigestHa1() != "" {
		out = append(out, credential{kindPending, c.GetPendingUsername(), strings.ToLower(c.GetPendingDigestHa1())})
	}
	return out, nil
}

func (a *ACS) basicAllowed(r *http.Request) bool { return r.TLS != nil || a.o.AllowBasicOverHTTP }

// authenticate checks the request's credentials for deviceID. It returns
// true when the connection may proceed, with the kind of credentials used
// ("" when authentication is off or the connection had authenticated
// before); otherwise it has written the reply (401 challenge, or 503 when
// credentials cannot be looked up). The challenge comes first, before the
// DeviceId is known; a connection that authenticated stays authenticated
// for that device only, and a new connection mid-session re-authenticates
// (TR-069 §3.4.4, docs/cwmp-interop.md #10).
func (a *ACS) authenticate(ctx context.Context, w http.ResponseWriter, r *http.Request, ci *connInfo, deviceID string, body []byte) (string, bool) {
	if a.o.Auth == AuthNone {
		return "", true
	}
	ci.mu.Lock()
	done, kind := ci.authDevice == deviceID, ci.authKind
	ci.mu.Unlock()
	if done {
		return kind, true
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		a.challenge(w, r, false, false)
		return "", false
	}
	creds, err := a.expected(ctx, deviceID)
	if err != nil {
		a.log.Warn("credential lookup failed; refusing the session", "device", deviceID, "err", err)
		metricShed.WithLabelValues("credentials").Inc()
		w.Header().Set("Retry-After", "60")
		http.Error(w, "credentials unavailable", http.StatusServiceUnavailable)
		return "", false
	}
	scheme, stale := "unknown", false
	var used *credential
	switch {
	case len(creds) > 0 && len(h) > 7 && strings.EqualFold(h[:7], "Digest "):
		scheme = "digest"
		used, stale = a.verifyDigest(r, h[7:], creds, body)
	case len(creds) > 0 && len(h) > 6 && strings.EqualFold(h[:6], "Basic "):
		scheme = "basic"
		if a.basicAllowed(r) {
			used = verifyBasic(h[6:], creds, a.o.Realm)
		}
	case len(creds) == 0:
		scheme = "no_credentials"
	}
	if used != nil {
		ci.mu.Lock()
		ci.authDevice, ci.authKind, ci.authFails = deviceID, used.kind, 0
		ci.mu.Unlock()
		return used.kind, true
	}
	ci.mu.Lock()
	if !stale {
		ci.authFails++
	}
	fails := ci.authFails
	ci.mu.Unlock()
	metricAuthFailures.WithLabelValues(scheme).Inc()
	// Never log the header or any secret; the scheme and device suffice.
	a.refusals.Warn("CPE authentication failed", "device", deviceID, "remote", r.RemoteAddr, "scheme", scheme, "stale", stale)
	a.challenge(w, r, stale, fails >= 2)
	return "", false
}

// challenge answers 401 with a fresh Digest nonce (qop=auth) and, where
// Basic is allowed, a Basic challenge. closeConn is set on a second
// failure (TR-069 §3.4.4: "A second failure gets 401 with Connection: close").
func (a *ACS) challenge(w http.ResponseWriter, r *http.Request, stale, closeConn bool) {
	nonce := a.nonces.issue(time.Now())
	d := `Digest realm="` + a.o.Realm + `", qop="auth", algorithm=MD5, nonce="` + nonce + `", opaque="` + a.o.AdapterID + `"`
	if stale {
		d += ", stale=true"
	}
	w.Header().Add("WWW-Authenticate", d)
	if a.basicAllowed(r) {
		w.Header().Add("WWW-Authenticate", `Basic realm="`+a.o.Realm+`"`)
	}
	if closeConn {
		w.Header().Set("Connection", "close")
	}
	w.WriteHeader(http.StatusUnauthorized)
}

// parseAuthParams splits `k=v, k="v, w"` (RFC 7235 auth-params).
func parseAuthParams(s string) map[string]string {
	out := make(map[string]string, 8)
	for len(s) > 0 && len(out) < 32 {
		s = strings.TrimLeft(s, " \t,")
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			break
		}
		k := strings.ToLower(strings.TrimSpace(s[:eq]))
		s = strings.TrimLeft(s[eq+1:], " \t")
		var v string
		if strings.HasPrefix(s, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				b.WriteByte(s[i])
			}
			v = b.String()
			if i < len(s) {
				i++
			}
			s = s[i:]
		} else {
			end := strings.IndexByte(s, ',')
			if end < 0 {
				end = len(s)
			}
			v = strings.TrimSpace(s[:end])
			s = s[end:]
		}
		out[k] = v
	}
	return out
}

func md5hex(s string) string {
	h := md5.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}

// verifyDigest checks an RFC 2617 MD5 Digest response against each of
// creds (by username; HA1 only) and returns the one it matches, or nil.
// qop=auth is what we offer; auth-int (body hash) is accepted too, and
// the RFC 2069 form without qop only with AllowDigestWithoutQop (TR-069
// §3.4.4; without qop a captured header replays until the nonce expires).
func (a *ACS) verifyDigest(r *http.Request, params string, creds []credential, body []byte) (used *credential, stale bool) {
	p := parseAuthParams(params)
	if p["realm"] != a.o.Realm || p["response"] == "" || p["uri"] == "" {
		return nil, false
	}
	if p["qop"] == "" && !a.o.AllowDigestWithoutQop {
		metricAuthNoQop.Inc()
		a.refusals.Warn("CWMP digest without qop refused (DUET_CWMP_ALLOW_DIGEST_WITHOUT_QOP)", "remote", r.RemoteAddr, "user", p["username"])
		return nil, false
	}
	if alg := p["algorithm"]; alg != "" && !strings.EqualFold(alg, "MD5") {
		return nil, false
	}
	nonceOK, stale := a.nonces.check(p["nonce"], time.Now())
	if !nonceOK {
		return nil, stale
	}
	var ha2 string
	switch p["qop"] {
	case "auth", "":
		ha2 = md5hex(r.Method + ":" + p["uri"])
	case "auth-int":
		ha2 = md5hex(r.Method + ":" + p["uri"] + ":" + md5hex(string(body)))
	default:
		return nil, false
	}
	got := []byte(strings.ToLower(p["response"]))
	for i := range creds {
		c := &creds[i]
		if p["username"] != c.user {
			continue
		}
		var want string
		if p["qop"] == "" {
			want = md5hex(c.ha1 + ":" + p["nonce"] + ":" + ha2)
		} else {
			want = md5hex(c.ha1 + ":" + p["nonce"] + ":" + p["nc"] + ":" + p["cnonce"] + ":" + p["qop"] + ":" + ha2)
		}
		if subtle.ConstantTimeCompare([]byte(want), got) == 1 {
			used = c
			break
		}
	}
	if used == nil {
		return nil, false
	}
	if p["qop"] != "" {
		nc, err := strconv.ParseUint(p["nc"], 16, 64)
		if err != nil || !a.nonces.useCount(p["nonce"], nc) {
			metricAuthReplays.Inc()
			a.refusals.Warn("CWMP digest nonce count reused: replay refused", "remote", r.RemoteAddr, "user", used.user)
			return nil, false
		}
	}
	// Without qop (RFC 2069 clients) there is no count to check; such a
	// nonce stays usable until it expires.
	return used, false
}

// MinSharedPasswordLength is the shortest shared CPE password accepted:
// every CPE of the fleet holds it, so it must resist guessing.
const MinSharedPasswordLength = 12

// CheckSharedPassword refuses a shared CPE password that is too short or
// made of too few distinct characters ("a", "aaaaaaaaaaaa", "121212121212").
func CheckSharedPassword(p string) error {
	if n := len([]rune(p)); n < MinSharedPasswordLength {
		return fmt.Errorf("too short: %d characters, at least %d needed", n, MinSharedPasswordLength)
	}
	distinct := map[rune]bool{}
	for _, c := range p {
		distinct[c] = true
	}
	if len(distinct) < 5 {
		return fmt.Errorf("too weak: only %d distinct characters, at least 5 needed", len(distinct))
	}
	return nil
}

// verifyBasic checks Basic credentials against each of creds' HA1:
// MD5(user:realm:pass) must equal it, so the ACS never needs the clear
// password. It returns the credentials matched, or nil.
func verifyBasic(enc string, creds []credential, realm string) *credential {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return nil
	}
	u, pass, ok := strings.Cut(string(raw), ":")
	if !ok {
		return nil
	}
	got := []byte(ha1(u, realm, pass))
	for i := range creds {
		c := &creds[i]
		if subtle.ConstantTimeCompare([]byte(u), []byte(c.user)) == 1 && subtle.ConstantTimeCompare(got, []byte(c.ha1)) == 1 {
			return c
		}
	}
	return nil
}
