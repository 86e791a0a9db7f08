package cpe

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"sync"
)

// parseAuthParams parses `Digest realm="x", nonce="y", qop="auth,auth-int"`
// into its scheme and lower-cased parameter names.
func parseAuthParams(h string) (scheme string, params map[string]string) {
	h = strings.TrimSpace(h)
	scheme, rest, _ := strings.Cut(h, " ")
	params = map[string]string{}
	for rest = strings.TrimSpace(rest); rest != ""; rest = strings.TrimLeft(strings.TrimSpace(rest), ",") {
		rest = strings.TrimSpace(rest)
		eq := strings.IndexByte(rest, '=')
		if eq < 0 {
			break
		}
		key := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = strings.TrimSpace(rest[eq+1:])
		var val string
		if strings.HasPrefix(rest, `"`) {
			end := 1
			for end < len(rest) && rest[end] != '"' {
				if rest[end] == '\\' {
					end++
				}
				end++
			}
			if end > len(rest) {
				end = len(rest)
			}
			val = strings.ReplaceAll(rest[1:min(end, len(rest))], `\"`, `"`)
			rest = rest[min(end+1, len(rest)):]
		} else {
			c := strings.IndexByte(rest, ',')
			if c < 0 {
				c = len(rest)
			}
			val = strings.TrimSpace(rest[:c])
			rest = rest[c:]
		}
		params[key] = val
	}
	return strings.ToLower(scheme), params
}

func md5hex(s string) string {
	h := md5.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}

// digestResponse is the RFC 2617 request-digest for MD5 with qop=auth, or
// without qop when qop is "".
func digestResponse(user, realm, pass, method, uri, nonce, nc, cnonce, qop string) string {
	ha1 := md5hex(user + ":" + realm + ":" + pass)
	ha2 := md5hex(method + ":" + uri)
	if qop == "" {
		return md5hex(ha1 + ":" + nonce + ":" + ha2)
	}
	return md5hex(ha1 + ":" + nonce + ":" + nc + ":" + cnonce + ":" + qop + ":" + ha2)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// clientAuth answers the ACS's 401 challenge (TR-069 §3.4.4): Digest with MD5
// and qop=auth when offered, or Basic.
type clientAuth struct {
	user, pass string
	basic      bool
	realm      string
	nonce      string
	opaque     string
	qop        bool
	nc         int
}

// newClientAuth picks the strongest challenge it supports among the
// WWW-Authenticate headers; nil if none.
func newClientAuth(user, pass string, challenges []string) *clientAuth {
	var basic *clientAuth
	for _, ch := range challenges {
		scheme, p := parseAuthParams(ch)
		switch scheme {
		case "digest":
			if alg := strings.ToUpper(p["algorithm"]); alg != "" && alg != "MD5" {
				continue
			}
			a := &clientAuth{user: user, pass: pass, realm: p["realm"], nonce: p["nonce"], opaque: p["opaque"]}
			if q, ok := p["qop"]; ok {
				for _, v := range strings.Split(q, ",") {
					if strings.TrimSpace(v) == "auth" {
						a.qop = true
					}
				}
				if !a.qop {
					continue // only auth-int offered
				}
			}
			return a
		case "basic":
			basic = &clientAuth{user: user, pass: pass, basic: true}
		}
	}
	return basic
}

func (a *clientAuth) header(method, uri string) string {
	if a.basic {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(a.user+":"+a.pass))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `Digest username="%s", realm="%s", nonce="%s", uri="%s", algorithm=MD5`, a.user, a.realm, a.nonce, uri)
	if a.qop {
		a.nc++
		nc := fmt.Sprintf("%08x", a.nc)
		cnonce := randomHex(8)
		resp := digestResponse(a.user, a.realm, a.pass, method, uri, a.nonce, nc, cnonce, "auth")
		fmt.Fprintf(&b, `, qop=auth, nc=%s, cnonce="%s", response="%s"`, nc, cnonce, resp)
	} else {
		fmt.Fprintf(&b, `, response="%s"`, digestResponse(a.user, a.realm, a.pass, method, uri, a.nonce, "", "", ""))
	}
	if a.opaque != "" {
		fmt.Fprintf(&b, `, opaque="%s"`, a.opaque)
	}
	return b.String()
}

// digestServer checks Digest (MD5, qop=auth) credentials on the
// connection-request listener (TR-069 §3.2.2). Nonces are random, remembered
// in a bounded set, and each nc may be used once.
type digestServer struct {
	realm string
	mu    sync.Mutex
	nonce map[string]int // nonce → highest nc seen
	order []string
}

const maxNonces = 64

func newDigestServer(realm string) *digestServer {
	return &digestServer{realm: realm, nonce: map[string]int{}}
}

func (d *digestServer) challenge(w http.ResponseWriter) {
	n := randomHex(16)
	d.mu.Lock()
	if len(d.order) >= maxNonces {
		delete(d.nonce, d.order[0])
		d.order = d.order[1:]
	}
	d.nonce[n] = 0
	d.order = append(d.order, n)
	d.mu.Unlock()
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Digest realm="%s", qop="auth", nonce="%s", algorithm=MD5`, d.realm, n))
	w.WriteHeader(http.StatusUnauthorized)
}

// check reports whether r carries valid credentials for user/pass.
func (d *digestServer) check(r *http.Request, user, pass string) bool {
	scheme, p := parseAuthParams(r.Header.Get("Authorization"))
	if scheme != "digest" || p["username"] != user || p["realm"] != d.realm || p["qop"] != "auth" || p["uri"] != r.URL.RequestURI() {
		return false
	}
	var nc int
	if _, err := fmt.Sscanf(p["nc"], "%x", &nc); err != nil {
		return false
	}
	want := digestResponse(user, d.realm, pass, r.Method, p["uri"], p["nonce"], p["nc"], p["cnonce"], "auth")
	if subtle.ConstantTimeCompare([]byte(want), []byte(p["response"])) != 1 {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	last, ok := d.nonce[p["nonce"]]
	if !ok || nc <= last {
		return false // unknown nonce or a replayed nc
	}
	d.nonce[p["nonce"]] = nc
	return true
}
