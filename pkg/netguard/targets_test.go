package netguard

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestTargetsDefault(t *testing.T) {
	var tg Targets
	for addr, ok := range map[string]bool{
		"127.0.0.1": false, "169.254.169.254": false, "0.0.0.0": false, "224.0.0.1": false,
		"::1": false, "fe80::1": false, "::ffff:127.0.0.1": false, "ff02::1": false,
		"10.1.2.3": true, "192.168.1.1": true, "100.64.0.1": true, "203.0.113.9": true, "2001:db8::1": true,
	} {
		err := tg.Check(netip.MustParseAddr(addr))
		if (err == nil) != ok {
			t.Errorf("%s: %v, want allowed=%v", addr, err, ok)
		}
	}
	allow, _ := ParsePrefixes("127.0.0.0/8")
	refuse, _ := ParsePrefixes("0.0.0.0/0, ::/0")
	tg = Targets{Allow: allow, Refuse: refuse}
	if tg.Check(netip.MustParseAddr("127.0.0.1")) != nil || tg.Check(netip.MustParseAddr("10.0.0.1")) == nil {
		t.Error("allow 127/8 with everything else refused")
	}
}

// TestTargetsAtDialTime: the check runs on the resolved address, so a
// host name for a loopback address is refused as the literal is.
func TestTargetsAtDialTime(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	d := net.Dialer{Timeout: 5 * time.Second, Control: (&Targets{}).Control}
	for _, host := range []string{"127.0.0.1", "localhost"} {
		c, err := d.DialContext(context.Background(), "tcp", net.JoinHostPort(host, port))
		var re *RefusedError
		if err == nil {
			c.Close()
		}
		if !errors.As(err, &re) {
			t.Errorf("dial %s: %v, want refused", host, err)
		}
	}
}
