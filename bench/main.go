// Command bench measures buildguard's admission throughput and latency
// over real HTTPS on loopback, side by side with a do-nothing webhook that
// only decodes the AdmissionReview and allows it: the physical limit of an
// HTTPS + JSON round trip on the same machine.
//
// Both targets run in one process behind server.Server with the same
// certificate, client and body, alternately (buildguard, do-nothing,
// buildguard, ...), so that they share the machine's conditions. The
// buildguard target is the real registry client, engine and webhook
// handler, looking an image up in an in-memory registry on loopback; its
// caches are warmed first, so the figures are those of the cached path.
//
// Usage:
//
//	go run ./bench [-duration 10s] [-warmup 2s] [-runs 3] [-concurrency 8] [-http2] [-cpuprofile file]
//
// The exit status is 1 when any run had an error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"buildguard.dev/buildguard/bench/internal/reviewload"
)

// Targets of the report.
const (
	targetMinRatio = 0.80
	targetMaxP99   = 2 * time.Millisecond
)

type config struct {
	duration    time.Duration
	warmup      time.Duration
	runs        int
	concurrency int
	http2       bool
	cpuprofile  string
}

func main() { reviewload.Main("bench", run) }

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "measured duration of one run")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "unrecorded load before each run")
	fs.IntVar(&c.runs, "runs", 3, "number of buildguard/do-nothing pairs")
	fs.IntVar(&c.concurrency, "concurrency", 8, "concurrent requests (and keep-alive connections with HTTP/1.1)")
	fs.BoolVar(&c.http2, "http2", false, "use HTTP/2; the kube-apiserver calls admission webhooks over HTTP/1.1")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "write a CPU profile of the measured runs to `file`; samples carry the label target=buildguard|do-nothing on the server side and side=client on the load generator")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if err := reviewload.CheckFlags(fs, c.duration, c.warmup); err != nil {
		return c, err
	}
	switch {
	case c.runs < 1:
		return c, errors.New("-runs must be at least 1")
	case c.concurrency < 1:
		return c, errors.New("-concurrency must be at least 1")
	}
	return c, nil
}

