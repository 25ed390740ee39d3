package policy

import (
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"strings"
	"unicode/utf8"
)

// Sources is a compiled list of trusted download sources: host names, host
// globs, CIDRs and URL prefixes. Build one with ParseSources.
//
// The zero value trusts nothing. A Sources is never modified after
// ParseSources returns it, so it is safe for concurrent use and cheap to copy.
type Sources struct {
	names    map[string]struct{} // exact names: lower case, no trailing dot
	suffixes []string            // "*.github.com" is kept as ".github.com"
	prefixes []netip.Prefix      // CIDRs and single addresses, IPv4 never mapped into IPv6
	paths    []urlPrefix         // "github.com/tianon/gosu/releases/"
}

// urlPrefix trusts the URLs of one host (or host glob) whose path starts
// with path, on a segment boundary.
type urlPrefix struct {
	host string // exact name, or ".suffix" for a "*." glob
	glob bool
	path string // cleaned, starting with "/"; a trailing "/" is kept
}

// ParseSources compiles trusted download sources. Each entry is one of:
//
//   - a host name, matched exactly and case-insensitively: "deb.debian.org";
//   - a glob with a single leading "*." that matches every name below the
//     rest, at any depth, but not the rest itself: "*.github.com" matches
//     "api.github.com" and "a.b.github.com", not "github.com";
//   - an IP address, bare or, for IPv6, in brackets: "192.0.2.7", "::1", "[::1]";
//   - a CIDR: "10.0.0.0/8", "2001:db8::/32". Host bits are ignored;
//   - a URL prefix, a host name or glob followed by a path and no scheme:
//     "github.com/tianon/gosu/releases/". It trusts the URLs of that host
//     whose path, once dot segments are resolved, starts with the prefix
//     on a segment boundary: "github.com/tianon/gosu" matches
//     "/tianon/gosu" and "/tianon/gosu/x", not "/tianon/gosu-evil". Paths
//     are matched case-sensitively; query and fragment are ignored. A URL
//     whose path hides a slash, a backslash or a dot behind a percent
//     escape matches no prefix. A prefix trusts downloads only, never a
//     connection (a connection has no path).
//
// Host entries name hosts, not endpoints, so an entry with a port
// ("registry.acme.internal:5000") or a scheme is an error rather than
// silently trusting every port of the host. Whitespace, empty entries, IPv6
// zones, misplaced wildcards and a prefix with "..", "%", "?" or "#" are
// errors too. Host names and IP addresses never match each other: trust in
// "example.com" does not extend to the addresses it resolves to, because
// nothing here resolves DNS.
//
// An error names the offending entry as `[index] "entry": reason`, so that the
// caller can prefix the field name: "trustedSources" + err.Error() reads
// `trustedSources[2] "10.0.0.0/33": not a valid CIDR`.
func ParseSources(entries []string) (Sources, error) {
	var s Sources
	for i, e := range entries {
		if reason := s.add(e); reason != "" {
			return Sources{}, fmt.Errorf("[%d] %q: %s", i, e, reason)
		}
	}
	return s, nil
}

// add compiles one entry into s and returns why it is invalid, or "".
func (s *Sources) add(e string) string {
	switch {
	case e == "":
		return "empty entry"
	case strings.ContainsAny(e, " \t\r\n\v\f"):
		return "contains whitespace"
	case strings.Contains(e, "://"):
		return "is a URL; write its host, or its host and path without the scheme"
	case strings.Contains(e, "/"):
		p, err := netip.ParsePrefix(e)
		if err != nil {
			return s.addURLPrefix(e)
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			// Hosts are unmapped before matching, so a mapped prefix must be too.
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		s.prefixes = append(s.prefixes, p.Masked())
		return ""
	case strings.HasPrefix(e, "["):
		if i := strings.Index(e, "]:"); i >= 0 {
			return "has a port; ports are not matched, list the host alone"
		}
		if !strings.HasSuffix(e, "]") {
			return "not a valid IP address"
		}
		a, err := netip.ParseAddr(e[1 : len(e)-1])
		if err != nil || !a.Is6() {
			return "not a valid IPv6 address"
		}
		return s.addAddr(a)
	}
	if a, err := netip.ParseAddr(e); err == nil {
		return s.addAddr(a)
	}
	if strings.Contains(e, ":") {
		if h, port, ok := strings.Cut(e, ":"); ok && h != "" && port != "" && allDigits(port) {
			return "has a port; ports are not matched, list the host alone"
		}
		return "not a valid IP address or host name"
	}
	name := strings.ToLower(strings.TrimSuffix(e, "."))
	glob := false
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		glob, name = true, rest
	}
	if strings.Contains(name, "*") {
		return `only a single leading "*." wildcard is allowed`
	}
	if !validHostName(name) {
		return "not a valid host name"
	}
	if looksNumeric(name) {
		// A DNS name never ends in an all-numeric label, so this was meant as
		// an address, and a mistyped address must not become a trusted name.
		return "not a valid IP address"
	}
	if glob {
		s.suffixes = append(s.suffixes, "."+name)
		return ""
	}
	if s.names == nil {
		s.names = make(map[string]struct{})
	}
	s.names[name] = struct{}{}
	return ""
}

