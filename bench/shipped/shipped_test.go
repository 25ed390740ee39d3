package main

import (
	"io"
	"log"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"

	"buildguard.dev/buildguard/registry"
)

func TestLeastSquares(t *testing.T) {
	for _, tc := range []struct {
		xs, ys []float64
		want   float64
	}{
		{[]float64{1, 3, 6}, []float64{100, 118, 145}, 9},
		{[]float64{1, 3}, []float64{100, 100}, 0},
		{[]float64{2, 2}, []float64{1, 5}, 0}, // no spread: no slope
	} {
		if got := leastSquares(tc.xs, tc.ys); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("leastSquares(%v, %v) = %v, want %v", tc.xs, tc.ys, got, tc.want)
		}
	}
}

func TestProcessFigures(t *testing.T) {
	// Burn some CPU so that the process has used at least a tick.
	deadline := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(deadline) {
	}
	cpu, err := processCPU(os.Getpid())
	if err != nil || cpu <= 0 {
		t.Errorf("processCPU(self) = %v, %v; want a positive duration", cpu, err)
	}
	rss, err := processRSS(os.Getpid())
	if err != nil || rss < 1<<20 {
		t.Errorf("processRSS(self) = %v, %v; want at least 1 MiB", rss, err)
	}
	if _, err := processCPU(-1); err == nil {
		t.Error("processCPU(-1): want an error")
	}
}

func TestParseFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-concurrency", "0"},
		{"-containers", "1,x"},
		{"-targets", "postgres"},
		{"-rounds", "0"},
		{"-cache-fill", "-1"},
		{"extra"},
	} {
		if _, err := parseFlags(args, os.Stderr); err == nil {
			t.Errorf("parseFlags(%q): want an error", args)
		}
	}
	c, err := parseFlags(nil, os.Stderr)
	if err != nil || len(c.concurrency) != 2 || len(c.containers) != 3 || len(c.targets) != 2 {
		t.Errorf("parseFlags(nil) = %+v, %v", c, err)
	}
}

// TestFillImages: -cache-fill's images make the cache entries it says,
// and buildguard's registry client reads them as images of 10 steps
// and indexes of two platforms.
func TestFillImages(t *testing.T) {
	e := &env{blobs: ggcrregistry.NewInMemoryBlobHandler()}
	e.registry = httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)), ggcrregistry.WithBlobHandler(e.blobs)))
	defer e.registry.Close()
	const n = 66 // the 20th, 40th and 60th images are indexes
	set, err := e.pushFillImages(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	if set.entries != n || set.refs != n-2*set.indexes || set.indexes != 3 || len(set.bodies) != (set.refs+fillContainers-1)/fillContainers {
		t.Fatalf("pushFillImages(%d) = %d entries, %d references, %d indexes, %d bodies; want %d entries, 3 indexes", n, set.entries, set.refs, set.indexes, len(set.bodies), n)
	}
	c := registry.New(registry.WithTransport(e.registry.Client().Transport))
	host := strings.TrimPrefix(e.registry.URL, "http://")
	for _, ref := range []string{host + "/fill/svc-0:v1.0.0", host + "/fill/svc-0:v1.0.19", host + "/fill/svc-1:v1.1.0"} {
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		img, err := c.Resolve(t.Context(), registry.Request{Ref: r, Insecure: true})
		if err != nil {
			t.Fatalf("Resolve(%s) = %v", ref, err)
		}
		wantPlatforms := 1
		if img.Index {
			wantPlatforms = 2
		}
		if len(img.Platforms) != wantPlatforms || len(img.Platforms[0].History) != 10 || len(img.Platforms[0].Config.Env) != 3 {
			t.Errorf("Resolve(%s) = %d platforms, the first of %d steps and %d variables; want %d, 10 and 3", ref, len(img.Platforms), len(img.Platforms[0].History), len(img.Platforms[0].Config.Env), wantPlatforms)
		}
	}
	if got := c.CachedImages(); got != 5 {
		t.Errorf("%d cache entries after two images and an index, want 5", got)
	}
}
