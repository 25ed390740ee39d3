package manifest

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// lineOf returns the 1-based line of the first occurrence of s in data.
func lineOf(t *testing.T, data, s string) int {
	t.Helper()
	i := strings.Index(data, s)
	if i < 0 {
		t.Fatalf("%q not in the manifest", s)
	}
	return strings.Count(data[:i], "\n") + 1
}

const multiDoc = `# a comment before the first document
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {buildguard.dev/mode: audit}
---
# only a comment
---   
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: registry.example/init:1
      containers:
        - name: app
          image: "registry.example/web:2"
        - image: registry.example/sidecar:3
          name: sidecar
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: p1}
    spec:
      containers: [{name: a, image: registry.example/a:1}]
  - apiVersion: v1
    kind: Pod
    metadata: {name: p2, namespace: other}
    spec:
      containers:
      - name: b
        image: registry.example/b:1
---
replicaCount: 3
---
- just
- a list
`

func TestParseYAML(t *testing.T) {
	s, err := Parse("all.yaml", []byte(multiDoc))
	if err != nil {
		t.Fatal(err)
	}
	type obj struct {
		Kind, Namespace, Name string
		Line, Item            int
	}
	var got []obj
	for _, o := range s.Objects {
		got = append(got, obj{o.Kind, o.Namespace, o.Name, o.Pos.Line, o.Item})
		if !json.Valid(o.JSON) {
			t.Errorf("%s: JSON %q not valid", o.String(), o.JSON)
		}
	}
	want := []obj{
		{"Namespace", "", "shop", lineOf(t, multiDoc, "apiVersion: v1\nkind: Namespace"), -1},
		{"Deployment", "shop", "web", lineOf(t, multiDoc, "apiVersion: apps/v1"), -1},
		{"Pod", "", "p1", lineOf(t, multiDoc, "- apiVersion: v1\n    kind: Pod\n    metadata: {name: p1}"), 0},
		{"Pod", "other", "p2", lineOf(t, multiDoc, "- apiVersion: v1\n    kind: Pod\n    metadata: {name: p2"), 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("objects (-want +got):\n%s", diff)
	}
	skipped := []Skipped{
		{File: "all.yaml", Line: lineOf(t, multiDoc, "replicaCount"), Reason: "not a Kubernetes object: no apiVersion or kind"},
		{File: "all.yaml", Line: lineOf(t, multiDoc, "- just"), Reason: "not an object"},
	}
	if diff := cmp.Diff(skipped, s.Skipped); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}

	dep := s.Objects[1]
	for _, tc := range []struct {
		pointer string
		want    Position
	}{
		{"/spec/template/spec/initContainers/0/image", Position{lineOf(t, multiDoc, "image: registry.example/init:1"), 11}},
		{"/spec/template/spec/containers/0/image", Position{lineOf(t, multiDoc, `image: "registry.example/web:2"`), 11}},
		{"/spec/template/spec/containers/1/image", Position{lineOf(t, multiDoc, "image: registry.example/sidecar:3"), 11}},
		{"/spec/template/spec/containers/1", Position{lineOf(t, multiDoc, "image: registry.example/sidecar:3"), 11}},
		{"/metadata/name", Position{lineOf(t, multiDoc, "  name: web"), 3}},
	} {
		got, ok := dep.Position(tc.pointer)
		if !ok || got != tc.want {
			t.Errorf("Position(%q) = %v, %v; want %v", tc.pointer, got, ok, tc.want)
		}
	}
	for _, missing := range []string{"/spec/template/spec/containers/2/image", "/spec/template/spec/containers/01", "/nope", "spec", "/spec/template/spec/containers/x"} {
		if p, ok := dep.Position(missing); ok {
			t.Errorf("Position(%q) = %v, want none", missing, p)
		}
	}
	p1, p2 := s.Objects[2], s.Objects[3]
	if got, ok := p1.Position("/spec/containers/0/image"); !ok || got.Line != lineOf(t, multiDoc, "registry.example/a:1") {
		t.Errorf("p1 image at %v, %v", got, ok)
	}
	if got, ok := p2.Position("/spec/containers/0/image"); !ok || got != (Position{lineOf(t, multiDoc, "image: registry.example/b:1"), 9}) {
		t.Errorf("p2 image at %v, %v", got, ok)
	}
}

