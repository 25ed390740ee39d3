package ingest_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"buildguard.dev/buildguard/e2e"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/ingest"
)

const (
	agentUser     = "system:serviceaccount:buildguard-system:buildguard-node-agent"
	forwarderUser = "system:serviceaccount:buildguard-system:falcosidekick"
	ns            = "buildguard-system"
)

// testEnv is a real control plane with the reporters' service accounts,
// nodes, pods and tokens. One is shared by the package's tests (a
// control plane takes a while to start on a small machine); see
// sharedEnv.
type testEnv struct {
	cp *e2e.ControlPlane
	// admin is a client of the control plane's administrator, without a
	// rate limit, for setting things up.
	admin kubernetes.Interface
	// cfg is the administrator's configuration, for the clients under test.
	cfg *rest.Config

	// agentToken is the node agent's, bound to no pod; bound7 and bound8
	// are bound to agent pods on worker-7 and worker-8.
	agentToken, bound7, bound8 string
	// forwarderToken is falcosidekick's, bound to no pod; forwarderBound
	// is bound to its pod, which runs on worker-7.
	forwarderToken, forwarderBound string
	wrongAudience, intruderToken   string
}

var (
	envOnce sync.Once
	env     *testEnv
	envErr  error
	envStop func()
)

func TestMain(m *testing.M) {
	code := m.Run()
	if envStop != nil {
		envStop()
	}
	os.Exit(code)
}

// sharedEnv starts the package's control plane the first time it is
// called; TestMain stops it.
func sharedEnv(tb testing.TB) *testEnv {
	tb.Helper()
	envOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ingest-test-")
		if err != nil {
			envErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cp, err := e2e.StartControlPlane(ctx, dir)
		envStop = func() {
			if cp != nil {
				cp.Stop()
			}
			os.RemoveAll(dir)
		}
		if err != nil {
			envErr = err
			return
		}
		env, envErr = setUpEnv(ctx, cp)
	})
	if envErr != nil {
		tb.Fatalf("control plane: %v", envErr)
	}
	return env
}

func setUpEnv(ctx context.Context, cp *e2e.ControlPlane) (*testEnv, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = -1, 0 // no client-side rate limit for the set-up
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	e := &testEnv{cp: cp, admin: admin, cfg: cfg}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	for _, sa := range []string{"buildguard-node-agent", "falcosidekick", "intruder"} {
		if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	for _, t := range []struct {
		dst              *string
		sa, audience, on string
	}{
		{&e.agentToken, "buildguard-node-agent", "buildguard", ""},
		{&e.bound7, "buildguard-node-agent", "buildguard", "worker-7"},
		{&e.bound8, "buildguard-node-agent", "buildguard", "worker-8"},
		{&e.forwarderToken, "falcosidekick", "buildguard", ""},
		{&e.forwarderBound, "falcosidekick", "buildguard", "worker-7"},
		{&e.wrongAudience, "buildguard-node-agent", "elsewhere", ""},
		{&e.intruderToken, "intruder", "buildguard", ""},
	} {
		if *t.dst, err = e.token(ctx, t.sa, t.audience, t.on); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// token returns a token of service account sa for audience; with a node,
// bound to a new pod of sa on that node (created, with the node, if need
// be), as the kubelet's projected tokens are.
func (e *testEnv) token(ctx context.Context, sa, audience, node string) (string, error) {
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr(int64(3600))}}
	if node != "" {
		_, err := e.admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return "", err
		}
		pod, err := e.admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: sa + "-" + node + "-"},
			Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
				AutomountServiceAccountToken: ptr(false),
				// No kubelet runs: the node goes NotReady, and without this
				// its pods would be evicted after 5 minutes, their tokens
				// with them. The agent's DaemonSet tolerates everything too.
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Containers:  []corev1.Container{{Name: "agent", Image: "agent:1"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			return "", err
		}
		req.Spec.BoundObjectRef = &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := e.admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token of %s on %q: %w", sa, node, err)
	}
	return tr.Status.Token, nil
}

func ptr[T any](v T) *T { return &v }

// reviewer returns a TokenReviewer as buildguard serve makes it: the
// agent may report for its node, falcosidekick for any. reviews, when
// not nil, counts the TokenReviews sent.
func (e *testEnv) reviewer(tb testing.TB, reviews *atomic.Int64) *ingest.TokenReviewer {
	tb.Helper()
	cfg := rest.CopyConfig(e.cfg)
	cfg.QPS, cfg.Burst = 0, 0 // client-go's defaults, as in buildguard serve's configuration
	if reviews != nil {
		cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				if filepath.Base(r.URL.Path) == "tokenreviews" {
					reviews.Add(1)
				}
				return rt.RoundTrip(r)
			})
		})
	}
	client, err := ingest.NewReviewClient(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	r := &ingest.TokenReviewer{Client: client, Audiences: []string{"buildguard"}, Allowed: []string{agentUser}, Forwarders: []string{forwarderUser}}
	tb.Cleanup(r.Close)
	return r
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// openStore returns a new SQLite store, closed when the test ends.
func openStore(tb testing.TB) *evidence.SQLite {
	tb.Helper()
	s, err := evidence.OpenSQLite(context.Background(), filepath.Join(tb.TempDir(), "evidence.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}
