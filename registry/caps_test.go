package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

// stall sends the header and the first bytes of a body of length bytes
// (no Content-Length when length is negative: chunked, of -length
// bytes), then stalls until the client goes away or done is closed. A
// client that tries to read such a body whole waits for its deadline.
func stall(done <-chan struct{}, mt string, prefix []byte, length int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", mt)
		if length >= 0 {
			w.Header().Set("Content-Length", fmt.Sprint(length))
		}
		w.WriteHeader(http.StatusOK)
		w.Write(prefix)
		if length < 0 {
			pad := bytes.Repeat([]byte(" "), 64<<10)
			for n := len(prefix); n < -length; n += len(pad) {
				if _, err := w.Write(pad); err != nil {
					return
				}
			}
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-done:
		}
	}
}

// manyValues is a JSON document of about size bytes holding a list of
// empty objects under key: cheap to send, costly to decode.
func manyValues(prefix, key string, size int) []byte {
	var b bytes.Buffer
	b.WriteString(prefix + `"` + key + `":[`)
	for b.Len() < size-3 {
		b.WriteString("{},")
	}
	b.WriteString("{}]}")
	return b.Bytes()
}

// TestSizeCaps: a manifest is at most 4 MiB (what the OCI distribution
// spec asks registries to accept) and a config at most 8 MiB. What is
// larger, by its Content-Length or its declared size, is refused before
// its body is read; a body without a length stops being read past the
// cap. A document that would decode into far more memory than its size
// (a million empty layers) is refused too. All of these are invalid
// images, not outages, and they are found out long before the deadline
// the stalling server would otherwise run the lookup into.
func TestSizeCaps(t *testing.T) {
	const mib = 1 << 20
	cfg := []byte(goodConfig)
	cfgDesc := descriptorOf(cfg, types.OCIConfigJSON)
	mt := string(types.OCIManifestSchema1)
	blobPath := "/v2/acme/x/blobs/" + cfgDesc.Digest.String()
	// A manifest of exactly 4 MiB, its padding in an annotation.
	m := imageManifest(t, cfgDesc)
	prefix, suffix := string(m[:len(m)-1])+`,"annotations":{"pad":"`, `"}}`
	at := []byte(prefix + strings.Repeat("p", 4*mib-len(prefix)-len(suffix)) + suffix)
	if len(at) != 4*mib {
		t.Fatalf("test manifest is %d bytes, want %d", len(at), 4*mib)
	}
	bigCfg := cfgDesc
	bigCfg.Size = 8*mib + 1
	manyLayers := manyValues(`{"schemaVersion":2,"mediaType":"`+mt+`","config":`+string(mustJSON(t, cfgDesc))+`,`, "layers", 3*mib)
	manyHistory := manyValues(`{"created":"2026-01-02T03:04:05Z",`, "history", 3*mib)
	manyHistoryDesc := descriptorOf(manyHistory, types.OCIConfigJSON)

	manifestPath := func(d v1.Hash) string { return "/v2/acme/x/manifests/" + d.String() }
	digestOf := func(b []byte) v1.Hash { return descriptorOf(b, types.MediaType(mt)).Digest }
	unseen := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("1", 64)} // of a body never sent whole
	smallCfgManifest := imageManifest(t, cfgDesc)
	bigCfgManifest := imageManifest(t, bigCfg)
	manyHistoryManifest := imageManifest(t, manyHistoryDesc)

	tests := []struct {
		name   string
		digest v1.Hash
		routes func(done <-chan struct{}) map[string]http.HandlerFunc
		want   policy.ErrorKind // "" for success
	}{
		{"manifest of exactly 4 MiB", digestOf(at), func(<-chan struct{}) map[string]http.HandlerFunc {
			return map[string]http.HandlerFunc{manifestPath(digestOf(at)): serve(mt, at, false), blobPath: serve("application/octet-stream", cfg, false)}
		}, ""},
		{"manifest of 60 MB by its Content-Length", unseen, func(done <-chan struct{}) map[string]http.HandlerFunc {
			return map[string]http.HandlerFunc{manifestPath(unseen): stall(done, mt, []byte(`{"schemaVersion":2,`), 60_000_000)}
		}, policy.ErrTooLarge},
		{"manifest past 4 MiB without a Content-Length", unseen, func(done <-chan struct{}) map[string]http.HandlerFunc {
			return map[string]http.HandlerFunc{manifestPath(unseen): stall(done, mt, []byte(`{"schemaVersion":2,`), -(4*mib + 1))}
		}, policy.ErrTooLarge},
		{"config declared larger than 8 MiB", digestOf(bigCfgManifest), func(done <-chan struct{}) map[string]http.HandlerFunc {
			return map[string]http.HandlerFunc{
				manifestPath(digestOf(bigCfgManifest)): serve(mt, bigCfgManifest, false),
				blobPath:                               stall(done, "application/octet-stream", []byte("{"), int(bigCfg.Size)),
			}
		}, policy.ErrTooLarge},
		{"config of 60 MB by its Content-Length, declared small", digestOf(smallCfgManifest), func(done <-chan struct{}) map[string]http.HandlerFunc {
			return map[string]http.HandlerFunc{
				manifestPath(digestOf(smallCfgManifest)): serve(mt, smallCfgManifest, false),
				blobPath:                                 stall(done, "application/octet-stream", []byte("{"), 60_000_000),
			}
		}, policy.ErrTooLarge},
		{"manifest of 3 MiB holding a million empty layers", digestOf(manyLayers), func(<-chan struct{}) map[string]http.HandlerFunc {
			return map[string]http.HandlerFunc{manifestPath(digestOf(manyLayers)): serve(mt, manyLayers, false), blobPath: serve("application/octet-stream", cfg, false)}
		}, policy.ErrTooLarge},
		{"config of 3 MiB holding a million empty history entries", digestOf(manyHistoryManifest), func(<-chan struct{}) map[string]http.HandlerFunc {
			return map[string]http.HandlerFunc{
				manifestPath(digestOf(manyHistoryManifest)):           serve(mt, manyHistoryManifest, false),
				"/v2/acme/x/blobs/" + manyHistoryDesc.Digest.String(): serve("application/octet-stream", manyHistory, false),
			}
		}, policy.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan struct{})
			srv := newExactServer(t, tt.routes(done))
			t.Cleanup(func() { close(done) }) // before the server closes
			ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/acme/x@"+tt.digest.String(), name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			_, err = newClient().Resolve(ctx, registry.Request{Ref: ref, Insecure: true})
			var re *policy.ResolveError
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Resolve = %v, want success", err)
			case tt.want != "" && (!errors.As(err, &re) || re.Kind != tt.want):
				t.Errorf("Resolve = %v, want kind %s", err, tt.want)
			}
		})
	}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
