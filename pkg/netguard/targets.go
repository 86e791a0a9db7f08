package netguard

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
)

// DefaultRefused are the networks Duet never sends a request to on a
// device's behalf unless told otherwise (issue 15 §7): a device that says
// "reach me at 127.0.0.1:18999/internal-admin" or the cloud metadata
// address must not make Duet knock there. Private ranges are not refused:
// CPEs live in them.
var DefaultRefused = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // unspecified, "this network"
	netip.MustParsePrefix("127.0.0.0/8"),        // loopback
	netip.MustParsePrefix("169.254.0.0/16"),     // link-local, incl. 169.254.169.254 metadata
	netip.MustParsePrefix("224.0.0.0/4"),        // multicast
	netip.MustParsePrefix("255.255.255.255/32"), // broadcast
	netip.MustParsePrefix("::/128"),             // unspecified
	netip.MustParsePrefix("::1/128"),            // loopback
	netip.MustParsePrefix("fe80::/10"),          // link-local
	netip.MustParsePrefix("ff00::/8"),           // multicast
}

// ParsePrefixes reads a comma list of CIDR prefixes or single addresses.
func ParsePrefixes(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%q is not an address or CIDR prefix", f)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR prefix (e.g. 10.0.0.0/8)", f)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Targets decides which addresses Duet may connect to on a device's
// behalf: an address in Allow is allowed; otherwise one in Refuse or
// DefaultRefused is refused; anything else is allowed. The zero value is
// the default policy.
type Targets struct {
	Allow  []netip.Prefix
	Refuse []netip.Prefix
}

// RefusedError is a connection Targets refused.
type RefusedError struct{ Addr netip.Addr }

func (e *RefusedError) Error() string {
	return fmt.Sprintf("address %s is not an allowed target (loopback, link-local, unspecified, multicast or a configured refused network)", e.Addr)
}

// Check says whether ip may be connected to.
func (t *Targets) Check(ip netip.Addr) error {
	ip = ip.Unmap()
	for _, p := range t.Allow {
		if p.Contains(ip) {
			return nil
		}
	}
	for _, list := range [][]netip.Prefix{t.Refuse, DefaultRefused} {
		for _, p := range list {
			if p.Contains(ip) {
				return &RefusedError{Addr: ip}
			}
		}
	}
	return nil
}

// Control is a net.Dialer Control function: it checks the address being
// dialled, after name resolution, so a name that resolves (or rebinds) to
// a refused address is refused too.
func (t *Targets) Control(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("dial %s: not an IP address", address)
	}
	return t.Check(ip)
}