func TestParseJSON(t *testing.T) {
	// kubectl get -o json prints one value; streams of values, with other
	// values on the same line, are read too.
	data := `{
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {"name": "a", "namespace": "n"},
  "spec": {
    "containers": [
      {"name": "c", "image": "r.example/a:1"}
    ]
  }
}
   {"apiVersion":"v1","kind":"PodList","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"b"},"spec":{"containers":[{"name":"c","image":"r.example/b:1"}]}}]}
`
	s, err := Parse("pods.json", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Objects) != 2 {
		t.Fatalf("%d objects, want 2", len(s.Objects))
	}
	a, b := s.Objects[0], s.Objects[1]
	if got, ok := a.Position("/spec/containers/0/image"); !ok || got != (Position{7, 21}) {
		t.Errorf("a's image at %v, %v; want 7:21", got, ok)
	}
	if a.Namespace != "n" || a.Name != "a" || a.Pos != (Position{1, 1}) {
		t.Errorf("a = %s at %v", a.String(), a.Pos)
	}
	col := strings.Index(strings.Split(data, "\n")[10], `"image"`) + 1
	if got, ok := b.Position("/spec/containers/0/image"); !ok || got != (Position{11, col}) {
		t.Errorf("b's image at %v, %v; want 11:%d", got, ok, col)
	}
	if b.Item != 0 || b.Kind != "Pod" {
		t.Errorf("b = %s item %d", b.String(), b.Item)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		line       int
		msg        string
	}{
		{"yaml in the second document", "apiVersion: v1\nkind: Pod\n---\nkind: Pod\nmetadata:\n  name: a: b\n", 6, "f.yaml:6: yaml: mapping values are not allowed"},
		{"tab indentation", "apiVersion: v1\nkind: Pod\nmetadata:\n\tname: a\n", 4, "f.yaml:4: yaml: found character that cannot start any token"},
		{"json", "{\"apiVersion\": \"v1\",\n\"kind\": }\n", 2, "invalid character"},
		{"helm template", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {{ .Values.name }}\n", 1, "invalid map key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tc.data))
			var me *Error
			if !errors.As(err, &me) {
				t.Fatalf("Parse = %v, want an *Error", err)
			}
			if me.File != "f.yaml" || me.Line != tc.line || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Parse = %q (line %d), want line %d and %q", err, me.Line, tc.line, tc.msg)
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	for _, data := range []string{"", "\n\n", "---\n---\n", "# nothing\n", "null\n", "  \n"} {
		s, err := Parse("e.yaml", []byte(data))
		if err != nil || len(s.Objects)+len(s.Skipped) != 0 {
			t.Errorf("Parse(%q) = %+v, %v; want nothing", data, s, err)
		}
	}
}

func TestReadPaths(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pod := func(name string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata: {name: " + name + "}\nspec: {containers: [{name: c, image: r.example/x:1}]}\n"
	}
	write("b/two.yml", pod("two"))
	write("a.yaml", pod("one"))
	write("c.json", `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"three"}}`)
	write("notes.txt", pod("never"))
	write(".git/x.yaml", pod("never"))
	write("Kustomization", pod("never"))
	s, err := ReadPaths([]string{dir, "-"}, strings.NewReader(pod("stdin")))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range s.Objects {
		rel, _ := filepath.Rel(dir, o.File)
		if o.File == Stdin {
			rel = Stdin
		}
		got = append(got, rel+" "+o.Name)
	}
	want := []string{"a.yaml one", "b/two.yml two", "c.json three", "- stdin"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("objects (-want +got):\n%s", diff)
	}
	if _, err := ReadPaths([]string{filepath.Join(dir, "missing.yaml")}, nil); err == nil {
		t.Error("a missing file read without error")
	}
	if _, err := ReadPaths([]string{"-", "-"}, strings.NewReader("")); err == nil {
		t.Error("stdin read twice without error")
	}
	empty := t.TempDir()
	if _, err := ReadPaths([]string{empty}, nil); err == nil || !strings.Contains(err.Error(), "no .yaml") {
		t.Errorf("an empty directory: %v", err)
	}
}

func TestReadLimit(t *testing.T) {
	big := strings.NewReader(strings.Repeat("#", MaxBytes+1))
	if _, err := Read("big.yaml", big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Read of %d bytes = %v, want an error", MaxBytes+1, err)
	}
}
