package webhook

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"buildguard.dev/buildguard/engine"
)

// onceSeeds are reviews that decode, and some that almost do, for the
// comparison of the one-pass and the two-pass decoding.
var onceSeeds = []string{
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{"name":"p","labels":{"a":"b"},"annotations":{"c":"d"}},"spec":{"containers":[{"name":"a","image":"nginx"}]}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"apps","version":"v1","kind":"Deployment"},"operation":"UPDATE","userInfo":{"username":"system:kube-controller-manager"},"object":{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"X","name":"x","uid":"1","controller":true}]},"spec":{"template":{"metadata":{"annotations":{"x":"y"}},"spec":{"containers":[{"name":"a","image":"a:2"}]}}}},"oldObject":{"spec":{"template":{"spec":{"containers":[{"name":"a","image":"a:1"}]}}}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"batch","version":"v1","kind":"CronJob"},"operation":"UPDATE","object":{"spec":{"jobTemplate":{"spec":{"template":{"spec":{"initContainers":[{"image":"x@sha256:00"}]}}}}}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"ReplicationController"},"operation":"CREATE","object":{"spec":{}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"volumes":[{"name":"s","hostPath":{"path":"/var/run"}}],"containers":[{"image":"a","volumeMounts":[{"name":"s","subPath":"../../"}]}]}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":null}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"UPDATE","object":{},"oldObject":null}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"UPDATE","object":{},"oldObject":{"spec":{"containers":7}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{},"oldObject":{"spec":{"containers":7}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":"a"}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":5}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","resource":5,"object":{}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Secret"},"operation":"CREATE","object":{}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"DELETE","oldObject":{}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"subResource":"status","operation":"UPDATE","object":{}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{}},"response":{"uid":5}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","Request":{"UID":"u","Kind":{"Version":"v1","Kind":"Pod"},"Operation":"CREATE","Object":{"Spec":{"Containers":[{"Image":"a"}]}}}}`,
	`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"version":"v1","kind":"Pod"},"object":{}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`,
	`{"apiVersion":`,
	`null`,
	`[]`,
	``,
}

// exactly makes cmp as strict as reflect.DeepEqual: the two decodings
// must agree in every field, where the Equal methods of these types would
// take 1000m for 1, an instant in any location for the same, and a nil
// field set for an empty one.
var exactly = cmp.Options{
	cmp.AllowUnexported(workloadObject{}),
	cmpopts.EquateComparable(time.Time{}),
	cmp.Comparer(func(a, b resource.Quantity) bool { return reflect.DeepEqual(a, b) }),
	cmp.Comparer(func(a, b metav1.FieldsV1) bool { return reflect.DeepEqual(a, b) }),
}

// FuzzDecodeOnce checks that decoding a review and its objects in one
// pass (what ServeHTTP does) gives the same request, workload, response
// and errors as decoding the review, then its raw objects (DecodeReview,
// then workloadOf).
func FuzzDecodeOnce(f *testing.F) {
	for _, s := range onceSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if duplicateKeys(body) {
			// encoding/json merges a repeated object into the first
			// and replaces a raw one; the API server never repeats a key.
			t.Skip("repeated key")
		}
		once, errOnce := decodeOnce(body)
		twice, errTwice := decodeTwice(body)
		if diff := cmp.Diff(errTwice, errOnce); diff != "" {
			t.Fatalf("decodeOnce(%q) error (-decodeTwice +decodeOnce):\n%s", body, diff)
		}
		if errOnce != nil {
			return
		}
		if once.typeMeta != twice.typeMeta {
			t.Errorf("decodeOnce(%q) typeMeta = %+v, decodeTwice %+v", body, once.typeMeta, twice.typeMeta)
		}
		req := *twice.req
		req.Object.Raw, req.OldObject.Raw = nil, nil
		if diff := cmp.Diff(req, *once.req, exactly); once.once && diff != "" {
			t.Errorf("decodeOnce(%q) request (-decodeTwice without its objects +decodeOnce):\n%s", body, diff)
		}
		type result struct {
			W engine.Workload
			O workloadObject
			R *admissionv1.AdmissionResponse
		}
		var one, two result
		one.W, one.O, one.R = workloadOf(once)
		two.W, two.O, two.R = workloadOf(twice)
		if diff := cmp.Diff(two, one, exactly); diff != "" {
			t.Errorf("workloadOf(%q) (-two passes +one pass):\n%s", body, diff)
		}
	})
}

// TestDecodeOncePasses checks which seeds take the one pass: the
// comparison above would hold too if every body fell back to two. Those
// with a type error anywhere, even in an old object a CREATE ignores, are
// decoded again the two-pass way.
func TestDecodeOncePasses(t *testing.T) {
	once := map[int]bool{0: true, 1: true, 2: true, 3: true, 4: true, 5: true, 6: true, 12: true, 13: true, 14: true, 16: true}
	for i, s := range onceSeeds {
		d, _ := decodeOnce([]byte(s))
		if d.once != once[i] {
			t.Errorf("decodeOnce(%s) took one pass: %v, want %v", s, d.once, once[i])
		}
	}
}

// duplicateKeys reports whether an object in the JSON document body
// repeats a key, as encoding/json matches keys: without regard to case.
func duplicateKeys(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		object bool
		keys   []string
		key    bool // the next token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false // invalid or done: both decoders fail alike
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.key {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].object {
					stack[len(stack)-1].key = true
				}
				continue
			}
			k := tok.(string)
			for _, seen := range top.keys {
				if strings.EqualFold(seen, k) {
					return true
				}
			}
			top.keys = append(top.keys, k)
			top.key = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim(']'), json.Delim('}'):
			stack = stack[:len(stack)-1]
		}
		// A value ended: the enclosing object expects a key next.
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].key = true
		}
	}
}

func TestDuplicateKeys(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{`{"a":1,"b":{"a":2},"c":[{"a":1},{"a":1}]}`, false},
		{`{"a":1,"A":2}`, true},
		{`{"x":[{"a":{},"a":1}]}`, true},
		{`{"a":{"b":1},"c":{"b":1,"d":[1,{"e":1}],"b":2}}`, true},
		{`{"a":`, false},
	} {
		if got := duplicateKeys([]byte(tt.in)); got != tt.want {
			t.Errorf("duplicateKeys(%s) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
