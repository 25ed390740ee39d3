package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"buildguard.dev/buildguard/internal/proccpu"

	"buildguard.dev/buildguard/bench/internal/reviewload"
)

// selfCPU is this process's CPU time, user and system; 0 when unknown.
func selfCPU() time.Duration {
	d, _ := proccpu.Self()
	return d
}

func run(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := parseFlags(args[1:], os.Stderr)
	if err != nil {
		return err // flag.ErrHelp after -h: reviewload.Main exits 0
	}
	if cfg.cacheFill > 0 {
		fmt.Fprintf(out, "# buildguard serve, as shipped: memory per cached image\n\n")
	} else {
		fmt.Fprintf(out, "# buildguard serve, as shipped, against a do-nothing webhook\n\n")
	}
	fmt.Fprintf(out, "- command: `go run ./bench/shipped %s`\n", strings.Join(args[1:], " "))
	fmt.Fprintf(out, "- go: %s %s/%s, NumCPU=%d; started %s, load average %s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(),
		time.Now().UTC().Format(time.RFC3339), loadAverage())
	if cfg.cacheFill > 0 {
		return runCacheFill(ctx, cfg, out)
	}
	e, err := newEnv(ctx, cfg, out)
	if err != nil {
		return err
	}
	defer e.close()
	fmt.Fprintf(out, "- processes: this one (load generator, registry), do-nothing (pid %d)", e.targets[len(e.targets)-1].pid())
	for _, t := range e.targets[:len(e.targets)-1] {
		fmt.Fprintf(out, ", %s (pid %d: `buildguard %s`)", t.name, t.pid(), strings.Join(redactDir(t.cmd.Args[1:], e.dir), " "))
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "- load: HTTP/1.1 keep-alive over TLS on 127.0.0.1; %s per run after %s warm-up; %d rounds, every target at every concurrency and shape in each, their order rotating\n",
		cfg.duration, cfg.warmup, cfg.rounds)
	for _, c := range cfg.containers {
		fmt.Fprintf(out, "- Deployment with %d container(s): body %d bytes\n", c, e.bodies[c].Size())
	}
	if err := e.warm(ctx); err != nil {
		return err
	}
	var results []runResult
	profiled := map[string]bool{}
	for round := range cfg.rounds {
		for _, conc := range cfg.concurrency {
			for _, c := range cfg.containers {
				n := len(e.targets)
				for k := range n {
					t := e.targets[(k+round)%n]
					if err := ctx.Err(); err != nil {
						return err
					}
					if cfg.warmup > 0 {
						e.load(ctx, t, e.bodies[c], conc, cfg.warmup, false)
					}
					key := fmt.Sprintf("%s-c%d-n%d", t.name, conc, c)
					var prof chan error
					if t.debug != "" && !profiled[key] {
						profiled[key] = true
						prof = make(chan error, 1)
						go func() { prof <- e.profile(ctx, t, key, cfg.duration) }()
					}
					r := e.load(ctx, t, e.bodies[c], conc, cfg.duration, true)
					r.round = round + 1
					results = append(results, r)
					if prof != nil {
						if err := <-prof; err != nil {
							fmt.Fprintf(os.Stderr, "profile %s: %v\n", key, err)
						}
					}
				}
			}
		}
		fmt.Fprintf(os.Stderr, "round %d of %d done, load average %s\n", round+1, cfg.rounds, loadAverage())
	}
	for _, t := range e.targets {
		if rss, err := processRSS(t.pid()); err == nil {
			fmt.Fprintf(out, "- %s resident set at the end: %.1f MiB\n", t.name, float64(rss)/(1<<20))
		}
	}
	fmt.Fprintf(out, "- finished %s, load average %s\n\n", time.Now().UTC().Format(time.RFC3339), loadAverage())
	return report(out, cfg, e, results)
}

// profile saves a CPU profile of t's next d from its --debug-listen.
func (e *env) profile(ctx context.Context, t *target, key string, d time.Duration) error {
	secs := max(1, int(d.Seconds())-1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", t.debug, secs), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if err := os.MkdirAll(e.cfg.profileDir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(e.cfg.profileDir, key+".pprof"))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func redactDir(args []string, dir string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.ReplaceAll(a, dir, "$DIR")
	}
	return out
}

