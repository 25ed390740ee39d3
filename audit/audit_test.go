package audit_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

var now = time.Date(2026, 12, 2, 3, 15, 0, 0, time.UTC)

type nsLabels map[string]map[string]string

func (l nsLabels) Labels(_ context.Context, ns string) (map[string]string, error) { return l[ns], nil }

// newEngine judges with a policy that allows only reg's acme/
// repositories and wants images at least 10 minutes old; the namespace
// "audited" is in audit mode.
func newEngine(t testing.TB, reg *testregistry.Registry, clock *clocktest.Clock, opts ...registry.Option) *engine.Engine {
	t.Helper()
	p, err := policy.Compile(policy.Spec{Registries: policy.Registries{Allow: []string{reg.Host + "/acme/*"}, Insecure: []string{"127.0.0.1:*"}}})
	if err != nil {
		t.Fatal(err)
	}
	return &engine.Engine{
		Policies:   engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver:   registry.New(append([]registry.Option{registry.WithTransport(http.DefaultTransport), registry.WithClock(clock)}, opts...)...),
		Clock:      clock,
		Namespaces: nsLabels{"audited": {engine.ModeLabel: "audit"}},
	}
}

func meta(ns, name string, owner types.UID) metav1.ObjectMeta {
	m := metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name)}
	if owner != "" {
		yes := true
		m.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Owner", Name: "owner", UID: owner, Controller: &yes}}
	}
	return m
}

func uid(ns, name string) types.UID { return types.UID(ns + "-" + name) }

func spec(images ...string) corev1.PodSpec {
	var s corev1.PodSpec
	for i, img := range images {
		s.Containers = append(s.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: img, ImagePullPolicy: corev1.PullIfNotPresent})
	}
	return s
}

func template(images ...string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{Spec: spec(images...)}
}

func pod(ns, name string, owner types.UID, phase corev1.PodPhase, images ...string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: meta(ns, name, owner), Spec: spec(images...), Status: corev1.PodStatus{Phase: phase}}
}

func replicaSet(ns, name string, owner types.UID, replicas int32, images ...string) *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{ObjectMeta: meta(ns, name, owner),
		Spec: appsv1.ReplicaSetSpec{Replicas: &replicas, Template: template(images...)}, Status: appsv1.ReplicaSetStatus{Replicas: replicas}}
}

func job(ns, name string, owner types.UID, active int32, images ...string) *batchv1.Job {
	return &batchv1.Job{ObjectMeta: meta(ns, name, owner), Spec: batchv1.JobSpec{Template: template(images...)}, Status: batchv1.JobStatus{Active: active}}
}

// cluster is a cluster with workloads of every kind, some owned by
// others.
type cluster struct {
	objects        []runtime.Object
	old, fresh     string
	debug, tool    string
	wantJudged     map[string]string // namespace/Kind/name → verdict
	wantCovered    int
	wantInactive   int
	wantRuleCounts map[string][2]int // rule → workloads, images
}

