package review

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"unicode/utf8"

	"k8s.io/client-go/kubernetes"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/kubeauth"
)

// User is an authenticated person (or service account), as the API
// server's TokenReview names it.
type User struct {
	Name   string              `json:"n"`
	UID    string              `json:"u,omitempty"`
	Groups []string            `json:"g,omitempty"`
	Extra  map[string][]string `json:"x,omitempty"`
}

// Authenticator turns a bearer token into a user.
type Authenticator interface {
	// Authenticate returns the token's user, a *kubeauth.Error when the token
	// is not valid, or another error when the check itself failed.
	Authenticate(ctx context.Context, token string) (User, error)
}

// Attributes name what a user wants to do (kubeauth.Attributes).
type Attributes = kubeauth.Attributes

// Authorizer decides whether a user may do something.
type Authorizer interface {
	Allowed(ctx context.Context, u User, a Attributes) (bool, error)
}

// listDecisions is the permission to see decisions in namespace ("": in
// all). Decisions are a virtual resource: no API serves them, RBAC rules
// name them.
func listDecisions(namespace string) Attributes {
	return Attributes{Verb: "list", Group: v1alpha1.Group, Resource: "decisions", Namespace: namespace}
}

// createExceptions is the permission to grant an exception in namespace.
func createExceptions(namespace string) Attributes {
	return Attributes{Verb: "create", Group: v1alpha1.Group, Resource: v1alpha1.ExceptionResourceName, Namespace: namespace}
}

// TokenReviewer authenticates tokens with the API server's TokenReview.
type TokenReviewer struct {
	Client kubernetes.Interface
	// Audiences the token must be bound to. The default is the API
	// server's own (what `kubectl create token` issues).
	Audiences []string
}

// Authenticate implements Authenticator.
func (t *TokenReviewer) Authenticate(ctx context.Context, token string) (User, error) {
	r, err := kubeauth.ReviewToken(ctx, t.Client, token, t.Audiences)
	var ae *kubeauth.Error
	switch {
	case errors.As(err, &ae):
		if ae.Reason == "" {
			ae.Reason = "the API server did not accept the token"
		}
		return User{}, ae
	case err != nil:
		return User{}, fmt.Errorf("TokenReview: %w", err)
	}
	return User(r.User), nil
}

// SubjectAccessReviewer authorizes with the API server's
// SubjectAccessReview: RBAC (or whatever authorizes the cluster) decides.
type SubjectAccessReviewer struct {
	Client kubernetes.Interface
}

// Allowed implements Authorizer.
func (s *SubjectAccessReviewer) Allowed(ctx context.Context, u User, a Attributes) (bool, error) {
	return kubeauth.Allowed(ctx, s.Client, kubeauth.User(u), a)
}

// AllowAll lets every authenticated user do everything: the authorizer of
// static token files, which have no roles.
type AllowAll struct{}

// Allowed implements Authorizer.
func (AllowAll) Allowed(context.Context, User, Attributes) (bool, error) { return true, nil }

// StaticTokens authenticates against a fixed token list, read from a file
// in kube-apiserver's --token-auth-file format. It is for running without
// a cluster.
type StaticTokens struct {
	tokens []staticToken
}

// staticToken keeps a token's SHA-256, not the token: comparing digests
// of equal length takes the same time whatever the length of the token
// guessed (subtle.ConstantTimeCompare returns at once on a length
// mismatch), and the tokens are not in the process's memory.
type staticToken struct {
	sum  [sha256.Size]byte
	user User
}

// maxTokenFile bounds a token file; a larger one is a mistake.
const maxTokenFile = 1 << 20

// ReadTokenFile reads a token file: one user a line,
// token,user,uid[,"group1,group2"], as kube-apiserver's --token-auth-file.
// Blank lines and lines starting with "#" are skipped.
func ReadTokenFile(path string) (*StaticTokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return nil, fmt.Errorf("token file %s: %w", path, err)
	}
	st, err := ParseTokens(b)
	if err != nil {
		return nil, fmt.Errorf("token file %s: %w", path, err)
	}
	return st, nil
}

// ParseTokens parses the contents of a token file (see ReadTokenFile).
// Every token must be unique and at least 16 characters, so that a short
// guessable token is refused rather than served.
func ParseTokens(data []byte) (*StaticTokens, error) {
	if len(data) > maxTokenFile {
		return nil, fmt.Errorf("larger than %d bytes", maxTokenFile)
	}
	if !utf8.Valid(data) {
		return nil, errors.New("not valid UTF-8")
	}
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = -1
	r.Comment = '#'
	r.TrimLeadingSpace = true
	st := &StaticTokens{}
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		line, _ := r.FieldPos(0)
		if len(rec) < 3 || len(rec) > 4 {
			return nil, fmt.Errorf("line %d: %d fields, want token,user,uid[,\"group1,group2\"]", line, len(rec))
		}
		tok, name, uid := rec[0], strings.TrimSpace(rec[1]), strings.TrimSpace(rec[2])
		switch {
		case len(tok) < 16:
			return nil, fmt.Errorf("line %d: token shorter than 16 characters", line)
		case strings.ContainsAny(tok, " \t"):
			return nil, fmt.Errorf("line %d: token contains white space", line)
		case name == "":
			return nil, fmt.Errorf("line %d: empty user name", line)
		}
		sum := sha256.Sum256([]byte(tok))
		for _, t := range st.tokens {
			if t.sum == sum {
				return nil, fmt.Errorf("line %d: token of user %q repeated", line, name)
			}
		}
		u := User{Name: name, UID: uid}
		if len(rec) == 4 {
			for _, g := range strings.Split(rec[3], ",") {
				if g = strings.TrimSpace(g); g != "" && !slices.Contains(u.Groups, g) {
					u.Groups = append(u.Groups, g)
				}
			}
		}
		u.Groups = append(u.Groups, "system:authenticated")
		st.tokens = append(st.tokens, staticToken{sum: sum, user: u})
	}
	if len(st.tokens) == 0 {
		return nil, errors.New("no tokens")
	}
	return st, nil
}

// Authenticate implements Authenticator. Every token is compared in
// constant time.
func (s *StaticTokens) Authenticate(_ context.Context, token string) (User, error) {
	var found *User
	sum := sha256.Sum256([]byte(token))
	for i := range s.tokens {
		if subtle.ConstantTimeCompare(s.tokens[i].sum[:], sum[:]) == 1 {
			found = &s.tokens[i].user
		}
	}
	if found == nil {
		return User{}, &kubeauth.Error{Code: 401, Reason: "unknown token"}
	}
	return *found, nil
}
