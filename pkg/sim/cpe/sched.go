package cpe

import (
	"sync"
	"time"
)

// Scheduler runs the session loops of many CPEs on at most a bounded
// number of goroutines at a time. An idle CPE holds no goroutine: its next
// periodic inform, retry or scheduled inform is a runtime timer, and a
// connection request or a change queues it. The CPEs of one fleet share
// one Scheduler (Options.Scheduler); its limit bounds the sessions (and
// so the ACS connections) in flight at once.
type Scheduler struct {
	limit int

	mu      sync.Mutex
	queue   []*CPE
	running int
}

// DefaultSessionLimit is the sessions in flight at once of the Scheduler
// CPEs use when Options.Scheduler is nil.
const DefaultSessionLimit = 4096

var defaultScheduler = NewScheduler(DefaultSessionLimit)

// NewScheduler returns a Scheduler running at most limit session loops
// at once (at least 1).
func NewScheduler(limit int) *Scheduler {
	return &Scheduler{limit: max(limit, 1)}
}

// The states of a CPE's session loop, guarded by its Scheduler's mu.
const (
	loopIdle    = iota // waiting for its timer or a poke
	loopQueued         // waiting for a goroutine
	loopRunning        // in turn()
)

// poke asks for a turn of c's session loop: now if it is idle, once more
// if it is running.
func (s *Scheduler) poke(c *CPE) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case c.loop == loopRunning:
		c.again = true
	case c.loop == loopIdle && !c.stopped:
		s.enqueue(c)
	}
}

// enqueue queues an idle c and starts a goroutine if the limit allows.
// Caller holds s.mu.
func (s *Scheduler) enqueue(c *CPE) {
	c.loop = loopQueued
	s.queue = append(s.queue, c)
	if s.running < s.limit {
		s.running++
		go s.work()
	}
}

// work runs queued turns until the queue is empty.
func (s *Scheduler) work() {
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.running--
			s.mu.Unlock()
			return
		}
		c := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		c.loop = loopRunning
		s.mu.Unlock()

		next := c.turn()

		s.mu.Lock()
		if c.again && !c.stopped {
			c.again = false
			s.enqueue(c)
		} else {
			c.loop, c.again = loopIdle, false
			if c.stopped {
				if c.drained != nil {
					close(c.drained)
					c.drained = nil
				}
			} else if !next.IsZero() {
				c.timer.Reset(time.Until(next))
			}
		}
		s.mu.Unlock()
	}
}

// stop ends c's session loop: no turn starts after it returns, and the
// turn in progress, if any, has ended.
func (s *Scheduler) stop(c *CPE) {
	s.mu.Lock()
	c.stopped = true
	c.timer.Stop()
	var wait chan struct{}
	if c.loop != loopIdle {
		if c.drained == nil {
			c.drained = make(chan struct{})
		}
		wait = c.drained
	}
	s.mu.Unlock()
	if wait != nil {
		<-wait
	}
}
