package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/policysource"
)

func policyObject(name string, generation int64, mode string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.APIVersion,
		"kind":       v1alpha1.KindClusterBuildPolicy,
		"metadata":   map[string]any{"name": name, "generation": generation},
		"spec":       map[string]any{"mode": mode},
	}}
	return u
}

// statusWriters counts the status updates of the shared dynamic client by
// the replica that made them.
type statusWriters struct {
	mu sync.Mutex
	by map[string]int
}

func (w *statusWriters) count(replica string) func() {
	return func() {
		w.mu.Lock()
		w.by[replica]++
		w.mu.Unlock()
	}
}

// countingDynamic is a replica's client on the shared fake objects,
// calling onStatus at each status update it makes.
type countingDynamic struct {
	*dynamicfake.FakeDynamicClient
	onStatus func()
}

func (c *countingDynamic) Resource(gvr schema.GroupVersionResource) dynamic.NamespaceableResourceInterface {
	return countingResource{c.FakeDynamicClient.Resource(gvr), c.onStatus}
}

type countingResource struct {
	dynamic.NamespaceableResourceInterface
	onStatus func()
}

func (r countingResource) UpdateStatus(ctx context.Context, u *unstructured.Unstructured, o metav1.UpdateOptions) (*unstructured.Unstructured, error) {
	r.onStatus()
	return r.NamespaceableResourceInterface.UpdateStatus(ctx, u, o)
}

func (r countingResource) Namespace(ns string) dynamic.ResourceInterface {
	return countingNamespaced{r.NamespaceableResourceInterface.Namespace(ns), r.onStatus}
}

type countingNamespaced struct {
	dynamic.ResourceInterface
	onStatus func()
}

func (r countingNamespaced) UpdateStatus(ctx context.Context, u *unstructured.Unstructured, o metav1.UpdateOptions) (*unstructured.Unstructured, error) {
	r.onStatus()
	return r.ResourceInterface.UpdateStatus(ctx, u, o)
}

func (w *statusWriters) get() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]int{}
	for k, v := range w.by {
		out[k] = v
	}
	return out
}

func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOneStatusWriter runs two replicas on one API (fake clients that
// share their objects): only the replica holding the Lease writes a
// policy's status. When it stops, the other takes the Lease and writes
// the status of a generation the first never saw. Without the Lease both
// replicas write: the overwriting of each other's status that the
// API server reported as "the object has been modified".
func TestOneStatusWriter(t *testing.T) {
	for _, elect := range []bool{false, true} {
		t.Run(fmt.Sprintf("lease=%v", elect), func(t *testing.T) {
			scheme := runtime.NewScheme()
			listKinds := map[schema.GroupVersionResource]string{
				v1alpha1.PolicyResource():    "ClusterBuildPolicyList",
				v1alpha1.ExceptionResource(): "BuildPolicyExceptionList",
			}
			dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, listKinds, policyObject("default", 1, "audit"))
			kube := fake.NewClientset()
			writes := &statusWriters{by: map[string]int{}}

			type replica struct {
				src    *policysource.CRD
				lease  *StatusLease
				cancel context.CancelFunc
				done   chan struct{}
			}
			start := func(name string) *replica {
				ctx, cancel := context.WithCancel(t.Context())
				// Each replica's own client, on the shared objects, so
				// that writes can be told apart.
				client := &countingDynamic{FakeDynamicClient: dyn, onStatus: writes.count(name)}
				r := &replica{src: &policysource.CRD{Client: client}, cancel: cancel, done: make(chan struct{})}
				if elect {
					r.lease = &StatusLease{Client: kube, Namespace: "buildguard-system", Name: DefaultStatusLease, Identity: name,
						LeaseDuration: 5 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 200 * time.Millisecond}
					r.src.Leading = r.lease.Leading
				}
				ran := make(chan struct{})
				go func() {
					defer close(ran)
					r.src.Run(ctx)
				}()
				eventually(t, name+" synced", func() error {
					if !r.src.Synced() {
						return fmt.Errorf("not synced")
					}
					return nil
				})
				go func() {
					defer close(r.done)
					if r.lease != nil {
						r.lease.Run(ctx, r.src.WriteStatus)
					}
					<-ran
				}()
				return r
			}
			a := start("replica-a")
			eventually(t, "status written", func() error {
				if writes.get()["replica-a"] == 0 {
					return fmt.Errorf("writes %v", writes.get())
				}
				return nil
			})
			b := start("replica-b")
			defer b.cancel()

			// A new generation both replicas see.
			setGeneration(t, dyn, 2, "warn")
			eventually(t, "generation 2 in status", func() error { return observed(t, dyn, 2) })
			time.Sleep(300 * time.Millisecond) // time for a second writer to show
			w := writes.get()
			if !elect {
				if w["replica-b"] == 0 {
					t.Fatalf("without a lease, replica-b wrote no status (%v): the test cannot tell one writer from two", w)
				}
				a.cancel()
				<-a.done
				return
			}
			if w["replica-b"] != 0 {
				t.Fatalf("status writes %v: replica-b wrote while replica-a held the Lease", w)
			}
			if !a.lease.Leading() || b.lease.Leading() {
				t.Fatalf("Leading: a %v, b %v; want a alone", a.lease.Leading(), b.lease.Leading())
			}

			// replica-a goes away (released on cancel); replica-b takes over
			// and writes the status of a generation replica-a never saw.
			a.cancel()
			<-a.done
			setGeneration(t, dyn, 3, "enforce")
			eventually(t, "replica-b writes generation 3", func() error { return observed(t, dyn, 3) })
			if !b.lease.Leading() {
				t.Errorf("replica-b does not lead after replica-a left")
			}
			if w := writes.get(); w["replica-b"] == 0 {
				t.Errorf("status writes %v: want replica-b's", w)
			}
		})
	}
}

