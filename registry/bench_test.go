package registry_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"buildguard.dev/buildguard/registry"
)

// benchCachedImages is how many images BenchmarkMemoryPerCachedImage
// caches, whatever b.N.
const benchCachedImages = 2000

// BenchmarkCachedResolve measures Resolve when the image is in the cache:
// by digest (the digest cache) and by tag (the tag cache, then the digest
// cache). No registry request may happen.
func BenchmarkCachedResolve(b *testing.B) {
	srv, counter := benchRegistry(b)
	host := benchHost(srv)
	d := benchPush(b, host+"/acme/app:v1", benchImage(b, 0))
	// A tag TTL longer than any -benchtime, so the tag stays cached.
	c := registry.New(registry.WithTransport(srv.Client().Transport), registry.WithTagTTL(time.Hour))
	for _, bc := range []struct{ name, ref string }{
		{"digest", d.String()},
		{"tag", host + "/acme/app:v1"},
	} {
		req := benchRequest(b, bc.ref)
		if _, err := c.Resolve(b.Context(), req); err != nil {
			b.Fatalf("Resolve(%s) = %v", bc.ref, err)
		}
		b.Run(bc.name, func(b *testing.B) {
			before := counter.total.Load()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Resolve(b.Context(), req); err != nil {
					b.Fatalf("Resolve(%s) = %v", bc.ref, err)
				}
			}
			if n := counter.total.Load() - before; n > 0 {
				b.Errorf("%d registry requests while resolving a cached image, want 0", n)
			}
		})
		b.Run(bc.name+"-parallel", func(b *testing.B) {
			before := counter.total.Load()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.Resolve(b.Context(), req); err != nil {
						b.Errorf("Resolve(%s) = %v", bc.ref, err)
						return
					}
				}
			})
			if n := counter.total.Load() - before; n > 0 {
				b.Errorf("%d registry requests while resolving a cached image, want 0", n)
			}
		})
	}
}

// BenchmarkMemoryPerCachedImage reports the heap one cached image takes:
// benchCachedImages distinct images with realistic configs (15 history
// entries, 10 labels) are resolved by digest through one Client, after a
// first image that sets up the connection and the repository's
// authenticated transport. It reports their weight (CachedBytes, which
// the cache is bounded by) beside it. ns/op is the time to look all of
// them up.
func BenchmarkMemoryPerCachedImage(b *testing.B) {
	srv, _ := benchRegistry(b)
	host := benchHost(srv)
	reqs := make([]registry.Request, benchCachedImages+1)
	var wg sync.WaitGroup
	next := atomic.Int64{}
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(reqs) {
					return
				}
				img, err := benchImageErr(i)
				if err != nil {
					errs <- err
					return
				}
				d, err := benchPushErr(fmt.Sprintf("%s/acme/app:build-%d", host, i), img)
				if err != nil {
					errs <- err
					return
				}
				reqs[i] = registry.Request{Ref: d, Insecure: true}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	primer, rest := reqs[0], reqs[1:]

	tr := srv.Client().Transport
	var perImage, weight float64
	var before, after runtime.MemStats
	for b.Loop() {
		b.StopTimer()
		c := registry.New(registry.WithTransport(tr), registry.WithMaxImages(len(reqs)))
		if _, err := c.Resolve(b.Context(), primer); err != nil {
			b.Fatalf("Resolve(%s) = %v", primer.Ref, err)
		}
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		w0 := c.CachedBytes()
		for _, r := range rest {
			if _, err := c.Resolve(b.Context(), r); err != nil {
				b.Fatalf("Resolve(%s) = %v", r.Ref, err)
			}
		}
		b.StopTimer()
		w := c.CachedBytes() - w0
		runtime.GC()
		runtime.ReadMemStats(&after)
		if got := c.CachedImages(); got != len(reqs) {
			b.Fatalf("CachedImages() = %d, want %d", got, len(reqs))
		}
		runtime.KeepAlive(c)
		perImage += float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(len(rest))
		weight += float64(w) / float64(len(rest))
		b.StartTimer()
	}
	b.ReportMetric(perImage/float64(b.N), "B/cached-image")
	b.ReportMetric(weight/float64(b.N), "weight-B/cached-image")
}

