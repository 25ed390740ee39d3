package manifest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzParse checks, for any manifest, that Parse returns objects or an
// *Error and never panics or hangs; that every object has valid JSON with
// its apiVersion and kind, and a position inside the manifest; that every
// field Position finds is inside it too; and that parsing twice gives the
// same objects. Seeds: testdata/fuzz/FuzzParse/ and the manifests of
// testdata/.
func FuzzParse(f *testing.F) {
	f.Add([]byte(multiDoc))
	f.Add([]byte(`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"}}]} [1]`))
	f.Add([]byte("a: &x {b: *x}\n"))
	paths, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		watchdog := time.AfterFunc(10*time.Second, func() { panic(fmt.Sprintf("Parse(%.200q) hangs", data)) })
		defer watchdog.Stop()
		s, err := Parse("f", data)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("Parse error %T %v, want *Error", err, err)
			}
			return
		}
		lines := breaks(data) + 1
		inside := func(what string, p Position) {
			if p.Line < 1 || p.Line > lines || p.Column < 1 {
				t.Fatalf("%s at %v, outside the %d lines of %q", what, p, lines, data)
			}
		}
		for _, o := range s.Objects {
			var head struct{ APIVersion, Kind string }
			if err := json.Unmarshal(o.JSON, &head); err != nil || head.APIVersion != o.APIVersion || head.Kind != o.Kind || o.Kind == "" {
				t.Fatalf("object %s: JSON %q (%v) does not say apiVersion %q kind %q", o.String(), o.JSON, err, o.APIVersion, o.Kind)
			}
			inside(o.String(), o.Pos)
			for _, ptr := range []string{"/metadata/name", "/spec/containers/0/image", "/spec/template/spec/containers/0/image", "/items/0"} {
				if p, ok := o.Position(ptr); ok {
					inside(o.String()+ptr, p)
				}
			}
		}
		for _, sk := range s.Skipped {
			inside("skipped document", Position{Line: sk.Line, Column: 1})
		}
		again, err := Parse("f", data)
		if err != nil || len(again.Objects) != len(s.Objects) {
			t.Fatalf("second Parse: %d objects, %v; first %d", len(again.Objects), err, len(s.Objects))
		}
		for i := range s.Objects {
			if string(again.Objects[i].JSON) != string(s.Objects[i].JSON) || again.Objects[i].Pos != s.Objects[i].Pos {
				t.Fatalf("object %d differs on a second Parse", i)
			}
		}
	})
}
