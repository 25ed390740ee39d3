package cluster_test

import (
	"context"
	"fmt"
	"net/http"
	"path"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"buildguard.dev/buildguard/cluster"
	"buildguard.dev/buildguard/e2e"
	"buildguard.dev/buildguard/engine"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestEvents posts Events to a real API server and reads them back.
// Events are written one after the other, in the order they were
// posted: once a marker event posted last is stored, so are the others.
func TestEvents(t *testing.T) {
	_, cfg := e2e.StartTestControlPlane(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// writes counts the Events buildguard creates and updates.
	var writes atomic.Int64
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method != http.MethodGet && (path.Base(r.URL.Path) == "events" || path.Base(path.Dir(r.URL.Path)) == "events") {
				writes.Add(1)
			}
			return rt.RoundTrip(r)
		})
	})
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "shop"
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ev := cluster.NewEvents(client)
	t.Cleanup(ev.Shutdown)

	// eventsOf waits for the events of the workloads named, the last one
	// posted last, until that one is stored.
	markers := 0
	eventsOf := func(t *testing.T, names ...string) []corev1.Event {
		t.Helper()
		markers++
		marker := fmt.Sprintf("marker-%d", markers)
		ev.Event(engine.Workload{Namespace: ns, Kind: "Pod", Name: marker}, "Marker", "posted last")
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
			l, err := admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + marker})
			if err != nil {
				t.Fatal(err)
			}
			if len(l.Items) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the marker event %s was not stored in a minute", marker)
			}
		}
		var out []corev1.Event
		for _, n := range names {
			l, err := admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + n})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, l.Items...)
		}
		return out
	}
	// stored is what a test compares of an Event.
	type stored struct {
		Kind, APIVersion, Name string
		Type, Reason, Message  string
		Component              string
		Count                  int32
	}
	storedOf := func(t *testing.T, es []corev1.Event) []stored {
		t.Helper()
		var out []stored
		for _, e := range es {
			o := e.InvolvedObject
			if o.Namespace != ns || e.Namespace != ns {
				t.Errorf("event %s/%s about %s/%s, want both in %s", e.Namespace, e.Name, o.Namespace, o.Name, ns)
			}
			out = append(out, stored{o.Kind, o.APIVersion, o.Name, e.Type, e.Reason, e.Message, e.Source.Component, e.Count})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		return out
	}

	t.Run("a Warning on the workload, of its kind's apiVersion", func(t *testing.T) {
		kinds := map[string]string{
			"Pod": "v1", "ReplicationController": "v1", "Deployment": "apps/v1", "ReplicaSet": "apps/v1",
			"StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1",
		}
		var names []string
		var want []stored
		for kind, apiVersion := range kinds {
			name := "web-" + kind
			ev.Event(engine.Workload{Namespace: ns, Kind: kind, Name: name}, "ImageDenied", "image of "+kind+" built on a node")
			names = append(names, name)
			want = append(want, stored{kind, apiVersion, name, corev1.EventTypeWarning, "ImageDenied", "image of " + kind + " built on a node", "buildguard", 1})
		}
		sort.Slice(want, func(i, j int) bool { return want[i].Name < want[j].Name })
		if diff := cmp.Diff(want, storedOf(t, eventsOf(t, names...))); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
	})

	t.Run("a repeated event is one Event with a count", func(t *testing.T) {
		w := engine.Workload{Namespace: ns, Kind: "Deployment", Name: "crashloop"}
		for range 3 {
			ev.Event(w, "ImageDenied", "the same message")
		}
		want := []stored{{"Deployment", "apps/v1", "crashloop", corev1.EventTypeWarning, "ImageDenied", "the same message", "buildguard", 3}}
		if diff := cmp.Diff(want, storedOf(t, eventsOf(t, "crashloop"))); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
	})

	t.Run("a flood about one workload is rate-limited", func(t *testing.T) {
		w := engine.Workload{Namespace: ns, Kind: "ReplicaSet", Name: "flood"}
		before := writes.Load()
		for i := range 200 {
			ev.Event(w, "ImageDenied", fmt.Sprintf("message %d", i))
		}
		es := eventsOf(t, "flood")
		// client-go's spam filter lets 25 events about an object through,
		// then one every 5 minutes; its aggregator folds similar ones
		// (the same reason) from the tenth on into one Event with a count.
		const burst = 25
		if got := writes.Load() - before - 1; got != burst { // less the marker's
			t.Errorf("200 events about one workload made %d writes, want %d", got, burst)
		}
		var total int32
		for _, e := range es {
			total += e.Count
		}
		if total != burst || len(es) != 10 {
			t.Errorf("%d Events counting %d, want 10 counting %d", len(es), total, burst)
		}
	})
}
