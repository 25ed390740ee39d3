// Command shipped measures `buildguard serve` as users start it: the
// built binary in a process of its own, with default flags (and again with
// a SQLite store, as a single-replica install runs it), against a
// do-nothing webhook in a third process, both driven over loopback HTTPS
// keep-alive by this process, the load generator.
//
// The do-nothing webhook is this program run again as
// `shipped nothing ...`: server.Server with the same certificate and a
// handler that decodes the AdmissionReview and allows it. It is the floor:
// the cost of TLS, HTTP and JSON with no decision at all.
//
// This process also holds the registry (go-containerregistry's in-memory
// one, plain HTTP on loopback) that buildguard looks the images up in;
// after the warm-up every review is answered from buildguard's caches,
// save a HEAD of a tag whose 30s TTL ran out.
//
// For every round, every concurrency and every Deployment shape, each
// target gets -warmup of unrecorded load, then -duration of measured load,
// one target after the other (the order rotates from round to round), so
// that the targets share the machine's conditions. CPU per review is the
// target process's CPU time (utime+stime from /proc) over the reviews it
// answered in the measured time: the load generator's CPU is not in it.
//
// Usage:
//
//	go run ./bench/shipped [-buildguard bin/buildguard] [-rounds 3] [-duration 5s] [-warmup 1s]
//	    [-concurrency 2,8] [-containers 1,3,6] [-targets default,sqlite] [-baseline OLD-BINARY] [-profile DIR]
//	go run ./bench/shipped -cache-fill 10000 [-targets default] [-rounds 3] [-baseline OLD-BINARY] [-profile DIR]
//
// With -cache-fill N it measures memory instead of load: in each round,
// each buildguard target is started afresh, filled with N distinct
// images (see cachefill.go) by reviews of Deployments that run them, and
// its resident set and live Go heap are read before and after; the
// do-nothing webhook is not started.
//
// Without -buildguard it builds ./cmd/buildguard as `make build` does,
// into a temporary directory. The exit status is 1 when any run had an
// error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"buildguard.dev/buildguard/bench/internal/reviewload"
)

// Targets of issue 15.
const (
	targetMinRatio    = 0.80 // buildguard req/s over do-nothing req/s, 3 containers
	targetMaxP99Ratio = 1.5  // buildguard p99 over do-nothing p99
	targetMaxSlope    = 0.10 // CPU of each further container over a 1-container review's
)

type config struct {
	buildguard  string
	baseline    string
	rounds      int
	duration    time.Duration
	warmup      time.Duration
	concurrency []int
	containers  []int
	targets     []string
	sameImage   bool
	extraArgs   []string
	profileDir  string
	keep        bool
	cacheFill   int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "nothing" {
		if err := serveNothing(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "shipped nothing:", err)
			os.Exit(2)
		}
		return
	}
	reviewload.Main("shipped", run)
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("shipped", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.buildguard, "buildguard", "", "the buildguard binary; built from ./cmd/buildguard into a temporary directory when empty")
	fs.StringVar(&c.baseline, "baseline", "", "another buildguard binary (say of the commit before a change), run as a target of its own beside each of -targets, for before/after figures from one run")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds; each runs every target at every concurrency and shape")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "measured duration of one run")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unrecorded load before each run")
	conc := fs.String("concurrency", "2,8", "comma-separated concurrent clients (keep-alive connections)")
	shapes := fs.String("containers", "1,3,6", "comma-separated containers per Deployment (the first an init container when there are 3 or more)")
	targets := fs.String("targets", "default,sqlite", "comma-separated buildguard configurations besides do-nothing: default (default flags), sqlite (--store-sqlite)")
	fs.BoolVar(&c.sameImage, "same-image", false, "every container runs the same image (by tag, tag, digest, ...); by default each runs an image of its own")
	extra := fs.String("serve-args", "", "space-separated extra flags for buildguard serve (not the -baseline one), e.g. --log-level=debug")
	fs.StringVar(&c.profileDir, "profile", "", "start buildguard with --debug-listen and save a CPU profile of its first measured run of each shape and concurrency in `dir`")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary directory (logs, store, certificates)")
	fs.IntVar(&c.cacheFill, "cache-fill", 0, "measure memory instead of load: fill each target, started afresh in each round, with `N` distinct images (cache entries) and report its resident set and Go heap per cached image; -profile saves heap profiles")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var err error
	if c.concurrency, err = ints("-concurrency", *conc); err != nil {
		return c, err
	}
	if c.containers, err = ints("-containers", *shapes); err != nil {
		return c, err
	}
	for _, t := range strings.Split(*targets, ",") {
		switch t = strings.TrimSpace(t); t {
		case "default", "sqlite":
			c.targets = append(c.targets, t)
		case "":
		default:
			return c, fmt.Errorf("-targets: unknown target %q: want default or sqlite", t)
		}
	}
	c.extraArgs = strings.Fields(*extra)
	if err := reviewload.CheckFlags(fs, c.duration, c.warmup); err != nil {
		return c, err
	}
	switch {
	case c.rounds < 1:
		return c, errors.New("-rounds must be at least 1")
	case len(c.targets) == 0:
		return c, errors.New("-targets: name at least one")
	case c.cacheFill < 0:
		return c, errors.New("-cache-fill must not be negative")
	}
	return c, nil
}

func ints(flag, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 64 {
			return nil, fmt.Errorf("%s: %q is not a number from 1 to 64", flag, f)
		}
		out = append(out, n)
	}
	return out, nil
}
