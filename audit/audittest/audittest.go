// Package audittest is the cluster the audit tests scan, shared by the
// tests of the audit package and of the audit command: a clean Deployment
// with its ReplicaSet and Pod, a Pod from an unapproved registry, a Pod
// whose registry is down, and a fresh image in an audit-mode namespace,
// with an engine that judges them at Now on a test clock.
package audittest

import (
	"context"
	"net/http"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

// Now is when the fixture's engine judges: the fresh image was created a
// minute before, the others two days before.
func Now() time.Time { return time.Date(2026, 12, 2, 3, 15, 0, 0, time.UTC) }

// Cluster returns the fake cluster and an engine judging it, which reads
// namespace labels from the cluster.
func Cluster(t testing.TB) (*fake.Clientset, *engine.Engine) {
	reg := testregistry.New(t)
	reg.Push(t, "acme/old:1", testregistry.Build(t, testregistry.Image{Created: Now().Add(-48 * time.Hour)}))
	reg.Push(t, "acme/fresh:1", testregistry.Build(t, testregistry.Image{Created: Now().Add(-time.Minute)}))
	down := testregistry.New(t)
	down.Server.Close()
	old, fresh := reg.Host+"/acme/old:1", reg.Host+"/acme/fresh:1"
	cs := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "audited", Labels: map[string]string{engine.ModeLabel: "audit"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "legacy"}},
		&appsv1.Deployment{ObjectMeta: meta("shop", "web", ""), Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: old}}}}}},
		&appsv1.ReplicaSet{ObjectMeta: meta("shop", "web-1", "shop-web"), Spec: appsv1.ReplicaSetSpec{Template: corev1.PodTemplateSpec{
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: old}}}}}},
		pod("shop", "web-1-a", "shop-web-1", old),
		pod("legacy", "tool", "", "evil.example/tool:1"),
		pod("legacy", "unreachable", "", down.Host+"/acme/old:1"),
		pod("audited", "canary", "", fresh),
	)
	p, err := policy.Compile(policy.Spec{Registries: policy.Registries{Allow: []string{reg.Host + "/acme/*", down.Host + "/acme/*"}, Insecure: []string{"127.0.0.1:*"}}})
	if err != nil {
		t.Fatal(err)
	}
	clock := clocktest.New(Now())
	e := &engine.Engine{
		Policies:   engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver:   registry.New(registry.WithTransport(http.DefaultTransport), registry.WithClock(clock)),
		Namespaces: clientLabels{cs},
		Clock:      clock,
		Timeout:    5 * time.Second,
	}
	return cs, e
}

// clientLabels reads namespaces' labels from the API server.
type clientLabels struct{ client kubernetes.Interface }

func (c clientLabels) Labels(ctx context.Context, ns string) (map[string]string, error) {
	o, err := c.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return o.Labels, nil
}

func meta(ns, name string, owner types.UID) metav1.ObjectMeta {
	m := metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name)}
	if owner != "" {
		yes := true
		m.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "rs", UID: owner, Controller: &yes}}
	}
	return m
}

func pod(ns, name string, owner types.UID, image string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: meta(ns, name, owner), Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}}}
}
