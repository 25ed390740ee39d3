package policysource

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
)

// File is the policy of --policy-source=file: one policy, read from a
// file, governing every workload. Load it once before use; Reload reads
// it again if it changed. A changed file that does not validate leaves
// the previous policy in force.
type File struct {
	// Path is the policy file. Required.
	Path string
	// Check, when set, validates a parsed policy further (its trust
	// files, say); an error rejects the file like a parse error.
	Check func(*policy.Policy) error
	// Log says when a policy is loaded. The default discards.
	Log *slog.Logger

	mu  sync.Mutex // serializes loads
	raw []byte     // the file as last loaded
	cur atomic.Pointer[policy.Policy]
}

// Load reads the file, or reads it again: a file that changed since and
// validates replaces the policy in force; one that does not is an error,
// and the policy in force stays.
func (f *File) Load() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	raw, err := os.ReadFile(f.Path)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if f.raw != nil && bytes.Equal(raw, f.raw) {
		return nil
	}
	p, err := policy.Parse(raw)
	if err != nil {
		return fmt.Errorf("policy %s: %w", f.Path, err)
	}
	if f.Check != nil {
		if err := f.Check(p); err != nil {
			return fmt.Errorf("policy %s: %w", f.Path, err)
		}
	}
	f.raw = raw
	f.cur.Store(p)
	if f.Log != nil {
		f.Log.Info("policy loaded", "path", f.Path, "mode", string(p.Mode()))
	}
	return nil
}

// Reload is Load; it implements Reloadable.
func (f *File) Reload() error { return f.Load() }

// Policy returns the policy in force, nil before a Load succeeded.
func (f *File) Policy() *policy.Policy { return f.cur.Load() }

// Select implements engine.Policies: the policy in force governs every
// workload.
func (f *File) Select(namespace string, nsLabels, objLabels map[string]string) (engine.Selection, error) {
	return engine.PolicyFunc(f.Policy).Select(namespace, nsLabels, objLabels)
}
