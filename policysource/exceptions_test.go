package policysource

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

var testGrant = Grant{
	Namespace: "shop", Image: "registry.example/shop/api@sha256:" + strings.Repeat("a", 64), Reason: "INC-1234",
	Expires: t0.Add(7 * 24 * time.Hour), GrantedBy: "alice", At: t0, DecisionID: "d-1",
}

// repeatRandom returns the same bytes n times, then others.
type repeatRandom struct{ n int }

func (r *repeatRandom) Read(p []byte) (int, error) {
	b := byte(0xaa)
	if r.n <= 0 {
		b = 0xbb
	}
	r.n--
	for i := range p {
		p[i] = b
	}
	return len(p), nil
}

// TestExceptionFileNameTaken: a grant never reuses a name in the file.
func TestExceptionFileNameTaken(t *testing.T) {
	xf, err := OpenExceptionFile(filepath.Join(t.TempDir(), "exceptions.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	xf.random = &repeatRandom{n: 2}
	first, err := xf.Grant(t.Context(), testGrant)
	if err != nil {
		t.Fatal(err)
	}
	second, err := xf.Grant(t.Context(), testGrant)
	if err != nil {
		t.Fatal(err)
	}
	if first != "shop/review-aaaaaaaaaa" || second != "shop/review-bbbbbbbbbb" {
		t.Errorf("grants named %q and %q, want shop/review-aaaaaaaaaa and shop/review-bbbbbbbbbb", first, second)
	}
	xf.random = &repeatRandom{n: 100}
	if _, err := xf.Grant(t.Context(), testGrant); err == nil || !strings.Contains(err.Error(), "no free name") {
		t.Errorf("Grant with every name taken = %v, want an error", err)
	}
}

func TestExceptionFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "exceptions.yaml")
	xf, err := OpenExceptionFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if xf.Exceptions("shop").Len() != 0 {
		t.Fatal("a missing file has exceptions")
	}
	name, err := xf.Grant(t.Context(), testGrant)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(name, "shop/review-") {
		t.Errorf("Grant = %q, want shop/review-…", name)
	}
	if xf.Exceptions("shop").Len() != 1 || xf.Exceptions("staging").Len() != 0 {
		t.Errorf("exceptions: shop %d, staging %d; want 1, 0", xf.Exceptions("shop").Len(), xf.Exceptions("staging").Len())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: ExceptionList", "namespace: shop", "approvedBy: alice", "grantedBy: alice", "grantedAt: \"2026-12-01T12:00:00Z\"", "decision: d-1", "expires: \"2026-12-08T12:00:00Z\""} {
		if !strings.Contains(string(b), want) {
			t.Errorf("file lacks %q:\n%s", want, b)
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"exceptions.yaml", "exceptions.yaml.lock"}) {
		t.Errorf("directory holds %v, want only the exceptions file and its lock file (no temporary files left)", names)
	}

	// The exceptions reach the engine's selection for their namespace only.
	p, err := policy.Compile(policy.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	pols := xf.Policies(engine.PolicyFunc(func() *policy.Policy { return p }))
	for ns, want := range map[string]int{"shop": 1, "staging": 0} {
		sel, err := pols.Select(ns, nil, nil)
		if err != nil || sel.Exceptions.Len() != want || len(sel.Policies) != 1 {
			t.Errorf("Select(%s) = %d exceptions, %d policies, %v; want %d, 1", ns, sel.Exceptions.Len(), len(sel.Policies), err, want)
		}
	}

	// An edit by hand is kept by the next grant and read by Reload; one
	// that does not validate leaves the exceptions in force.
	edited := string(b) + `  - name: by-hand
    namespace: staging
    images: ["registry.example/web/*"]
    reason: migration
    expires: "2027-01-01T00:00:00Z"
`
	if err := os.WriteFile(path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := xf.Reload(); err != nil {
		t.Fatal(err)
	}
	if xf.Exceptions("staging").Len() != 1 {
		t.Error("Reload did not read the edit")
	}
	g := testGrant
	g.At = t0.Add(9 * 24 * time.Hour) // the first grant has been expired for more than a day
	g.Expires = g.At.Add(time.Hour)
	if _, err := xf.Grant(t.Context(), g); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if !strings.Contains(string(b), "by-hand") || strings.Count(string(b), "grantedBy: alice") != 1 {
		t.Errorf("after the second grant:\n%s\nwant the hand edit kept and the long-expired grant dropped", b)
	}
	if err := os.WriteFile(path, []byte("apiVersion: buildguard.dev/v1alpha1\nkind: ExceptionList\nexceptions:\n- namespace: shop\n  images: [x]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := xf.Reload(); err == nil || !strings.Contains(err.Error(), "exceptions[0].reason: required") {
		t.Errorf("Reload of an invalid file = %v, want exceptions[0].reason: required", err)
	}
	if xf.Exceptions("staging").Len() != 1 {
		t.Error("an invalid file replaced the exceptions in force")
	}
	if _, err := xf.Grant(t.Context(), testGrant); err == nil || !strings.Contains(err.Error(), "fix it before granting") {
		t.Errorf("Grant over an invalid file = %v, want a refusal", err)
	}
}

func TestParseExceptionFile(t *testing.T) {
	for _, tc := range []struct{ name, in, err string }{
		{"empty", "", ""},
		{"wrong kind", "apiVersion: buildguard.dev/v1alpha1\nkind: Policy\n", "want buildguard.dev/v1alpha1/ExceptionList"},
		{"unknown field", "apiVersion: buildguard.dev/v1alpha1\nkind: ExceptionList\nexceptionz: []\n", "field exceptionz not found"},
		{"no namespace", "apiVersion: buildguard.dev/v1alpha1\nkind: ExceptionList\nexceptions:\n- images: [a]\n  reason: r\n  expires: \"2027-01-01T00:00:00Z\"\n", "exceptions[0].namespace: required"},
		{"bad expiry", "apiVersion: buildguard.dev/v1alpha1\nkind: ExceptionList\nexceptions:\n- namespace: a\n  images: [a]\n  reason: r\n  expires: tomorrow\n", "exceptions[0].expires"},
		{"bad digest", "apiVersion: buildguard.dev/v1alpha1\nkind: ExceptionList\nexceptions:\n- namespace: a\n  images: [\"a@sha256:zz\"]\n  reason: r\n  expires: \"2027-01-01T00:00:00Z\"\n", "exceptions[0].images[0]"},
		{"not YAML", "{", "decode:"},
	} {
		_, _, err := parseExceptionFile([]byte(tc.in))
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: parseExceptionFile = %v, want %q", tc.name, err, tc.err)
		}
	}
}

func FuzzParseExceptionFile(f *testing.F) {
	f.Add([]byte("apiVersion: buildguard.dev/v1alpha1\nkind: ExceptionList\nexceptions:\n- namespace: a\n  images: [\"r.example/a@sha256:" + strings.Repeat("a", 64) + "\"]\n  reason: r\n  expires: \"2027-01-01T00:00:00Z\"\n"))
	f.Add([]byte("exceptions: [{}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		list, c, err := parseExceptionFile(b)
		if err != nil {
			return
		}
		n := 0
		for _, x := range c.byNS {
			n += x.Len()
		}
		if n != len(list.Exceptions) {
			t.Fatalf("%d exceptions compiled of %d", n, len(list.Exceptions))
		}
	})
}

// TestExceptionFileTwoWriters: two processes granting into one file (two
// ExceptionFiles here, each with its own lock file descriptor) lose no
// grant.
func TestExceptionFileTwoWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "exceptions.yaml")
	var files [2]*ExceptionFile
	for i := range files {
		xf, err := OpenExceptionFile(path)
		if err != nil {
			t.Fatal(err)
		}
		files[i] = xf
	}
	const each = 15
	var wg sync.WaitGroup
	errs := make(chan error, 2*each)
	for _, xf := range files {
		for range each {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := xf.Grant(t.Context(), testGrant); err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	xf, err := OpenExceptionFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(xf.list.Exceptions); n != 2*each {
		t.Errorf("the file has %d exceptions after %d grants", n, 2*each)
	}
}

func TestExceptionFileLockWaitEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "exceptions.yaml")
	unlock, err := lockFile(t.Context(), path+".lock")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	xf, err := OpenExceptionFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := xf.Grant(ctx, testGrant); err == nil {
		t.Error("Grant with the lock held elsewhere and its context ended = nil error")
	}
	ctx, cancel = context.WithTimeout(t.Context(), 3*lockPoll)
	defer cancel()
	if _, err := xf.Grant(ctx, testGrant); err == nil || !strings.Contains(err.Error(), "held by another process") {
		t.Errorf("Grant with the lock held elsewhere = %v, want it to say the lock is held", err)
	}
}
