package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// AdmissionLoad creates and deletes Deployments in a namespace, as a
// deploy pipeline does, and counts how admission answered: admitted,
// denied by policy, or failed for any other reason (the webhook not
// reached, timed out, an error of buildguard's).
type AdmissionLoad struct {
	// Allowed and Denied are images the policy admits and denies.
	Allowed, Denied string
	Namespace       string
	// Workers send requests one after the other, Interval apart.
	Workers  int
	Interval time.Duration

	admitted, denied atomic.Int64
	mu               sync.Mutex
	failures         []string
	answered         map[string]time.Time
}

// LoadResult is what an AdmissionLoad counted.
type LoadResult struct {
	Admitted, Denied int64
	Failures         []string // one line each: when and why
	// Answered are the Deployments admission answered (admitted or
	// denied by policy), by name, with the time of the request.
	Answered map[string]time.Time
}

func (r LoadResult) String() string {
	return fmt.Sprintf("%d admissions: %d admitted, %d denied by policy, %d failed for other reasons",
		r.Admitted+r.Denied+int64(len(r.Failures)), r.Admitted, r.Denied, len(r.Failures))
}

// Run runs the load against the API server of kubeconfig until ctx ends.
// Each Deployment has no replicas: the webhook judges it, the node runs
// nothing.
func (l *AdmissionLoad) Run(ctx context.Context, kubeconfig string) (LoadResult, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return LoadResult{}, err
	}
	cfg.QPS, cfg.Burst = 200, 200
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return LoadResult{}, err
	}
	l.answered = map[string]time.Time{}
	var wg sync.WaitGroup
	for w := range max(l.Workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				image := l.Allowed
				if i%2 == 1 {
					image = l.Denied
				}
				l.once(cs, fmt.Sprintf("load-%d-%d", w, i), image, i%2 == 1)
				select {
				case <-ctx.Done():
				case <-time.After(l.Interval):
				}
			}
		}()
	}
	wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return LoadResult{Admitted: l.admitted.Load(), Denied: l.denied.Load(), Failures: append([]string(nil), l.failures...), Answered: l.answered}, nil
}

func (l *AdmissionLoad) once(cs kubernetes.Interface, name, image string, wantDeny bool) {
	zero := int32(0)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: l.Namespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: &zero,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}},
			},
		},
	}
	// A request of its own deadline: one the loop's end cuts short is
	// not counted.
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := time.Now()
	_, err := cs.AppsV1().Deployments(l.Namespace).Create(rctx, d, metav1.CreateOptions{})
	switch {
	case err == nil && !wantDeny:
		l.admitted.Add(1)
		l.answer(name, at)
	case err != nil && wantDeny && isPolicyDenial(err):
		l.denied.Add(1)
		l.answer(name, at)
	case err == nil:
		l.fail(at, fmt.Sprintf("%s (%s) admitted, want denied", name, image))
	default:
		l.fail(at, fmt.Sprintf("%s (%s): %v", name, image, err))
	}
	if err == nil {
		if err := cs.AppsV1().Deployments(l.Namespace).Delete(rctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			l.fail(at, fmt.Sprintf("delete %s: %v", name, err))
		}
	}
}

func (l *AdmissionLoad) answer(name string, at time.Time) {
	l.mu.Lock()
	l.answered[name] = at
	l.mu.Unlock()
}

func (l *AdmissionLoad) fail(at time.Time, s string) {
	l.mu.Lock()
	l.failures = append(l.failures, at.Format("15:04:05.000")+" "+s)
	l.mu.Unlock()
}

// isPolicyDenial reports whether err is buildguard's denial by policy, not
// a failure to ask it.
func isPolicyDenial(err error) bool {
	var se *apierrors.StatusError
	if !errors.As(err, &se) {
		return false
	}
	msg := se.ErrStatus.Message
	return se.ErrStatus.Code == 403 && strings.Contains(msg, `admission webhook "validate.buildguard.dev" denied the request`) &&
		strings.Contains(msg, "buildguard denied")
}
