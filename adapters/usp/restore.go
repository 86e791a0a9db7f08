package usp

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// Restoring routes (issue 11 §2). An agent on an MQTT or STOMP broker stays
// connected to the broker while Duet restarts, and says nothing until its
// next Notify (a day, with a factory PeriodicNotifInterval): nobody would
// serve its commands. The adapter holds no database (docs/architecture.md), so on
// start it asks the controller over the bus which agents were last online
// over its MTP and where they listen (docs/bus.md, duet.ctl.usp.routes),
// opens a session for each, and probes it: an agent that answers is online
// again; one that does not is taken offline.

// restoreProbes bounds the probes out at once; restorePage is the page size
// asked of the controller.
const (
	restoreProbes = 64
	restorePage   = 1000
)

// RestoreRoutes starts restoring, in the background, the sessions of the
// agents last online over mtp. It waits for a controller to answer (they
// may start after the adapter) until the endpoint shuts down.
func (e *Endpoint) RestoreRoutes(mtp MTP) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.restoreRoutes(mtp)
	}()
}

func (e *Endpoint) restoreRoutes(mtp MTP) {
	start := time.Now()
	after := ""
	backoff := 250 * time.Millisecond
	waiting := false
	sem := make(chan struct{}, restoreProbes)
	var wg sync.WaitGroup
	var asked, answered atomic.Int64
	defer wg.Wait()
	for e.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		page, err := e.bus.AskRoutes(ctx, &duetv1.RoutesRequest{Transport: mtp.Name(), After: after, Limit: restorePage})
		cancel()
		if err != nil {
			if e.ctx.Err() != nil {
				return
			}
			if !waiting {
				waiting = true
				e.log.Info("waiting for a controller to list the agents to restore", "mtp", mtp.Name(), "err", err)
			}
			sleepCtx(e.ctx, backoff)
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		for _, r := range page.GetRoutes() {
			if devicemodel.ValidateDeviceID(r.GetDeviceId()) != nil || r.GetAddress() == "" {
				metricRestored.WithLabelValues(mtp.Name(), "invalid").Inc()
				e.log.Warn("route to restore ignored", "mtp", mtp.Name(), "device", r.GetDeviceId(), "address", r.GetAddress())
				continue
			}
			s, created, _ := e.openSession(mtp, r.GetDeviceId(), Address{Reply: r.GetAddress()}, true)
			if s == nil {
				return // shutting down
			}
			if !created {
				continue // it spoke first
			}
			select {
			case sem <- struct{}{}:
			case <-e.ctx.Done():
				return
			}
			asked.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if e.probeRestored(mtp, s) {
					answered.Add(1)
				}
			}()
		}
		if !page.GetMore() || len(page.GetRoutes()) == 0 {
			break
		}
		after = page.GetRoutes()[len(page.GetRoutes())-1].GetDeviceId()
	}
	wg.Wait()
	if e.ctx.Err() == nil {
		e.log.Info("usp routes restored", "mtp", mtp.Name(), "probed", asked.Load(), "answered", answered.Load(), "took", time.Since(start).Round(time.Millisecond))
	}
}

// probeRestored sends a GetSupportedProtocol (TR-369 "GetSupportedProtocol": every agent
// answers it, and it reads nothing) to a restored session: an answer
// brings the agent online; none takes it offline.
func (e *Endpoint) probeRestored(mtp MTP, s *session) bool {
	ctx, cancel := context.WithTimeout(e.ctx, e.opts.RequestTimeout)
	defer cancel()
	_, err := e.request(ctx, s.eid, uspmsg.Header_GET_SUPPORTED_PROTO, &uspmsg.Request{ReqType: &uspmsg.Request_GetSupportedProtocol{
		GetSupportedProtocol: &uspmsg.GetSupportedProtocol{ControllerSupportedProtocolVersions: pkgusp.ControllerSupportedVersions}}})
	if e.ctx.Err() != nil {
		return false
	}
	if err != nil {
		metricRestored.WithLabelValues(mtp.Name(), "lost").Inc()
		e.forget(mtp, s.eid, "not answering after the adapter started: "+devicemodel.ErrorMessage(err))
		return false
	}
	metricRestored.WithLabelValues(mtp.Name(), "answered").Inc()
	e.mu.Lock()
	// Onboarded by an earlier process; a Connect record or Boot! checks
	// its subscriptions again.
	e.known.put(s.eid, struct{}{})
	addr := s.addr
	e.mu.Unlock()
	e.log.Info("usp agent online again", "device", s.eid, "mtp", mtp.Name(), "address", addr.reachability())
	e.announce(s, nil)
	return true
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
