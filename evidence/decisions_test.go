package evidence

import (
	"encoding/json"
	"slices"
	"testing"
)

// TestImageRefs covers both ways imageRefs reads a decision's images: the
// typed one the webhook's records take, and the generic one for anything
// else, which must index the same strings.
func TestImageRefs(t *testing.T) {
	for _, tc := range []struct {
		name, raw string
		want      []string
		valid     bool
	}{
		{"webhook record", `[{"container":"app","image":"GHCR.io/Acme/App:1","digest":"sha256:AB","findings":[]},{"scope":"workload","findings":[]}]`,
			[]string{"ghcr.io/acme/app:1", "sha256:ab"}, true},
		{"repeats once", `[{"image":"a:1","digest":"sha256:1"},{"image":"A:1","digest":"sha256:1"}]`, []string{"a:1", "sha256:1"}, true},
		{"names match exactly", `[{"Image":"a:1","DIGEST":"sha256:1"}]`, nil, true},
		{"a number image is skipped, the digest kept", `[{"image":7,"digest":"sha256:2"},{"image":"b:2"}]`, []string{"sha256:2", "b:2"}, true},
		{"repeated member", `[{"image":"a:1","image":"b:1"}]`, []string{"b:1"}, true},
		{"null", `[{"image":null,"digest":"sha256:3"}]`, []string{"sha256:3"}, true},
		{"not a list", `{"not":"a list"}`, nil, true},
		{"list of strings", `["a:1"]`, nil, true},
		{"not JSON", `[{"image":`, nil, false},
	} {
		got, valid := imageRefs(json.RawMessage(tc.raw))
		if !slices.Equal(got, tc.want) || valid != tc.valid {
			t.Errorf("%s: imageRefs(%s) = %q, %v; want %q, %v", tc.name, tc.raw, got, valid, tc.want, tc.valid)
		}
	}
}
