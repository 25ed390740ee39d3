package webhook

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"

	"buildguard.dev/buildguard/internal/benchreview"
)

// full is a JSON value of type t with every member encoding/json knows
// set to something other than its zero value, so that a member
// decodeFast does not know shows as a difference.
func full(t reflect.Type) string {
	if t == reflect.TypeFor[k8sruntime.RawExtension]() {
		return `{"a":[1,"b"]}`
	}
	switch t.Kind() {
	case reflect.Pointer:
		return full(t.Elem())
	case reflect.String:
		return `"x\u00e9"`
	case reflect.Bool:
		return "true"
	case reflect.Slice:
		return "[" + full(t.Elem()) + "," + full(t.Elem()) + "]"
	case reflect.Map:
		return `{"k":` + full(t.Elem()) + `,"k2":` + full(t.Elem()) + "}"
	case reflect.Struct:
		return "{" + strings.Join(members(t), ",") + "}"
	}
	panic("full: no value for " + t.String())
}

func members(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-" || !f.IsExported():
		case f.Anonymous && name == "":
			out = append(out, members(f.Type)...)
		default:
			if name == "" {
				name = f.Name
			}
			out = append(out, fmt.Sprintf("%q:%s", name, full(f.Type)))
		}
	}
	return out
}

// TestDecodeFastKnowsEveryMember checks that decodeFast reads every
// member encoding/json would: of the request (but its response) and of
// the objects, with every field of the types they decode into set.
func TestDecodeFastKnowsEveryMember(t *testing.T) {
	obj := full(reflect.TypeFor[wireObject]())
	req := full(reflect.TypeFor[admissionv1.AdmissionRequest]())
	// The objects are raw in AdmissionRequest: put whole ones there.
	req = strings.Replace(req, `"object":{"a":[1,"b"]}`, `"object":`+obj, 1)
	req = strings.Replace(req, `"oldObject":{"a":[1,"b"]}`, `"oldObject":`+obj, 1)
	body := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":` + req + `}`)
	fast, ok := decodeFast(body)
	if !ok {
		t.Fatalf("decodeFast(%s) refused it", body)
	}
	twice, err := decodeTwice(body)
	if err != nil {
		t.Fatal(err)
	}
	want := *twice.req
	var wantObj, wantOld wireObject
	if err := json.Unmarshal(want.Object.Raw, &wantObj); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(want.OldObject.Raw, &wantOld); err != nil {
		t.Fatal(err)
	}
	want.Object.Raw, want.OldObject.Raw = nil, nil
	if diff := cmp.Diff(want, *fast.req, exactly); diff != "" {
		t.Errorf("request (-encoding/json +decodeFast):\n%s", diff)
	}
	// wireObject embeds the unexported wirePodSpec.
	wire := cmp.Options{exactly, cmp.Exporter(func(reflect.Type) bool { return true })}
	if diff := cmp.Diff(&wantObj, fast.obj, wire); diff != "" {
		t.Errorf("object (-encoding/json +decodeFast):\n%s", diff)
	}
	if diff := cmp.Diff(&wantOld, fast.old, wire); diff != "" {
		t.Errorf("old object (-encoding/json +decodeFast):\n%s", diff)
	}
}

