package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Fleet runs many simulated agents in one process, each with its own MTP
// client. Close stops them all.
type Fleet struct {
	mu      sync.Mutex
	agents  []*Agent
	clients []*Client
	closed  bool
}

// DialFunc connects one agent over some MTP, e.g. a closure around
// DialMQTT with a per-agent topic.
type DialFunc func(ctx context.Context, a *Agent) (*Client, error)

// StartFleet builds n agents from config(i) and connects each with dial.
// Agents are connected one after the other so a broker sees a steady
// arrival rather than n simultaneous CONNECTs. On the first failure
// everything started so far is closed and the error names the agent.
func StartFleet(ctx context.Context, n int, config func(i int) Config, dial DialFunc) (*Fleet, error) {
	if n <= 0 || config == nil || dial == nil {
		return nil, errors.New("agent: StartFleet needs n > 0, a config function and a dial function")
	}
	f := &Fleet{}
	for i := 0; i < n; i++ {
		a, err := New(config(i))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("agent %d: %w", i, err)
		}
		c, err := dial(ctx, a)
		if err != nil {
			a.Close()
			f.Close()
			return nil, fmt.Errorf("agent %d (%s): %w", i, a.EndpointID(), err)
		}
		f.mu.Lock()
		f.agents = append(f.agents, a)
		f.clients = append(f.clients, c)
		f.mu.Unlock()
	}
	return f, nil
}

// Agents returns the fleet's agents in start order.
func (f *Fleet) Agents() []*Agent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*Agent(nil), f.agents...)
}

// Close disconnects every client, then closes every agent. Safe to call
// twice.
func (f *Fleet) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	clients, agents := f.clients, f.agents
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