func report(out io.Writer, cfg config, e *env, results []runResult) error {
	failed := 0
	fmt.Fprintf(out, "## Every run\n\n")
	fmt.Fprintf(out, "| round | clients | containers | target | reviews | errors | req/s | p50 | p99 | CPU/review | log bytes/review | load avg |\n")
	fmt.Fprintf(out, "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range results {
		errs := itoa(r.errors)
		if r.errors > 0 {
			failed++
			errs += " FAILED"
		}
		logb := ""
		if r.requests > 0 && r.target != "do-nothing" {
			logb = fmt.Sprintf("%.0f", float64(r.logBytes)/float64(r.requests))
		}
		fmt.Fprintf(out, "| %d | %d | %d | %s | %d | %s | %.0f | %s | %s | %s | %s | %s |\n", r.round, r.concurrency, r.containers, r.target,
			r.requests, errs, r.rps(), ms(r.percentile(50)), ms(r.percentile(99)), us(r.cpuPerReview()), logb, r.load)
	}
	fmt.Fprintln(out)

	type key struct {
		target      string
		conc, conts int
	}
	by := map[key][]runResult{}
	for _, r := range results {
		k := key{r.target, r.concurrency, r.containers}
		by[k] = append(by[k], r)
	}
	// ratio returns the median over rounds of f(buildguard run)/f(do-nothing run).
	ratio := func(name string, conc, conts int, f func(runResult) float64) float64 {
		bg, nothing := by[key{name, conc, conts}], by[key{"do-nothing", conc, conts}]
		var xs []float64
		for i := range min(len(bg), len(nothing)) {
			if d := f(nothing[i]); d > 0 {
				xs = append(xs, f(bg[i])/d)
			}
		}
		return reviewload.Median(xs)
	}
	rps := func(r runResult) float64 { return r.rps() }
	p99 := func(r runResult) float64 { return float64(r.percentile(99)) }
	cpu := func(r runResult) float64 { return float64(r.cpuPerReview()) }
	names := make([]string, 0, len(e.targets))
	for _, t := range e.targets {
		names = append(names, t.name)
	}

	fmt.Fprintf(out, "## Medians of %d rounds, and the medians of the per-round ratios to do-nothing\n\n", cfg.rounds)
	fmt.Fprintf(out, "| clients | containers | target | req/s | p50 | p99 | CPU/review | req/s ratio | p99 ratio | CPU/review ratio |\n")
	fmt.Fprintf(out, "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, conc := range cfg.concurrency {
		for _, c := range cfg.containers {
			for _, n := range names {
				rs := by[key{n, conc, c}]
				rr, pr, cr := "", "", ""
				if n != "do-nothing" {
					rr = fmt.Sprintf("%.2f", ratio(n, conc, c, rps))
					pr = fmt.Sprintf("%.2f", ratio(n, conc, c, p99))
					cr = fmt.Sprintf("%.2f", ratio(n, conc, c, cpu))
				}
				fmt.Fprintf(out, "| %d | %d | %s | %.0f | %s | %s | %s | %s | %s | %s |\n", conc, c, n,
					med(rs, rps), ms(time.Duration(med(rs, func(r runResult) float64 { return float64(r.percentile(50)) }))),
					ms(time.Duration(med(rs, p99))), us(time.Duration(med(rs, cpu))), rr, pr, cr)
			}
		}
	}
	fmt.Fprintln(out)

	fmt.Fprintf(out, "## Targets\n\n")
	head := 3
	if !slices.Contains(cfg.containers, head) {
		head = cfg.containers[len(cfg.containers)-1]
	}
	for _, n := range names[:len(names)-1] {
		for _, conc := range cfg.concurrency {
			r := ratio(n, conc, head, rps)
			p := ratio(n, conc, head, p99)
			fmt.Fprintf(out, "- %s, %d clients, %d containers: throughput %.2f× do-nothing (target ≥ %.1f: %s); p99 %.2f× do-nothing's (target ≤ %.1f: %s)\n",
				n, conc, head, r, targetMinRatio, verdict(r >= targetMinRatio), p, targetMaxP99Ratio, verdict(p <= targetMaxP99Ratio))
		}
	}
	if len(cfg.containers) >= 2 {
		for _, n := range names {
			for _, conc := range cfg.concurrency {
				var xs, ys []float64
				for _, c := range cfg.containers {
					xs = append(xs, float64(c))
					ys = append(ys, med(by[key{n, conc, c}], cpu))
				}
				slope := leastSquares(xs, ys)
				one := med(by[key{n, conc, cfg.containers[0]}], cpu)
				line := fmt.Sprintf("- %s, %d clients: CPU per further container %s (least squares over %v containers), %.1f%% of a %d-container review's %s",
					n, conc, us(time.Duration(slope)), cfg.containers, 100*slope/one, cfg.containers[0], us(time.Duration(one)))
				if n != "do-nothing" {
					line += fmt.Sprintf(" (target < %.0f%%: %s)", 100*targetMaxSlope, verdict(slope/one < targetMaxSlope))
				}
				fmt.Fprintln(out, line)
			}
		}
	}
	fmt.Fprintf(out, "\nCPU/review is the target process's own CPU time (user and system, from /proc) over the reviews it answered, counted until the process is idle again after the run (at most 10 s): TLS, HTTP, JSON, the decision, logging and, with a store, the records written after the answer. The load generator's CPU is not in it. p99 is measured by the load generator, from sending a review to having read its answer.\n")
	for _, r := range results {
		for _, s := range r.samples {
			fmt.Fprintf(out, "- round %d %s %d clients %d containers error: %s\n", r.round, r.target, r.concurrency, r.containers, s)
		}
	}
	if failed > 0 {
		return &reviewload.FailedRunsError{N: failed, Where: "tables"}
	}
	return nil
}

func med(rs []runResult, f func(runResult) float64) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = f(r)
	}
	return reviewload.Median(xs)
}

// leastSquares is the slope of the least-squares line through (xs, ys).
func leastSquares(xs, ys []float64) float64 {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond)) }
