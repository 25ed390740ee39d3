package policysource

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/syncbuffer"

	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/policy"
)

const policyHead = "apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nregistries:\n  allow: [\"registry.example/*\"]\n"

// TestFile: a policy file is loaded, and loaded again as it changes; a
// change that does not parse, or that Check refuses, leaves the policy in
// force.
func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	var log bytes.Buffer
	f := &File{Path: path, Log: slog.New(slog.NewTextHandler(&log, nil)), Check: func(p *policy.Policy) error {
		if p.Mode() == policy.ModeWarn {
			return errors.New("warn refused")
		}
		return nil
	}}
	if _, err := f.Select("shop", nil, nil); err == nil {
		t.Error("Select before a Load = nil error, want no policy loaded")
	}
	for _, step := range []struct {
		name     string
		body     string // "" removes the file
		wantErr  string
		wantMode policy.Mode // of the policy in force after
	}{
		{"missing", "", "policy: open", ""},
		{"valid", policyHead + "mode: audit\n", "", policy.ModeAudit},
		{"unchanged", policyHead + "mode: audit\n", "", policy.ModeAudit},
		{"changed", policyHead + "mode: enforce\n", "", policy.ModeEnforce},
		{"unknown field", policyHead + "mode: audit\nfreshnes: {}\n", "freshnes", policy.ModeEnforce},
		{"refused by Check", policyHead + "mode: warn\n", "warn refused", policy.ModeEnforce},
		{"removed", "", "policy: open", policy.ModeEnforce},
		{"back", policyHead + "mode: audit\n", "", policy.ModeAudit},
	} {
		if step.body == "" {
			os.Remove(path)
		} else if err := os.WriteFile(path, []byte(step.body), 0o644); err != nil {
			t.Fatal(err)
		}
		err := f.Reload()
		if (step.wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), step.wantErr) {
			t.Errorf("%s: Reload() = %v, want error %q", step.name, err, step.wantErr)
		}
		var mode policy.Mode
		if p := f.Policy(); p != nil {
			mode = p.Mode()
		}
		if mode != step.wantMode {
			t.Errorf("%s: the policy in force has mode %q, want %q", step.name, mode, step.wantMode)
		}
	}
	sel, err := f.Select("shop", nil, nil)
	if err != nil || len(sel.Policies) != 1 || sel.Policies[0] != f.Policy() {
		t.Errorf("Select = %+v, %v; want the policy in force", sel, err)
	}
	// One line per policy that came into force.
	if n := strings.Count(log.String(), "policy loaded"); n != 3 {
		t.Errorf("logged %d loads, want 3:\n%s", n, log.String())
	}
}

// countingSource counts its reloads and fails when told to; each reload
// sends its name on reloaded, when set.
type countingSource struct {
	name     string
	reloaded chan<- string
	mu       sync.Mutex
	n        int
	fail     bool
}

func (c *countingSource) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if c.reloaded != nil {
		c.reloaded <- c.name
	}
	if c.fail {
		return errors.New("does not validate")
	}
	return nil
}

func (c *countingSource) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// TestReloader: every source is read again, in order, at every tick of
// the clock until the context ends, and a failed reload is logged with
// its source's message.
func TestReloader(t *testing.T) {
	var log syncbuffer.Buffer
	reloaded := make(chan string, 16)
	ok := &countingSource{name: "ok", reloaded: reloaded}
	bad := &countingSource{name: "bad", reloaded: reloaded, fail: true}
	clk := clocktest.New(time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC))
	const interval = time.Minute
	r := &Reloader{Interval: interval, Clock: clk, Log: slog.New(slog.NewTextHandler(&log, nil))}
	r.Add(ok, "ok not reloaded")
	r.Add(bad, "bad not reloaded; the previous stays in force")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	wait, cancelWait := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancelWait()
	if err := clk.BlockUntil(wait, 1); err != nil {
		t.Fatalf("Run made no ticker: %v", err)
	}
	for tick := range 3 {
		clk.Advance(interval)
		for _, want := range []string{"ok", "bad"} {
			select {
			case got := <-reloaded:
				if got != want {
					t.Fatalf("tick %d: %s reloaded, want %s (the sources in order)", tick+1, got, want)
				}
			case <-wait.Done():
				t.Fatalf("tick %d: %s not reloaded", tick+1, want)
			}
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
	if n := clk.Waiting(); n != 0 {
		t.Errorf("%d tickers left running after Run returned, want 0", n)
	}
	if ok.count() != 3 || bad.count() != 3 {
		t.Errorf("reloads: %d and %d after three ticks, want 3 each", ok.count(), bad.count())
	}
	if got := log.String(); strings.Contains(got, "ok not reloaded") || !strings.Contains(got, `msg="bad not reloaded; the previous stays in force" error="does not validate"`) {
		t.Errorf("log:\n%s\nwant the failed source's message and error only", got)
	}
}

// TestReloaderOff: with no interval, Run returns at once, reading nothing.
func TestReloaderOff(t *testing.T) {
	src := &countingSource{}
	r := &Reloader{}
	r.Add(src, "not reloaded")
	if err := r.Run(t.Context()); err != nil || src.count() != 0 {
		t.Errorf("Run = %v after %d reloads, want nil at once", err, src.count())
	}
}
