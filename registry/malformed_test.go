package registry_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

// rawManifest is a manifest pushed byte for byte, however malformed.
type rawManifest struct {
	body []byte
	mt   types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.body, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }

// pushBlob writes b as a blob of reg's repository repo.
func pushBlob(t *testing.T, reg *testregistry.Registry, repo string, b []byte) v1.Descriptor {
	t.Helper()
	l := static.NewLayer(b, types.OCIConfigJSON)
	ref, err := name.NewRepository(reg.Host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(ref, l, remote.WithTransport(http.DefaultTransport)); err != nil {
		t.Fatal(err)
	}
	return descriptorOf(b, types.OCIConfigJSON)
}

// pushManifest writes body as a manifest of media type mt under
// repoAndTag and returns its digest.
func pushManifest(t *testing.T, reg *testregistry.Registry, repoAndTag string, mt types.MediaType, body []byte) v1.Hash {
	t.Helper()
	if err := remote.Put(reg.Ref(t, repoAndTag), rawManifest{body, mt}, remote.WithTransport(http.DefaultTransport)); err != nil {
		t.Fatal(err)
	}
	return descriptorOf(body, mt).Digest
}

func descriptorOf(b []byte, mt types.MediaType) v1.Descriptor {
	sum := sha256.Sum256(b)
	return v1.Descriptor{MediaType: mt, Size: int64(len(b)), Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}}
}

