package forbidden

import (
	"net/netip"
	"testing"
)

func TestAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"169.254.169.254", true},
		{"169.254.0.1", true},
		{"fe80::1", true},
		{"ff02::1", true}, // link-local multicast
		{"fd00:ec2::254", true},
		{"::ffff:169.254.169.254", true},
		{"64:ff9b::a9fe:a9fe", true},   // NAT64 of 169.254.169.254
		{"64:ff9b:1::a9fe:a9fe", true}, // local-use NAT64
		{"::a9fe:a9fe", true},          // IPv4-compatible
		{"10.0.0.1", false},
		{"127.0.0.1", false},
		{"203.0.113.9", false},
		{"2001:db8::1", false},
		{"64:ff9b::cb00:7109", false}, // NAT64 of 203.0.113.9
		{"fd00:ec2::253", false},
	} {
		if got := Addr(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("Addr(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}
