package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	corev1 "k8s.io/api/core/v1"

	"buildguard.dev/buildguard/bench/internal/reviewload"
	"buildguard.dev/buildguard/internal/benchreview"
)

// The shape of -cache-fill's images: images of fillVersions versions per
// repository; every fillIndexEvery-th image an index of two platforms,
// which the cache holds as three entries (the index and its two images);
// fillContainers images per Deployment, every other one by digest; the
// reviews sent by fillClients clients at once.
const (
	fillVersions   = 20
	fillIndexEvery = 20
	fillContainers = 8
	fillClients    = 2
)

// fillSet is what -cache-fill reviews: Deployments that run every image
// once.
type fillSet struct {
	bodies  []*benchreview.Body
	refs    int // image references in the bodies
	indexes int // of them, indexes
	entries int // cache entries the images take: 1 per image, 3 per index
}

// pushFillImages pushes images to e's registry until they make n cache
// entries, and returns the Deployments that run them. Configs go into
// the registry's blob store directly and manifests are PUT, so that
// pushing thousands takes seconds; the layers the manifests name are
// never fetched by buildguard, so they are not stored.
func (e *env) pushFillImages(ctx context.Context, n int) (*fillSet, error) {
	host := strings.TrimPrefix(e.registry.URL, "http://")
	put, ok := e.blobs.(ggcrregistry.BlobPutHandler)
	if !ok {
		return nil, errors.New("the registry's blob store cannot be written")
	}
	var refs []string
	set := &fillSet{}
	for i := 0; set.entries < n; i++ {
		index := i%fillIndexEvery == fillIndexEvery-1 && n-set.entries >= 3
		repo := fmt.Sprintf("fill/svc-%d", i/fillVersions)
		tag := fmt.Sprintf("v1.%d.%d", i/fillVersions, i%fillVersions)
		var manifest []byte
		var mt types.MediaType
		if !index {
			m, err := e.pushFillImage(ctx, put, repo, i, "amd64")
			if err != nil {
				return nil, err
			}
			manifest, mt = m, types.OCIManifestSchema1
			set.entries++
		} else {
			im := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
			for _, arch := range []string{"amd64", "arm64"} {
				m, err := e.pushFillImage(ctx, put, repo, i, arch)
				if err != nil {
					return nil, err
				}
				d := sha256.Sum256(m)
				h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(d[:])}
				if err := e.putManifest(ctx, repo, h.String(), types.OCIManifestSchema1, m); err != nil {
					return nil, err
				}
				im.Manifests = append(im.Manifests, v1.Descriptor{MediaType: types.OCIManifestSchema1, Size: int64(len(m)), Digest: h,
					Platform: &v1.Platform{OS: "linux", Architecture: arch}})
			}
			b, err := json.Marshal(im)
			if err != nil {
				return nil, err
			}
			manifest, mt = b, types.OCIImageIndex
			set.entries += 3
			set.indexes++
		}
		if err := e.putManifest(ctx, repo, tag, mt, manifest); err != nil {
			return nil, err
		}
		ref := host + "/" + repo + ":" + tag
		if i%2 == 1 {
			d := sha256.Sum256(manifest)
			ref = host + "/" + repo + "@sha256:" + hex.EncodeToString(d[:])
		}
		refs = append(refs, ref)
	}
	set.refs = len(refs)
	for len(refs) > 0 {
		k := min(fillContainers, len(refs))
		var cs []corev1.Container
		for j, ref := range refs[:k] {
			cs = append(cs, benchreview.Container(fmt.Sprintf("c%d", j), ref, int32(8080+j)))
		}
		refs = refs[k:]
		b, err := benchreview.NewBody(nil, cs)
		if err != nil {
			return nil, err
		}
		set.bodies = append(set.bodies, b)
	}
	return set, nil
}

