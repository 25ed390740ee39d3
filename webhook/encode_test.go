package webhook

import (
	"bytes"
	"encoding/json"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// reference is what encoding/json's Encoder writes for the answer.
func reference(t testing.TB, tm metav1.TypeMeta, r *admissionv1.AdmissionResponse) []byte {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(&admissionv1.AdmissionReview{TypeMeta: tm, Response: r}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var reviewType = metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}

func TestAppendReview(t *testing.T) {
	pt := admissionv1.PatchTypeJSONPatch
	for _, tc := range []struct {
		name string
		tm   metav1.TypeMeta
		r    *admissionv1.AdmissionResponse
		ok   bool
	}{
		{"allowed", reviewType, allowed("u1"), true},
		{"no type meta", metav1.TypeMeta{}, allowed("u1"), true},
		{"annotations and warnings", reviewType, &admissionv1.AdmissionResponse{UID: "u<2>&", Allowed: true,
			AuditAnnotations: map[string]string{"verdict": "warn", "mode": "enforce", "digests": `{"app":"sha256:ab","side":"sha256:cd"}`, "rules": "fresh-image"},
			Warnings:         []string{"buildguard: app: [fresh-image] created 10s before admission, minAge 1h", "tab\there, quote \" and \\ and \u2028 and \x01 and \xff"}}, true},
		{"not allowed, no status", reviewType, &admissionv1.AdmissionResponse{UID: "u3"}, true},
		{"denied", reviewType, errored("u4", 403, errTest("no")), false},
		{"patched", reviewType, &admissionv1.AdmissionResponse{UID: "u5", Allowed: true, Patch: []byte("[]"), PatchType: &pt}, false},
		{"nil", reviewType, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := appendReview(nil, tc.tm, tc.r)
			if ok != tc.ok {
				t.Fatalf("appendReview ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if want := reference(t, tc.tm, tc.r); !bytes.Equal(got, want) {
				t.Errorf("appendReview =\n%s\nwant (encoding/json)\n%s", got, want)
			}
		})
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }

// FuzzAppendReview: the hand-written encoding is encoding/json's, byte
// for byte, whatever the strings hold.
func FuzzAppendReview(f *testing.F) {
	f.Add("uid", "verdict", "allow", "warning", true)
	f.Add("<&>", "k\u2028", "\x00\x1f\x7f", "\xff\xfe bad utf-8 \u2029", false)
	f.Add(`"\`, "", "é ü 日本", "\b\f\n\r\t", true)
	f.Fuzz(func(t *testing.T, uid, key, value, warning string, allow bool) {
		r := &admissionv1.AdmissionResponse{UID: types.UID(uid), Allowed: allow,
			AuditAnnotations: map[string]string{key: value, "mode": "enforce"}, Warnings: []string{warning, value}}
		got, ok := appendReview(nil, reviewType, r)
		if !ok {
			t.Fatal("appendReview refused a response without status or patch")
		}
		if want := reference(t, reviewType, r); !bytes.Equal(got, want) {
			t.Errorf("appendReview =\n%q\nwant (encoding/json)\n%q", got, want)
		}
	})
}
