package agent

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/duet-dm/duet/pkg/usp"
)

// inbound is one record received from the MTP with the way back to its
// sender: responses go to the reply address of the request (R-MSG.0a).
type inbound struct {
	rec   []byte
	reply func(rec []byte) error
}

// session is one live MTP connection.
type session interface {
	incoming() <-chan inbound
	// send delivers an agent-originated record to the Controller.
	send(rec []byte) error
	// lost is closed when the connection fails.
	lost() <-chan struct{}
	close()
}

// dialFunc opens a connection and sends the Connect record on it before
// returning (R-MTP.6: nothing else goes out before it, R-MTP.8).
type dialFunc func(ctx context.Context) (session, error)

// Client runs one Agent over one MTP connection, reconnecting when the
// connection drops or the agent restarts. It is the only reader of the
// agent's Outgoing queue.
type Client struct {
	a        *Agent
	dial     dialFunc
	cancel   context.CancelFunc
	done     chan struct{}
	once     sync.Once
	connects atomic.Int64
	errMu    sync.Mutex
	lastErr  error
	// down and gone: how long to stay away after the restart being
	// served (set by serve, read by run, one goroutine).
	down time.Duration
	gone bool
}

// retryMin and retryMax bound the reconnect back-off.
const (
	retryMin = 50 * time.Millisecond
	retryMax = 5 * time.Second
)

// start connects once synchronously, so a bad configuration fails the
// Dial call, then serves in a goroutine that Close stops.
func start(ctx context.Context, a *Agent, dial dialFunc) (*Client, error) {
	s, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	c := &Client{a: a, dial: dial, cancel: cancel, done: make(chan struct{})}
	c.connects.Add(1)
	go c.run(runCtx, s)
	return c, nil
}

// Connects counts successful connections, the first included; it grows on
// every reconnect (after a reboot, for instance).
func (c *Client) Connects() int { return int(c.connects.Load()) }

// Err returns the last connection error seen while reconnecting.
func (c *Client) Err() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.lastErr
}

// Close disconnects and waits for the client's goroutine. It does not
// close the Agent. Safe to call twice.
func (c *Client) Close() error {
	c.once.Do(c.cancel)
	<-c.done
	return nil
}

func (c *Client) run(ctx context.Context, s session) {
	defer close(c.done)
	wait := retryMin
	for {
		if s != nil {
			agentClosed := c.serve(ctx, s)
			if ctx.Err() != nil || agentClosed {
				// R-MTP.7: say goodbye with a DisconnectRecord before
				// dropping the MTP on shutdown (not on a lost connection).
				if rec, err := usp.MarshalDisconnect(c.a.EndpointID(), c.a.ControllerID(), "Shutdown", 0); err == nil {
					_ = s.send(rec)
				}
			}
			s.close()
			s = nil
			if agentClosed {
				return
			}
			down, gone := c.down, c.gone
			c.down, c.gone = 0, false
			if gone {
				// Rigged: the device never comes back. The agent's
				// queue fills and drops (counted) meanwhile.
				<-ctx.Done()
				return
			}
			if down > 0 {
				t := time.NewTimer(down)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
		var err error
		s, err = c.dial(ctx)
		if err != nil {
			c.errMu.Lock()
			c.lastErr = err
			c.errMu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			wait = min(wait*2, retryMax)
			continue
		}
		wait = retryMin
		c.connects.Add(1)
	}
}

// serve handles one connection until it is lost, the agent restarts or
// closes, or the client is closed; it reports whether the agent closed.
// Requests are answered before the next Outgoing item is read, so a
// Reboot()'s OperateResp leaves before the restart it causes.
func (c *Client) serve(ctx context.Context, s session) (agentClosed bool) {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.lost():
			return false
		case in := <-s.incoming():
			for _, rep := range c.a.HandleRecord(in.rec) {
				if err := in.reply(rep); err != nil {
					return false
				}
			}
		case o, ok := <-c.a.Outgoing():
			if !ok {
				return true
			}
			if o.Restart {
				c.down, c.gone = o.Downtime, o.Gone
				return false
			}
			if err := s.send(o.Record); err != nil {
				return false
			}
		}
	}
}

// Done is closed once the client has stopped: after Close, or by itself
// when its Agent is closed.
func (c *Client) Done() <-chan struct{} { return c.done }

// dialTCP opens a TCP connection, over TLS when cfg is set (the handshake
// bounded by ctx).
func dialTCP(ctx context.Context, addr string, cfg *tls.Config) (net.Conn, error) {
	if cfg == nil {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	d := tls.Dialer{Config: cfg}
	return d.DialContext(ctx, "tcp", addr)
}