// imageManifest is an OCI image manifest naming config and no layers.
func imageManifest(t testing.TB, config v1.Descriptor) []byte {
	t.Helper()
	b, err := json.Marshal(v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Config: config, Layers: []v1.Descriptor{}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func indexManifest(t testing.TB, children ...v1.Descriptor) []byte {
	t.Helper()
	b, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: children})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const goodConfig = `{"architecture":"amd64","os":"linux","created":"2026-01-02T03:04:05Z","config":{},"rootfs":{"type":"layers","diff_ids":[]},"history":[{"created":"2026-01-02T03:04:05Z","created_by":"RUN make"}]}`

func resolveErr(t *testing.T, c *registry.Client, ref name.Reference) *policy.ResolveError {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	img, err := c.Resolve(ctx, registry.Request{Ref: ref, Insecure: true})
	if err == nil {
		t.Fatalf("Resolve(%s) = %+v, want an error", ref, img)
	}
	var re *policy.ResolveError
	if !errors.As(err, &re) {
		t.Fatalf("Resolve(%s) error = %#v, want a *policy.ResolveError", ref, err)
	}
	return re
}

// TestMalformedContentIsInvalid: whatever a registry that answered serves
// in place of an image — a config cut short with the right digest and
// size, a manifest that is not JSON, an index whose child is broken — is
// an invalid image, never "unavailable": failurePolicy allow must not
// admit it. Each image is pushed byte for byte to the in-memory registry
// and looked up by tag and by digest.
func TestMalformedContentIsInvalid(t *testing.T) {
	reg := testregistry.New(t)
	goodCfg := pushBlob(t, reg, "acme/bad", []byte(goodConfig))
	goodImage := imageManifest(t, goodCfg)
	goodImageDesc := descriptorOf(goodImage, types.OCIManifestSchema1)
	goodImageDesc.Platform = &v1.Platform{OS: "linux", Architecture: "amd64"}
	pushManifest(t, reg, "acme/bad:good", types.OCIManifestSchema1, goodImage)

	withConfig := func(cfg string) []byte {
		return imageManifest(t, pushBlob(t, reg, "acme/bad", []byte(cfg)))
	}
	childWithConfig := func(cfg string) v1.Descriptor {
		m := withConfig(cfg)
		pushManifest(t, reg, "acme/bad:child-"+fmt.Sprint(len(cfg)), types.OCIManifestSchema1, m)
		d := descriptorOf(m, types.OCIManifestSchema1)
		d.Platform = &v1.Platform{OS: "linux", Architecture: "arm64"}
		return d
	}
	truncated := goodConfig[:len(goodConfig)/2]

	tests := []struct {
		name string
		mt   types.MediaType
		body []byte
	}{
		{"config is truncated JSON with its right digest and size", types.OCIManifestSchema1, withConfig(truncated)},
		{"config is empty", types.OCIManifestSchema1, withConfig("")},
		{"config is not JSON", types.OCIManifestSchema1, withConfig("\x00\x01 not json")},
		{"config is a JSON array", types.OCIManifestSchema1, withConfig(`[1,2,3]`)},
		{"config created is not a time", types.OCIManifestSchema1, withConfig(`{"created":"yesterday"}`)},
		{"manifest names no config", types.OCIManifestSchema1, []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`)},
		{"index child config is truncated JSON", types.OCIImageIndex, indexManifest(t, goodImageDesc, childWithConfig(truncated))},
		{"index child config is empty", types.OCIImageIndex, indexManifest(t, goodImageDesc, childWithConfig(""))},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tag := fmt.Sprintf("acme/bad:case%d", i)
			d := pushManifest(t, reg, tag, tt.mt, tt.body)
			for _, ref := range []name.Reference{reg.Ref(t, tag), reg.Ref(t, "acme/bad@"+d.String())} {
				// A fresh client each time: nothing cached, nothing coalesced.
				if re := resolveErr(t, newClient(), ref); re.Kind != policy.ErrInvalidImage {
					t.Errorf("Resolve(%s) = %v, want kind %s", ref, re, policy.ErrInvalidImage)
				}
			}
		})
	}
	if _, err := resolve(t, newClient(), reg.Ref(t, "acme/bad:good")); err != nil {
		t.Errorf("Resolve of the well-formed image: %v", err)
	}
}

// exactServer serves fixed responses by path, byte for byte, after the
// ping; paths it does not know are 404 with a registry error body.
type exactServer struct {
	t      *testing.T
	routes map[string]http.HandlerFunc
}

func newExactServer(t *testing.T, routes map[string]http.HandlerFunc) *httptest.Server {
	srv := httptest.NewServer(&exactServer{t: t, routes: routes})
	t.Cleanup(srv.Close)
	return srv
}

func (s *exactServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/" {
		w.WriteHeader(http.StatusOK)
		return
	}
	if h, ok := s.routes[r.Method+" "+r.URL.Path]; ok {
		h(w, r)
		return
	}
	if h, ok := s.routes[r.URL.Path]; ok {
		h(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	fmt.Fprint(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}`)
}

// serve answers with exactly body, with a Content-Length unless chunked.
func serve(mt string, body []byte, chunked bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", mt)
		sum := sha256.Sum256(body)
		w.Header().Set("Docker-Content-Digest", "sha256:"+hex.EncodeToString(sum[:]))
		if !chunked {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		}
		if r.Method == http.MethodHead {
			return
		}
		if chunked {
			// Two writes with a flush between: net/http sends chunks.
			half := len(body) / 2
			w.Write(body[:half])
			w.(http.Flusher).Flush()
			w.Write(body[half:])
			return
		}
		w.Write(body)
	}
}

// tagged serves body as the manifest of acme/x:1, by tag and by digest.
func tagged(mt string, body []byte) map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"/v2/acme/x/manifests/1": serve(mt, body, false),
		"/v2/acme/x/manifests/" + descriptorOf(body, types.MediaType(mt)).Digest.String(): serve(mt, body, false),
	}
}

// cut promises length bytes, sends only the first few, and drops the
// connection: a network fault in the middle of a body.
func cut(mt string, body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", mt)
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(http.StatusOK)
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}
}

