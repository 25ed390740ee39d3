package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"buildguard.dev/buildguard/policy"
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

// digestsReference is the digests annotation as json.Marshal writes the
// map container → digest.
func digestsReference(t testing.TB, images []policy.ImageVerdict) string {
	m := map[string]string{}
	for _, iv := range images {
		if iv.Digest != "" {
			m[iv.Container] = iv.Digest
		}
	}
	if len(m) == 0 {
		return ""
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDigestsAnnotation(t *testing.T) {
	d := func(c, digest string) policy.ImageVerdict { return policy.ImageVerdict{Container: c, Digest: digest} }
	many := make([]policy.ImageVerdict, 20)
	for i := range many {
		many[i] = d(fmt.Sprint("c", 19-i), fmt.Sprint("sha256:", i))
	}
	for _, tc := range []struct {
		name   string
		images []policy.ImageVerdict
	}{
		{"none", nil},
		{"no digests", []policy.ImageVerdict{d("app", ""), d("side", "")}},
		{"one", []policy.ImageVerdict{d("app", "sha256:ab")}},
		{"unsorted, one without", []policy.ImageVerdict{d("web", "sha256:ab"), d("init", "sha256:cd"), d("side", ""), d("app", "sha256:ef")}},
		{"a name twice: the last wins", []policy.ImageVerdict{d("app", "sha256:1"), d("side", "sha256:2"), d("app", "sha256:3"), d("app", "sha256:4")}},
		{"escaped", []policy.ImageVerdict{d("<a&b>", "\u2028\"\\"), d("", "sha256:empty name")}},
		{"more than the buffers hold", many},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := digestsAnnotation(tc.images), digestsReference(t, tc.images); got != want {
				t.Errorf("digestsAnnotation = %q, want %q (json.Marshal)", got, want)
			}
		})
	}
}

// FuzzDigestsAnnotation: the digests annotation is json.Marshal's, byte
// for byte, whatever the containers are named.
func FuzzDigestsAnnotation(f *testing.F) {
	f.Add("app", "sha256:ab", "side", "sha256:cd", "app", "sha256:ef")
	f.Add("<&>", "\xff", "", "", "\u2028", "x")
	f.Fuzz(func(t *testing.T, c1, d1, c2, d2, c3, d3 string) {
		images := []policy.ImageVerdict{{Container: c1, Digest: d1}, {Container: c2, Digest: d2}, {Container: c3, Digest: d3}}
		if got, want := digestsAnnotation(images), digestsReference(t, images); got != want {
			t.Errorf("digestsAnnotation = %q, want %q (json.Marshal)", got, want)
		}
	})
}