// addURLPrefix compiles "host/path" and returns why it is invalid, or "".
func (s *Sources) addURLPrefix(e string) string {
	host, p, _ := strings.Cut(e, "/")
	if _, err := netip.ParseAddr(host); err == nil || strings.HasPrefix(host, "[") || looksNumeric(strings.ToLower(host)) {
		return "not a valid CIDR; a URL prefix needs a host name, not an address"
	}
	if strings.Contains(host, ":") {
		return "has a port; ports are not matched, list the host alone"
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	glob := false
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		glob, name = true, rest
	}
	if strings.Contains(name, "*") {
		return `only a single leading "*." wildcard is allowed`
	}
	if !validHostName(name) {
		return "not a valid host name before the path"
	}
	if strings.ContainsAny(p, "%?#\\") {
		return `a URL prefix must not contain "%", "?", "#" or a backslash`
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." || seg == "." {
			return `a URL prefix must not contain "." or ".." segments`
		}
	}
	clean := path.Clean("/" + p)
	if strings.HasSuffix(p, "/") && clean != "/" {
		clean += "/"
	}
	if glob {
		name = "." + name
	}
	s.paths = append(s.paths, urlPrefix{host: name, glob: glob, path: clean})
	return ""
}

func (s *Sources) addAddr(a netip.Addr) string {
	if a.Zone() != "" {
		return "has an IPv6 zone; zones are not matched"
	}
	a = a.Unmap()
	s.prefixes = append(s.prefixes, netip.PrefixFrom(a, a.BitLen()))
	return ""
}

