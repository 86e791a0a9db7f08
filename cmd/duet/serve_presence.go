package main

import (
	"log/slog"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/store"
)

// presenceSweeper builds the controller's CWMP presence sweeper from the
// DUET_CWMP_OFFLINE_* settings.
func (m *Main) presenceSweeper(s *settings, st *store.Store, b *bus.Bus, log *slog.Logger) (*controller.PresenceSweeper, error) {
	tol, err := s.float("cwmp-offline-tolerance", 0, 1000)
	if err != nil {
		return nil, err
	}
	if tol < 1 {
		return nil, s.errSetting("cwmp-offline-tolerance", "%v is below 1 (one missed inform)", tol)
	}
	grace, err := s.duration("cwmp-offline-grace", 0)
	if err != nil {
		return nil, err
	}
	after, err := s.duration("cwmp-offline-after", time.Second)
	if err != nil {
		return nil, err
	}
	sweep, err := s.duration("cwmp-offline-sweep", 10*time.Millisecond)
	if err != nil {
		return nil, err
	}
	if grace == 0 {
		grace = time.Nanosecond // 0 means "default" to the controller
	}
	return controller.NewPresenceSweeper(controller.PresenceOptions{Store: st, Bus: b, Tolerance: tol, Grace: grace,
		UnknownAfter: after, Interval: sweep, Logger: log})
}
