package conns

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"buildguard.dev/buildguard/internal/shorten"
)

// TCP states as /proc/net/tcp prints them (include/net/tcp_states.h).
const (
	tcpEstablished = 0x01
	tcpSynSent     = 0x02
	tcpListen      = 0x0A
)

// tcpEntry is one socket line of /proc/net/tcp or /proc/net/tcp6.
type tcpEntry struct {
	Local, Remote netip.AddrPort
	State         uint8
	UID           uint32
	Inode         uint64
}

// maxTCPLine bounds one line; real lines are about 150 bytes (tcp6: 180).
const maxTCPLine = 1024

// parseProcNetTCP reads a /proc/net/tcp or /proc/net/tcp6 table and calls fn
// for each socket line. The header line is skipped. A malformed line stops
// parsing with an error naming the line.
func parseProcNetTCP(r io.Reader, fn func(tcpEntry)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxTCPLine)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if line == 1 {
			if !strings.Contains(text, "local_address") {
				return fmt.Errorf("tcp table: line 1 is not the header: %q", shorten.Text(text, quoteLen))
			}
			continue
		}
		if strings.TrimSpace(text) == "" {
			continue
		}
		e, err := parseTCPLine(text)
		if err != nil {
			return fmt.Errorf("tcp table line %d: %w", line, err)
		}
		fn(e)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("tcp table: %w", err)
	}
	return nil
}

// parseTCPLine parses
//
//	0: 0100007F:0CEA 1700007F:1F90 01 00000000:00000000 00:00000000 00000000  1000  0 12345 1 ...
//
// fields: sl, local, remote, st, tx:rx queue, tr:when, retrnsmt, uid, timeout, inode.
func parseTCPLine(text string) (tcpEntry, error) {
	f := strings.Fields(text)
	if len(f) < 10 {
		return tcpEntry{}, fmt.Errorf("%d fields, want at least 10", len(f))
	}
	if !strings.HasSuffix(f[0], ":") {
		return tcpEntry{}, fmt.Errorf("slot %q", shorten.Text(f[0], quoteLen))
	}
	var e tcpEntry
	var err error
	if e.Local, err = parseHexAddrPort(f[1]); err != nil {
		return tcpEntry{}, fmt.Errorf("local address: %w", err)
	}
	if e.Remote, err = parseHexAddrPort(f[2]); err != nil {
		return tcpEntry{}, fmt.Errorf("remote address: %w", err)
	}
	if e.Local.Addr().BitLen() != e.Remote.Addr().BitLen() {
		return tcpEntry{}, errors.New("local and remote addresses of different families")
	}
	st, err := strconv.ParseUint(f[3], 16, 8)
	if err != nil {
		return tcpEntry{}, fmt.Errorf("state %q", shorten.Text(f[3], quoteLen))
	}
	e.State = uint8(st)
	uid, err := strconv.ParseUint(f[7], 10, 32)
	if err != nil {
		return tcpEntry{}, fmt.Errorf("uid %q", shorten.Text(f[7], quoteLen))
	}
	e.UID = uint32(uid)
	if e.Inode, err = strconv.ParseUint(f[9], 10, 64); err != nil {
		return tcpEntry{}, fmt.Errorf("inode %q", shorten.Text(f[9], quoteLen))
	}
	return e, nil
}

// parseHexAddrPort parses "0100007F:0CEA" (IPv4) or 32 hex digits and a port
// (IPv6). The kernel prints each 32-bit word of the address with %08X in host
// byte order, and the port as a host-order number.
func parseHexAddrPort(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok || len(p) != 4 {
		return netip.AddrPort{}, fmt.Errorf("%q is not ADDR:PORT in hex", shorten.Text(s, quoteLen))
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q", p)
	}
	if len(a) != 8 && len(a) != 32 {
		return netip.AddrPort{}, fmt.Errorf("address %q has %d hex digits, want 8 or 32", shorten.Text(a, quoteLen), len(a))
	}
	raw, err := hex.DecodeString(a)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q is not hex", shorten.Text(a, quoteLen))
	}
	// Each word was printed as a number: its big-endian bytes are the
	// number's bytes; the address bytes are the word in host order.
	var b [16]byte
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(b[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	var addr netip.Addr
	if len(raw) == 4 {
		addr = netip.AddrFrom4([4]byte(b[:4]))
	} else {
		addr = netip.AddrFrom16(b)
	}
	return netip.AddrPortFrom(addr, uint16(port)), nil
}
