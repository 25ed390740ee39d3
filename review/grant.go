package review

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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
)

// Annotations a granted BuildPolicyException carries.
const (
	AnnotationGrantedBy = "buildguard.dev/granted-by"
	AnnotationGrantedAt = "buildguard.dev/granted-at"
	AnnotationDecision  = "buildguard.dev/decision"
)

// Grant is an exception a reviewer grants from a decision.
type Grant struct {
	Namespace string
	// Image is the digest reference the exception admits: repo@sha256:….
	Image   string
	Reason  string
	Expires time.Time
	// User granted it; At is when.
	User       User
	At         time.Time
	DecisionID string
}

// Granter makes a grant take effect.
type Granter interface {
	// Grant stores g and returns the name of the exception it made.
	Grant(ctx context.Context, g Grant) (string, error)
}

// ExceptionCreator grants by creating a BuildPolicyException in the
// decision's namespace, which the CRD policy source (policysource.CRD)
// applies.
type ExceptionCreator struct {
	Client dynamic.Interface
}

// Grant implements Granter.
func (c *ExceptionCreator) Grant(ctx context.Context, g Grant) (string, error) {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.APIVersion,
		"kind":       v1alpha1.KindBuildPolicyException,
		"metadata": map[string]any{
			"generateName": "review-",
			"namespace":    g.Namespace,
			"labels":       map[string]any{"app.kubernetes.io/managed-by": "buildguard-review"},
			"annotations": map[string]any{
				AnnotationGrantedBy: g.User.Name,
				AnnotationGrantedAt: g.At.UTC().Format(time.RFC3339),
				AnnotationDecision:  g.DecisionID,
			},
		},
		"spec": map[string]any{
			"images":     []any{g.Image},
			"reason":     g.Reason,
			"expires":    g.Expires.UTC().Format(time.RFC3339),
			"approvedBy": g.User.Name,
		},
	}}
	// The API server picks the name's random suffix without checking that
	// it is free: a collision is AlreadyExists, and another suffix is
	// tried.
	var err error
	for range createAttempts {
		var out *unstructured.Unstructured
		out, err = c.Client.Resource(v1alpha1.ExceptionResource).Namespace(g.Namespace).Create(ctx, u, metav1.CreateOptions{})
		if err == nil {
			return g.Namespace + "/" + out.GetName(), nil
		}
		if !apierrors.IsAlreadyExists(err) {
			break
		}
	}
	return "", fmt.Errorf("creating BuildPolicyException in %s: %w", g.Namespace, err)
}

// createAttempts bounds the names tried for one exception.
const createAttempts = 5

// ExceptionFile keeps exceptions granted without a cluster in a YAML file
// (docs/review.md shows it) and adds those of a workload's namespace to
// what a policy file selects. Grants rewrite the file atomically; edits by
// hand are picked up by Reload. Safe for concurrent use; one process
// should write the file.
type ExceptionFile struct {
	path string
	// random is the source of exception names' suffixes; crypto/rand.
	random io.Reader

	mu   sync.Mutex // serializes Grant and Reload
	raw  []byte     // the file as last read or written
	list exceptionFile
	cmu  sync.RWMutex // guards cur, read on every admission
	cur  *compiledFile
}

type compiledFile struct {
	byNS map[string]policy.Exceptions
}

// ExceptionFileVersion and ExceptionFileKind head an exceptions file.
const (
	ExceptionFileVersion = v1alpha1.APIVersion
	ExceptionFileKind    = v1alpha1.KindExceptionList
)

// exceptionFile is the file's format.
type exceptionFile struct {
	APIVersion string          `yaml:"apiVersion"`
	Kind       string          `yaml:"kind"`
	Exceptions []fileException `yaml:"exceptions"`
}

type fileException struct {
	Name       string   `yaml:"name"`
	Namespace  string   `yaml:"namespace"`
	Images     []string `yaml:"images"`
	Reason     string   `yaml:"reason"`
	Expires    string   `yaml:"expires"`
	ApprovedBy string   `yaml:"approvedBy,omitempty"`
	GrantedBy  string   `yaml:"grantedBy,omitempty"`
	GrantedAt  string   `yaml:"grantedAt,omitempty"`
	Decision   string   `yaml:"decision,omitempty"`
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
func parseExceptionFile(raw []byte) (exceptionFile, *compiledFile, error) {
	list := exceptionFile{APIVersion: ExceptionFileVersion, Kind: ExceptionFileKind}
	if len(raw) > maxExceptionFile {
		return list, nil, fmt.Errorf("larger than %d bytes", maxExceptionFile)
	}
	if strings.TrimSpace(string(raw)) != "" {
		dec := yaml.NewDecoder(strings.NewReader(string(raw)))
		dec.KnownFields(true)
		if err := dec.Decode(&list); err != nil {
			return list, nil, fmt.Errorf("decode: %s", strings.TrimPrefix(err.Error(), "yaml: "))
		}
		if list.APIVersion != ExceptionFileVersion || list.Kind != ExceptionFileKind {
			return list, nil, fmt.Errorf("apiVersion/kind %s/%s: want %s/%s", list.APIVersion, list.Kind, ExceptionFileVersion, ExceptionFileKind)
		}
	}
	c, err := compileFile(list)
	return list, c, err
}

func compileFile(list exceptionFile) (*compiledFile, error) {
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

// Grant implements Granter: it appends an exception, drops those expired
// for more than a day, and replaces the file atomically.
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
	next := exceptionFile{APIVersion: ExceptionFileVersion, Kind: ExceptionFileKind}
	for _, e := range list.Exceptions {
		if t, err := time.Parse(time.RFC3339, e.Expires); err == nil && g.At.Sub(t) > 24*time.Hour {
			continue
		}
		next.Exceptions = append(next.Exceptions, e)
	}
	next.Exceptions = append(next.Exceptions, fileException{
		Name: name, Namespace: g.Namespace, Images: []string{g.Image}, Reason: g.Reason,
		Expires: g.Expires.UTC().Format(time.RFC3339), ApprovedBy: g.User.Name, GrantedBy: g.User.Name,
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
func (f *ExceptionFile) newName(list exceptionFile) (string, error) {
	suffix := make([]byte, 5)
	for range createAttempts {
		if _, err := io.ReadFull(f.random, suffix); err != nil {
			return "", fmt.Errorf("exception name: %w", err)
		}
		name := "review-" + hex.EncodeToString(suffix)
		if !slices.ContainsFunc(list.Exceptions, func(e fileException) bool { return e.Name == name }) {
			return name, nil
		}
	}
	return "", fmt.Errorf("exception name: no free name after %d tries", createAttempts)
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
