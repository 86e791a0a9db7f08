package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"strings"

	uspadapter "github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/pkg/store"
)

// uspSecurity is how USP agents are authenticated and admitted (issue 15
// §2-3; docs/guide-usp.md, securing USP).
type uspSecurity struct {
	mqttEmbedded, stompEmbedded bool
	mqttAuth, stompAuth, wsAuth bool // agents must log in
	mqttOpen, stompOpen, wsOpen bool // listening beyond loopback
	brokerTLS                   *tls.Config
	clientCAFile                string
	mqttTLSPort, stompTLSPort   int
	agentTopic, agentDest       string
	replyPatterns               map[string]string
	admission                   string
	allow                       []string
}

// needsStore: agent secrets or admission are looked up in PostgreSQL.
func (u *uspSecurity) needsStore() bool {
	return u.mqttAuth || u.stompAuth || u.wsAuth || u.admission != uspadapter.AdmitAccept
}

// isLoopbackHost: an empty host or 0.0.0.0 listens everywhere.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

func (s *settings) checkUSPSecurity(c *serveConfig) error {
	u := &c.uspSec
	mode, err := s.oneOf("usp-agent-auth", "auto", "on", "off")
	if err != nil {
		return err
	}
	authFor := func(loopback bool) bool { return mode == "on" || (mode == "auto" && !loopback) }
	u.mqttEmbedded = c.comps["usp-mqtt"] && s.str("mqtt-url") == ""
	u.stompEmbedded = c.comps["usp-stomp"] && s.str("stomp-addr") == ""
	if u.mqttEmbedded {
		u.mqttOpen = !isLoopbackHost(s.str("mqtt-host"))
		u.mqttAuth = authFor(!u.mqttOpen)
	}
	if u.stompEmbedded {
		u.stompOpen = !isLoopbackHost(s.str("stomp-host"))
		u.stompAuth = authFor(!u.stompOpen)
	}
	if c.comps["usp-ws"] {
		host, _, _ := net.SplitHostPort(c.wsAddr)
		u.wsOpen = !isLoopbackHost(host)
		// WebSocket agents are authenticated when they present a token or
		// a certificate; "auto" serves the others (without letting them
		// take a connection over) so that a simulator on localhost works
		// unconfigured; "on" refuses them.
		u.wsAuth = mode == "on"
	}
	if (s.str("usp-broker-tls-cert") == "") != (s.str("usp-broker-tls-key") == "") {
		return s.errSetting("usp-broker-tls-cert", "DUET_USP_BROKER_TLS_CERT and DUET_USP_BROKER_TLS_KEY must be set together")
	}
	u.clientCAFile = s.str("usp-client-ca")
	var pool *x509.CertPool
	if u.clientCAFile != "" {
		pem, err := os.ReadFile(u.clientCAFile)
		pool = x509.NewCertPool()
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			return s.errSetting("usp-client-ca", "%s holds no PEM certificate (%v)", u.clientCAFile, err)
		}
	}
	if cert := s.str("usp-broker-tls-cert"); cert != "" && (u.mqttEmbedded || u.stompEmbedded) {
		kp, err := tls.LoadX509KeyPair(cert, s.str("usp-broker-tls-key"))
		if err != nil {
			return s.errSetting("usp-broker-tls-cert", "%v", err)
		}
		u.brokerTLS = &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
		if pool != nil {
			u.brokerTLS.ClientCAs, u.brokerTLS.ClientAuth = pool, tls.VerifyClientCertIfGiven
		}
		if u.mqttTLSPort, err = s.port("mqtt-tls-port"); err != nil {
			return err
		}
		if u.stompTLSPort, err = s.port("stomp-tls-port"); err != nil {
			return err
		}
	}
	if u.clientCAFile != "" && s.str("ws-tls-cert") == "" && u.brokerTLS == nil {
		return s.errSetting("usp-client-ca", "client certificates need TLS: set DUET_USP_BROKER_TLS_CERT or DUET_WS_TLS_CERT")
	}
	u.agentTopic, u.agentDest = s.str("usp-agent-topic"), s.str("usp-agent-destination")
	for _, f := range []string{"usp-agent-topic", "usp-agent-destination"} {
		if !strings.Contains(s.str(f), "{endpoint}") {
			return s.errSetting(f, "%q must contain {endpoint}", s.str(f))
		}
	}
	u.replyPatterns = map[string]string{"mqtt": s.str("usp-reply-topic-pattern"), "stomp": s.str("usp-reply-destination-pattern")}
	// With authentication on the embedded brokers, the broker already
	// confines reply addresses; the endpoint checks them again.
	if u.mqttAuth && u.replyPatterns["mqtt"] == "" {
		u.replyPatterns["mqtt"] = u.agentTopic
	}
	if u.stompAuth && u.replyPatterns["stomp"] == "" {
		u.replyPatterns["stomp"] = u.agentDest
	}
	for _, f := range []string{"usp-reply-topic-pattern", "usp-reply-destination-pattern"} {
		if v := s.str(f); v != "" && (!strings.Contains(v, "{endpoint}") || strings.ContainsAny(strings.ReplaceAll(v, "{endpoint}", ""), "+#")) {
			return s.errSetting(f, "%q must contain {endpoint} and no MQTT wildcard", v)
		}
	}
	if u.admission, err = s.oneOf("usp-admission", uspadapter.AdmitAccept, uspadapter.AdmitHold, uspadapter.AdmitRefuse); err != nil {
		return err
	}
	for _, p := range strings.Split(s.str("usp-admission-allow"), ",") {
		if p = strings.TrimSpace(p); p != "" {
			if err := store.ValidateEndpointPattern(p); err != nil {
				return s.errSetting("usp-admission-allow", "%v", err)
			}
			u.allow = append(u.allow, p)
		}
	}
	return nil
}