// TestDecodeFastRefusesOtherCases checks that a member named in another
// case, which encoding/json matches, is never skipped as unknown.
func TestDecodeFastRefusesOtherCases(t *testing.T) {
	obj := full(reflect.TypeFor[wireObject]())
	req := full(reflect.TypeFor[admissionv1.AdmissionRequest]())
	req = strings.Replace(req, `"object":{"a":[1,"b"]}`, `"object":`+obj, 1)
	req = strings.Replace(req, `"oldObject":{"a":[1,"b"]}`, `"oldObject":`+obj, 1)
	body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":` + req + `}`
	// Each member name in turn, wherever it is, in upper case.
	names := map[string]bool{}
	for _, m := range strings.Split(body, `":`) {
		if i := strings.LastIndexByte(m, '"'); i >= 0 && strings.Trim(m[i+1:], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == "" {
			names[m[i+1:]] = true
		}
	}
	if len(names) < 40 {
		t.Fatalf("found %d member names in %s", len(names), body)
	}
	for name := range names {
		if name == "k" || name == "k2" || name == "a" {
			continue // map keys
		}
		b := strings.ReplaceAll(body, `"`+name+`":`, `"`+strings.ToUpper(name)+`":`)
		if _, ok := decodeFast([]byte(b)); ok {
			t.Errorf("decodeFast took %q in upper case as unknown", name)
		}
	}
}

// BenchmarkDecodeReview decodes the benchmarks' 3-container Deployment
// review (internal/benchreview) with decodeOnce, and with encoding/json
// as the two-pass way does.
func BenchmarkDecodeReview(b *testing.B) {
	body, err := benchreview.NewBody(benchreview.WebContainers("registry.example/shop/init:1")[:1],
		benchreview.WebContainers("registry.example/shop/web:1"))
	if err != nil {
		b.Fatal(err)
	}
	review := body.With(new(benchreview.UIDs).Next())
	b.Run("once", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if d, err := decodeOnce(review); err != nil || !d.once {
				b.Fatalf("decodeOnce: %v, one pass %v", err, d.once)
			}
		}
	})
	b.Run("two-passes", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			d, err := decodeTwice(review)
			if err != nil {
				b.Fatal(err)
			}
			if _, _, resp := workloadOf(d); resp != nil {
				b.Fatal(resp.Result.Message)
			}
		}
	})
}

// TestListElementsBounded: an object with more list elements than
// MaxListElements, in one list or many, is refused as a bad request, the
// same way in one pass and two, without building them all (1 MiB of
// empty containers took 257 MB to decode); one with fewer is judged.
func TestListElementsBounded(t *testing.T) {
	review := func(spec string) []byte {
		return []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":` + spec + `}}}`)
	}
	list := func(n int, elem string) string {
		return "[" + strings.TrimSuffix(strings.Repeat(elem+",", n), ",") + "]"
	}
	for _, tt := range []struct {
		name    string
		body    []byte
		refused bool
	}{
		{"a MiB of empty containers", review(`{"containers":` + list(1<<20/3, "{}") + `}`), true},
		{"mounts of many containers", review(`{"containers":` + list(200, `{"image":"a","volumeMounts":`+list(60, "{}")+`}`) + `}`), true},
		{"lists of unknown members", review(`{"containers":[{"image":"a","args":` + list(MaxListElements, "0") + `}]}`), true},
		{"under the bound", review(`{"containers":` + list(MaxListElements/2, `{"image":"a"}`) + `,"volumes":` + list(MaxListElements/2-1, "{}") + `}`), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			d, err := decodeOnce(tt.body)
			if err != nil {
				t.Fatal(err)
			}
			_, _, resp := workloadOf(d)
			runtime.ReadMemStats(&after)
			if tt.refused {
				if resp == nil || resp.Result.Code != http.StatusBadRequest || !strings.Contains(resp.Result.Message, "more than 10000 list elements") {
					t.Fatalf("response %+v, want a bad request naming the bound", resp)
				}
				if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20+2*uint64(len(tt.body)) {
					t.Errorf("refusing a %d-byte review allocated %d bytes", len(tt.body), alloc)
				}
			} else if resp != nil {
				t.Fatalf("response %+v, want the workload judged", resp.Result)
			}
			two, err := decodeTwice(tt.body)
			if err != nil {
				t.Fatal(err)
			}
			_, _, resp2 := workloadOf(two)
			if diff := cmp.Diff(resp, resp2); diff != "" {
				t.Errorf("one pass and two differ (-one +two):\n%s", diff)
			}
		})
	}
}
