package main

import (
	"log/slog"

	uspadapter "github.com/duet-dm/duet/adapters/usp"
)

// WIRING PENDING: replaced when adapters/usp/stomp and adapters/usp/websocket land.
func (m *Main) startUSPStomp(s *settings, comps map[string]bool, ep *uspadapter.Endpoint, log *slog.Logger, started *stack, ls *Listeners) error {
	return nil
}

func (m *Main) startUSPWebSocket(s *settings, comps map[string]bool, ep *uspadapter.Endpoint, log *slog.Logger, started *stack, ls *Listeners) error {
	return nil
}
