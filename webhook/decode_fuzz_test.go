package webhook

import (
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"
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
	// 24: what an API server sends: escapes, a last-applied annotation,
	// unknown members of every kind, an update's old object.
	`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"0b4c-\u00e9","kind":{"group":"apps","version":"v1","kind":"Deployment"},"resource":{"group":"apps","version":"v1","resource":"deployments"},"requestKind":{"group":"apps","version":"v1","kind":"Deployment"},"requestResource":{"group":"apps","version":"v1","resource":"deployments"},"name":"web","namespace":"shop","operation":"UPDATE","userInfo":{"username":"alice","uid":"1","groups":["dev","system:authenticated"],"extra":{"scopes.example.com":["a","b\n"],"e":[]}},"object":{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"web","namespace":"shop","uid":"9","generation":2,"creationTimestamp":"2026-12-03T10:00:00Z","labels":{"app":"web"},"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\",\"metadata\":{\"annotations\":{},\"name\":\"web\"}}\n","note":"\u003cb\u003e \u0026 \ud83d\ude00 caf\u00e9 café"},"ownerReferences":[],"managedFields":[{"manager":"kubectl","operation":"Update","apiVersion":"apps/v1","time":"2026-12-03T10:00:00Z","fieldsType":"FieldsV1","fieldsV1":{"f:spec":{"f:replicas":{}}}}]},"spec":{"replicas":3,"revisionHistoryLimit":10,"progressDeadlineSeconds":600,"selector":{"matchLabels":{"app":"web"}},"strategy":{"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":"25%","maxSurge":"25%"}},"template":{"metadata":{"creationTimestamp":null,"labels":{"app":"web"}},"spec":{"volumes":[{"name":"cache","emptyDir":{}},{"name":"sock","hostPath":{"path":"/var/run/docker.sock","type":"Socket"}}],"initContainers":[{"name":"init","image":"busybox:1.36","resources":{}}],"containers":[{"name":"app","image":"registry.example.com/shop/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","args":["--x=1"],"ports":[{"containerPort":8080,"protocol":"TCP"}],"env":[{"name":"A","value":"-1.5e+3"}],"resources":{"limits":{"cpu":"500m"}},"volumeMounts":[{"name":"cache","mountPath":"/cache","readOnly":true,"mountPropagation":"None","recursiveReadOnly":"Disabled","subPath":"a","subPathExpr":""}],"imagePullPolicy":"IfNotPresent","securityContext":{"runAsNonRoot":true,"runAsUser":-0.0e0}}],"ephemeralContainers":[{"name":"debug","image":"busybox"}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"web","imagePullSecrets":[{"name":"pull"}],"securityContext":{},"schedulerName":"default-scheduler"}}},"status":{"observedGeneration":1,"conditions":[{"type":"Available","status":"True"}]}},"oldObject":{"metadata":{"name":"web","ownerReferences":[{"apiVersion":"v1","kind":"X","name":"x","uid":"u","controller":false,"blockOwnerDeletion":true}]},"spec":{"template":{"spec":{"containers":[{"name":"app","image":"web:1"}]}}}},"dryRun":false,"options":{"kind":"UpdateOptions","apiVersion":"meta.k8s.io/v1", "fieldManager":"kubectl"}}}`,
	// 25: nulls where encoding/json leaves a field alone.
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":null,"request":{"uid":"u","kind":{"group":null,"version":"v1","kind":"Pod"},"requestKind":null,"requestResource":null,"resource":null,"userInfo":null,"dryRun":null,"options":null,"operation":"CREATE","object":{"metadata":{"name":null,"labels":null,"annotations":{},"ownerReferences":null},"spec":{"containers":[{"name":"a","image":"a","volumeMounts":null,"imagePullPolicy":null}],"initContainers":null,"volumes":[{"name":"v","hostPath":null}],"imagePullSecrets":[],"template":null,"jobTemplate":null}}}}`,
	// 26: a CronJob's template in whitespace.
	"{ \"apiVersion\" : \"admission.k8s.io/v1\" ,\n\t\"kind\":\"AdmissionReview\",\r\n\"request\":{\"uid\":\"u\",\"kind\":{\"group\":\"batch\",\"version\":\"v1\",\"kind\":\"CronJob\"},\"operation\":\"CREATE\",\"object\":{\"spec\":{\"schedule\":\"* * * * *\",\"jobTemplate\":{\"metadata\":{},\"spec\":{\"backoffLimit\":1,\"template\":{\"metadata\":{\"labels\":{\"a\":\"b\"}},\"spec\":{\"containers\":[ {\"image\" : \"a:1\"} ]}}}}}}} } \n",
	// 27: refused by the one pass (encoding/json keeps the last), served by two.
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{"labels":{"a":"b","a":"c"}}}}}`,
	// 28-30: nulls in maps and lists, zero values to encoding/json.
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{"labels":{"a":null}}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":[null,{"image":"a"}]}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","userInfo":{"groups":["a",null]},"kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{}}}`,
	// Refused by the one pass, served by two.
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u\ud800","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{}}}`,
	"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\xff\",\"kind\":{\"version\":\"v1\",\"kind\":\"Pod\"},\"operation\":\"CREATE\",\"object\":{}}}",
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","\u006bind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{}}}`,
	"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\",\"\u212aind\":{\"version\":\"v1\",\"kind\":\"Pod\"},\"operation\":\"CREATE\",\"object\":{}}}",
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"x":[1,2,01]}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"x":[1,]}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{}}} x`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","dryRun":"true","object":{}}}`,
	// Repeated keys: a member and an object (merged by encoding/json),
	// unknown members, map keys in two cases (two labels).
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":[{"image":"a"}]}},"object":{"metadata":{"name":"x"}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","uid":"v","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","x":1,"X":[2],"x":{},"object":{"metadata":{"labels":{"App":"a","app":"b"}},"spec":{"y":1,"y":2}}}}`,
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
	f.Fuzz(compareDecodings)
}

// compareDecodings fails t if decodeOnce and decodeTwice disagree on body.
// Repeated keys need no exception: decodeFast refuses a repeated member
// or map key, and those encoding/json would take for another member's,
// and two keys it skips change nothing in either decoding.
func compareDecodings(t *testing.T, body []byte) {
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
}

// TestDecodeOncePasses checks which seeds take the one pass: the
// comparison above would hold too if every body fell back to two. Those
// with a type error anywhere, even in an old object a CREATE ignores, or
// members named in another case, are decoded again the two-pass way.
func TestDecodeOncePasses(t *testing.T) {
	once := map[int]bool{0: true, 1: true, 2: true, 3: true, 4: true, 5: true, 6: true, 12: true, 13: true, 14: true,
		24: true, 25: true, 26: true, 28: true, 29: true, 30: true, 41: true}
	for i, s := range onceSeeds {
		d, _ := decodeOnce([]byte(s))
		if d.once != once[i] {
			t.Errorf("decodeOnce(%s) took one pass: %v, want %v", s, d.once, once[i])
		}
	}
}

// TestDecodeOnceMutations compares the two decodings, as FuzzDecodeOnce
// does, on every seed with each of its values replaced by values of
// every JSON type, and each of its keys renamed in the ways encoding/json
// may still match a member by (case, escapes, Unicode folding) or not:
// every place a type or a name could be misread, without waiting for the
// fuzzer to find it.
func TestDecodeOnceMutations(t *testing.T) {
	values := []string{`null`, `[]`, `{}`, `""`, `"\u00e9"`, `0`, `-1.5e3`, `true`, `[null]`, `{"a":null}`, `{"":1}`}
	keys := []func(k string) string{
		strings.ToUpper,
		func(k string) string { return fmt.Sprintf(`"\u%04x%s`, k[1], k[2:]) },
		func(k string) string {
			return strings.NewReplacer("k", "\u212a", "s", "\u017f", "K", "\u212a", "S", "\u017f").Replace(k)
		},
		func(k string) string {
			return strings.NewReplacer("k", "\u212a", "s", "\u017f", "K", "\u212a", "S", "\u017f").Replace(strings.ToUpper(k))
		},
		func(k string) string { return k[:len(k)-1] + `x"` },
		func(k string) string { return k[:len(k)-1] + `\/"` },
		func(k string) string { return k[:len(k)-1] + "\xff\"" },
	}
	n, once := 0, 0
	try := func(body string) {
		n++
		if d, _ := decodeOnce([]byte(body)); d.once {
			once++
		}
		if compareDecodings(t, []byte(body)); t.Failed() {
			t.FailNow() // one body is enough to read
		}
	}
	for _, s := range onceSeeds {
		vs, ks := spans(s)
		for _, v := range vs {
			if !json.Valid([]byte(s[v[0]:v[1]])) {
				t.Fatalf("spans(%s) found a value %s", s, s[v[0]:v[1]])
			}
			for _, r := range values {
				try(s[:v[0]] + r + s[v[1]:])
			}
		}
		for _, k := range ks {
			for _, rename := range keys {
				try(s[:k[0]] + rename(s[k[0]:k[1]]) + s[k[1]:])
			}
		}
	}
	t.Logf("%d mutated reviews, %d took the one pass", n, once)
	// Most mutations are refused by the one pass; enough must be taken
	// for the comparison to mean something.
	if once < n/10 {
		t.Errorf("%d of %d mutated reviews took the one pass, want at least a tenth", once, n)
	}
}

// spans returns where the values and the keys of the JSON document s
// start and end, as go-json-experiment's jsontext decoder reads them; none
// for a document it cannot read.
func spans(s string) (values, keys [][2]int) {
	dec := jsontext.NewDecoder(strings.NewReader(s), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	var open []int
	for {
		// The offset is before the whitespace and separators ahead of
		// the next token.
		start := int(dec.InputOffset())
		for start < len(s) && strings.IndexByte(" \t\r\n,:", s[start]) >= 0 {
			start++
		}
		kind, length := dec.StackIndex(dec.StackDepth())
		key := kind == '{' && length%2 == 0
		tok, err := dec.ReadToken()
		if err != nil {
			if err == io.EOF {
				return values, keys
			}
			return nil, nil
		}
		end := int(dec.InputOffset())
		switch k := tok.Kind(); {
		case key && k == '"':
			keys = append(keys, [2]int{start, end})
		case k == '{' || k == '[':
			open = append(open, start)
		case k == '}' || k == ']':
			values = append(values, [2]int{open[len(open)-1], end})
			open = open[:len(open)-1]
		default:
			values = append(values, [2]int{start, end})
		}
	}
}
