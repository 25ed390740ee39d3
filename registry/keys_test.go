package registry

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// TestCacheKeys: the keys Cached writes to a buffer are those Resolve
// caches under, for every form of reference, or a cached image would be
// looked up again.
func TestCacheKeys(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		ref      string
		insecure bool
		auth     string
	}{
		{ref: "nginx"},
		{ref: "nginx:1.27", auth: "anonymous"},
		{ref: "library/nginx:1.27"},
		{ref: "docker.io/library/nginx:1.27"},
		{ref: "index.docker.io/acme/shop:v1"},
		{ref: "ghcr.io/acme/team/shop:v1", auth: "ns/sa/secret"},
		{ref: "127.0.0.1:5000/acme/shop:1.4", insecure: true},
		{ref: "localhost/shop", insecure: true},
		{ref: "ghcr.io/acme/shop@" + digest},
		{ref: "nginx@" + digest},
		{ref: "ghcr.io/acme/shop:v1@" + digest},
		{ref: "registry.example.com:8443/a/b/c/d:" + strings.Repeat("t", 128), auth: strings.Repeat("k", 300)},
	} {
		var opts []name.Option
		if tc.insecure {
			opts = append(opts, name.Insecure)
		}
		ref, err := name.ParseReference(tc.ref, opts...)
		if err != nil {
			t.Fatal(err)
		}
		r := Request{Ref: ref, Insecure: tc.insecure, Auth: Auth{Key: tc.auth}}
		insecure := "false"
		if tc.insecure {
			insecure = "true"
		}
		var buf [16]byte
		if got, want := string(appendTagKey(buf[:0], r)), ref.Name()+"\x00"+insecure+"\x00"+tc.auth; got != want {
			t.Errorf("appendTagKey(%s) = %q, want %q", tc.ref, got, want)
		}
		if got, want := string(appendDigestKey(buf[:0], ref.Context(), digest)), ref.Context().Digest(digest).Name(); got != want {
			t.Errorf("appendDigestKey(%s) = %q, want %q", tc.ref, got, want)
		}
		if d, ok := ref.(name.Digest); ok {
			if got, want := string(appendDigestKey(nil, d.Context(), d.DigestStr())), d.Name(); got != want {
				t.Errorf("appendDigestKey of digest %s = %q, want %q", tc.ref, got, want)
			}
		}
	}
}