// pushFillImage stores the config of the i-th image of repo for arch and
// returns its manifest. It is shaped like a Go service built with
// BuildKit on one of five Debian bases: 10 history entries (5 of them
// layers), the first two the base's, the build's own naming its version
// and commit; 4 OCI labels; an environment of 3 variables.
func (e *env) pushFillImage(ctx context.Context, put ggcrregistry.BlobPutHandler, repo string, i int, arch string) ([]byte, error) {
	base := i % 5
	version := fmt.Sprintf("1.%d.%d", i/fillVersions, i%fillVersions)
	commit := fmt.Sprintf("%040x", 0x9e3779b97f4a7c15*uint64(i+1))
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute)
	at := func(m int) v1.Time { return v1.Time{Time: t0.Add(time.Duration(m) * time.Minute)} }
	const bk = "buildkit.dockerfile.v0"
	cf := v1.ConfigFile{
		Architecture: arch, OS: "linux", Created: at(9),
		RootFS: v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Env: []string{
				"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
				"APP_VERSION=" + version,
			},
			Entrypoint: []string{"/usr/local/bin/app"},
			WorkingDir: "/src",
			User:       "65532:65532",
			Labels: map[string]string{
				"org.opencontainers.image.source":   "https://github.com/acme/" + strings.TrimPrefix(repo, "fill/"),
				"org.opencontainers.image.revision": commit,
				"org.opencontainers.image.version":  version,
				"org.opencontainers.image.created":  t0.Format(time.RFC3339),
			},
		},
		History: []v1.History{
			{Created: at(-10000 * base), CreatedBy: fmt.Sprintf("/bin/sh -c #(nop) ADD file:%064x in / ", 0x100000001b3*uint64(base+1))},
			{Created: at(-10000 * base), CreatedBy: `/bin/sh -c #(nop)  CMD ["bash"]`, EmptyLayer: true},
			{Created: at(2), CreatedBy: "RUN /bin/sh -c apt-get update && apt-get install -y --no-install-recommends ca-certificates tzdata && rm -rf /var/lib/apt/lists/* # buildkit", Comment: bk},
			{Created: at(2), CreatedBy: "ENV APP_VERSION=" + version, Comment: bk, EmptyLayer: true},
			{Created: at(3), CreatedBy: "WORKDIR /src", Comment: bk, EmptyLayer: true},
			{Created: at(3), CreatedBy: "COPY . . # buildkit", Comment: bk},
			{Created: at(8), CreatedBy: fmt.Sprintf(`RUN |2 TARGETOS=linux TARGETARCH=%s /bin/sh -c CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=%s -X main.commit=%s" -o /out/app ./cmd/app # buildkit`, arch, version, commit), Comment: bk},
			{Created: at(9), CreatedBy: "USER 65532:65532", Comment: bk, EmptyLayer: true},
			{Created: at(9), CreatedBy: "COPY /out/app /usr/local/bin/app # buildkit", Comment: bk},
			{Created: at(9), CreatedBy: `ENTRYPOINT ["/usr/local/bin/app"]`, Comment: bk, EmptyLayer: true},
		},
	}
	m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1}
	// The layers: the base's, then the build's own.
	for k, h := range []int{-1 - base, -1 - base, i, i, i} {
		d := sha256.Sum256(fmt.Appendf(nil, "layer %d %d %s", h, k, arch))
		diff := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(d[:])}
		cf.RootFS.DiffIDs = append(cf.RootFS.DiffIDs, diff)
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: types.OCILayer, Size: int64(1<<20 + 4096*k), Digest: diff})
	}
	raw, err := json.Marshal(cf)
	if err != nil {
		return nil, err
	}
	d := sha256.Sum256(raw)
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(d[:])}
	if err := put.Put(ctx, repo, h, io.NopCloser(bytes.NewReader(raw))); err != nil {
		return nil, err
	}
	m.Config = v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(raw)), Digest: h}
	return json.Marshal(m)
}

// putManifest PUTs manifest to repo's manifests/ref (a tag or digest).
func (e *env) putManifest(ctx context.Context, repo, ref string, mt types.MediaType, manifest []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, e.registry.URL+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(manifest))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", string(mt))
	resp, err := e.registry.Client().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("PUT %s:%s: status %d: %s", repo, ref, resp.StatusCode, b)
	}
	return nil
}

// fillResult is one round's memory figures of one target.
type fillResult struct {
	round  int
	target string
	// Resident set before the fill (after a GC), right after it, and
	// after a GC.
	rssBefore, rssAfter, rssAfterGC int64
	// Live Go heap (HeapAlloc after a GC) before and after the fill.
	heapBefore, heapAfter int64
	fill                  time.Duration
	// gets are the manifest and blob GETs of a second pass over every
	// image: 0 when the cache kept them all.
	gets int64
	load string
}

