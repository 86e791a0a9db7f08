// Package netguard holds the network-facing guards every Duet component
// shares (issue 15 §7–9): redacting credentials from URLs, checking where
// Duet may send requests on a device's behalf, and bounding connections
// per source. It imports the standard library only.
package netguard

import (
	"net/url"
	"strings"
)

// RedactURL hides the password of a URL's userinfo ("nats://duet:***@host")
// so it can be logged and printed; a comma list of URLs (NATS servers) is
// redacted one by one. Something that does not parse is cut at an "@" if
// it has one.
func RedactURL(s string) string {
	if strings.Contains(s, ",") {
		parts := strings.Split(s, ",")
		for i, p := range parts {
			parts[i] = RedactURL(p)
		}
		return strings.Join(parts, ",")
	}
	if !strings.Contains(s, "@") {
		return s
	}
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || u.User == nil {
		if i := strings.LastIndex(s, "@"); i >= 0 {
			if j := strings.Index(s, "://"); j >= 0 && j < i {
				return s[:j+3] + "***@" + s[i+1:]
			}
			return "***@" + s[i+1:]
		}
		return s
	}
	info := "***"
	if _, has := u.User.Password(); has {
		info = u.User.Username() + ":***"
	} // else a lone userinfo is often a token (nats://<token>@host)
	u.User = nil
	out := u.String()
	if j := strings.Index(out, "://"); j >= 0 {
		return out[:j+3] + info + "@" + out[j+3:]
	}
	return info + "@" + out
}
