package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/records"
	"buildguard.dev/buildguard/webhook"
)

// serveReview sends req through ServeHTTP and returns the status and the
// response, nil when the body is not an AdmissionReview.
func serveReview(t *testing.T, h http.Handler, req *admissionv1.AdmissionRequest) (int, *admissionv1.AdmissionResponse, string) {
	t.Helper()
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Request: req})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, "/validate?timeout=10s", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var out admissionv1.AdmissionReview
	if json.Unmarshal(w.Body.Bytes(), &out) != nil {
		return w.Code, nil, w.Body.String()
	}
	return w.Code, out.Response, w.Body.String()
}

func policyWithMode(mode string) string {
	return "apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nmode: " + mode + "\nregistries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n"
}

// TestRecordedBeforeAnswer: with a records.Recorder, a deny and a
// would-deny are in the store when the answer is written.
func TestRecordedBeforeAnswer(t *testing.T) {
	for _, mode := range []string{"enforce", "audit"} {
		t.Run(mode, func(t *testing.T) {
			f := newFixture(t, policyWithMode(mode))
			st, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "evidence.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			journal := filepath.Join(t.TempDir(), "journal")
			rec, err := records.New(st, journal)
			if err != nil {
				t.Fatal(err)
			}
			defer rec.Close()
			f.handler.Recorder = rec
			obj, gvk := workload("Pod", f.fresh)
			req := request(t, admissionv1.Create, obj, gvk)
			code, resp, body := serveReview(t, f.handler, req)
			wantVerdict := map[string]string{"enforce": "deny", "audit": "would-deny"}[mode]
			if code != http.StatusOK || resp == nil || resp.AuditAnnotations["verdict"] != wantVerdict {
				t.Fatalf("ServeHTTP = %d %s, want 200 and verdict %s", code, body, wantVerdict)
			}
			// On disk: in the journal (the recorder's own format, looked
			// at as bytes) or already moved to the store.
			var onDisk bool
			for _, p := range []string{journal, journal + ".replay"} {
				b, _ := os.ReadFile(p)
				onDisk = onDisk || bytes.Contains(b, []byte(`"ID":"`+string(req.UID)+`"`))
			}
			if _, err := st.Decision(t.Context(), string(req.UID)); err == nil {
				onDisk = true
			}
			if !onDisk {
				t.Errorf("when the answer was written, the record of %s was neither in the journal nor in the store", req.UID)
			}
			rec.Close()
			d, err := st.Decision(t.Context(), string(req.UID))
			if err != nil || d.Verdict != wantVerdict {
				t.Errorf("the record after Close: %+v, %v; want verdict %s", d, err, wantVerdict)
			}
		})
	}
}

