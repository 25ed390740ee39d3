package policysource

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
)

// Grant is an exception granted from a decision in the review UI: for one
// image digest in one namespace, until Expires, granted by GrantedBy at
// At.
type Grant struct {
	Namespace string
	// Image is the digest reference the exception admits: repo@sha256:….
	Image      string
	Reason     string
	Expires    time.Time
	GrantedBy  string
	At         time.Time
	DecisionID string
}

// nameAttempts bounds the names tried for one granted exception.
const nameAttempts = 5

// ExceptionFile is the exceptions file of --exceptions-file: namespaced
// exceptions, in a YAML file (v1alpha1.ExceptionList; docs/review.md
// shows it), that go with a policy file; Policies adds those of a
// workload's namespace to what a policy file selects. The review UI
// grants into it (Grant), rewriting the file atomically; edits by hand are
// picked up by Reload. Safe for concurrent use; one process should write
// the file.
type ExceptionFile struct {
	path string
	// random is the source of exception names' suffixes; crypto/rand.
	random io.Reader

	mu   sync.Mutex // serializes Grant and Reload
	raw  []byte     // the file as last read or written
	list v1alpha1.ExceptionList
	cmu  sync.RWMutex // guards cur, read on every admission
	cur  *compiledFile
}

type compiledFile struct {
	byNS map[string]policy.Exceptions
}

// maxExceptionFile bounds the exceptions file.
const maxExceptionFile = 4 << 20

// OpenExceptionFile reads the exceptions file at path; a missing file is
// an empty list, created at the first grant.
func OpenExceptionFile(path string) (*ExceptionFile, error) {
	f := &ExceptionFile{path: path, random: rand.Reader, cur: &compiledFile{}}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Reload re-reads the file if it changed. A file that does not validate
// is an error and the exceptions read before stay in force.
func (f *ExceptionFile) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	raw, err := os.ReadFile(f.path)
	if errors.Is(err, os.ErrNotExist) {
		raw, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("exceptions file: %w", err)
	}
	if f.raw != nil && string(raw) == string(f.raw) {
		return nil
	}
	list, c, err := parseExceptionFile(raw)
	if err != nil {
		return fmt.Errorf("exceptions file %s: %w", f.path, err)
	}
	f.raw, f.list = raw, list
	f.setCompiled(c)
	return nil
}

func (f *ExceptionFile) setCompiled(c *compiledFile) {
	f.cmu.Lock()
	f.cur = c
	f.cmu.Unlock()
}

// parseExceptionFile decodes and compiles an exceptions file strictly.
func parseExceptionFile(raw []byte) (v1alpha1.ExceptionList, *compiledFile, error) {
	list := v1alpha1.ExceptionList{APIVersion: v1alpha1.APIVersion, Kind: v1alpha1.KindExceptionList}
	if len(raw) > maxExceptionFile {
		return list, nil, fmt.Errorf("larger than %d bytes", maxExceptionFile)
	}
	if strings.TrimSpace(string(raw)) != "" {
		dec := yaml.NewDecoder(strings.NewReader(string(raw)))
		dec.KnownFields(true)
		if err := dec.Decode(&list); err != nil {
			return list, nil, fmt.Errorf("decode: %s", strings.TrimPrefix(err.Error(), "yaml: "))
		}
		if list.APIVersion != v1alpha1.APIVersion || list.Kind != v1alpha1.KindExceptionList {
			return list, nil, fmt.Errorf("apiVersion/kind %s/%s: want %s/%s", list.APIVersion, list.Kind, v1alpha1.APIVersion, v1alpha1.KindExceptionList)
		}
	}
	c, err := compileFile(list)
	return list, c, err
}

func compileFile(list v1alpha1.ExceptionList) (*compiledFile, error) {
	c := &compiledFile{byNS: map[string]policy.Exceptions{}}
	for i, e := range list.Exceptions {
		field := fmt.Sprintf("exceptions[%d]", i)
		if e.Namespace == "" {
			return nil, &policy.FieldError{Field: field + ".namespace", Msg: "required"}
		}
		name := e.Name
		if name == "" {
			name = field
		}
		x, err := policy.CompileExceptions(field, []policy.Exception{{
			Images: e.Images, Reason: e.Reason, Expires: e.Expires, ApprovedBy: e.ApprovedBy,
			Name: e.Namespace + "/" + name,
		}})
		if err != nil {
			return nil, fmt.Errorf("%s", strings.Replace(err.Error(), field+"[0].", field+".", 1))
		}
		c.byNS[e.Namespace] = c.byNS[e.Namespace].Join(x)
	}
	return c, nil
}

