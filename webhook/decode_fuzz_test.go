package webhook

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
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
		if (errOnce == nil) != (errTwice == nil) || errOnce != nil && !reflect.DeepEqual(errOnce, errTwice) {
			t.Fatalf("decodeOnce(%q) error = %v, decodeTwice = %v", body, errOnce, errTwice)
		}
		if errOnce != nil {
			return
		}
		if once.typeMeta != twice.typeMeta {
			t.Errorf("decodeOnce(%q) typeMeta = %+v, decodeTwice %+v", body, once.typeMeta, twice.typeMeta)
		}
		req := *twice.req
		req.Object.Raw, req.OldObject.Raw = nil, nil
		if once.once && !reflect.DeepEqual(*once.req, req) {
			t.Errorf("decodeOnce(%q) request = %+v,\ndecodeTwice without its objects %+v", body, *once.req, req)
		}
		w1, o1, r1 := workloadOf(once)
		w2, o2, r2 := workloadOf(twice)
		if !reflect.DeepEqual(w1, w2) || !reflect.DeepEqual(o1, o2) || !reflect.DeepEqual(r1, r2) {
			t.Errorf("workloadOf(%q):\none pass  %+v %+v %+v\ntwo passes %+v %+v %+v", body, w1, o1, r1, w2, o2, r2)
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
