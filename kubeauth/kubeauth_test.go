package kubeauth_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"buildguard.dev/buildguard/kubeauth"
)

// credentialID is what the API server puts in the extra of a service
// account token's user: the token's JWT ID.
func credentialID(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token %.20q… is not a JWT", token)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		JTI string `json:"jti"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.JTI == "" {
		t.Fatalf("token claims %s: no jti (%v)", payload, err)
	}
	return "JTI=" + claims.JTI
}

func TestReviewToken(t *testing.T) {
	e := sharedEnv(t)
	agent := kubeauth.User{
		Name: "system:serviceaccount:" + ns + ":" + sa, UID: string(e.sa.UID),
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
	}
	withExtra := func(u kubeauth.User, extra map[string][]string) kubeauth.User {
		u.Extra = extra
		return u
	}
	for _, tc := range []struct {
		name      string
		token     string
		audiences []string
		want      kubeauth.Review
		// refused, when not empty, is part of the *Error's Reason.
		refused string
	}{
		{name: "service account token for the audience asked", token: e.token, audiences: []string{"buildguard"},
			want: kubeauth.Review{User: withExtra(agent, map[string][]string{
				"authentication.kubernetes.io/credential-id": {credentialID(t, e.token)},
			}), Audiences: []string{"buildguard"}}},
		{name: "token bound to a pod: the pod and its node in the extra", token: e.bound, audiences: []string{"buildguard"},
			want: kubeauth.Review{User: withExtra(agent, map[string][]string{
				"authentication.kubernetes.io/credential-id": {credentialID(t, e.bound)},
				"authentication.kubernetes.io/pod-name":      {e.pod.Name},
				"authentication.kubernetes.io/pod-uid":       {string(e.pod.UID)},
				"authentication.kubernetes.io/node-name":     {e.node.Name},
				"authentication.kubernetes.io/node-uid":      {string(e.node.UID)},
			}), Audiences: []string{"buildguard"}}},
		{name: "no audience asked: the API server's own", token: staticToken,
			want: kubeauth.Review{User: kubeauth.User{Name: "alice", UID: "alice-uid", Groups: []string{"dev", "ops", "system:authenticated"}},
				Audiences: []string{"https://kubernetes.default.svc"}}},
		{name: "token for another audience", token: e.elsewhere, audiences: []string{"buildguard"},
			refused: `token audiences ["elsewhere"] is invalid for the target audiences ["buildguard"]`},
		{name: "token for our audience, the API server's asked", token: e.token,
			refused: `token audiences ["buildguard"] is invalid for the target audiences ["https://kubernetes.default.svc"]`},
		{name: "token of the API server's audience only", token: staticToken, audiences: []string{"buildguard"}, refused: "invalid bearer token"},
		{name: "not a token", token: "garbage", audiences: []string{"buildguard"}, refused: "invalid bearer token"},
		{name: "no token", token: "", audiences: []string{"buildguard"}, refused: "no bearer token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := kubeauth.ReviewToken(t.Context(), e.client, tc.token, tc.audiences)
			if tc.refused != "" {
				var ae *kubeauth.Error
				if !errors.As(err, &ae) || ae.Code != 401 || !strings.Contains(ae.Reason, tc.refused) {
					t.Fatalf("ReviewToken = %+v, %v; want a *kubeauth.Error 401 with %q", got, err, tc.refused)
				}
				if diff := cmp.Diff(kubeauth.Review{}, got); diff != "" {
					t.Errorf("ReviewToken refused with a review (-want +got):\n%s", diff)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReviewToken: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ReviewToken (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAllowed(t *testing.T) {
	e := sharedEnv(t)
	createIn := func(namespace string) kubeauth.Attributes {
		return kubeauth.Attributes{Verb: "create", Group: "buildguard.dev", Resource: "buildpolicyexceptions", Namespace: namespace}
	}
	alice := kubeauth.User{Name: "alice"}
	bob := kubeauth.User{Name: "bob", Groups: []string{"exception-admins"}}
	for _, tc := range []struct {
		name string
		user kubeauth.User
		attr kubeauth.Attributes
		want bool
		// err, when not empty, is part of the error, which is no
		// *kubeauth.Error: the check failed.
		err string
	}{
		{name: "role binding in the namespace", user: alice, attr: createIn("shop"), want: true},
		{name: "role binding in another namespace", user: alice, attr: createIn("web")},
		{name: "role binding in one namespace, every namespace asked", user: alice, attr: createIn("")},
		{name: "cluster role binding of a group, every namespace asked", user: bob, attr: createIn(""), want: true},
		{name: "cluster role binding of a group, one namespace asked", user: bob, attr: createIn("shop"), want: true},
		{name: "another verb", user: bob, attr: kubeauth.Attributes{Verb: "delete", Group: "buildguard.dev", Resource: "buildpolicyexceptions"}},
		{name: "another resource", user: bob, attr: kubeauth.Attributes{Verb: "create", Group: "buildguard.dev", Resource: "clusterbuildpolicies"}},
		{name: "another group of resources", user: bob, attr: kubeauth.Attributes{Verb: "create", Resource: "buildpolicyexceptions"}},
		{name: "the group without the user", user: kubeauth.User{Name: "bob"}, attr: createIn("shop")},
		{name: "cluster administrators", user: kubeauth.User{Name: "root", Groups: []string{"system:masters"}}, attr: createIn(""), want: true},
		{name: "no binding", user: kubeauth.User{Name: "mallory"}, attr: createIn("shop")},
		{name: "denied by an authorizer", user: kubeauth.User{Name: webhookDenied}, attr: createIn("shop")},
		{name: "an authorizer fails", user: kubeauth.User{Name: webhookBroken}, attr: createIn("shop"), err: "SubjectAccessReview: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := kubeauth.Allowed(t.Context(), e.client, tc.user, tc.attr)
			if tc.err != "" {
				var ae *kubeauth.Error
				if err == nil || !strings.Contains(err.Error(), tc.err) || errors.As(err, &ae) || got {
					t.Fatalf("Allowed = %v, %v; want false and an error with %q that is no *kubeauth.Error", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("Allowed = %v, %v; want %v", got, err, tc.want)
			}
		})
	}

	t.Run("the user is asked about as it was authenticated", func(t *testing.T) {
		u := kubeauth.User{Name: "carol", UID: "carol-uid", Groups: []string{"dev", "system:authenticated"},
			Extra: map[string][]string{"authentication.kubernetes.io/pod-name": {"reviewer-1"}, "scopes": {"a", "b"}}}
		if ok, err := kubeauth.Allowed(t.Context(), e.client, u, createIn("shop")); err != nil || ok {
			t.Fatalf("Allowed = %v, %v; want false, nil", ok, err)
		}
		got, ok := e.authz.spec("carol")
		if !ok {
			t.Fatal("the authorization webhook was not asked about carol")
		}
		want := authorizationv1.SubjectAccessReviewSpec{User: u.Name, UID: u.UID, Groups: u.Groups,
			Extra:              map[string]authorizationv1.ExtraValue{"authentication.kubernetes.io/pod-name": {"reviewer-1"}, "scopes": {"a", "b"}},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: "shop", Verb: "create", Group: "buildguard.dev", Resource: "buildpolicyexceptions"}}
		// The API server asks the webhook about any version ("*").
		if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(authorizationv1.ResourceAttributes{}, "Version")); diff != "" {
			t.Errorf("review the webhook saw (-want +got):\n%s", diff)
		}
	})
}

// TestCheckFails checks that a review that could not be made is an
// error, but no *kubeauth.Error: a refusal is the caller's fault (401,
// 403), this is ours.
func TestCheckFails(t *testing.T) {
	e := sharedEnv(t)
	clientOf := func(t *testing.T, cfg *rest.Config) kubernetes.Interface {
		t.Helper()
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// closed is an address nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	silent := silentServer(t)
	forbidden := rest.CopyConfig(e.cfg)
	forbidden.Impersonate = rest.ImpersonationConfig{UserName: "mallory"}

	for _, tc := range []struct {
		name    string
		client  kubernetes.Interface
		timeout time.Duration
		check   func(error) bool // what else holds of the error
	}{
		{name: "no API server", client: clientOf(t, &rest.Config{Host: "https://" + closed}), timeout: time.Minute},
		{name: "the API server does not answer before the deadline", client: clientOf(t, &rest.Config{Host: "https://" + silent}),
			timeout: 200 * time.Millisecond, check: func(err error) bool { return errors.Is(err, context.DeadlineExceeded) }},
		{name: "our credentials may not make reviews", client: clientOf(t, forbidden), timeout: time.Minute, check: apierrors.IsForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, call := range []struct {
				name string
				do   func(ctx context.Context) error
			}{
				{"ReviewToken", func(ctx context.Context) error {
					_, err := kubeauth.ReviewToken(ctx, tc.client, e.token, []string{"buildguard"})
					return err
				}},
				{"Allowed", func(ctx context.Context) error {
					ok, err := kubeauth.Allowed(ctx, tc.client, kubeauth.User{Name: "root", Groups: []string{"system:masters"}},
						kubeauth.Attributes{Verb: "create", Group: "buildguard.dev", Resource: "buildpolicyexceptions"})
					if ok {
						t.Errorf("Allowed = true with an error %v", err)
					}
					return err
				}},
			} {
				ctx, cancel := context.WithTimeout(t.Context(), tc.timeout)
				err := call.do(ctx)
				cancel()
				var ae *kubeauth.Error
				if err == nil || errors.As(err, &ae) || tc.check != nil && !tc.check(err) {
					t.Errorf("%s = %v (%T); want an error that is no *kubeauth.Error", call.name, err, err)
				}
			}
		})
	}
}

// silentServer returns the address of a listener that accepts
// connections and never answers on them.
func silentServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	return ln.Addr().String()
}
