package review

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/kubeauth"
)

func TestParseTokens(t *testing.T) {
	const tok = "0123456789abcdef"
	for _, tc := range []struct {
		name, in string
		want     map[string]User // token → user
		err      string
	}{
		{name: "three fields", in: tok + ",alice,u-1\n", want: map[string]User{tok: {Name: "alice", UID: "u-1", Groups: []string{"system:authenticated"}}}},
		{name: "groups", in: "# reviewers\n\n" + tok + `,alice,u-1,"platform,sre, platform"` + "\n" + tok + "x,bob,u-2,",
			want: map[string]User{
				tok:       {Name: "alice", UID: "u-1", Groups: []string{"platform", "sre", "system:authenticated"}},
				tok + "x": {Name: "bob", UID: "u-2", Groups: []string{"system:authenticated"}},
			}},
		{name: "empty", in: "# nothing\n", err: "no tokens"},
		{name: "two fields", in: tok + ",alice\n", err: `line 1: 2 fields, want token,user,uid[,"group1,group2"]`},
		{name: "five fields", in: tok + ",a,b,c,d\n", err: "line 1: 5 fields"},
		{name: "short token", in: "short,alice,u\n", err: "line 1: token shorter than 16 characters"},
		{name: "token with a space", in: "0123456789 abcdef,alice,u\n", err: "white space"},
		{name: "no user", in: tok + ", ,u\n", err: "line 1: empty user name"},
		{name: "repeated token", in: tok + ",alice,u\n" + tok + ",bob,u\n", err: `line 2: token of user "bob" repeated`},
		{name: "bad quoting", in: tok + `,alice,u,"a` + "\n", err: "extraneous or missing"},
		{name: "not UTF-8", in: tok + ",\xff,u\n", err: "not valid UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := ParseTokens([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseTokens = %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for token, want := range tc.want {
				got, err := st.Authenticate(t.Context(), token)
				if err != nil {
					t.Errorf("Authenticate(%q): %v", token, err)
				} else if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("Authenticate(%q) (-want +got):\n%s", token, diff)
				}
			}
			var ae *kubeauth.Error
			if _, err := st.Authenticate(t.Context(), tok+"nope"); !errors.As(err, &ae) {
				t.Errorf("unknown token: %v, want a *kubeauth.Error", err)
			}
		})
	}
}

// TestStaticTokensKeepDigests: the tokens are kept as SHA-256 digests,
// compared at one length whatever the length of the token tried, and not
// in memory as they are.
func TestStaticTokensKeepDigests(t *testing.T) {
	const tok = "3f1c0a9e5b7d4e2a8c6f"
	st, err := ParseTokens([]byte(tok + ",alice,1001\n"))
	if err != nil {
		t.Fatal(err)
	}
	if kept := fmt.Sprintf("%s %x %v", st.tokens, st.tokens, st.tokens); strings.Contains(kept, tok) || strings.Contains(kept, fmt.Sprintf("%x", tok)) {
		t.Errorf("the token is kept as it is: %s", kept)
	}
	for _, guess := range []string{tok[:16], tok + "0", tok[:19] + "0", ""} {
		if _, err := st.Authenticate(context.Background(), guess); err == nil {
			t.Errorf("Authenticate(%q) accepted", guess)
		}
	}
	if u, err := st.Authenticate(context.Background(), tok); err != nil || u.Name != "alice" {
		t.Errorf("Authenticate(%q) = %+v, %v", tok, u, err)
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadTokenFile(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "token file") {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, maxTokenFile+1), 0o600)
	if _, err := ReadTokenFile(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("large file: %v", err)
	}
}

