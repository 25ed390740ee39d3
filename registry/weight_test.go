package registry_test

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"buildguard.dev/buildguard/registry"
)

// weightImages is how many images TestImageBytesBoundsHeap caches: enough
// that a few new connections do not move the figure by more than a few
// percent.
const weightImages = 300

// TestImageBytesBoundsHeap: the weight the cache bounds its images by
// (CachedBytes, of ImageBytes and the cache's entries) is at least the
// heap they take, measured with runtime.MemStats around caching
// weightImages images of BenchmarkMemoryPerCachedImage's shape, one in
// five of them an index of two platforms; and not so far above it that
// the cache's byte bound would evict images long before it holds that
// much.
func TestImageBytesBoundsHeap(t *testing.T) {
	srv, _ := benchRegistry(t)
	host := benchHost(srv)
	reqs := make([]registry.Request, weightImages+1)
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(reqs) {
					return
				}
				r, err := pushWeightImage(host, i)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				reqs[i] = r
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		t.Fatal(err)
	}
	// The first lookup sets up the connection and the repository's
	// authenticated transport, which are not the images'.
	c := registry.New(registry.WithTransport(srv.Client().Transport), registry.WithMaxImages(3*len(reqs)))
	if _, err := c.Resolve(t.Context(), reqs[0]); err != nil {
		t.Fatal(err)
	}
	// Images first, then indexes, whose images are cached as entries of
	// their own and share what the index holds of them.
	var images, indexes []registry.Request
	for i, r := range reqs[1:] {
		if isWeightIndex(i + 1) {
			indexes = append(indexes, r)
		} else {
			images = append(images, r)
		}
	}
	for _, set := range []struct {
		name string
		reqs []registry.Request
	}{{"images", images}, {"indexes", indexes}} {
		entries0, weight0 := c.CachedImages(), c.CachedBytes()
		var before, after runtime.MemStats
		// Twice: what sync.Pools held before the first is freed by the
		// second, not during the lookups.
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&before)
		for _, r := range set.reqs {
			if _, err := c.Resolve(t.Context(), r); err != nil {
				t.Fatalf("Resolve(%s) = %v", r.Ref, err)
			}
		}
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&after)
		entries, weight := c.CachedImages()-entries0, c.CachedBytes()-weight0
		heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		t.Logf("%s, %d cache entries: heap %d B (%d B each), weight %d B (%d B each)", set.name, entries, heap, heap/int64(entries), weight, weight/int64(entries))
		if heap > weight {
			t.Errorf("%s: %d cache entries take %d B of heap, more than their weight of %d B: ImageBytes is not an upper bound", set.name, entries, heap, weight)
		}
		if weight > 4*heap {
			t.Errorf("%s: %d cache entries weigh %d B, more than 4 times the %d B of heap they take: the cache would evict long before its byte bound", set.name, entries, weight, heap)
		}
	}
	runtime.KeepAlive(c)
}

func isWeightIndex(i int) bool { return i%5 == 4 }

// pushWeightImage pushes the i-th image of benchImageErr's family, or
// for isWeightIndex(i) an index of it and its sibling for linux/arm64,
// and returns a request by digest for it.
func pushWeightImage(host string, i int) (registry.Request, error) {
	img, err := benchImageErr(i)
	if err != nil {
		return registry.Request{}, err
	}
	ref := fmt.Sprintf("%s/acme/app:build-%d", host, i)
	if !isWeightIndex(i) {
		d, err := benchPushErr(ref, img)
		return registry.Request{Ref: d, Insecure: true}, err
	}
	arm, err := benchImageErr(i + 1_000_000)
	if err != nil {
		return registry.Request{}, err
	}
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	r, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		return registry.Request{}, err
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		return registry.Request{}, fmt.Errorf("pushing %s: %w", ref, err)
	}
	h, err := idx.Digest()
	if err != nil {
		return registry.Request{}, err
	}
	return registry.Request{Ref: r.Context().Digest(h.String()), Insecure: true}, nil
}
