// Package kubeauth asks the Kubernetes API server who holds a bearer
// token (TokenReview) and whether a user may do something
// (SubjectAccessReview), for the endpoints buildguard serves to nodes
// (ingest) and to people (review). Its *Error is the one type of a
// credential refused.
package kubeauth

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Error is a credential refused, or a request its user may not make: the
// caller's fault, answered with Code. Any other error of a check is the
// check failing, not a refusal.
type Error struct {
	Code   int    // the HTTP status: 401 (not authenticated) or 403 (forbidden)
	Reason string // why, for the caller
}

func (e *Error) Error() string { return e.Reason }

// User is an authenticated user, as the API server's TokenReview names it.
type User struct {
	Name   string
	UID    string
	Groups []string
	Extra  map[string][]string
}

// Review is the API server's answer to a TokenReview of a token it
// authenticated.
type Review struct {
	User User
	// Audiences are those of the token that the API server reports as
	// compatible with the review's.
	Audiences []string
}

// ReviewToken asks the API server's TokenReview whose token is, bound to
// audiences (none: the API server's own). A token it does not
// authenticate is an *Error (401) whose Reason is the API server's
// explanation, "" when it gave none; a review that could not be made is
// another error. An empty token is refused without asking: the API
// server would answer 422, which is not the caller's refusal.
func ReviewToken(ctx context.Context, c kubernetes.Interface, token string, audiences []string) (Review, error) {
	if token == "" {
		return Review{}, &Error{Code: 401, Reason: "no bearer token"}
	}
	tr, err := c.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return Review{}, err
	}
	if !tr.Status.Authenticated {
		return Review{}, &Error{Code: 401, Reason: tr.Status.Error}
	}
	u := tr.Status.User
	r := Review{User: User{Name: u.Username, UID: u.UID, Groups: u.Groups}, Audiences: tr.Status.Audiences}
	if len(u.Extra) > 0 {
		r.User.Extra = make(map[string][]string, len(u.Extra))
		for k, v := range u.Extra {
			r.User.Extra[k] = v
		}
	}
	return r, nil
}

// Attributes name what a user wants to do, as a SubjectAccessReview's
// resource attributes. An empty Namespace means every namespace.
type Attributes struct {
	Verb, Group, Resource, Namespace string
}

// Allowed asks the API server's SubjectAccessReview whether u may do a:
// RBAC, or whatever authorizes the cluster, decides.
func Allowed(ctx context.Context, c kubernetes.Interface, u User, a Attributes) (bool, error) {
	extra := make(map[string]authorizationv1.ExtraValue, len(u.Extra))
	for k, v := range u.Extra {
		extra[k] = v
	}
	sar, err := c.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
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
