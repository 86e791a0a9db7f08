package main

import (
	"context"
	"log/slog"
	"net"
	"strconv"

	uspadapter "github.com/duet-dm/duet/adapters/usp"
	uspstomp "github.com/duet-dm/duet/adapters/usp/stomp"
)

// startUSPStomp runs the STOMP MTP: a client of DUET_STOMP_ADDR, or of the
// embedded go-stomp broker on DUET_STOMP_PORT.
func (m *Main) startUSPStomp(s *settings, comps map[string]bool, ep *uspadapter.Endpoint, log *slog.Logger, started *stack, ls *Listeners) error {
	if !comps["usp-stomp"] {
		return nil
	}
	addr := s.str("stomp-addr")
	if addr == "" {
		port, err := s.port("stomp-port")
		if err != nil {
			return err
		}
		br, err := uspstomp.StartEmbeddedBroker(":" + strconv.Itoa(port))
		if err != nil {
			return s.errSetting("stomp-port", "%v (set DUET_STOMP_PORT to a free port, or DUET_STOMP_ADDR to use that broker)", err)
		}
		started.push(func(context.Context) { _ = br.Close() })
		addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	} else if _, err := s.addr("stomp-addr"); err != nil {
		return err
	}
	t, err := uspstomp.New(uspstomp.Options{Endpoint: ep, BrokerAddr: addr, Login: s.str("stomp-login"),
		Passcode: s.str("stomp-passcode"), VHost: s.str("stomp-vhost"), Destination: s.str("stomp-destination"), Logger: log})
	if err != nil {
		return s.errSetting("stomp-addr", "%v", err)
	}
	if err := t.Start(); err != nil {
		return s.errSetting("stomp-addr", "%v", err)
	}
	started.push(func(ctx context.Context) { _ = t.Shutdown(ctx) })
	ls.STOMP = "stomp://" + addr + " destination " + t.Destination()
	return nil
}

// WIRING PENDING: the WebSocket MTP is wired when adapters/usp/websocket lands.
func (m *Main) startUSPWebSocket(s *settings, comps map[string]bool, ep *uspadapter.Endpoint, log *slog.Logger, started *stack, ls *Listeners) error {
	return nil
}