// BenchmarkColdResolve counts the registry requests of a lookup with a
// cold cache. Each iteration takes a fresh Client and resolves an image
// (timed: ns/op) and then a second image of the same repository (not
// timed). The first lookup pays go-containerregistry's handshake, a
// GET /v2/ once per repository and Client; the second does not.
func BenchmarkColdResolve(b *testing.B) {
	srv, counter := benchRegistry(b)
	host := benchHost(srv)
	d1 := benchPush(b, host+"/acme/app:v1", benchImage(b, 1))
	d2 := benchPush(b, host+"/acme/app:v2", benchImage(b, 2))
	tr := srv.Client().Transport
	for _, bc := range []struct{ kind, first, second string }{
		{"digest", d1.String(), d2.String()},
		{"tag", host + "/acme/app:v1", host + "/acme/app:v2"},
	} {
		b.Run(bc.kind, func(b *testing.B) {
			first, second := benchRequest(b, bc.first), benchRequest(b, bc.second)
			var cold, handshake, warm int64
			var warmTime time.Duration
			for b.Loop() {
				b.StopTimer()
				c := registry.New(registry.WithTransport(tr))
				n0, p0 := counter.total.Load(), counter.pings.Load()
				b.StartTimer()
				if _, err := c.Resolve(b.Context(), first); err != nil {
					b.Fatalf("Resolve(%s) = %v", bc.first, err)
				}
				b.StopTimer()
				n1, p1 := counter.total.Load(), counter.pings.Load()
				start := time.Now()
				if _, err := c.Resolve(b.Context(), second); err != nil {
					b.Fatalf("Resolve(%s) = %v", bc.second, err)
				}
				warmTime += time.Since(start)
				n2 := counter.total.Load()
				cold += n1 - n0
				handshake += p1 - p0
				warm += n2 - n1
				b.StartTimer()
			}
			n := float64(b.N)
			b.ReportMetric(float64(cold)/n, "requests/cold-"+bc.kind+"-image")
			b.ReportMetric(float64(handshake)/n, "requests/handshake")
			b.ReportMetric(float64(warm)/n, "requests/warm-handshake-"+bc.kind+"-image")
			b.ReportMetric(float64(warmTime.Nanoseconds())/n, "ns/warm-handshake-"+bc.kind+"-image")
		})
	}
}

// benchCounter counts the requests a registry receives.
type benchCounter struct {
	inner http.Handler
	total atomic.Int64
	pings atomic.Int64 // GET /v2/
}

func (c *benchCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.total.Add(1)
	if r.URL.Path == "/v2/" {
		c.pings.Add(1)
	}
	c.inner.ServeHTTP(w, r)
}

// benchRegistry serves an in-memory registry over plain HTTP on loopback.
func benchRegistry(tb testing.TB) (*httptest.Server, *benchCounter) {
	tb.Helper()
	c := &benchCounter{inner: ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))}
	srv := httptest.NewServer(c)
	tb.Cleanup(srv.Close)
	return srv, c
}

func benchHost(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "http://") }

// benchRequest is a lookup of ref on a plain-HTTP registry, as the engine
// makes it for a registry in registries.insecure.
func benchRequest(tb testing.TB, ref string) registry.Request {
	tb.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		tb.Fatal(err)
	}
	return registry.Request{Ref: r, Insecure: true}
}

func benchPush(tb testing.TB, ref string, img v1.Image) name.Digest {
	tb.Helper()
	d, err := benchPushErr(ref, img)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// benchPushErr pushes img to ref (a tag) and returns its digest reference.
func benchPushErr(ref string, img v1.Image) (name.Digest, error) {
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		return name.Digest{}, err
	}
	if err := remote.Write(tag, img); err != nil {
		return name.Digest{}, fmt.Errorf("pushing %s: %w", ref, err)
	}
	h, err := img.Digest()
	if err != nil {
		return name.Digest{}, err
	}
	return tag.Context().Digest(h.String()), nil
}

// benchLayers are the seven layers every benchmark image shares, so that
// pushing thousands of images uploads only their configs and manifests.
var benchLayers = sync.OnceValues(func() ([]v1.Layer, error) {
	ls := make([]v1.Layer, 7)
	for i := range ls {
		l, err := random.Layer(256, types.DockerLayer)
		if err != nil {
			return nil, err
		}
		ls[i] = l
	}
	return ls, nil
})