func setGeneration(t *testing.T, dyn *dynamicfake.FakeDynamicClient, gen int64, mode string) {
	t.Helper()
	u, err := dyn.Resource(v1alpha1.PolicyResource()).Get(t.Context(), "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.SetGeneration(gen)
	unstructured.SetNestedField(u.Object, mode, "spec", "mode")
	if _, err := dyn.Resource(v1alpha1.PolicyResource()).Update(t.Context(), u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func observed(t *testing.T, dyn *dynamicfake.FakeDynamicClient, gen int64) error {
	u, err := dyn.Resource(v1alpha1.PolicyResource()).Get(t.Context(), "default", metav1.GetOptions{})
	if err != nil {
		return err
	}
	got, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
	if got != gen {
		return fmt.Errorf("status.observedGeneration %d, want %d", got, gen)
	}
	return nil
}

// TestRaceAsInfo: client-go's leader election logs "Error initially
// creating lease lock" when two replicas start together and the API
// server tells the second the Lease exists; that, and a conflict, is
// logged at info. Other errors stay errors.
func TestRaceAsInfo(t *testing.T) {
	gr := schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}
	tests := []struct {
		err  error
		want string
	}{
		{apierrors.NewAlreadyExists(gr, "buildguard-status"), `"level":"INFO"`},
		{apierrors.NewConflict(gr, "buildguard-status", errors.New("the object has been modified")), `"level":"INFO"`},
		{apierrors.NewForbidden(gr, "buildguard-status", errors.New("no")), `"level":"ERROR"`},
		{errors.New("connection refused"), `"level":"ERROR"`},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		log := logr.FromSlogHandler(raceAsInfo{slog.NewJSONHandler(&b, nil)}).WithValues("lock", "buildguard-system/buildguard-status")
		log.Error(tt.err, "Error initially creating lease lock")
		if !strings.Contains(b.String(), tt.want) || !strings.Contains(b.String(), `"lock":"buildguard-system/buildguard-status"`) {
			t.Errorf("Error(%v) logged %s, want %s and the lock", tt.err, b.String(), tt.want)
		}
	}
}