// TestMalformedBytes: responses no well-behaved registry would store,
// served byte for byte. A registry that answered with the wrong bytes
// serves an invalid image; a body cut off by the network is an outage.
func TestMalformedBytes(t *testing.T) {
	cfg := []byte(goodConfig)
	cfgDesc := descriptorOf(cfg, types.OCIConfigJSON)
	manifest := imageManifest(t, cfgDesc)
	mDigest := descriptorOf(manifest, types.OCIManifestSchema1).Digest
	other := bytes.Repeat([]byte("x"), len(cfg))
	longer := append(append([]byte{}, cfg...), ' ')
	blobPath := "/v2/acme/x/blobs/" + cfgDesc.Digest.String()
	mt := string(types.OCIManifestSchema1)

	tests := []struct {
		name   string
		routes map[string]http.HandlerFunc
		want   policy.ErrorKind
	}{
		{"config bytes do not match its digest", map[string]http.HandlerFunc{
			"/v2/acme/x/manifests/" + mDigest.String(): serve(mt, manifest, false),
			blobPath: serve("application/octet-stream", other, false),
		}, policy.ErrInvalidImage},
		{"config longer than its size, with a Content-Length", map[string]http.HandlerFunc{
			"/v2/acme/x/manifests/" + mDigest.String(): serve(mt, manifest, false),
			blobPath: serve("application/octet-stream", longer, false),
		}, policy.ErrInvalidImage},
		{"config shorter than its size, chunked", map[string]http.HandlerFunc{
			"/v2/acme/x/manifests/" + mDigest.String(): serve(mt, manifest, false),
			blobPath: serve("application/octet-stream", cfg[:len(cfg)-1], true),
		}, policy.ErrInvalidImage},
		{"manifest bytes do not match the digest asked for", map[string]http.HandlerFunc{
			"/v2/acme/x/manifests/" + mDigest.String(): serve(mt, append(append([]byte{}, manifest...), '\n'), false),
		}, policy.ErrInvalidImage},
		{"manifest is truncated JSON", tagged(mt, manifest[:len(manifest)/2]), policy.ErrInvalidImage},
		{"manifest is empty", tagged(mt, nil), policy.ErrInvalidImage},
		{"index is truncated JSON", tagged(string(types.OCIImageIndex), indexManifest(t, descriptorOf(manifest, types.OCIManifestSchema1))[:40]), policy.ErrInvalidImage},
		{"config embedded in the manifest does not match its digest", tagged(mt, func() []byte {
			d := cfgDesc
			d.Data = other
			return imageManifest(t, d)
		}()), policy.ErrInvalidImage},
		{"manifest is an HTML page with status 200", map[string]http.HandlerFunc{
			"/v2/acme/x/manifests/" + mDigest.String(): serve("text/html", []byte("<html>sign in</html>"), false),
		}, policy.ErrInvalidImage},
		{"manifest body cut by the network", map[string]http.HandlerFunc{
			"/v2/acme/x/manifests/" + mDigest.String(): cut(mt, manifest),
		}, policy.ErrUnavailable},
		{"config body cut by the network", map[string]http.HandlerFunc{
			"/v2/acme/x/manifests/" + mDigest.String(): serve(mt, manifest, false),
			blobPath: cut("application/octet-stream", cfg),
		}, policy.ErrUnavailable},
	}
	t.Run("config embedded in the manifest", func(t *testing.T) {
		d := cfgDesc
		d.Data = cfg
		srv := newExactServer(t, tagged(mt, imageManifest(t, d))) // no blob to fetch
		ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/acme/x:1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		img, err := resolve(t, newClient(), ref)
		if err != nil || len(img.Platforms) != 1 || img.Platforms[0].History[0].CreatedBy != "RUN make" {
			t.Errorf("Resolve = %+v, %v; want the embedded config's image", img, err)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newExactServer(t, tt.routes)
			ident := "@" + mDigest.String()
			if _, ok := tt.routes["/v2/acme/x/manifests/1"]; ok {
				ident = ":1"
			}
			ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/acme/x"+ident, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			if re := resolveErr(t, newClient(), ref); re.Kind != tt.want {
				t.Errorf("Resolve = %v, want kind %s", re, tt.want)
			}
		})
	}
}