// warnOpen says at start what an agent-facing listener leaves open.
func (u *uspSecurity) warnOpen(log *slog.Logger) {
	if u.mqttOpen && !u.mqttAuth {
		log.Warn("the embedded MQTT broker listens beyond loopback WITHOUT agent authentication: anyone who reaches it reads every record and can re-point agents; set DUET_USP_AGENT_AUTH=auto or on")
	}
	if u.stompOpen && !u.stompAuth {
		log.Warn("the embedded STOMP broker listens beyond loopback WITHOUT agent authentication: anyone who reaches it reads every record and can re-point agents; set DUET_USP_AGENT_AUTH=auto or on")
	}
	if (u.mqttOpen || u.stompOpen) && u.brokerTLS == nil {
		log.Warn("the embedded USP brokers listen beyond loopback without TLS: agent secrets and records cross the network in clear; set DUET_USP_BROKER_TLS_CERT and DUET_USP_BROKER_TLS_KEY")
	}
	if u.wsOpen && !u.wsAuth {
		log.Warn("the USP WebSocket server accepts agents without credentials (they cannot take a connected agent over); set DUET_USP_AGENT_AUTH=on to require a token or a client certificate")
	}
}

// agentDirectory backs agent logins and admission with PostgreSQL.
type agentDirectory struct {
	st *store.Store
	ck *store.CredentialKey
}

var (
	_ uspadapter.AgentAuthenticator = agentDirectory{}
	_ uspadapter.AgentDirectory     = agentDirectory{}
)

func (d agentDirectory) CheckAgentSecret(ctx context.Context, eid, secret string) (bool, error) {
	return d.st.CheckUSPAgentSecret(ctx, d.ck, eid, secret)
}

func (d agentDirectory) KnownUSPAgent(ctx context.Context, eid string) (bool, error) {
	return d.st.KnownUSPAgent(ctx, eid)
}

func (d agentDirectory) AdmissionState(ctx context.Context, eid string) (string, error) {
	return d.st.AdmissionState(ctx, eid)
}

func (d agentDirectory) HoldUSPAgent(ctx context.Context, eid, mtp, peer string) (string, error) {
	return d.st.HoldUSPAgent(ctx, eid, mtp, peer)
}
