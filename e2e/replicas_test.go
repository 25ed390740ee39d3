package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestReplicasOneStatusWriter runs two buildguard replicas on one control
// plane, started at once as a Deployment's are: they share the
// self-managed CA that the first creates (the other logs the wait at
// info, not as an error), and only the replica holding the Lease
// buildguard-status writes the policy's status, so neither has its write
// refused as "the object has been modified". When that replica stops,
// the other takes the Lease and writes the next generation's status.
func TestReplicasOneStatusWriter(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	e := startEnv(t, ctx, dir)
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	e.mustKubectl("", "apply", "-f", filepath.Join(root, "manifests", "crd"))
	e.mustKubectl("", "create", "namespace", "buildguard-system")
	e.mustKubectl(WebhookYAML("https://localhost:1/validate"), "apply", "-f", "-")
	e.applyPolicy(PolicyYAML(e.reg.Host, "10m"))
	bin, err := BuildBuildguard(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	var bgs [2]*Buildguard
	var wg sync.WaitGroup
	for i := range bgs {
		d := filepath.Join(dir, fmt.Sprintf("replica-%d", i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			b, err := StartBuildguard(ctx, bin, d, e.cp, e.reg.CAFile, "--status-lease=buildguard-system/buildguard-status")
			if err != nil {
				t.Error(err)
				return
			}
			bgs[i] = b
			t.Cleanup(b.Stop)
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, b := range bgs {
				t.Logf("--- replica %d log tail:\n%s", i, b.Proc.Tail(5000))
			}
		}
	})
	setMode := func(mode string) {
		t.Helper()
		e.mustKubectl("", "patch", "clusterbuildpolicy", "default", "--type=merge", "-p", fmt.Sprintf(`{"spec":{"mode":%q}}`, mode))
		gen := e.mustKubectl("", "get", "clusterbuildpolicy", "default", "-o", "jsonpath={.metadata.generation}")
		e.eventually(30*time.Second, "status of generation "+gen, func() error {
			got := e.mustKubectl("", "get", "clusterbuildpolicy", "default", "-o", "jsonpath={.status.observedGeneration}")
			if got != gen {
				return fmt.Errorf("status.observedGeneration %q, want %s", got, gen)
			}
			return nil
		})
	}
	for _, mode := range []string{"warn", "enforce", "audit", "warn"} {
		setMode(mode)
	}
	leader := -1
	for i, b := range bgs {
		log := b.Proc.Tail(1 << 20)
		if strings.Contains(log, "this replica writes policy status") {
			if leader >= 0 {
				t.Errorf("replicas %d and %d both wrote status", leader, i)
			}
			leader = i
		}
		for _, line := range strings.Split(log, "\n") {
			switch {
			case strings.Contains(line, "the object has been modified"), strings.Contains(line, "level=ERROR"),
				strings.Contains(line, "level=WARN") && (strings.Contains(line, "CA") || strings.Contains(line, "caBundle")):
				t.Errorf("replica %d logged: %s", i, line)
			}
		}
	}
	if leader < 0 {
		t.Fatal("no replica wrote status")
	}
	if holder := e.mustKubectl("", "get", "lease", "-n", "buildguard-system", "buildguard-status", "-o", "jsonpath={.spec.holderIdentity}"); holder == "" {
		t.Errorf("Lease buildguard-system/buildguard-status has no holder")
	}

	// The writer goes away, releasing the Lease: the other takes over
	// within its retry period (2s), not the Lease's duration (15s).
	bgs[leader].Stop()
	stopped := time.Now()
	e.eventually(30*time.Second, "the other replica takes the Lease", func() error {
		if !strings.Contains(bgs[1-leader].Proc.Tail(1<<20), "this replica writes policy status") {
			return fmt.Errorf("replica %d does not write status", 1-leader)
		}
		return nil
	})
	if took := time.Since(stopped); took > 10*time.Second {
		t.Errorf("replica %d took the Lease %s after the writer stopped: was it released?", 1-leader, took.Round(time.Second))
	}
	setMode("enforce")
}
