package main

import (
	"context"
	"log/slog"
	"net"
	"strconv"

	uspadapter "github.com/duet-dm/duet/adapters/usp"
	uspstomp "github.com/duet-dm/duet/adapters/usp/stomp"
	uspws "github.com/duet-dm/duet/adapters/usp/websocket"
)

// startUSPStomp runs the STOMP MTP: a client of DUET_STOMP_ADDR, or of the
// embedded go-stomp broker on DUET_STOMP_PORT.
func (m *Main) startUSPStomp(s *settings, cfg *serveConfig, ep *uspadapter.Endpoint, dir *agentDirectory, log *slog.Logger, started *stack, ls *Listeners) error {
	if !cfg.comps["usp-stomp"] {
		return nil
	}
	sec := &cfg.uspSec
	addr := s.str("stomp-addr")
	login, passcode := s.str("stomp-login"), s.str("stomp-passcode")
	dest := s.str("stomp-destination")
	if dest == "" {
		dest = "/queue/usp.controller"
	}
	tlsNote := ""
	if addr == "" {
		port := cfg.stompPort
		host := s.str("stomp-host")
		o := uspstomp.BrokerOptions{Addr: net.JoinHostPort(host, strconv.Itoa(port)), ControllerDestination: dest, AgentDestination: sec.agentDest, Logger: log}
		if sec.stompAuth {
			o.Auth = dir
		}
		if sec.brokerTLS != nil {
			o.TLSAddr, o.TLS = net.JoinHostPort(host, strconv.Itoa(sec.stompTLSPort)), sec.brokerTLS
		}
		br, err := uspstomp.StartBroker(o)
		if err != nil {
			return s.errSetting("stomp-port", "%v (set DUET_STOMP_PORT to a free port, or DUET_STOMP_ADDR to use that broker)", err)
		}
		started.push(func(context.Context) { _ = br.Close() })
		addr = net.JoinHostPort(dialHost(host), strconv.Itoa(port))
		if sec.stompAuth {
			login, passcode = br.ControllerCredentials()
		}
		if br.TLSAddr() != "" {
			tlsNote = ", TLS on " + displayAddr(br.TLSAddr())
		}
	}
	t, err := uspstomp.New(uspstomp.Options{Endpoint: ep, BrokerAddr: addr, Login: login,
		Passcode: passcode, TLS: cfg.tls.stomp, VHost: s.str("stomp-vhost"), Destination: dest, Logger: log})
	if err != nil {
		return s.errSetting("stomp-addr", "%v", err)
	}
	if err := t.Start(); err != nil {
		return s.errSetting("stomp-addr", "%v", err)
	}
	// Agents that stayed connected to the broker while Duet was down.
	ep.RestoreRoutes(t)
	started.push(func(ctx context.Context) { _ = t.Shutdown(ctx) })
	scheme := "stomp://"
	if cfg.tls.stomp != nil {
		scheme = "stomp+ssl://"
	}
	ls.STOMP = scheme + addr + " destination " + t.Destination() + tlsNote
	return nil
}

// startUSPWebSocket runs the WebSocket MTP: Duet is the server agents dial
// (TR-369 "WebSocket Binding"), on DUET_WS_ADDR at DUET_WS_PATH, wss:// with a certificate.
func (m *Main) startUSPWebSocket(s *settings, cfg *serveConfig, ep *uspadapter.Endpoint, dir *agentDirectory, log *slog.Logger, started *stack, ls *Listeners) error {
	if !cfg.comps["usp-ws"] {
		return nil
	}
	addr := cfg.wsAddr
	var auth uspadapter.AgentAuthenticator
	if dir != nil {
		auth = dir
	}
	clientCA := ""
	if s.str("ws-tls-cert") != "" {
		clientCA = cfg.uspSec.clientCAFile
	}
	t, err := uspws.New(uspws.Options{Endpoint: ep, Addr: addr, Path: s.str("ws-path"),
		TLSCertFile: s.str("ws-tls-cert"), TLSKeyFile: s.str("ws-tls-key"), TLS: cfg.tls.ws,
		Auth: auth, RequireAuth: cfg.uspSec.wsAuth, ClientCAFile: clientCA,
		HandshakeTimeout: cfg.httpRead, HTTPIdleTimeout: cfg.httpIdle, MaxConnsPerSource: cfg.wsPerIP, MaxConnections: cfg.wsMaxConns, Logger: log})
	if err != nil {
		return s.errSetting("ws-addr", "%v", err)
	}
	if err := t.Start(); err != nil {
		return s.errSetting("ws-addr", "%v", err)
	}
	started.push(func(ctx context.Context) { _ = t.Shutdown(ctx) })
	scheme := "ws://"
	if s.str("ws-tls-cert") != "" {
		scheme = "wss://"
	}
	ls.WS = scheme + displayAddr(t.Addr()) + s.str("ws-path")
	return nil
}