// TestNotRecorded: when the recorder can neither store nor journal a
// denial in time, a deny is still refused (code 500, saying the record is
// missing), a would-deny gets HTTP 503 (the API server's failurePolicy
// decides), and an allow is answered as usual.
func TestNotRecorded(t *testing.T) {
	brokenRecorder := func(t *testing.T) *records.Recorder {
		st, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "evidence.db"))
		if err != nil {
			t.Fatal(err)
		}
		st.Close() // every write fails
		rec, err := records.New(st, filepath.Join(t.TempDir(), "journal"), records.WithMaxJournalBytes(1),
			records.WithBackoff(time.Hour, time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rec.Close() })
		return rec
	}
	t.Run("deny", func(t *testing.T) {
		f := newFixture(t, policyWithMode("enforce"))
		f.handler.Recorder = brokenRecorder(t)
		obj, gvk := workload("Pod", f.fresh)
		code, resp, body := serveReview(t, f.handler, request(t, admissionv1.Create, obj, gvk))
		if code != http.StatusOK || resp == nil || resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusInternalServerError ||
			resp.Result.Reason != metav1.StatusReasonInternalError {
			t.Fatalf("ServeHTTP = %d %s, want 200, allowed false, code 500", code, body)
		}
		for _, want := range []string{"[fresh-image]", "could not record this denial in time; the request is refused all the same", "not recorded"} {
			if !strings.Contains(resp.Result.Message, want) {
				t.Errorf("message %q lacks %q", resp.Result.Message, want)
			}
		}
	})
	t.Run("would-deny", func(t *testing.T) {
		f := newFixture(t, policyWithMode("audit"))
		f.handler.Recorder = brokenRecorder(t)
		f.handler.Metrics = webhook.NewMetrics()
		obj, gvk := workload("Pod", f.fresh)
		req := request(t, admissionv1.Create, obj, gvk)
		code, resp, body := serveReview(t, f.handler, req)
		if code != http.StatusServiceUnavailable || resp != nil || !strings.Contains(body, "could not record its decision (would-deny) in time") {
			t.Errorf("ServeHTTP = %d %q, want 503 without an AdmissionReview", code, body)
		}
		if r := f.handler.Review(t.Context(), req); r.Allowed || r.Result == nil || r.Result.Code != http.StatusServiceUnavailable || r.UID != types.UID(req.UID) {
			t.Errorf("Review = %+v, want refused with code 503", r)
		}
		if got := metricValue(t, f.handler.Metrics, "buildguard_reviews_total", "verdict", "error"); got != 1 {
			t.Errorf("buildguard_reviews_total{verdict=error} = %v, want 1", got)
		}
	})
	t.Run("allow", func(t *testing.T) {
		f := newFixture(t, policyWithMode("enforce"))
		f.handler.Recorder = brokenRecorder(t)
		obj, gvk := workload("Pod", f.clean)
		if code, resp, body := serveReview(t, f.handler, request(t, admissionv1.Create, obj, gvk)); code != http.StatusOK || resp == nil || !resp.Allowed {
			t.Errorf("ServeHTTP(allowed image) = %d %s, want 200 allowed", code, body)
		}
	})
}

// metricValue returns the value of the counter name with label=value.
func metricValue(t *testing.T, m *webhook.Metrics, name, label, value string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return mt.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// orderedRecorder notes, into the same list as the observers, what it
// records.
type orderedRecorder struct{ seen *[]string }

func (r orderedRecorder) RecordDecision(_ context.Context, d decision.Decision) error {
	*r.seen = append(*r.seen, "recorder:"+d.ID)
	return nil
}

// TestObservers: every observer is told, in order and after the
// Recorder, the decision ServeHTTP answered: who asked, the operation,
// the workload and the verdict, stamped by the handler's clock.
func TestObservers(t *testing.T) {
	f := newFixture(t, policyWithMode("audit"))
	at := time.Date(2026, 11, 26, 21, 5, 25, 0, time.UTC)
	var seen []string
	var got []decision.Decision
	observer := func(name string) decision.Observer {
		return decision.ObserverFunc(func(_ context.Context, d decision.Decision) {
			seen = append(seen, name+":"+d.ID)
			got = append(got, d)
		})
	}
	f.handler.Recorder = orderedRecorder{&seen}
	f.handler.Observers = []decision.Observer{observer("first"), observer("second")}
	f.handler.Clock = clocktest.New(at)
	obj, gvk := workload("Deployment", f.fresh)
	req := request(t, admissionv1.Update, obj, gvk)
	req.UserInfo = authnv1.UserInfo{Username: "alice", Groups: []string{"dev"}}
	if code, resp, body := serveReview(t, f.handler, req); code != http.StatusOK || resp == nil || !resp.Allowed {
		t.Fatalf("ServeHTTP = %d %s, want 200 allowed (audit mode)", code, body)
	}
	uid := string(req.UID)
	if want := []string{"recorder:" + uid, "first:" + uid, "second:" + uid}; !slices.Equal(seen, want) {
		t.Errorf("told %v, want %v", seen, want)
	}
	for _, d := range got {
		w := d.Workload
		if d.ID != uid || d.Source != decision.Admission || d.Operation != "UPDATE" || d.User != "alice" || !slices.Equal(d.Groups, []string{"dev"}) ||
			w.Namespace != "shop" || w.Kind != "Deployment" || w.Name != "shop" || w.Spec == nil || !d.Time.Equal(at) ||
			d.Word() != "would-deny" || !slices.Contains(d.Verdict.RuleIDs(policy.ActionDeny), "fresh-image") {
			t.Errorf("observer told %+v, want %s UPDATE of Deployment shop/shop by alice, would-deny for fresh-image at %v", d, uid, at)
		}
	}
}