func newCluster(t testing.TB, reg *testregistry.Registry) cluster {
	c := cluster{
		old:   reg.Host + "/acme/old:1",
		fresh: reg.Host + "/acme/fresh:1",
		debug: "evil.example/debug:1",
		tool:  "evil.example/tool:1",
	}
	reg.Push(t, "acme/old:1", testregistry.Build(t, testregistry.Image{Created: now.Add(-48 * time.Hour)}))
	reg.Push(t, "acme/fresh:1", testregistry.Build(t, testregistry.Image{Created: now.Add(-time.Minute)}))
	// The API server mounts the service account's token into every Pod,
	// not into its template: no rule reads it, it changes nothing.
	tokenMounted := pod("shop", "web-1-a", uid("shop", "web-1"), corev1.PodRunning, c.old)
	tokenMounted.Spec.Volumes = []corev1.Volume{{Name: "kube-api-access-x1", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}}}
	tokenMounted.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "kube-api-access-x1", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount"}}
	// A mutating webhook injected a sidecar into the pods of "mesh".
	sidecar := func(name string) *corev1.Pod {
		return pod("shop", name, uid("shop", "mesh-1"), corev1.PodRunning, c.old, "evil.example/proxy:1")
	}
	ephemeral := pod("shop", "web-1-c", uid("shop", "web-1"), corev1.PodRunning, c.old)
	ephemeral.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger", Image: c.debug}}}
	c.objects = []runtime.Object{
		&appsv1.Deployment{ObjectMeta: meta("shop", "web", ""), Spec: appsv1.DeploymentSpec{Template: template(c.old)}},
		replicaSet("shop", "web-1", uid("shop", "web"), 3, c.old),
		tokenMounted,
		pod("shop", "web-1-b", uid("shop", "web-1"), corev1.PodPending, c.old),
		ephemeral, // kubectl debug added an image the Deployment does not run
		// An old ReplicaSet kept for rollbacks runs nothing; a new one
		// half rolled out runs what the Deployment will stop running.
		replicaSet("shop", "web-0", uid("shop", "web"), 0, c.fresh),
		replicaSet("shop", "web-2", uid("shop", "web"), 1, c.fresh),
		pod("shop", "web-2-a", uid("shop", "web-2"), corev1.PodRunning, c.fresh),
		pod("shop", "debug", "", corev1.PodRunning, c.tool),
		&appsv1.Deployment{ObjectMeta: meta("shop", "mesh", ""), Spec: appsv1.DeploymentSpec{Template: template(c.old)}},
		replicaSet("shop", "mesh-1", uid("shop", "mesh"), 2, c.old),
		sidecar("mesh-1-a"),
		sidecar("mesh-1-b"),
		pod("shop", "orphan", "deleted-owner", corev1.PodRunning, c.old),
		&batchv1.CronJob{ObjectMeta: meta("batch", "nightly", ""), Spec: batchv1.CronJobSpec{JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: template(c.old)}}}},
		job("batch", "nightly-1", uid("batch", "nightly"), 1, c.old),
		pod("batch", "nightly-1-x", uid("batch", "nightly-1"), corev1.PodRunning, c.old),
		job("batch", "nightly-0", uid("batch", "nightly"), 0, c.fresh), // from an older template, finished
		pod("batch", "nightly-0-x", uid("batch", "nightly-0"), corev1.PodSucceeded, c.fresh),
		&appsv1.StatefulSet{ObjectMeta: meta("batch", "db", ""), Spec: appsv1.StatefulSetSpec{Template: template(c.old)}},
		&appsv1.DaemonSet{ObjectMeta: meta("batch", "agent", ""), Spec: appsv1.DaemonSetSpec{Template: template(c.old)}},
		&corev1.ReplicationController{ObjectMeta: meta("batch", "legacy", ""), Spec: corev1.ReplicationControllerSpec{Template: &corev1.PodTemplateSpec{Spec: spec(c.old)}}},
		pod("audited", "canary", "", corev1.PodRunning, c.fresh),
	}
	c.wantJudged = map[string]string{
		"shop/Deployment/web":                "allow",
		"shop/Pod/web-1-c":                   "would-deny",
		"shop/ReplicaSet/web-2":              "would-deny",
		"shop/Pod/debug":                     "would-deny",
		"shop/Deployment/mesh":               "allow",
		"shop/Pod/mesh-1-a":                  "would-deny",
		"shop/Pod/orphan":                    "allow",
		"batch/CronJob/nightly":              "allow",
		"batch/StatefulSet/db":               "allow",
		"batch/DaemonSet/agent":              "allow",
		"batch/ReplicationController/legacy": "allow",
		"audited/Pod/canary":                 "would-deny",
	}
	c.wantCovered = 8  // web-1, web-1-a, web-1-b, web-2-a, nightly-1, nightly-1-x, mesh-1, mesh-1-b
	c.wantInactive = 3 // web-0, nightly-0, nightly-0-x
	c.wantRuleCounts = map[string][2]int{"fresh-image": {2, 1}, "unapproved-registry": {3, 3}}
	return c
}

