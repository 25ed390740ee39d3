package provenance

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/sigstore/sigstore-go/pkg/root"
)

// Limits of a trusted-root file.
const (
	maxTrustedRootBytes = 8 << 20
	maxTrustedRoots     = 32 // instances in one file
)

// ParseTrustedRoots reads Sigstore trusted roots: one trusted_root.json
// document, or several in a row as `gh attestation trusted-root` writes
// them (JSON Lines: the public-good instance and GitHub's own, each with
// its Fulcio CAs, Rekor keys, CT logs and timestamp authorities). Each
// instance is kept apart: a certificate is verified with the timestamps
// and logs of the instance whose CA issued it.
func ParseTrustedRoots(b []byte) ([]*root.TrustedRoot, error) {
	if len(b) > maxTrustedRootBytes {
		return nil, fmt.Errorf("trusted root is %d bytes, more than %d", len(b), maxTrustedRootBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var out []*root.TrustedRoot
	for n := 1; ; n++ {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("trusted root %d: %v", n, err)
		}
		if len(out) == maxTrustedRoots {
			return nil, fmt.Errorf("more than %d trusted roots", maxTrustedRoots)
		}
		if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
			return nil, fmt.Errorf("trusted root %d is not a JSON object", n)
		}
		tr, err := root.NewTrustedRootFromJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("trusted root %d: %v", n, err)
		}
		out = append(out, tr)
	}
	if len(out) == 0 {
		return nil, errors.New("no trusted root in it")
	}
	return out, nil
}
