package usp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// AgentAuthenticator checks the secret an agent logs in with (an MQTT
// password, a STOMP passcode, a WebSocket bearer token) against the
// identity it claims. cmd/duet backs it with PostgreSQL (per-agent
// secrets and enrolment keys, docs/guide-usp.md, securing USP).
type AgentAuthenticator interface {
	CheckAgentSecret(ctx context.Context, eid, secret string) (bool, error)
}

// AuthTimeout bounds one secret check.
const AuthTimeout = 5 * time.Second

// Refusal reasons of the embedded brokers and the WebSocket server
// (label reason of duet_usp_agent_refused_total).
const (
	RefuseBadLogin     = "bad_login"     // unknown endpoint ID, wrong secret, no credentials
	RefuseAuthError    = "auth_error"    // the check itself failed (database down): refused
	RefusePublishACL   = "publish_acl"   // publish/SEND outside the controller's topic/destination
	RefuseSubscribeACL = "subscribe_acl" // subscription outside the agent's own topic/destination
	RefuseFromID       = "from_id"       // a record whose from_id is not the login
	RefuseReplyTo      = "reply_to"      // a reply address other than the agent's own
	RefuseTooLarge     = "too_large"     // a packet/frame above the announced maximum
	RefuseTakeover     = "takeover"      // an unauthenticated connection for a connected agent
)

var metricAgentRefused = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_usp_agent_refused_total",
	Help: "Connections, logins and packets of USP agents refused by the embedded brokers and the WebSocket server, by MTP and reason (bad_login, auth_error, publish_acl, subscribe_acl, from_id, reply_to, too_large, takeover).",
}, []string{"mtp", "reason"})

// CountAgentRefused counts one refusal.
func CountAgentRefused(mtp, reason string) { metricAgentRefused.WithLabelValues(mtp, reason).Inc() }

// CheckAgentLogin checks that eid is a valid endpoint ID and secret its
// secret. It returns the refusal reason, "" when the login is good.
func CheckAgentLogin(ctx context.Context, auth AgentAuthenticator, eid, secret string) string {
	if auth == nil || eid == "" || secret == "" || devicemodel.ValidateDeviceID(eid) != nil {
		return RefuseBadLogin
	}
	ctx, cancel := context.WithTimeout(ctx, AuthTimeout)
	defer cancel()
	ok, err := auth.CheckAgentSecret(ctx, eid, secret)
	switch {
	case err != nil:
		return RefuseAuthError
	case !ok:
		return RefuseBadLogin
	}
	return ""
}

// EndpointIDURIPrefix prefixes an endpoint ID in a certificate's
// subjectAltName URI (TR-369 "Endpoint Identifier", R-SEC.3/R-SEC.4:
// urn:bbf:usp:id:<endpoint-id>).
const EndpointIDURIPrefix = "urn:bbf:usp:id:"

// EndpointIDFromCert returns the endpoint ID a verified client
// certificate names: its single urn:bbf:usp:id: URI SAN. A certificate
// naming none, or several, names none.
func EndpointIDFromCert(cert *x509.Certificate) (string, bool) {
	found := ""
	for _, u := range cert.URIs {
		s := u.String()
		if !strings.HasPrefix(s, EndpointIDURIPrefix) {
			continue
		}
		if found != "" {
			return "", false
		}
		found = strings.TrimPrefix(s, EndpointIDURIPrefix)
	}
	if found == "" || devicemodel.ValidateDeviceID(found) != nil {
		return "", false
	}
	return found, true
}

// EndpointIDFromTLS returns the endpoint ID of a TLS connection's
// verified client certificate (VerifiedChains is set only when the
// certificate chained to the configured client CA).
func EndpointIDFromTLS(st tls.ConnectionState) (string, bool) {
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return "", false
	}
	return EndpointIDFromCert(st.PeerCertificates[0])
}
