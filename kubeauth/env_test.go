package kubeauth_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"buildguard.dev/buildguard/e2e"
)

const (
	ns = "buildguard-system"
	sa = "node-agent"
	// staticToken is alice's in the API server's token file, which knows
	// no audiences: the API server takes it for its own only.
	staticToken = "kubeauth-test-alice-token"
)

// Users the authorization webhook answers for; RBAC has no opinion on
// them.
const (
	webhookDenied = "webhook-denied" // denied explicitly
	webhookBroken = "webhook-broken" // the webhook fails
)

// testEnv is a real control plane whose authorizer is RBAC and then a
// webhook of the test's (authz), with a service account, a pod of it on
// a node, tokens, and RBAC bindings. One is shared by the package's
// tests (a control plane takes a while to start on a small machine).
type testEnv struct {
	// cfg is the administrator's configuration; client its client.
	cfg    *rest.Config
	client kubernetes.Interface
	authz  *authzWebhook

	sa   *corev1.ServiceAccount
	pod  *corev1.Pod
	node *corev1.Node
	// Tokens of sa: for audience "buildguard", unbound and bound to pod;
	// for audience "elsewhere".
	token, bound, elsewhere string
}

// env is the package's, started by TestMain unless the tests are short;
// envErr is why it could not be.
var (
	env    *testEnv
	envErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	stop := func() {}
	if !testing.Short() {
		var s func()
		if env, s, envErr = startEnv(); envErr == nil {
			stop = s
		}
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

// sharedEnv returns the package's control plane.
func sharedEnv(t *testing.T) *testEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver")
	}
	if envErr != nil {
		t.Fatalf("control plane: %v", envErr)
	}
	return env
}

func startEnv() (_ *testEnv, stop func(), err error) {
	dir, err := os.MkdirTemp("", "kubeauth-test-")
	if err != nil {
		return nil, nil, err
	}
	authz := &authzWebhook{seen: map[string]authorizationv1.SubjectAccessReviewSpec{}}
	srv := httptest.NewServer(authz)
	var cp *e2e.ControlPlane
	stop = func() {
		if cp != nil {
			cp.Stop()
		}
		srv.Close()
		os.RemoveAll(dir)
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	authzConfig := filepath.Join(dir, "authz-webhook.kubeconfig")
	if err := os.WriteFile(authzConfig, []byte(webhookKubeconfig(srv.URL)), 0o600); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp, err = e2e.StartControlPlaneWith(ctx, dir, e2e.ControlPlaneOptions{
		Tokens: []string{staticToken + `,alice,alice-uid,"dev,ops"`},
		APIServerArgs: []string{
			"--authorization-mode=RBAC,Webhook",
			"--authorization-webhook-config-file=" + authzConfig,
			"--authorization-webhook-version=v1",
			// Every review reaches the webhook, which records it.
			"--authorization-webhook-cache-authorized-ttl=0s",
			"--authorization-webhook-cache-unauthorized-ttl=0s",
		},
	})
	if err != nil {
		return nil, nil, err
	}
	e, err := setUpEnv(ctx, cp, authz)
	if err != nil {
		return nil, nil, err
	}
	return e, stop, nil
}

func webhookKubeconfig(url string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: authz
  cluster:
    server: %s
users:
- name: kube-apiserver
contexts:
- name: authz
  context:
    cluster: authz
    user: kube-apiserver
current-context: authz
`, url)
}

func setUpEnv(ctx context.Context, cp *e2e.ControlPlane, authz *authzWebhook) (*testEnv, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = -1, 0
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	e := &testEnv{cfg: cfg, client: c, authz: authz}
	for _, n := range []string{ns, "shop"} {
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	if e.sa, err = c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	if e.node, err = c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-1"}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	e.pod, err = c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		Spec: corev1.PodSpec{NodeName: e.node.Name, ServiceAccountName: sa, AutomountServiceAccountToken: ptr(false),
			// No kubelet runs: the node goes NotReady, and without this
			// the pod would be evicted after 5 minutes, its token with it.
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{{Name: "agent", Image: "agent:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	for _, t := range []struct {
		dst      *string
		audience string
		pod      *corev1.Pod
	}{
		{&e.token, "buildguard", nil},
		{&e.bound, "buildguard", e.pod},
		{&e.elsewhere, "elsewhere", nil},
	} {
		req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{t.audience}, ExpirationSeconds: ptr(int64(3600))}}
		if t.pod != nil {
			req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: t.pod.Name, UID: t.pod.UID}
		}
		tr, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
		if err != nil {
			return nil, err
		}
		*t.dst = tr.Status.Token
	}

	// Exception writers: alice in namespace shop, the group
	// exception-admins everywhere.
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "exception-writer"}, Rules: []rbacv1.PolicyRule{{
		Verbs: []string{"create"}, APIGroups: []string{"buildguard.dev"}, Resources: []string{"buildpolicyexceptions"}}}}
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	roleRef := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name}
	if _, err := c.RbacV1().RoleBindings("shop").Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "alice-writes-exceptions"}, RoleRef: roleRef,
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "alice"}},
	}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "exception-admins"}, RoleRef: roleRef,
		Subjects: []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "exception-admins"}},
	}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	return e, nil
}

func ptr[T any](v T) *T { return &v }

// authzWebhook is the API server's second authorizer, after RBAC: it
// records the SubjectAccessReviews RBAC had no opinion on, denies
// webhookDenied, fails for webhookBroken and has no opinion on the rest.
type authzWebhook struct {
	mu   sync.Mutex
	seen map[string]authorizationv1.SubjectAccessReviewSpec // by user
}

func (a *authzWebhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var sar authorizationv1.SubjectAccessReview
	if err := json.NewDecoder(r.Body).Decode(&sar); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	a.seen[sar.Spec.User] = sar.Spec
	a.mu.Unlock()
	switch sar.Spec.User {
	case webhookBroken:
		// A 4xx: the API server does not retry it.
		http.Error(w, "the test webhook is broken", http.StatusBadRequest)
		return
	case webhookDenied:
		sar.Status = authorizationv1.SubjectAccessReviewStatus{Denied: true, Reason: "the test webhook denies it"}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(sar)
}

// spec is the last review the webhook saw of user.
func (a *authzWebhook) spec(user string) (authorizationv1.SubjectAccessReviewSpec, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.seen[user]
	return s, ok
}
