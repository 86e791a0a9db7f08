package files

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// A transfer URL carries a token that names what it may do: fetch one file
// (download) or deliver one upload, for one device, until a time. It is
// signed with HMAC-SHA256 under the key every replica shares (the
// file_signing_key table), so it cannot be guessed or altered, and any
// replica's listener accepts it. The token is the whole credential: a
// URL without a valid one is refused with 403 before any lookup.

// Grant is what a token allows.
type Grant struct {
	// Kind is "d" (download FileID) or "u" (upload a file of FileType for
	// DeviceID; FileID is empty).
	Kind     string
	FileID   string
	FileType string
	DeviceID string
	Expires  time.Time
}

// Signer makes and checks transfer tokens.
type Signer struct{ key []byte }

// NewSigner takes the shared key (at least 32 bytes).
func NewSigner(key []byte) (*Signer, error) {
	if len(key) < 32 {
		return nil, errors.New("files: the signing key must have at least 32 bytes")
	}
	return &Signer{key: append([]byte(nil), key...)}, nil
}

func (s *Signer) mac(payload []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("duet transfer url v1\x00"))
	m.Write(payload)
	return m.Sum(nil)
}

// Token encodes and signs g.
func (s *Signer) Token(g Grant) string {
	payload := strings.Join([]string{g.Kind, g.FileID, g.FileType, g.DeviceID, strconv.FormatInt(g.Expires.Unix(), 10)}, "\n")
	return base64.RawURLEncoding.EncodeToString([]byte(payload)) + "." + base64.RawURLEncoding.EncodeToString(s.mac([]byte(payload)))
}

// Token errors, each a refusal reason.
var (
	ErrTokenMalformed = errors.New("malformed token")
	ErrTokenSignature = errors.New("bad signature")
	ErrTokenExpired   = errors.New("expired token")
)

// maxToken bounds what is decoded of a URL's token.
const maxToken = 2048

// Check verifies a token at time now.
func (s *Signer) Check(tok string, now time.Time) (Grant, error) {
	if len(tok) > maxToken {
		return Grant{}, ErrTokenMalformed
	}
	p, sig, ok := strings.Cut(tok, ".")
	if !ok {
		return Grant{}, ErrTokenMalformed
	}
	payload, err1 := base64.RawURLEncoding.DecodeString(p)
	mac, err2 := base64.RawURLEncoding.DecodeString(sig)
	if err1 != nil || err2 != nil {
		return Grant{}, ErrTokenMalformed
	}
	if !hmac.Equal(mac, s.mac(payload)) {
		return Grant{}, ErrTokenSignature
	}
	f := strings.Split(string(payload), "\n")
	if len(f) != 5 || (f[0] != "d" && f[0] != "u") {
		return Grant{}, ErrTokenMalformed
	}
	exp, err := strconv.ParseInt(f[4], 10, 64)
	if err != nil {
		return Grant{}, ErrTokenMalformed
	}
	g := Grant{Kind: f[0], FileID: f[1], FileType: f[2], DeviceID: f[3], Expires: time.Unix(exp, 0)}
	if !now.Before(g.Expires) {
		return g, ErrTokenExpired
	}
	return g, nil
}

// URLs builds the transfer URLs devices are given.
type URLs struct {
	Signer *Signer
	// Base is the listener's URL as devices reach it ("http://acs.example:7548").
	Base string
	// TTL is how long a URL stays valid after it is made.
	TTL time.Duration
}

// TokenPlaceholder stands for the token in the URL a task keeps (its
// request, what operators read): the token itself is made when the task is
// dispatched (TaskQueue), so a task listing hands nobody a credential, and
// a task queued longer than TTL (a device offline for days) still gives its
// device a URL that works.
const TokenPlaceholder = "{token}"

// Download is the URL from which device fetches file (named name, the
// last path segment, for devices that want a file name).
func (u *URLs) Download(fileID, name, deviceID string) string {
	return u.downloadURL(u.Signer.Token(Grant{Kind: "d", FileID: fileID, DeviceID: deviceID, Expires: time.Now().Add(u.TTL)}), name)
}

// DownloadShape is Download's URL with TokenPlaceholder for the token.
func (u *URLs) DownloadShape(name string) string { return u.downloadURL(TokenPlaceholder, name) }

func (u *URLs) downloadURL(tok, name string) string {
	return strings.TrimRight(u.Base, "/") + "/files/" + tok + "/" + url.PathEscape(name)
}

// Upload is the URL device delivers a file of fileType to.
func (u *URLs) Upload(fileType, deviceID string) string {
	return u.uploadURL(u.Signer.Token(Grant{Kind: "u", FileType: fileType, DeviceID: deviceID, Expires: time.Now().Add(u.TTL)}))
}

// UploadShape is Upload's URL with TokenPlaceholder for the token.
func (u *URLs) UploadShape() string { return u.uploadURL(TokenPlaceholder) }

func (u *URLs) uploadURL(tok string) string {
	return strings.TrimRight(u.Base, "/") + "/uploads/" + tok
}

// Shape is a transfer URL as a task keeps it: the token of a
// ".../files/TOKEN/NAME" or ".../uploads/TOKEN" URL replaced by
// TokenPlaceholder. Another URL is returned as it is.
func Shape(raw string) string {
	for _, seg := range []string{"/files/", "/uploads/"} {
		i := strings.LastIndex(raw, seg)
		if i < 0 {
			continue
		}
		rest := raw[i+len(seg):]
		tok, tail, _ := strings.Cut(rest, "/")
		if p, sig, ok := strings.Cut(tok, "."); !ok || p == "" || sig == "" || strings.ContainsAny(tok, "?#") {
			continue
		}
		if seg == "/files/" && tail == "" {
			continue
		}
		return raw[:i+len(seg)] + TokenPlaceholder + rest[len(tok):]
	}
	return raw
}
