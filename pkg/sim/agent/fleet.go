package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Fleet runs many simulated agents in one process, each with its own MTP
// client. Close stops them all.
type Fleet struct {
	mu      sync.Mutex
	agents  []*Agent
	clients []*Client
	pending []*Agent // built, not connected yet (ConnectFleet)
	closed  bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
	ready  chan struct{}
	errors atomic.Uint64
}

// DialFunc connects one agent over some MTP, e.g. a closure around
// DialMQTT with a per-agent topic.
type DialFunc func(ctx context.Context, a *Agent) (*Client, error)

// StartFleet builds n agents from config(i) and connects each with dial.
// Agents are connected one after the other so a broker sees a steady
// arrival rather than n simultaneous CONNECTs. On the first failure
// everything started so far is closed and the error names the agent:
// for tests, where a failure is a finding. ConnectFleet retries instead.
func StartFleet(ctx context.Context, n int, config func(i int) Config, dial DialFunc) (*Fleet, error) {
	if n <= 0 || config == nil || dial == nil {
		return nil, errors.New("agent: StartFleet needs n > 0, a config function and a dial function")
	}
	f := &Fleet{ready: make(chan struct{})}
	defer close(f.ready)
	for i := 0; i < n; i++ {
		a, err := New(config(i))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("agent %d: %w", i, err)
		}
		if err := f.connect(ctx, a, dial); err != nil {
			a.Close()
			f.Close()
			return nil, fmt.Errorf("agent %d (%s): %w", i, a.EndpointID(), err)
		}
	}
	return f, nil
}

// FleetOptions configure ConnectFleet: N agents built from Config(i),
// each connected with Dial.
type FleetOptions struct {
	N      int
	Config func(i int) Config
	Dial   DialFunc
	// Parallel is how many connections are being opened at once, default
	// 1: a broker sees a steady arrival rather than N simultaneous CONNECTs.
	Parallel int
	// OnError, when set, is called with every failed connection attempt.
	OnError func(err error)
	// RetryMax caps the back-off between the attempts of one agent
	// (doubling from 50 ms), default 5 s.
	RetryMax time.Duration
}

// ConnectFleet builds the agents, then connects them in the background:
// a failed connection is counted (Errors), reported to OnError and tried
// again after a back-off, never given up until ctx ends or the fleet is
// closed (a simulator at a server's limits must not abandon the fleet at
// its first refusal). Ready is closed once every agent has connected.
func ConnectFleet(ctx context.Context, opts FleetOptions) (*Fleet, error) {
	if opts.N <= 0 || opts.Config == nil || opts.Dial == nil {
		return nil, errors.New("agent: ConnectFleet needs N > 0, a Config function and a Dial function")
	}
	opts.Parallel = max(opts.Parallel, 1)
	if opts.RetryMax <= 0 {
		opts.RetryMax = retryMax
	}
	f := &Fleet{ready: make(chan struct{})}
	for i := 0; i < opts.N; i++ {
		a, err := New(opts.Config(i))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("agent %d: %w", i, err)
		}
		f.pending = append(f.pending, a)
	}
	ctx, f.cancel = context.WithCancel(ctx)
	next := make(chan *Agent)
	for range opts.Parallel {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			for a := range next {
				f.connectRetrying(ctx, a, opts)
			}
		}()
	}
	go func() {
		defer close(next)
		for _, a := range f.pending {
			select {
			case next <- a:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() {
		f.wg.Wait()
		if ctx.Err() == nil {
			close(f.ready)
		}
	}()
	return f, nil
}

// connectRetrying connects a until it succeeds or ctx ends.
func (f *Fleet) connectRetrying(ctx context.Context, a *Agent, opts FleetOptions) {
	wait := retryMin
	for ctx.Err() == nil {
		err := f.connect(ctx, a, opts.Dial)
		if err == nil {
			return
		}
		f.errors.Add(1)
		if opts.OnError != nil && ctx.Err() == nil {
			opts.OnError(fmt.Errorf("agent %s: %w", a.EndpointID(), err))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		wait = min(wait*2, opts.RetryMax)
	}
}

// connect dials a and adds it to the connected agents.
func (f *Fleet) connect(ctx context.Context, a *Agent, dial DialFunc) error {
	c, err := dial(ctx, a)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		c.Close()
		return nil
	}
	f.agents = append(f.agents, a)
	f.clients = append(f.clients, c)
	return nil
}

// Agents returns the fleet's connected agents in the order they connected.
func (f *Fleet) Agents() []*Agent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*Agent(nil), f.agents...)
}

// Connected is how many agents have connected.
func (f *Fleet) Connected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.agents)
}

// Errors counts the failed connection attempts of ConnectFleet.
func (f *Fleet) Errors() uint64 { return f.errors.Load() }

// Ready is closed once every agent has connected.
func (f *Fleet) Ready() <-chan struct{} { return f.ready }

// Close stops connecting, disconnects every client, then closes every
// agent. Safe to call twice.
func (f *Fleet) Close() error {
	if f.cancel != nil {
		f.cancel()
		f.wg.Wait()
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	clients, agents := f.clients, f.agents
	if f.pending != nil {
		agents = f.pending // every agent, connected or not
	}
	f.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Close()
		}()
	}
	wg.Wait()
	for _, a := range agents {
		a.Close()
	}
	return nil
}