func run(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := parseFlags(args[1:], os.Stderr)
	if err != nil {
		return err // flag.ErrHelp after -h: reviewload.Main exits 0
	}
	proto := "HTTP/1.1 keep-alive (as the kube-apiserver calls admission webhooks)"
	if cfg.http2 {
		proto = "HTTP/2"
	}
	fmt.Fprintf(out, "# buildguard benchmark\n\n")
	fmt.Fprintf(out, "- command: `%s`\n", commandLine(args))
	fmt.Fprintf(out, "- go: %s %s/%s, GOMAXPROCS=%d, NumCPU=%d\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Fprintf(out, "- load: %d concurrent requests, %s per run after %s warm-up, %d pairs run alternately\n", cfg.concurrency, cfg.duration, cfg.warmup, cfg.runs)
	fmt.Fprintf(out, "- protocol: %s over TLS on 127.0.0.1\n", proto)

	f, err := newFixture(ctx, cfg)
	if err != nil {
		return err
	}
	defer f.close()
	fmt.Fprintf(out, "- image: %s (%s), 2 containers per Deployment, body %d bytes\n", f.imageRef, f.imageDigest, f.bodySize())
	fmt.Fprintf(out, "- warm-up review: %s\n\n", f.warmNote)

	if cfg.cpuprofile != "" {
		pf, err := os.Create(cfg.cpuprofile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	targets := []*target{f.buildguard, f.nothing}
	var results []runResult
	for i := range cfg.runs {
		for _, t := range targets {
			if err := ctx.Err(); err != nil {
				return err
			}
			if cfg.warmup > 0 {
				f.load(ctx, t, cfg.warmup, false)
			}
			before := f.snapshot()
			r := f.load(ctx, t, cfg.duration, true)
			r.pair = i + 1
			r.side = f.snapshot().sub(before)
			results = append(results, r)
		}
	}
	return report(out, cfg, results)
}

// commandLine quotes args as a shell would need them. The program `go run`
// built (in a go-build directory, temporary or cached) is shown as
// "go run ./bench".
func commandLine(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if i == 0 && strings.Contains(filepath.ToSlash(a), "/go-build") && filepath.Base(a) == "bench" {
			q[i] = "go run ./bench"
			continue
		}
		if a == "" || strings.ContainsAny(a, " \t\n\"'\\$`*?[]{}()<>|&;#~") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

func report(out io.Writer, cfg config, results []runResult) error {
	fmt.Fprintf(out, "| pair | target | requests | errors | req/s | p50 | p99 | max | CPU share | CPU/request | buildguard/do-nothing req/s | do-nothing/buildguard CPU/request |\n")
	fmt.Fprintf(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	failed := 0
	var ratios, cpuRatios []float64
	byTarget := map[string][]runResult{}
	for i, r := range results {
		byTarget[r.target] = append(byTarget[r.target], r)
		ratio, cpuRatio := "", ""
		if r.target == nameNothing && i > 0 && results[i-1].target == nameBuildguard && results[i-1].pair == r.pair {
			if x := results[i-1].rps() / r.rps(); r.rps() > 0 {
				ratios = append(ratios, x)
				ratio = fmt.Sprintf("%.1f%%", 100*x)
			}
			if b, n := results[i-1].cpuPerRequest(), r.cpuPerRequest(); b > 0 && n > 0 {
				x := float64(n) / float64(b)
				cpuRatios = append(cpuRatios, x)
				cpuRatio = fmt.Sprintf("%.1f%%", 100*x)
			}
		}
		errs := strconv.Itoa(r.errors)
		if r.errors > 0 {
			failed++
			errs += " FAILED"
		}
		share := "?"
		if x := r.cpuShare(); x >= 0 {
			share = fmt.Sprintf("%.0f%%", 100*x)
		}
		perReq := "?"
		if d := r.cpuPerRequest(); d > 0 {
			perReq = fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
		}
		fmt.Fprintf(out, "| %d | %s | %d | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n",
			r.pair, r.target, r.requests, errs, r.rps(), ms(r.percentile(50)), ms(r.percentile(99)), ms(r.percentile(100)), share, perReq, ratio, cpuRatio)
	}
	fmt.Fprintln(out)

	medRPS := func(rs []runResult) float64 { return reviewload.Median(mapSlice(rs, runResult.rps)) }
	medP := func(rs []runResult, p float64) time.Duration {
		return time.Duration(reviewload.Median(mapSlice(rs, func(r runResult) float64 { return float64(r.percentile(p)) })))
	}
	bg, nothing := byTarget[nameBuildguard], byTarget[nameNothing]
	fmt.Fprintf(out, "| median of %d runs | req/s | p50 | p99 |\n|---|---:|---:|---:|\n", cfg.runs)
	for _, rs := range [][]runResult{bg, nothing} {
		fmt.Fprintf(out, "| %s | %.0f | %s | %s |\n", rs[0].target, medRPS(rs), ms(medP(rs, 50)), ms(medP(rs, 99)))
	}
	fmt.Fprintln(out)

	ratio := reviewload.Median(ratios)
	p99 := medP(bg, 99)
	fmt.Fprintf(out, "- throughput buildguard/do-nothing: %.1f%% (median of the %d pair ratios; ratio of medians %.1f%%); target >= %.0f%%: %s\n",
		100*ratio, len(ratios), 100*medRPS(bg)/medRPS(nothing), 100*targetMinRatio, verdict(ratio >= targetMinRatio))
	fmt.Fprintf(out, "- buildguard p99: %s (median of %d runs); target <= %s: %s\n", ms(p99), len(bg), ms(targetMaxP99), verdict(p99 <= targetMaxP99))
	if len(cpuRatios) > 0 {
		fmt.Fprintf(out, "- CPU per request, do-nothing/buildguard: %.1f%% (median of the %d pair ratios): the throughput ratio the CPUs allow, which other work on the machine disturbs less than req/s\n",
			100*reviewload.Median(cpuRatios), len(cpuRatios))
	}

	fmt.Fprintf(out, "\nCPU share is the process's CPU time over the run's wall time × GOMAXPROCS: the client, both servers and the registry are this process, so under saturating load it is high on a quiet machine (85-96%% on the 2-CPU machine of docs/benchmark-results.md) and drops when something else competes for the CPUs.\n")
	fmt.Fprintf(out, "\nDuring the measured buildguard runs:\n\n")
	for _, r := range bg {
		fmt.Fprintf(out, "- pair %d: %s\n", r.pair, r.side)
	}
	for _, r := range results {
		for _, e := range r.errorSamples {
			fmt.Fprintf(out, "- pair %d %s error: %s\n", r.pair, r.target, e)
		}
	}
	if failed > 0 {
		return &reviewload.FailedRunsError{N: failed, Where: "table"}
	}
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }

func mapSlice[T, U any](s []T, f func(T) U) []U {
	out := make([]U, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}
