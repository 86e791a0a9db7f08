package bus

import (
	"sync"

	"github.com/nats-io/nats.go"
)

// sharedQueue delivers the messages of every per-device command
// subscription (ServeCommands) through one channel and one goroutine,
// instead of nats.go's goroutine per asynchronous subscription: a USP
// adapter holds one such subscription per connected agent, and at tens of
// thousands of agents those idle goroutines were a third of its memory per
// agent (docs/scaling.md, "Memory per agent").
type sharedQueue struct {
	once     sync.Once
	ch       chan *nats.Msg
	handlers sync.Map // *nats.Subscription -> func(*nats.Msg)
	// waiters bounds the goroutines waiting for a busy subscription's
	// handler slot, so that one busy subscription never holds up the
	// others' messages; when it is full the dispatcher waits, the channel
	// fills and NATS drops (slow consumer) (CONTRIBUTING.md, habit 8).
	waiters chan struct{}
	done    chan struct{}
	stopped sync.WaitGroup
}

// sharedQueueLen is the room for messages not yet dispatched; one
// dispatch only starts a goroutine, so it empties fast.
const (
	sharedQueueLen     = 16384
	sharedQueueWaiters = 4096
)

// start starts the dispatcher once.
func (q *sharedQueue) start() {
	q.once.Do(func() {
		q.ch = make(chan *nats.Msg, sharedQueueLen)
		q.waiters = make(chan struct{}, sharedQueueWaiters)
		q.done = make(chan struct{})
		q.stopped.Add(1)
		go func() {
			defer q.stopped.Done()
			for {
				select {
				case <-q.done:
					return
				case m := <-q.ch:
					if h, ok := q.handlers.Load(m.Sub); ok {
						h.(func(*nats.Msg))(m)
					}
					// Else its subscription was stopped after NATS
					// queued the message: dropped, as an unsubscribed
					// asynchronous subscription drops it.
				}
			}
		}()
	})
}

// stop ends the dispatcher (Bus.Close). Safe when never started.
func (q *sharedQueue) stop() {
	q.once.Do(func() {}) // a later start does nothing
	if q.done != nil {
		close(q.done)
		q.stopped.Wait()
	}
}