// Trusted reports whether host is trusted. Host is a DNS name or an IP
// literal as it appears in a URL, without a port; IPv6 may be in brackets.
// Names are matched case-insensitively and a trailing dot is ignored. IP
// literals, including the legacy IPv4 forms "3232235521", "0x7f000001" and
// "0177.1", match only CIDR and address entries, after IPv4-mapped IPv6 is
// unmapped. A host that is neither a valid name nor an IP literal is never
// trusted.
func (s Sources) Trusted(host string) bool {
	h, ip, ok := canonicalHost(host)
	if !ok {
		return false
	}
	if ip {
		a, err := netip.ParseAddr(h)
		if err != nil {
			return false
		}
		for _, p := range s.prefixes {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	if _, ok := s.names[h]; ok {
		return true
	}
	for _, suf := range s.suffixes {
		if len(h) > len(suf) && strings.HasSuffix(h, suf) {
			return true
		}
	}
	return false
}

// TrustedURL reports whether a download from host (as Trusted takes it) of
// the URL path urlPath ("/tianon/gosu/releases/download/1.17/gosu-amd64",
// query and fragment already removed) is trusted: the host is, or a URL
// prefix covers host and path. urlPath is percent-decoded and its dot
// segments resolved before it is compared.
func (s Sources) TrustedURL(host, urlPath string) bool {
	if s.Trusted(host) {
		return true
	}
	if len(s.paths) == 0 {
		return false
	}
	h, ip, ok := canonicalHost(host)
	if !ok || ip {
		return false
	}
	p, ok := cleanURLPath(urlPath)
	if !ok {
		return false
	}
	for _, pr := range s.paths {
		if pr.glob {
			if len(h) <= len(pr.host) || !strings.HasSuffix(h, pr.host) {
				continue
			}
		} else if h != pr.host {
			continue
		}
		if pathHasPrefix(p, pr.path) {
			return true
		}
	}
	return false
}

// cleanURLPath decodes a URL path and resolves its dot segments. A path
// that hides '/', '\' or '.' behind a percent escape, or does not decode,
// is refused: a server may read it otherwise than we would.
func cleanURLPath(p string) (string, bool) {
	if strings.ContainsRune(p, '\\') {
		return "", false
	}
	if strings.Contains(p, "%") {
		lower := strings.ToLower(p)
		for _, bad := range []string{"%2f", "%5c", "%2e"} {
			if strings.Contains(lower, bad) {
				return "", false
			}
		}
		d, err := url.PathUnescape(p)
		if err != nil {
			return "", false
		}
		p = d
	}
	c := path.Clean("/" + p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c, true
}

// pathHasPrefix reports whether p starts with prefix on a segment boundary.
func pathHasPrefix(p, prefix string) bool {
	if strings.HasSuffix(prefix, "/") {
		return strings.HasPrefix(p, prefix)
	}
	return p == prefix || strings.HasPrefix(p, prefix+"/")
}

// canonicalHost returns host in the form used for matching and reporting:
// names in lower case without a trailing dot, IP literals in netip's string
// form without brackets or zone and with IPv4 unmapped. It reports whether
// host is an IP literal and whether it is usable at all.
func canonicalHost(host string) (canon string, ip, ok bool) {
	if len(host) >= 2 && host[0] == '[' && host[len(host)-1] == ']' {
		inner := host[1 : len(host)-1]
		if i := strings.IndexByte(inner, '%'); i >= 0 {
			inner = inner[:i]
		}
		a, err := netip.ParseAddr(inner)
		if err != nil || !a.Is6() {
			return "", false, false
		}
		return a.Unmap().String(), true, true
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.WithZone("").Unmap().String(), true, true
	}
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	if a, ok := parseLegacyIPv4(h); ok {
		return a.String(), true, true
	}
	if !validHostName(h) {
		return "", false, false
	}
	return h, false, true
}

// validHostName reports whether h, already lower case, is a plausible DNS
// name: at most 253 bytes of valid UTF-8 in non-empty labels of at most 63
// bytes made of letters, digits, '-' and '_'. Non-ASCII letters are
// allowed so that internationalised names are reported as written rather
// than dropped.
func validHostName(h string) bool {
	if h == "" || len(h) > 253 || !utf8.ValidString(h) {
		// strings.ToLower turns every invalid byte into U+FFFD, which would
		// make different hosts equal.
		return false
	}
	label := 0
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c >= 0x80:
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0
}

// looksNumeric reports whether the last label of a host name is all digits
// or a 0x hexadecimal number, which no DNS name has.
func looksNumeric(h string) bool {
	last := h[strings.LastIndexByte(h, '.')+1:]
	if x, ok := strings.CutPrefix(last, "0x"); ok {
		last = x
		for i := 0; i < len(last); i++ {
			if !hexDigit(last[i]) {
				return false
			}
		}
		return true
	}
	return last != "" && allDigits(last)
}

// parseLegacyIPv4 parses the IPv4 forms that inet_aton, and therefore curl
// and wget on most systems, accept besides dotted quads: one to four parts,
// each decimal, octal with a leading 0 or hexadecimal with 0x, the last part
// filling the remaining bytes ("127.1", "3232235521", "0x7f.0.0.1").
func parseLegacyIPv4(s string) (netip.Addr, bool) {
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return netip.Addr{}, false
	}
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var vals [4]uint64
	for i, p := range parts {
		v, ok := parseInetPart(p)
		if !ok {
			return netip.Addr{}, false
		}
		vals[i] = v
	}
	n := len(parts)
	for i := 0; i < n-1; i++ {
		if vals[i] > 0xff {
			return netip.Addr{}, false
		}
	}
	if vals[n-1] >= 1<<(8*(5-n)) {
		return netip.Addr{}, false
	}
	var u uint64
	for i := 0; i < n-1; i++ {
		u |= vals[i] << (8 * (3 - i))
	}
	u |= vals[n-1]
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)}), true
}

func parseInetPart(p string) (uint64, bool) {
	base := uint64(10)
	switch {
	case len(p) > 2 && (p[:2] == "0x" || p[:2] == "0X"):
		base, p = 16, p[2:]
	case len(p) > 1 && p[0] == '0':
		base, p = 8, p[1:]
	}
	if p == "" {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(p); i++ {
		var d uint64
		switch c := p[i]; {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case c >= 'a' && c <= 'f':
			d = uint64(c-'a') + 10
		case c >= 'A' && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, false
		}
		if d >= base {
			return 0, false
		}
		v = v*base + d
		if v > 0xffffffff {
			return 0, false
		}
	}
	return v, true
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func hexDigit(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