func FuzzParseTokens(f *testing.F) {
	f.Add([]byte("0123456789abcdef,alice,u-1,\"a,b\"\n"))
	f.Add([]byte("# c\n0123456789abcdef,alice,u-1\n0123456789abcdeg,bob,u-2,\n"))
	f.Add([]byte("\"0123456789abcdef\",\"al\"\"ice\",u\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseTokens(b)
		if err != nil {
			return
		}
		for _, tk := range st.tokens {
			if tk.user.Name == "" {
				t.Fatalf("accepted a user without a name: %+v", tk.user)
			}
		}
		// Every token the file names authenticates as its user.
		r := csv.NewReader(bytes.NewReader(b))
		r.FieldsPerRecord, r.Comment, r.TrimLeadingSpace = -1, '#', true
		recs, err := r.ReadAll()
		if err != nil || len(recs) != len(st.tokens) {
			t.Fatalf("ParseTokens accepted %d users, csv reads %d records (%v)", len(st.tokens), len(recs), err)
		}
		for _, rec := range recs {
			if len(rec[0]) < 16 {
				t.Fatalf("accepted token %q, shorter than 16", rec[0])
			}
			if u, err := st.Authenticate(context.Background(), rec[0]); err != nil || u.Name != strings.TrimSpace(rec[1]) {
				t.Fatalf("Authenticate(%q) = %+v, %v, want user %q", rec[0], u, err, rec[1])
			}
		}
	})
}

func FuzzSessionDecode(f *testing.F) {
	c := sessionCodec{key: []byte(strings.Repeat("k", 32))}
	s, _ := newSession(fixedRandom{}, User{Name: "alice"}, t0.Add(time.Hour))
	v, _ := c.encode(s)
	f.Add(v)
	f.Add("a.b")
	f.Add("")
	f.Fuzz(func(t *testing.T, v string) {
		s, err := c.decode(v, t0)
		if err == nil && (s.User.Name == "" || s.CSRF == "" || !t0.Before(time.Unix(s.Expires, 0))) {
			t.Fatalf("decode(%q) accepted %+v", v, s)
		}
	})
}

func FuzzParseFilter(f *testing.F) {
	f.Add("since=24h&namespace=shop&rule=fresh-image&image=ghcr.io/*&verdict=deny&limit=5")
	f.Add("since=7d&verdict=allow&verdict=warn")
	f.Add("since=all&image=%00")
	f.Add("before=1796126400000000_0d1e5a7c-1111&page=2&day=2026-11-30")
	f.Add("after=0_u9%2Fscan-20261130T060000Z&limit=1000&exception=staging%2Fby-hand")
	f.Add("before=-1_x&after=1_y")
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		fl, dq, err := parseFilter(q, t0)
		if err != nil {
			return
		}
		if dq.Limit < 1 || dq.Limit > 1000 || len(fl.Verdicts) == 0 || dq.Since.After(t0) {
			t.Fatalf("parseFilter(%q) = %+v, %+v", raw, fl, dq)
		}
		// A page's cursor is what its link writes again.
		for _, c := range []*evidence.Cursor{dq.Before, dq.After} {
			if c == nil {
				continue
			}
			again, err := decodeCursor(encodeCursor(c))
			if err != nil || !again.Time.Equal(c.Time) || again.ID != c.ID {
				t.Fatalf("cursor %+v of %q reads back as %+v, %v", c, raw, again, err)
			}
		}
		// Its link, the filter's own query, reads back as the filter.
		again, _, err := parseFilter(fl.Query(), t0)
		if err != nil || again.Since != fl.Since || again.Namespace != fl.Namespace || again.Image != fl.Image || !slices.Equal(again.Verdicts, fl.Verdicts) {
			t.Fatalf("parseFilter(%q).Query() = %q reads back as %+v, %v; want %+v", raw, fl.Query().Encode(), again, err, fl)
		}
	})
}

