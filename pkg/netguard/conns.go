package netguard

import (
	"net"
	"sync"
)

// LimitPerSource wraps a listener so that one source IP holds at most max
// connections at once; a connection past it is closed as soon as it is
// accepted, after onRefuse (if set) is told the source. It bounds what one
// client (or one attacker) can hold of a server's connections (issue 15
// §8). max <= 0 returns ln unchanged.
func LimitPerSource(ln net.Listener, max int, onRefuse func(source string)) net.Listener {
	if max <= 0 {
		return ln
	}
	return &perSource{Listener: ln, max: max, onRefuse: onRefuse, open: map[string]int{}}
}

type perSource struct {
	net.Listener
	max      int
	onRefuse func(string)

	mu   sync.Mutex
	open map[string]int
}

func (l *perSource) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceOf(c.RemoteAddr())
		l.mu.Lock()
		if l.open[src] >= l.max {
			l.mu.Unlock()
			// Report before closing: whoever sees the close (the client,
			// a test) may look at the count next.
			if l.onRefuse != nil {
				l.onRefuse(src)
			}
			_ = c.Close()
			continue
		}
		l.open[src]++
		l.mu.Unlock()
		return &countedConn{Conn: c, release: func() { l.release(src) }}, nil
	}
}

func (l *perSource) release(src string) {
	l.mu.Lock()
	if l.open[src]--; l.open[src] <= 0 {
		delete(l.open, src)
	}
	l.mu.Unlock()
}

// sourceOf is the IP of an address (the port differs per connection).
func sourceOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
