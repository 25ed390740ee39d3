package v1alpha1_test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"buildguard.dev/buildguard/apis/v1alpha1"
)

// crd is what the test reads of a CustomResourceDefinition.
type crd struct {
	Spec struct {
		Group string `yaml:"group"`
		Names struct {
			Kind   string `yaml:"kind"`
			Plural string `yaml:"plural"`
		} `yaml:"names"`
		Versions []struct {
			Name   string `yaml:"name"`
			Schema struct {
				OpenAPIV3Schema struct {
					Properties struct {
						Spec struct {
							Properties map[string]any `yaml:"properties"`
						} `yaml:"spec"`
					} `yaml:"properties"`
				} `yaml:"openAPIV3Schema"`
			} `yaml:"schema"`
		} `yaml:"versions"`
	} `yaml:"spec"`
}

// jsonFields are the JSON names of the fields of a struct type, with
// those of inlined structs.
func jsonFields(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if opts == "inline" || f.Anonymous && name == "" {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// TestMatchesCRDs: the group, version, kinds and resources of the Go API
// are those of the CRDs installed by manifests/crd, and a spec field is
// one the CRD's schema has, and the other way round.
func TestMatchesCRDs(t *testing.T) {
	for _, tc := range []struct {
		file string
		kind string
		gvr  string
		spec reflect.Type
	}{
		{"buildguard.dev_clusterbuildpolicies.yaml", v1alpha1.KindClusterBuildPolicy, v1alpha1.PolicyResource().String(), reflect.TypeFor[v1alpha1.PolicySpec]()},
		{"buildguard.dev_buildpolicyexceptions.yaml", v1alpha1.KindBuildPolicyException, v1alpha1.ExceptionResource().String(), reflect.TypeFor[v1alpha1.ExceptionSpec]()},
	} {
		b, err := os.ReadFile(filepath.Join("..", "..", "manifests", "crd", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		var c crd
		if err := yaml.Unmarshal(b, &c); err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		if len(c.Spec.Versions) != 1 {
			t.Fatalf("%s: %d versions, want 1", tc.file, len(c.Spec.Versions))
		}
		v := c.Spec.Versions[0]
		got := c.Spec.Group + "/" + v.Name + ", Resource=" + c.Spec.Names.Plural
		if got != tc.gvr || c.Spec.Names.Kind != tc.kind {
			t.Errorf("%s: %s kind %s, want %s kind %s", tc.file, got, c.Spec.Names.Kind, tc.gvr, tc.kind)
		}
		var props []string
		for p := range v.Schema.OpenAPIV3Schema.Properties.Spec.Properties {
			props = append(props, p)
		}
		slices.Sort(props)
		if fields := jsonFields(tc.spec); !slices.Equal(fields, props) {
			t.Errorf("%s: spec properties %v, want those of %s: %v", tc.file, props, tc.spec, fields)
		}
	}
}
