package cwmp

import (
	"context"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// watchBacklog asks the controllers for their backlog every BacklogPoll
// until Shutdown. No answer (no controller running, a timeout) sheds
// nothing: the events still go to the durable stream, and refusing every
// device because of a missing answer would be worse than a late registry.
func (a *ACS) watchBacklog() {
	t := time.NewTicker(a.o.BacklogPoll)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), max(a.o.BacklogPoll, 2*time.Second))
		n, err := a.o.Bus.AskBacklog(ctx, devicemodel.ProtocolCWMP)
		cancel()
		over := err == nil && n > a.o.MaxBacklog
		if was := a.backlogged.Swap(over); was != over {
			if over {
				a.log.Warn("the controllers are behind: new CWMP sessions get 503 until they catch up", "backlog_events", n, "max", a.o.MaxBacklog)
			} else {
				a.log.Info("the controllers caught up: new CWMP sessions are accepted again", "backlog_events", n)
			}
		}
		select {
		case <-a.done:
			return
		case <-t.C:
		}
	}
}
