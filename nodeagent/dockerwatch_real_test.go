package nodeagent_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"buildguard.dev/buildguard/e2e"
	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/nodeagent"
)

// TestDockerWatcherRetagIsNotABuild runs the Docker watcher against a
// real dockerd (Debian's docker.io): an image pulled from a registry, an
// image built elsewhere and loaded with docker load, and an image that was
// on the node before the watch began are tagged on the node, and none of
// them is reported as a build; docker import and a classic docker build
// made on the node are.
func TestDockerWatcherRetagIsNotABuild(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("dockerd needs root")
	}
	if _, err := exec.LookPath("dockerd"); err != nil {
		t.Skip("dockerd is not installed (Debian's docker.io)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	d, err := e2e.StartDockerd(ctx, filepath.Join(t.TempDir(), "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dockerd's log:\n%s", d.Proc.Tail(4000))
		}
	})
	platform := &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	load := func(ref string, created time.Time) string {
		t.Helper()
		img := testregistry.Build(t, testregistry.Image{Created: created, Platform: platform})
		tag, err := name.NewTag(ref)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := tarball.Write(tag, img, &buf); err != nil {
			t.Fatal(err)
		}
		if err := d.Load(ctx, &buf); err != nil {
			t.Fatal(err)
		}
		cfg, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		return cfg.String()
	}

	// Built by CI a minute ago and loaded while no agent watched.
	before := load("ci.example/shop/web:1", time.Now().Add(-time.Minute))

	docker, err := nodeagent.NewDocker(d.Host)
	if err != nil {
		t.Fatal(err)
	}
	w := &nodeagent.DockerWatcher{Docker: docker, Replay: time.Millisecond, Settle: 100 * time.Millisecond}
	out := make(chan nodeagent.BuildInfo, 16)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { w.Run(wctx, out); close(done) }()
	defer func() { stop(); <-done }()

	// docker import: a new image, from no registry: a build.
	if err := d.ImportBusybox(ctx, "local/busybox:1"); err != nil {
		t.Fatal(err)
	}
	// A pipeline image pulled from a registry and tagged.
	reg := testregistry.New(t)
	reg.Push(t, "shop/api:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-time.Minute), Platform: platform}))
	if err := d.Pull(ctx, reg.Host+"/shop/api:1"); err != nil {
		t.Fatal(err)
	}
	if err := d.Tag(ctx, reg.Host+"/shop/api:1", "shop/api:prod"); err != nil {
		t.Fatal(err)
	}
	// A pipeline image saved, copied and loaded just now, and tagged.
	loaded := load("ci.example/shop/worker:1", time.Now())
	if err := d.Tag(ctx, loaded, "shop/worker:prod"); err != nil {
		t.Fatal(err)
	}
	// The image on the node before the watch, tagged.
	if err := d.Tag(ctx, before, "shop/web:prod"); err != nil {
		t.Fatal(err)
	}
	// A build on the node, last: when it is reported, every image
	// tagged before it has been examined.
	built, err := d.Build(ctx, "local/app:1", "FROM local/busybox:1\nRUN echo built > /built\n")
	if err != nil {
		t.Fatal(err)
	}

	got := map[string]nodeagent.BuildInfo{}
	deadline := time.After(2 * time.Minute)
	for got[built].ImageID == "" {
		select {
		case b := <-out:
			got[b.ImageID] = b
		case <-deadline:
			t.Fatalf("the build %s was not reported within 2m; reported: %v", built, got)
		}
	}
	// Anything examined late would come within a few settle times.
	quiet := time.After(time.Second)
drain:
	for {
		select {
		case b := <-out:
			got[b.ImageID] = b
		case <-quiet:
			break drain
		}
	}
	if b := got[built]; b.Tool != "docker" || len(b.ContainerIDs) != 1 {
		t.Errorf("the classic build: %+v, want tool docker and its step container", b)
	}
	imported := 0
	for id, b := range got {
		switch {
		case id == built:
		case b.Tool == "docker-import" && slices.Contains(b.Tags, "local/busybox:1"):
			imported++
		case id == before:
			t.Errorf("tagging an image on the node before the watch reported as a build: %+v", b)
		case id == loaded:
			t.Errorf("docker load of an image built elsewhere reported as a build: %+v", b)
		default:
			t.Errorf("unexpected build (the pulled image?): %+v", b)
		}
	}
	if imported != 1 {
		t.Errorf("docker import reported %d times, want once", imported)
	}
}
