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

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"buildguard.dev/buildguard/apis/v1alpha1"
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
	// Authenticate returns the token's user, an *AuthError when the token
	// is not valid, or another error when the check itself failed.
	Authenticate(ctx context.Context, token string) (User, error)
}

// AuthError is a token that does not authenticate: the caller's fault.
type AuthError struct{ Reason string }

func (e *AuthError) Error() string { return "not authenticated: " + e.Reason }

// Attributes name what a user wants to do, as a SubjectAccessReview's
// resource attributes. An empty Namespace means every namespace.
type Attributes struct {
	Verb, Group, Resource, Namespace string
}

// Authorizer decides whether a user may do something.
type Authorizer interface {
	Allowed(ctx context.Context, u User, a Attributes) (bool, error)
}

// The permissions the review UI checks. Decisions are a virtual resource:
// no API serves them, RBAC rules name them.
var (
	// ListDecisions is needed to see decisions (in Namespace, or all).
	ListDecisions = Attributes{Verb: "list", Group: v1alpha1.Group, Resource: "decisions"}
	// CreateExceptions is needed to grant an exception in Namespace.
	CreateExceptions = Attributes{Verb: "create", Group: v1alpha1.Group, Resource: v1alpha1.ExceptionResource.Resource}
)

// In returns a with its namespace set.
func (a Attributes) In(namespace string) Attributes {
	a.Namespace = namespace
	return a
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
	tr, err := t.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: t.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return User{}, fmt.Errorf("TokenReview: %w", err)
	}
	if !tr.Status.Authenticated {
		reason := tr.Status.Error
		if reason == "" {
			reason = "the API server did not accept the token"
		}
		return User{}, &AuthError{Reason: reason}
	}
	u := User{Name: tr.Status.User.Username, UID: tr.Status.User.UID, Groups: tr.Status.User.Groups}
	if len(tr.Status.User.Extra) > 0 {
		u.Extra = make(map[string][]string, len(tr.Status.User.Extra))
		for k, v := range tr.Status.User.Extra {
			u.Extra[k] = v
		}
	}
	return u, nil
}

// SubjectAccessReviewer authorizes with the API server's
// SubjectAccessReview: RBAC (or whatever authorizes the cluster) decides.
type SubjectAccessReviewer struct {
	Client kubernetes.Interface
}

// Allowed implements Authorizer.
func (s *SubjectAccessReviewer) Allowed(ctx context.Context, u User, a Attributes) (bool, error) {
	extra := make(map[string]authorizationv1.ExtraValue, len(u.Extra))
	for k, v := range u.Extra {
		extra[k] = v
	}
	sar, err := s.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User: u.Name, UID: u.UID, Groups: u.Groups, Extra: extra,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: a.Namespace, Verb: a.Verb, Group: a.Group, Resource: a.Resource,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("SubjectAccessReview: %w", err)
	}
	if sar.Status.EvaluationError != "" && !sar.Status.Allowed {
		return false, fmt.Errorf("SubjectAccessReview: %s", sar.Status.EvaluationError)
	}
	return sar.Status.Allowed && !sar.Status.Denied, nil
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
		return User{}, &AuthError{Reason: "unknown token"}
	}
	return *found, nil
}
