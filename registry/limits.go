package registry

import (
	"fmt"
	"net/http"
	"strings"
)

// Limits on what a registry may send. A response past its limit is an
// image too large to judge (policy.ErrTooLarge): the registry answered,
// with something buildguard will not hold in memory.
const (
	// maxManifestBytes caps a manifest, an index or a referrers list: 4
	// MiB, what the OCI distribution spec asks registries to accept, and
	// what containerd and Docker accept when pulling.
	maxManifestBytes = 4 << 20
	// maxConfigBytes caps an image config, and any other blob.
	maxConfigBytes = 8 << 20
	// maxOtherBytes caps the other successful responses: the ping and
	// token answers, a few hundred bytes each.
	maxOtherBytes = 1 << 20
	// maxErrorBodyBytes is how much of an error response is read; the
	// status says what went wrong, the rest is cut off, not refused.
	maxErrorBodyBytes = 64 << 10
	// maxJSONValues caps the values (objects, arrays, strings, numbers…)
	// of a manifest or config. Decoding costs memory per value, not per
	// byte: 4 MiB of empty layer objects ("{},{},…") allocate 977 MiB to
	// decode. A real manifest has a few hundred values, a config with a
	// thousand build steps a few thousand.
	maxJSONValues = 1 << 15
)

// bodyKind says which limit applies to a response, by the path of the
// request that led to it (before any redirect to a blob store).
type bodyKind int

const (
	kindOther bodyKind = iota
	kindManifest
	kindBlob
)

func (k bodyKind) String() string {
	switch k {
	case kindManifest:
		return "manifest"
	case kindBlob:
		return "blob"
	}
	return "response"
}

func kindOf(req *http.Request) bodyKind {
	for req.Response != nil && req.Response.Request != nil {
		req = req.Response.Request
	}
	p := req.URL.Path
	switch {
	case !strings.HasPrefix(p, "/v2/"):
		return kindOther
	case strings.Contains(p, "/manifests/"), strings.Contains(p, "/referrers/"):
		return kindManifest
	case strings.Contains(p, "/blobs/"):
		return kindBlob
	}
	return kindOther
}

// limitOf is the most a body of kind k may hold.
func limitOf(k bodyKind) int64 {
	switch k {
	case kindManifest:
		return maxManifestBytes
	case kindBlob:
		return maxConfigBytes
	}
	return maxOtherBytes
}

// contentError is a response buildguard refused to read or decode: too
// large, or too costly to decode. The registry answered; the image is too
// large to judge.
type contentError struct{ msg string }

func (e *contentError) Error() string { return e.msg }

func tooLarge(k bodyKind, url string, n int64) error {
	if n >= 0 {
		return &contentError{msg: fmt.Sprintf("%s %s is %d bytes, more than the limit of %d", k, url, n, limitOf(k))}
	}
	return &contentError{msg: fmt.Sprintf("%s %s is more than the limit of %d bytes", k, url, limitOf(k))}
}

func tooManyValues(what string) error {
	return &contentError{msg: fmt.Sprintf("%s holds more than %d JSON values", what, maxJSONValues)}
}

// jsonCounter counts an upper bound of the values in a JSON document fed
// to it in pieces, without decoding it: a document with n values has at
// least n-1 commas and opening brackets outside strings together. It
// never under-counts a document that decodes.
type jsonCounter struct {
	inString, escaped bool
	n                 int
}

func (c *jsonCounter) scan(p []byte) {
	for _, b := range p {
		switch {
		case c.escaped:
			c.escaped = false
		case c.inString:
			if b == '\\' {
				c.escaped = true
			} else if b == '"' {
				c.inString = false
			}
		case b == '"':
			c.inString = true
		case b == ',' || b == '[' || b == '{':
			c.n++
		}
	}
}

// values is the bound: one more than what was counted.
func (c *jsonCounter) values() int { return c.n + 1 }