func TestTokenReviewer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status authenticationv1.TokenReviewStatus
		apiErr error
		want   User
		err    string
	}{
		{name: "authenticated", status: authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{
			Username: "system:serviceaccount:buildguard-system:reviewer", UID: "u-9", Groups: []string{"system:serviceaccounts"},
			Extra: map[string]authenticationv1.ExtraValue{"authentication.kubernetes.io/pod-name": {"p"}}}},
			want: User{Name: "system:serviceaccount:buildguard-system:reviewer", UID: "u-9", Groups: []string{"system:serviceaccounts"},
				Extra: map[string][]string{"authentication.kubernetes.io/pod-name": {"p"}}}},
		{name: "refused", status: authenticationv1.TokenReviewStatus{Error: "token has expired"}, err: "token has expired"},
		{name: "refused without a reason", status: authenticationv1.TokenReviewStatus{}, err: "did not accept the token"},
		{name: "API error", apiErr: errors.New("connection refused"), err: "TokenReview: connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset()
			var sent *authenticationv1.TokenReview
			cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
				sent = a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
				if tc.apiErr != nil {
					return true, nil, tc.apiErr
				}
				out := sent.DeepCopy()
				out.Status = tc.status
				return true, out, nil
			})
			u, err := (&TokenReviewer{Client: cs}).Authenticate(t.Context(), "the-token")
			if sent == nil || sent.Spec.Token != "the-token" {
				t.Fatalf("TokenReview sent: %+v", sent)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Authenticate = %+v, %v; want an error with %q", u, err, tc.err)
				}
				var ae *kubeauth.Error
				if errors.As(err, &ae) != (tc.apiErr == nil) {
					t.Errorf("errors.As(%v, *kubeauth.Error) wrong: only refusals are the caller's fault", err)
				}
				if ae != nil && ae.Code != 401 {
					t.Errorf("refusal's Code = %d, want 401", ae.Code)
				}
				return
			}
			if err != nil {
				t.Errorf("Authenticate: %v", err)
			} else if diff := cmp.Diff(tc.want, u); diff != "" {
				t.Errorf("Authenticate (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSubjectAccessReviewer(t *testing.T) {
	u := User{Name: "bob", UID: "u-2", Groups: []string{"g"}, Extra: map[string][]string{"k": {"v"}}}
	for _, tc := range []struct {
		name   string
		status authorizationv1.SubjectAccessReviewStatus
		apiErr error
		want   bool
		err    string
	}{
		{name: "allowed", status: authorizationv1.SubjectAccessReviewStatus{Allowed: true}, want: true},
		{name: "not allowed", status: authorizationv1.SubjectAccessReviewStatus{}, want: false},
		{name: "denied", status: authorizationv1.SubjectAccessReviewStatus{Allowed: true, Denied: true}, want: false},
		{name: "evaluation error", status: authorizationv1.SubjectAccessReviewStatus{EvaluationError: "webhook down"}, err: "webhook down"},
		{name: "API error", apiErr: errors.New("timeout"), err: "SubjectAccessReview: timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset()
			var sent *authorizationv1.SubjectAccessReview
			cs.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
				sent = a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview)
				if tc.apiErr != nil {
					return true, nil, tc.apiErr
				}
				out := sent.DeepCopy()
				out.Status = tc.status
				return true, out, nil
			})
			ok, err := (&SubjectAccessReviewer{Client: cs}).Allowed(t.Context(), u, createExceptions("shop"))
			want := authorizationv1.SubjectAccessReviewSpec{User: "bob", UID: "u-2", Groups: []string{"g"},
				Extra:              map[string]authorizationv1.ExtraValue{"k": {"v"}},
				ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: "shop", Verb: "create", Group: "buildguard.dev", Resource: "buildpolicyexceptions"}}
			if sent == nil {
				t.Fatal("no SubjectAccessReview sent")
			}
			if diff := cmp.Diff(want, sent.Spec); diff != "" {
				t.Fatalf("SubjectAccessReview sent (-want +got):\n%s", diff)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Allowed = %v, %v; want an error with %q", ok, err, tc.err)
				}
				return
			}
			if err != nil || ok != tc.want {
				t.Errorf("Allowed = %v, %v; want %v", ok, err, tc.want)
			}
		})
	}
}