// Exceptions returns the file's exceptions for a namespace.
func (f *ExceptionFile) Exceptions(namespace string) policy.Exceptions {
	f.cmu.RLock()
	defer f.cmu.RUnlock()
	return f.cur.byNS[namespace]
}

// Policies returns base with the file's exceptions of the workload's
// namespace added to every selection.
func (f *ExceptionFile) Policies(base engine.Policies) engine.Policies {
	return filePolicies{base: base, file: f}
}

type filePolicies struct {
	base engine.Policies
	file *ExceptionFile
}

func (p filePolicies) Select(namespace string, nsLabels, objLabels map[string]string) (engine.Selection, error) {
	sel, err := p.base.Select(namespace, nsLabels, objLabels)
	if err != nil {
		return sel, err
	}
	sel.Exceptions = sel.Exceptions.Join(p.file.Exceptions(namespace))
	return sel, nil
}

// Grant adds g to the file as an exception of its own (named
// "review-" and 10 hex digits), drops those expired for more than a day
// before g.At, and replaces the file atomically; it returns the
// exception's namespace/name. It implements review.Granter.
func (f *ExceptionFile) Grant(ctx context.Context, g Grant) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	// Another process granting into the same file (a second replica on a
	// shared volume) must not write between our read and our write.
	unlock, err := lockFile(ctx, f.path+".lock")
	if err != nil {
		return "", fmt.Errorf("exceptions file: %w", err)
	}
	defer unlock()
	// Pick up edits by hand first, so that a grant never overwrites them.
	raw, err := os.ReadFile(f.path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("exceptions file: %w", err)
	}
	list := f.list
	if string(raw) != string(f.raw) {
		if list, _, err = parseExceptionFile(raw); err != nil {
			return "", fmt.Errorf("exceptions file %s (fix it before granting): %w", f.path, err)
		}
	}
	name, err := f.newName(list)
	if err != nil {
		return "", err
	}
	next := v1alpha1.ExceptionList{APIVersion: v1alpha1.APIVersion, Kind: v1alpha1.KindExceptionList}
	for _, e := range list.Exceptions {
		if t, err := time.Parse(time.RFC3339, e.Expires); err == nil && g.At.Sub(t) > 24*time.Hour {
			continue
		}
		next.Exceptions = append(next.Exceptions, e)
	}
	next.Exceptions = append(next.Exceptions, v1alpha1.ListedException{
		Name: name, Namespace: g.Namespace, Images: []string{g.Image}, Reason: g.Reason,
		Expires: g.Expires.UTC().Format(time.RFC3339), ApprovedBy: g.GrantedBy, GrantedBy: g.GrantedBy,
		GrantedAt: g.At.UTC().Format(time.RFC3339), Decision: g.DecisionID,
	})
	c, err := compileFile(next)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	buf.WriteString("# Exceptions granted in buildguard's review UI (docs/review.md). Edits by hand are kept.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(next); err != nil {
		return "", err
	}
	if err := enc.Close(); err != nil {
		return "", err
	}
	out := buf.Bytes()
	if err := writeAtomic(f.path, out); err != nil {
		return "", fmt.Errorf("exceptions file: %w", err)
	}
	f.raw, f.list = out, next
	f.setCompiled(c)
	return g.Namespace + "/" + name, nil
}

// newName returns an exception name that no exception of list has, in
// its namespace or any other, so that a name found in a log names one
// exception.
func (f *ExceptionFile) newName(list v1alpha1.ExceptionList) (string, error) {
	suffix := make([]byte, 5)
	for range nameAttempts {
		if _, err := io.ReadFull(f.random, suffix); err != nil {
			return "", fmt.Errorf("exception name: %w", err)
		}
		name := "review-" + hex.EncodeToString(suffix)
		if !slices.ContainsFunc(list.Exceptions, func(e v1alpha1.ListedException) bool { return e.Name == name }) {
			return name, nil
		}
	}
	return "", fmt.Errorf("exception name: no free name after %d tries", nameAttempts)
}

// lockPoll is how often lockFile tries again while another process holds
// the lock.
const lockPoll = 20 * time.Millisecond

// lockFile takes an exclusive advisory lock (flock) on path, creating it,
// and waits for it until ctx ends.
func lockFile(ctx context.Context, path string) (func(), error) {
	lf, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
				lf.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			lf.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			lf.Close()
			return nil, fmt.Errorf("waiting for the lock %s, held by another process: %w", path, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// writeAtomic replaces path with data: a temporary file in the same
// directory, synced, renamed over it, and the directory synced, so that a
// crash leaves the old file or the new one, never half of one.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
