// Package forbidden says which network addresses buildguard must never
// contact: link-local addresses, where cloud metadata services live, and
// the AWS IPv6 metadata address, in whatever form they are written. The
// policy checks registry names with it before a lookup, the registry
// client's dialer every address it connects to.
package forbidden

import "net/netip"

var awsMetadataV6 = netip.MustParseAddr("fd00:ec2::254")

// nat64 and nat64Local are the prefixes whose IPv6 addresses a NAT64
// gateway translates to the IPv4 address in their last 32 bits (RFC 6052,
// RFC 8215); ipv4Compatible is the deprecated ::a.b.c.d form.
var (
	nat64          = netip.MustParsePrefix("64:ff9b::/96")
	nat64Local     = netip.MustParsePrefix("64:ff9b:1::/48")
	ipv4Compatible = netip.MustParsePrefix("::/96")
)

// Addr reports whether a is link-local or a cloud metadata
// address, or an IPv6 address that carries one (IPv4-mapped, NAT64,
// IPv4-compatible).
func Addr(a netip.Addr) bool {
	a = a.Unmap()
	if a.Is6() && (nat64.Contains(a) || nat64Local.Contains(a) || ipv4Compatible.Contains(a)) {
		b := a.As16()
		if v4 := netip.AddrFrom4([4]byte(b[12:])); Addr(v4) {
			return true
		}
	}
	return a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a == awsMetadataV6
}