func benchImage(tb testing.TB, i int) v1.Image {
	tb.Helper()
	img, err := benchImageErr(i)
	if err != nil {
		tb.Fatal(err)
	}
	return img
}

// benchImageErr returns the i-th of a family of distinct images shaped
// like a Go service built with BuildKit on a Debian base: 15 history
// entries (7 of them layers) of realistic lengths and 10 OCI labels.
func benchImageErr(i int) (v1.Image, error) {
	layers, err := benchLayers()
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	version := fmt.Sprintf("1.%d.%d", i/100, i%100)
	commit := fmt.Sprintf("%040x", 0x9e3779b97f4a7c15*uint64(i+1))
	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Hour)
	at := func(m int) v1.Time { return v1.Time{Time: base.Add(time.Duration(m) * time.Minute)} }
	const bk = "buildkit.dockerfile.v0"
	cf.Created = at(9)
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"DEBIAN_FRONTEND=noninteractive",
			"APP_VERSION=" + version,
			"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
		},
		Entrypoint:   []string{"/usr/local/bin/app"},
		WorkingDir:   "/src",
		User:         "65532:65532",
		ExposedPorts: map[string]struct{}{"8080/tcp": {}},
		Labels: map[string]string{
			"org.opencontainers.image.created":       base.Format(time.RFC3339),
			"org.opencontainers.image.revision":      commit,
			"org.opencontainers.image.version":       version,
			"org.opencontainers.image.source":        "https://github.com/acme/app",
			"org.opencontainers.image.url":           "https://github.com/acme/app",
			"org.opencontainers.image.documentation": "https://acme.example.com/docs/app",
			"org.opencontainers.image.title":         "app",
			"org.opencontainers.image.description":   fmt.Sprintf("Acme application server, release %s", version),
			"org.opencontainers.image.licenses":      "Apache-2.0",
			"org.opencontainers.image.vendor":        "Acme Corp",
		},
	}
	cf.History = []v1.History{
		{Created: at(0), CreatedBy: fmt.Sprintf("/bin/sh -c #(nop) ADD file:%064x in / ", uint64(i)*0x100000001b3+7)},
		{Created: at(0), CreatedBy: `/bin/sh -c #(nop)  CMD ["bash"]`, EmptyLayer: true},
		{Created: at(1), CreatedBy: "ENV DEBIAN_FRONTEND=noninteractive", Comment: bk, EmptyLayer: true},
		{Created: at(2), CreatedBy: "RUN /bin/sh -c apt-get update && apt-get install -y --no-install-recommends ca-certificates tzdata libssl3 && rm -rf /var/lib/apt/lists/* # buildkit", Comment: bk},
		{Created: at(2), CreatedBy: "ENV APP_VERSION=" + version, Comment: bk, EmptyLayer: true},
		{Created: at(3), CreatedBy: "WORKDIR /src", Comment: bk, EmptyLayer: true},
		{Created: at(3), CreatedBy: "COPY go.mod go.sum ./ # buildkit", Comment: bk},
		{Created: at(4), CreatedBy: "RUN |2 TARGETOS=linux TARGETARCH=amd64 /bin/sh -c go mod download && go mod verify # buildkit", Comment: bk},
		{Created: at(5), CreatedBy: "COPY . . # buildkit", Comment: bk},
		{Created: at(8), CreatedBy: fmt.Sprintf(`RUN |2 TARGETOS=linux TARGETARCH=amd64 /bin/sh -c CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags="-s -w -X main.version=%s -X main.commit=%s" -o /out/app ./cmd/app # buildkit`, version, commit), Comment: bk},
		{Created: at(8), CreatedBy: "LABEL org.opencontainers.image.source=https://github.com/acme/app", Comment: bk, EmptyLayer: true},
		{Created: at(8), CreatedBy: "EXPOSE map[8080/tcp:{}]", Comment: bk, EmptyLayer: true},
		{Created: at(9), CreatedBy: "USER 65532:65532", Comment: bk, EmptyLayer: true},
		{Created: at(9), CreatedBy: "COPY /out/app /usr/local/bin/app # buildkit", Comment: bk},
		{Created: at(9), CreatedBy: `ENTRYPOINT ["/usr/local/bin/app"]`, Comment: bk, EmptyLayer: true},
	}
	return mutate.ConfigFile(img, cf)
}