func TestScanJudgesEachWorkloadOnce(t *testing.T) {
	reg := testregistry.New(t)
	c := newCluster(t, reg)
	clock := clocktest.New(now)
	store, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	var progress []audit.Progress
	s := &audit.Scanner{
		Client:    fake.NewClientset(c.objects...),
		Evaluator: newEngine(t, reg, clock),
		Recorder:  store,
		Clock:     clock,
		PageSize:  2,
		Progress:  func(p audit.Progress) { progress = append(progress, p) },
	}
	r, err := s.Scan(t.Context())
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	got := map[string]string{}
	for _, w := range r.Workloads {
		got[w.Namespace+"/"+w.Kind+"/"+w.Name] = w.Verdict
		if w.Error != "" || w.RecordError != "" {
			t.Errorf("%s/%s: error %q, record error %q", w.Namespace, w.Name, w.Error, w.RecordError)
		}
	}
	if diff := cmp.Diff(c.wantJudged, got); diff != "" {
		t.Errorf("judged (-want +got):\n%s", diff)
	}
	// What each rule found is kept, with the container and image it is
	// about, for policy reports.
	type found struct {
		rule, container, kind, image string
		denies                       bool
	}
	wantFound := map[string][]found{
		"shop/Pod/web-1-c":      {{"unapproved-registry", "debugger", "ephemeralContainer", c.debug, true}},
		"shop/ReplicaSet/web-2": {{"fresh-image", "c0", "container", c.fresh, true}},
		"shop/Pod/mesh-1-a":     {{"unapproved-registry", "c1", "container", "evil.example/proxy:1", true}},
		"audited/Pod/canary":    {{"fresh-image", "c0", "container", c.fresh, true}},
		"batch/CronJob/nightly": nil,
	}
	for _, w := range r.Workloads {
		want, ok := wantFound[w.Namespace+"/"+w.Kind+"/"+w.Name]
		if !ok {
			continue
		}
		var gotFound []found
		for _, f := range w.Findings {
			gotFound = append(gotFound, found{f.Rule, f.Container, f.ContainerKind, f.Image, f.Denies})
			if f.Message == "" || f.Severity == "" || f.Action != "deny" {
				t.Errorf("%s/%s: finding %+v: want a message, a severity and the deny action", w.Namespace, w.Name, f)
			}
		}
		if diff := cmp.Diff(want, gotFound, cmp.AllowUnexported(found{})); diff != "" {
			t.Errorf("%s/%s/%s findings (-want +got):\n%s", w.Namespace, w.Kind, w.Name, diff)
		}
	}
	if r.Listed != len(c.objects) || r.Covered != c.wantCovered || r.Inactive != c.wantInactive {
		t.Errorf("listed %d, covered %d, inactive %d; want %d, %d, %d", r.Listed, r.Covered, r.Inactive, len(c.objects), c.wantCovered, c.wantInactive)
	}
	wantTotals := audit.Counts{Workloads: 12, Images: 5, Allow: 7, WouldDeny: 5}
	if r.Totals != wantTotals {
		t.Errorf("totals %+v, want %+v", r.Totals, wantTotals)
	}
	wantNS := []audit.NamespaceSummary{
		{Namespace: "audited", Counts: audit.Counts{Workloads: 1, Images: 1, WouldDeny: 1}},
		{Namespace: "batch", Counts: audit.Counts{Workloads: 4, Images: 1, Allow: 4}},
		{Namespace: "shop", Counts: audit.Counts{Workloads: 7, Images: 5, Allow: 3, WouldDeny: 4}},
	}
	if diff := cmp.Diff(wantNS, r.ByNamespace); diff != "" {
		t.Errorf("by namespace (-want +got):\n%s", diff)
	}
	var rules []string
	for _, rs := range r.ByRule {
		rules = append(rules, rs.Rule)
		want, ok := c.wantRuleCounts[rs.Rule]
		if !ok || rs.Workloads != want[0] || rs.Images != want[1] || rs.WouldDeny != want[0] || rs.Warn != 0 {
			t.Errorf("rule %+v, want %d workloads, %d images, all would-deny", rs, want[0], want[1])
		}
	}
	if !slices.Equal(rules, []string{"fresh-image", "unapproved-registry"}) {
		t.Errorf("rules %q", rules)
	}
	last := progress[len(progress)-1]
	if last.Listed != len(c.objects) || last.Total != 12 || last.Done != 12 || last.WouldDeny != 5 {
		t.Errorf("last progress %+v", last)
	}

	// Every verdict is a record; the would-denies are found as the
	// denials command asks for them.
	ds, err := store.Decisions(t.Context(), evidence.DecisionQuery{Verdicts: []string{"would-deny"}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range ds {
		names = append(names, d.Namespace+"/"+d.Kind+"/"+d.Name)
		if d.Operation != "SCAN" || d.User != "buildguard-audit" || !strings.HasSuffix(d.ID, "/scan-20261202T031500Z") || !d.Time.Equal(now) {
			t.Errorf("record %+v: want operation SCAN, user buildguard-audit, ID <uid>/scan-20261202T031500Z, time %s", d, now)
		}
	}
	slices.Sort(names)
	if want := []string{"audited/Pod/canary", "shop/Pod/debug", "shop/Pod/mesh-1-a", "shop/Pod/web-1-c", "shop/ReplicaSet/web-2"}; !slices.Equal(names, want) {
		t.Errorf("would-deny records %q, want %q", names, want)
	}
	d, err := store.Decision(t.Context(), string(uid("shop", "web-2"))+"/scan-20261202T031500Z")
	if err != nil {
		t.Fatal(err)
	}
	if d.Mode != "enforce" || !slices.Equal(d.Rules, []string{"fresh-image"}) || !strings.Contains(string(d.Images), `"digest":"sha256:`) {
		t.Errorf("record of web-2: mode %q, rules %q, images %s", d.Mode, d.Rules, d.Images)
	}
	all, err := store.Decisions(t.Context(), evidence.DecisionQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 12 {
		t.Errorf("%d records, want one per judged workload: 12", len(all))
	}

	// A second scan is a second set of records, not the first one again.
	clock.Advance(6 * time.Hour)
	if _, err := s.Scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	if all, err = store.Decisions(t.Context(), evidence.DecisionQuery{}); err != nil || len(all) != 24 {
		t.Errorf("after a second scan: %d records (%v), want 24", len(all), err)
	}
}

func TestScanNamespaces(t *testing.T) {
	reg := testregistry.New(t)
	c := newCluster(t, reg)
	clock := clocktest.New(now)
	s := &audit.Scanner{Client: fake.NewClientset(c.objects...), Evaluator: newEngine(t, reg, clock), Clock: clock,
		Namespaces: []string{"batch", "audited", "batch"}}
	r, err := s.Scan(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range r.Workloads {
		got = append(got, w.Namespace+"/"+w.Name)
		if w.Decision != "" {
			t.Errorf("%s recorded as %s without a recorder", w.Name, w.Decision)
		}
	}
	want := []string{"audited/canary", "batch/nightly", "batch/agent", "batch/legacy", "batch/db"}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("judged %q, want %q", got, want)
	}

	s = &audit.Scanner{Client: fake.NewClientset(c.objects...), Evaluator: newEngine(t, reg, clock), Clock: clock,
		ExcludeNamespaces: []string{"shop", "kube-system"}}
	if r, err = s.Scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, w := range r.Workloads {
		got = append(got, w.Namespace+"/"+w.Name)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) || r.Excluded != 14 || r.Listed != len(c.objects) {
		t.Errorf("excluding shop: judged %q, %d excluded of %d listed; want %q, 14 of %d", got, r.Excluded, r.Listed, want, len(c.objects))
	}
}

// pagedPods makes the fake clientset page pod lists as the API server
// does, and lets the continue token of the second page expire once.
func pagedPods(cs *fake.Clientset, expireOnce bool) *[]metav1.ListOptions {
	var calls []metav1.ListOptions
	cs.PrependReactor("list", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		o := a.(k8stesting.ListActionImpl).ListOptions
		calls = append(calls, o)
		if expireOnce && o.Continue == "2" {
			expireOnce = false
			return true, nil, apierrors.NewResourceExpired("continue token expired")
		}
		obj, err := cs.Tracker().List(corev1.SchemeGroupVersion.WithResource("pods"), corev1.SchemeGroupVersion.WithKind("Pod"), a.GetNamespace())
		if err != nil {
			return true, nil, err
		}
		all := obj.(*corev1.PodList)
		slices.SortFunc(all.Items, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
		from := 0
		if o.Continue != "" {
			fmt.Sscan(o.Continue, &from)
		}
		to := min(len(all.Items), from+int(o.Limit))
		page := &corev1.PodList{Items: all.Items[from:to]}
		if to < len(all.Items) {
			page.Continue = fmt.Sprint(to)
		}
		return true, page, nil
	})
	return &calls
}

func TestScanPages(t *testing.T) {
	for _, expire := range []bool{false, true} {
		t.Run(fmt.Sprintf("expire=%v", expire), func(t *testing.T) {
			reg := testregistry.New(t)
			var objs []runtime.Object
			for i := range 5 {
				objs = append(objs, pod("shop", fmt.Sprintf("p%d", i), "", corev1.PodRunning, "evil.example/x:1"))
			}
			cs := fake.NewClientset(objs...)
			calls := pagedPods(cs, expire)
			clock := clocktest.New(now)
			s := &audit.Scanner{Client: cs, Evaluator: newEngine(t, reg, clock), Clock: clock, PageSize: 2}
			r, err := s.Scan(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if r.Listed != 5 || r.Totals.Workloads != 5 || r.Totals.WouldDeny != 5 {
				t.Errorf("listed %d, totals %+v; want 5 pods, all would-deny", r.Listed, r.Totals)
			}
			want := []string{"", "2", "4"}
			if expire {
				want = []string{"", "2", "", "2", "4"}
			}
			var got []string
			for _, c := range *calls {
				got = append(got, c.Continue)
				if c.Limit != 2 {
					t.Errorf("list call with limit %d, want 2", c.Limit)
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("continue tokens %q, want %q", got, want)
			}
		})
	}
}

func TestScanListError(t *testing.T) {
	cs := fake.NewClientset()
	cs.PrependReactor("list", "replicasets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(appsv1.Resource("replicasets"), "", errors.New("RBAC says no"))
	})
	reg := testregistry.New(t)
	clock := clocktest.New(now)
	s := &audit.Scanner{Client: cs, Evaluator: newEngine(t, reg, clock), Namespaces: []string{"shop"}}
	_, err := s.Scan(t.Context())
	var le *audit.ListError
	if !errors.As(err, &le) || le.Kind != "ReplicaSet" || le.Namespace != "shop" || !apierrors.IsForbidden(err) {
		t.Fatalf("Scan = %v, want a *ListError for ReplicaSets in shop wrapping Forbidden", err)
	}
	if want := "listing ReplicaSets in namespace shop: "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q does not start with %q", err, want)
	}
}

// failingRecorder refuses every record.
type failingRecorder struct{}

func (failingRecorder) AddDecision(context.Context, evidence.Decision) error {
	return errors.New("store is down")
}

func TestScanCountsFailures(t *testing.T) {
	reg := testregistry.New(t)
	clock := clocktest.New(now)
	down := testregistry.New(t)
	down.Server.Close() // a registry that cannot be reached
	p, err := policy.Compile(policy.Spec{Registries: policy.Registries{Allow: []string{reg.Host + "/acme/*", down.Host + "/acme/*"}, Insecure: []string{"127.0.0.1:*"}}})
	if err != nil {
		t.Fatal(err)
	}
	reg.Push(t, "acme/old:1", testregistry.Build(t, testregistry.Image{Created: now.Add(-48 * time.Hour)}))
	e := &engine.Engine{
		Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(registry.WithTransport(http.DefaultTransport), registry.WithClock(clock)),
		Clock:    clock, Timeout: 5 * time.Second,
	}
	cs := fake.NewClientset(
		pod("shop", "ok", "", corev1.PodRunning, reg.Host+"/acme/old:1"),
		pod("shop", "unreachable", "", corev1.PodRunning, down.Host+"/acme/old:1"),
	)
	s := &audit.Scanner{Client: cs, Evaluator: e, Recorder: failingRecorder{}, Clock: clock}
	r, err := s.Scan(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := audit.Counts{Workloads: 2, Images: 2, Allow: 1, WouldDeny: 1, Errors: 1, NotRecorded: 2}
	if r.Totals != want {
		t.Errorf("totals %+v, want %+v", r.Totals, want)
	}
	for _, w := range r.Workloads {
		if w.RecordError != "store is down" || w.Decision != "" {
			t.Errorf("%s: record error %q, decision %q", w.Name, w.RecordError, w.Decision)
		}
	}
}

func TestScanStopsWithContext(t *testing.T) {
	reg := testregistry.New(t)
	c := newCluster(t, reg)
	clock := clocktest.New(now)
	ctx, cancel := context.WithCancel(t.Context())
	s := &audit.Scanner{Client: fake.NewClientset(c.objects...), Evaluator: newEngine(t, reg, clock), Clock: clock, Concurrency: 1,
		Progress: func(p audit.Progress) {
			if p.Done == 1 {
				cancel()
			}
		}}
	r, err := s.Scan(ctx)
	if !errors.Is(err, context.Canceled) || r == nil || r.Totals.Workloads >= 12 {
		t.Fatalf("Scan = %v, %+v; want context.Canceled with a partial report", err, r)
	}
}

// labelPolicies governs only objects labeled app=strict, as a
// ClusterBuildPolicy with an objectSelector does.
type labelPolicies struct{ strict *policy.Policy }

func (l labelPolicies) Select(_ string, _, obj map[string]string) (engine.Selection, error) {
	if obj["app"] == "strict" {
		return engine.Selection{Policies: []*policy.Policy{l.strict}}, nil
	}
	return engine.Selection{}, nil
}

// TestScanComparesSelections: an owned object is covered by its owner
// only when its own labels select the same policies. Here the Deployment
// is not governed (no app=strict label) but its ReplicaSet and Pods,
// which carry the template's labels, are: the webhook would deny the
// Pods when they are next created.
func TestScanComparesSelections(t *testing.T) {
	reg := testregistry.New(t)
	clock := clocktest.New(now)
	strict, err := policy.Compile(policy.Spec{Registries: policy.Registries{Allow: []string{reg.Host + "/acme/*"}, Insecure: []string{"127.0.0.1:*"}}})
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, reg, clock)
	e.Policies = labelPolicies{strict: strict}
	tool := "evil.example/tool:1"
	labeled := func(m metav1.ObjectMeta, l map[string]string) metav1.ObjectMeta { m.Labels = l; return m }
	strictLabels := map[string]string{"app": "strict"}
	rs := replicaSet("shop", "web-1", uid("shop", "web"), 2, tool)
	rs.Labels = map[string]string{"app": "strict", "pod-template-hash": "1"}
	podLabels := map[string]string{"app": "strict", "pod-template-hash": "1"}
	p1, p2 := pod("shop", "web-1-a", uid("shop", "web-1"), corev1.PodRunning, tool), pod("shop", "web-1-b", uid("shop", "web-1"), corev1.PodRunning, tool)
	p1.Labels, p2.Labels = podLabels, podLabels
	// A sibling with other labels, under the same policies, is covered
	// by the first; one governed otherwise is not.
	other := pod("shop", "web-1-c", uid("shop", "web-1"), corev1.PodRunning, tool)
	other.Labels = map[string]string{"app": "strict", "pod-template-hash": "1", "canary": "yes"}
	objects := []runtime.Object{
		&appsv1.Deployment{ObjectMeta: meta("shop", "web", ""), Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{
			ObjectMeta: labeled(metav1.ObjectMeta{}, strictLabels), Spec: spec(tool)}}},
		rs, p1, p2, other,
	}
	for _, tc := range []struct {
		name        string
		compare     bool
		wantJudged  map[string]string
		wantCovered int
	}{
		{name: "labels not compared", compare: false,
			wantJudged: map[string]string{"shop/Deployment/web": "allow"}, wantCovered: 4},
		{name: "selections compared", compare: true,
			wantJudged: map[string]string{"shop/Deployment/web": "allow", "shop/ReplicaSet/web-1": "would-deny"}, wantCovered: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &audit.Scanner{Client: fake.NewClientset(objects...), Evaluator: e, Clock: clock}
			if tc.compare {
				s.Policies, s.NamespaceLabels = e.Policies, e.Namespaces
			}
			r, err := s.Scan(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, w := range r.Workloads {
				got[w.Namespace+"/"+w.Kind+"/"+w.Name] = w.Verdict
			}
			if diff := cmp.Diff(tc.wantJudged, got); diff != "" || r.Covered != tc.wantCovered {
				t.Errorf("covered %d, want %d; judged (-want +got):\n%s", r.Covered, tc.wantCovered, diff)
			}
		})
	}
}
