package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestCommandLine(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"bench", "-duration", "10s", "-cpuprofile", "a b.prof"}, `bench -duration 10s -cpuprofile "a b.prof"`},
		{[]string{"/tmp/go-build942143261/b001/exe/bench", "-runs", "1"}, "go run ./bench -runs 1"},
		{[]string{"/root/.cache/go-build/3e/3e10-d/bench"}, "go run ./bench"},
		{[]string{"./bench", "-http2"}, "./bench -http2"},
	}
	for _, tt := range tests {
		if got := commandLine(tt.args); got != tt.want {
			t.Errorf("commandLine(%q) = %s, want %s", tt.args, got, tt.want)
		}
	}
}

// TestShortRun runs the whole harness briefly: both targets must answer
// every request correctly.
func TestShortRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers and a registry")
	}
	for _, h2 := range []bool{false, true} {
		cfg := config{duration: 300 * time.Millisecond, runs: 1, concurrency: 2, http2: h2}
		f, err := newFixture(context.Background(), cfg)
		if err != nil {
			t.Fatalf("newFixture(http2=%v): %v", h2, err)
		}
		for _, tg := range []*target{f.buildguard, f.nothing} {
			before := f.snapshot()
			r := f.load(t.Context(), tg, cfg.duration, true)
			if r.errors > 0 || r.requests == 0 {
				t.Errorf("http2=%v %s: %d requests, %d errors %q", h2, tg.name, r.requests, r.errors, r.errorSamples)
			}
			if tg == f.buildguard {
				if s := f.snapshot().sub(before); len(s.registry) > 0 || s.cache["digest miss"] > 0 {
					t.Errorf("http2=%v: cached runs looked images up: %v", h2, s)
				}
			}
		}
		if !strings.Contains(f.warmNote, "allowed") {
			t.Errorf("warm note %q", f.warmNote)
		}
		f.close()
	}
}

func TestReportCPUPerRequest(t *testing.T) {
	lat := []time.Duration{time.Millisecond}
	results := []runResult{
		{pair: 1, target: nameBuildguard, requests: 1000, elapsed: time.Second, cpu: 200 * time.Millisecond, latencies: lat},
		{pair: 1, target: nameNothing, requests: 2000, elapsed: time.Second, cpu: 200 * time.Millisecond, latencies: lat},
	}
	var b strings.Builder
	if err := report(&b, config{runs: 1}, results); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| 200 µs |", "| 100 µs | 50.0% | 50.0% |", "CPU per request, do-nothing/buildguard: 50.0% (median of the 1 pair ratios)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report does not contain %q:\n%s", want, b.String())
		}
	}
}