func (r fillResult) perImage(before, after int64, n int) float64 {
	return float64(after-before) / float64(n)
}

// runCacheFill is -cache-fill: per round, each target (their order
// rotating) is started, warmed with one review, filled, measured and
// stopped.
func runCacheFill(ctx context.Context, cfg config, out io.Writer) error {
	e, err := newEnv(ctx, cfg, out)
	if err != nil {
		return err
	}
	defer e.close()
	start := time.Now()
	set, err := e.pushFillImages(ctx, cfg.cacheFill)
	if err != nil {
		return fmt.Errorf("pushing the images: %w", err)
	}
	specs := e.targetSpecs()
	fmt.Fprintf(out, "- images: %d references (%d of them two-platform indexes), %d cache entries, in %d repositories of %d versions; pushed in %s\n",
		set.refs, set.indexes, set.entries, (set.refs+fillVersions-1)/fillVersions, fillVersions, time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(out, "- fill: %d Deployments of %d containers (every other image by digest, the rest by tag), %d clients at once, over HTTP/1.1 keep-alive and TLS on 127.0.0.1\n",
		len(set.bodies), fillContainers, fillClients)
	for _, sp := range specs {
		fmt.Fprintf(out, "- %s: `buildguard %s --listen ADDR --debug-listen ADDR`\n", sp.name, strings.Join(redactDir(sp.args[1:], e.dir), " "))
	}
	fmt.Fprintf(out, "- per round and target: a fresh process; one review of another image (the warm-up); GC and read (before); %d reviews (the fill); read; GC and read (after); the same reviews again, counting the registry's GETs\n\n", len(set.bodies))

	var results []fillResult
	for round := range cfg.rounds {
		for k := range specs {
			sp := specs[(k+round)%len(specs)]
			if err := ctx.Err(); err != nil {
				return err
			}
			r, err := e.fillOne(ctx, sp, set)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", round+1, sp.name, err)
			}
			r.round = round + 1
			results = append(results, r)
		}
		fmt.Fprintf(os.Stderr, "round %d of %d done, load average %s\n", round+1, cfg.rounds, loadAverage())
	}
	fmt.Fprintf(out, "- finished %s, load average %s\n\n", time.Now().UTC().Format(time.RFC3339), loadAverage())

	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	fmt.Fprintf(out, "| round | target | RSS before | RSS after fill | RSS after GC | heap before | heap after | heap/entry | RSS after GC − before, /entry | fill | GETs of the second pass | load avg |\n")
	fmt.Fprintf(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	failed := 0
	for _, r := range results {
		gets := itoa(int(r.gets))
		if r.gets > 0 {
			gets += " (evicted)"
			failed++
		}
		fmt.Fprintf(out, "| %d | %s | %s | %s | %s | %s | %s | %.0f B | %.0f B | %s | %s | %s |\n", r.round, r.target,
			mib(r.rssBefore), mib(r.rssAfter), mib(r.rssAfterGC), mib(r.heapBefore), mib(r.heapAfter),
			r.perImage(r.heapBefore, r.heapAfter, set.entries), r.perImage(r.rssBefore, r.rssAfterGC, set.entries), r.fill.Round(time.Millisecond), gets, r.load)
	}
	fmt.Fprintf(out, "\n| median of %d rounds | RSS after fill | RSS after GC | heap after | heap/entry | heap/reference | RSS/entry |\n", cfg.rounds)
	fmt.Fprintf(out, "|---|---:|---:|---:|---:|---:|---:|\n")
	for _, sp := range specs {
		var rs []fillResult
		for _, r := range results {
			if r.target == sp.name {
				rs = append(rs, r)
			}
		}
		m := func(f func(fillResult) float64) float64 {
			xs := make([]float64, len(rs))
			for i, r := range rs {
				xs[i] = f(r)
			}
			return reviewload.Median(xs)
		}
		fmt.Fprintf(out, "| %s | %s | %s | %s | %.0f B | %.0f B | %.0f B |\n", sp.name,
			mib(int64(m(func(r fillResult) float64 { return float64(r.rssAfter) }))),
			mib(int64(m(func(r fillResult) float64 { return float64(r.rssAfterGC) }))),
			mib(int64(m(func(r fillResult) float64 { return float64(r.heapAfter) }))),
			m(func(r fillResult) float64 { return r.perImage(r.heapBefore, r.heapAfter, set.entries) }),
			m(func(r fillResult) float64 { return r.perImage(r.heapBefore, r.heapAfter, set.refs) }),
			m(func(r fillResult) float64 { return r.perImage(r.rssBefore, r.rssAfterGC, set.entries) }))
	}
	fmt.Fprintf(out, "\nheap is the Go heap's live bytes (HeapAlloc) right after a GC the benchmark asks for on --debug-listen (/debug/pprof/heap?gc=1); RSS is VmRSS from /proc/PID/status. Per entry is (after − before) / %d cache entries, everything the process holds for them included (the registry client's cache, the tag cache, parsed references, the policies' memos, per-repository transports).\n", set.entries)
	if failed > 0 {
		return &reviewload.FailedRunsError{N: failed, Where: "table (a second pass fetched images again: the cache did not keep them all)"}
	}
	return nil
}

// fillOne starts sp, fills it with set and measures it.
func (e *env) fillOne(ctx context.Context, sp targetSpec, set *fillSet) (fillResult, error) {
	r := fillResult{target: sp.name, load: loadAverage()}
	t, err := e.startBuildguard(ctx, sp.name, sp.bin, sp.args)
	if err != nil {
		return r, err
	}
	defer t.stop()
	// The warm-up: TLS, the puller, the policy's first decision.
	warm := e.bodies[e.cfg.containers[0]]
	if err := e.review(ctx, t, warm, e.uids.Next()); err != nil {
		return r, fmt.Errorf("warm-up review: %w", err)
	}
	if r.heapBefore, err = e.gcHeap(ctx, t); err != nil {
		return r, err
	}
	if r.rssBefore, err = processRSS(t.pid()); err != nil {
		return r, err
	}
	start := time.Now()
	if err := e.sendAll(ctx, t, set); err != nil {
		return r, fmt.Errorf("fill: %w", err)
	}
	r.fill = time.Since(start)
	if r.rssAfter, err = processRSS(t.pid()); err != nil {
		return r, err
	}
	if r.heapAfter, err = e.gcHeap(ctx, t); err != nil {
		return r, err
	}
	if r.rssAfterGC, err = processRSS(t.pid()); err != nil {
		return r, err
	}
	if e.cfg.profileDir != "" {
		if err := e.saveHeapProfile(ctx, t); err != nil {
			fmt.Fprintf(os.Stderr, "heap profile of %s: %v\n", t.name, err)
		}
	}
	gets := e.requests.gets.Load()
	if err := e.sendAll(ctx, t, set); err != nil {
		return r, fmt.Errorf("second pass: %w", err)
	}
	r.gets = e.requests.gets.Load() - gets
	return r, nil
}

// sendAll sends every review of set to t from fillClients clients; each
// must be allowed.
func (e *env) sendAll(ctx context.Context, t *target, set *fillSet) error {
	var next atomic.Int64
	errs := make([]error, fillClients)
	var wg sync.WaitGroup
	for c := range fillClients {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(set.bodies) {
					return
				}
				if err := e.review(ctx, t, set.bodies[i], e.uids.Next()); err != nil {
					errs[c] = fmt.Errorf("review %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(append(errs, ctx.Err())...)
}

// gcHeap has t collect its garbage (the heap profile handler of
// --debug-listen does with gc=1) and returns the live heap then,
// HeapAlloc of the runtime.MemStats the profile ends with.
func (e *env) gcHeap(ctx context.Context, t *target) (int64, error) {
	body, err := e.debugGet(ctx, t, "/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		return 0, err
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapAlloc = "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no HeapAlloc in the heap profile")
}

// saveHeapProfile saves t's heap profile (after a GC) in -profile's
// directory.
func (e *env) saveHeapProfile(ctx context.Context, t *target) error {
	body, err := e.debugGet(ctx, t, "/debug/pprof/heap?gc=1")
	if err != nil {
		return err
	}
	defer body.Close()
	if err := os.MkdirAll(e.cfg.profileDir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(e.cfg.profileDir, fmt.Sprintf("heap-%s-%d.pprof", t.name, time.Now().Unix())))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, body)
	return err
}

func (e *env) debugGet(ctx context.Context, t *target, path string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+t.debug+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	return resp.Body, nil
}
