package webhook_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"buildguard.dev/buildguard/webhook"
)

var digestRE = regexp.MustCompile(`sha256:[0-9a-f]{64}`)

func TestServeHTTPBadInput(t *testing.T) {
	f := newFixture(t, "")
	h := &webhook.Handler{Evaluator: f.handler.Evaluator, MaxBodyBytes: 1 << 10}
	tests := []struct {
		name        string
		method      string
		contentType string
		body        string
		wantCode    int
		want        string
	}{
		{"GET", http.MethodGet, "", "", http.StatusMethodNotAllowed, "use POST"},
		{"empty body", http.MethodPost, "application/json", "", http.StatusBadRequest, "empty body"},
		{"malformed JSON", http.MethodPost, "application/json", `{"apiVersion":`, http.StatusBadRequest, "not an AdmissionReview"},
		{"wrong apiVersion", http.MethodPost, "application/json", `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}`, http.StatusBadRequest, "want admission.k8s.io/v1 AdmissionReview"},
		{"wrong kind", http.MethodPost, "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}`, http.StatusBadRequest, `kind "Pod"`},
		{"no request", http.MethodPost, "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, http.StatusBadRequest, "has no request"},
		{"no uid", http.MethodPost, "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`, http.StatusBadRequest, "has no uid"},
		{"oversized", http.MethodPost, "application/json", `{"apiVersion":"` + strings.Repeat("a", 2<<10) + `"}`, http.StatusRequestEntityTooLarge, "larger than 1024 bytes"},
		{"wrong content type", http.MethodPost, "text/plain", `{}`, http.StatusUnsupportedMediaType, "want application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, "/validate", strings.NewReader(tt.body))
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tt.wantCode || !strings.Contains(w.Body.String(), tt.want) {
				t.Errorf("ServeHTTP(%s) = %d %q, want %d containing %q", tt.name, w.Code, w.Body.String(), tt.wantCode, tt.want)
			}
		})
	}
}

func TestServeHTTPExactJSON(t *testing.T) {
	f := newFixture(t, "")
	obj, gvk := workload("Pod", f.clean)
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  request(t, admissionv1.Create, obj, gvk),
	}
	body, err := json.Marshal(review)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, "/validate", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	f.handler.ServeHTTP(w, r)
	got := digestRE.ReplaceAllString(w.Body.String(), "sha256:D")
	want := `{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","response":{"uid":"0d2d9bd5-8b4e-4a3e-9c2f-7f6b0a1c2d3e","allowed":true,"auditAnnotations":{"digests":"{\"app\":\"sha256:D\"}","mode":"enforce","verdict":"allow"}}}` + "\n"
	if w.Code != http.StatusOK || got != want {
		t.Errorf("ServeHTTP = %d\n%s\nwant 200\n%s", w.Code, got, want)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
}
