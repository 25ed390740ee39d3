package provenance

import (
	"encoding/json"

	"github.com/google/go-containerregistry/pkg/name"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func nameParse(s string) (name.Reference, error) { return name.ParseReference(s, name.Insecure) }

// nameReference is name.Reference, for tests that import another
// package called name.
type nameReference = name.Reference
