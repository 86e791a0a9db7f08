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
func (m *Main) startUSPStomp(s *settings, cfg *serveConfig, ep *uspadapter.Endpoint, log *slog.Logger, started *stack, ls *Listeners) error {
	if !cfg.comps["usp-stomp"] {
		return nil
	}
	addr := s.str("stomp-addr")
	if addr == "" {
		port := cfg.stompPort
		br, err := uspstomp.StartEmbeddedBroker(":" + strconv.Itoa(port))
		if err != nil {
			return s.errSetting("stomp-port", "%v (set DUET_STOMP_PORT to a free port, or DUET_STOMP_ADDR to use that broker)", err)
		}
		started.push(func(context.Context) { _ = br.Close() })
		addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	t, err := uspstomp.New(uspstomp.Options{Endpoint: ep, BrokerAddr: addr, Login: s.str("stomp-login"),
		Passcode: s.str("stomp-passcode"), VHost: s.str("stomp-vhost"), TLS: cfg.tls.stomp, Destination: s.str("stomp-destination"), Logger: log})
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
	ls.STOMP = scheme + addr + " destination " + t.Destination()
	return nil
}

// startUSPWebSocket runs the WebSocket MTP: Duet is the server agents dial
// (TR-369 "WebSocket Binding"), on DUET_WS_ADDR at DUET_WS_PATH, wss:// with a certificate.
func (m *Main) startUSPWebSocket(s *settings, cfg *serveConfig, ep *uspadapter.Endpoint, log *slog.Logger, started *stack, ls *Listeners) error {
	if !cfg.comps["usp-ws"] {
		return nil
	}
	addr := cfg.wsAddr
	t, err := uspws.New(uspws.Options{Endpoint: ep, Addr: addr, Path: s.str("ws-path"),
		TLSCertFile: s.str("ws-tls-cert"), TLSKeyFile: s.str("ws-tls-key"), TLS: cfg.tls.ws,
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
