package nodeagent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	ctrevents "github.com/containerd/containerd/api/events"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	ctrtypes "github.com/containerd/containerd/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/nodeagent/conns"
	"buildguard.dev/buildguard/nodereport"
)

// fakeContainerd is an in-memory containerd: image records, blobs and
// their labels, of one namespace.
type fakeContainerd struct {
	images map[string]ctrImage
	blobs  map[string][]byte
	labels map[string]map[string]string
	reads  int
	// events are sent to each subscriber, which then waits for its end.
	events []ctrEnvelope
}

func newFakeContainerd() *fakeContainerd {
	return &fakeContainerd{images: map[string]ctrImage{}, blobs: map[string][]byte{}, labels: map[string]map[string]string{}}
}

func (f *fakeContainerd) Subscribe(ctx context.Context, _ []string, fn func(*ctrEnvelope) error) error {
	if err := fn(nil); err != nil {
		return err
	}
	for i := range f.events {
		if err := fn(&f.events[i]); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return ctx.Err()
}

func (f *fakeContainerd) Image(_ context.Context, _, name string) (ctrImage, error) {
	img, ok := f.images[name]
	if !ok {
		return ctrImage{}, &ContainerdError{Method: "Get", Code: codes.NotFound, Msg: name}
	}
	return img, nil
}

func (f *fakeContainerd) Images(context.Context, string) ([]ctrImage, error) {
	var out []ctrImage
	for _, img := range f.images {
		out = append(out, img)
	}
	return out, nil
}

func (f *fakeContainerd) Info(_ context.Context, _, d string) (ctrContentInfo, error) {
	if _, ok := f.blobs[d]; !ok {
		return ctrContentInfo{}, &ContainerdError{Method: "Info", Code: codes.NotFound, Msg: d}
	}
	return ctrContentInfo{Digest: d, Labels: f.labels[d]}, nil
}

func (f *fakeContainerd) Read(_ context.Context, _, d string, max int64) ([]byte, error) {
	f.reads++
	b, ok := f.blobs[d]
	if !ok {
		return nil, &ContainerdError{Method: "Read", Code: codes.NotFound, Msg: d}
	}
	if int64(len(b)) > max {
		return nil, ErrTooLarge
	}
	return b, nil
}

// put stores v (JSON, or []byte as is) and returns its descriptor.
func (f *fakeContainerd) put(t *testing.T, mediaType string, v any) ctrDescriptor {
	t.Helper()
	b, ok := v.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	sum := sha256.Sum256(b)
	d := "sha256:" + hex.EncodeToString(sum[:])
	f.blobs[d] = b
	return ctrDescriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
}

func testConfig(created time.Time, steps ...string) map[string]any {
	var hist []map[string]any
	for _, s := range steps {
		hist = append(hist, map[string]any{"created": created, "created_by": s})
	}
	return map[string]any{"architecture": "amd64", "os": "linux", "created": created, "history": hist,
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{}}}
}

func testManifest(mt string, cfg ctrDescriptor) map[string]any {
	return map[string]any{"schemaVersion": 2, "mediaType": mt,
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.Digest, "size": cfg.Size}}
}

func TestContainerdExamine(t *testing.T) {
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	created := at.Add(-10 * time.Minute)
	type setup struct {
		f      *fakeContainerd
		cfg    ctrDescriptor
		target ctrDescriptor
		img    ctrImage
	}
	// plain: an OCI manifest of a config made 10 minutes before.
	plain := func(t *testing.T, cfg any) setup {
		f := newFakeContainerd()
		c := f.put(t, "application/vnd.oci.image.config.v1+json", cfg)
		m := f.put(t, mediaOCIManifest, testManifest(mediaOCIManifest, c))
		img := ctrImage{Name: "docker.io/library/app:1", Target: m, Labels: map[string]string{}, UpdatedAt: at}
		f.images[img.Name] = img
		return setup{f, c, m, img}
	}
	tests := []struct {
		name      string
		setup     func(t *testing.T) setup
		want      bool
		wantErr   error
		wantStart time.Time
	}{
		{"built here", func(t *testing.T) setup { return plain(t, testConfig(created, "RUN make")) }, true, nil, created},
		{"earliest recent step is the start", func(t *testing.T) setup {
			cfg := testConfig(created, "RUN a")
			cfg["history"] = []map[string]any{
				{"created": at.Add(-90 * 24 * time.Hour), "created_by": "ADD base.tar /"},
				{"created": at.Add(-20 * time.Minute), "created_by": "RUN a"},
				{"created_by": "CMD x", "empty_layer": true},
			}
			return plain(t, cfg)
		}, true, nil, at.Add(-20 * time.Minute)},
		{"old image", func(t *testing.T) setup { return plain(t, testConfig(at.Add(-3*time.Hour), "RUN make")) }, false, nil, time.Time{}},
		{"no created time", func(t *testing.T) setup {
			cfg := testConfig(created)
			delete(cfg, "created")
			return plain(t, cfg)
		}, false, nil, time.Time{}},
		{"manifest fetched from a registry", func(t *testing.T) setup {
			s := plain(t, testConfig(created, "RUN make"))
			s.f.labels[s.target.Digest] = map[string]string{"containerd.io/distribution.source.docker.io": "library/app"}
			return s
		}, false, nil, time.Time{}},
		{"config fetched from a registry", func(t *testing.T) setup {
			s := plain(t, testConfig(created, "RUN make"))
			s.f.labels[s.cfg.Digest] = map[string]string{"containerd.io/distribution.source.ghcr.io": "org/app"}
			return s
		}, false, nil, time.Time{}},
		{"a base layer from a registry is no evidence", func(t *testing.T) setup {
			s := plain(t, testConfig(created, "RUN make"))
			s.f.labels["sha256:"+strings.Repeat("a", 64)] = map[string]string{"containerd.io/distribution.source.docker.io": "library/alpine"}
			return s
		}, true, nil, created},
		{"pulled by the CRI plugin", func(t *testing.T) setup {
			s := plain(t, testConfig(created, "RUN make"))
			s.img.Labels[criManaged] = "managed"
			s.f.images[s.img.Name] = s.img
			return s
		}, false, nil, time.Time{}},
		{"index: the node's platform", func(t *testing.T) setup {
			f := newFakeContainerd()
			armCfg := f.put(t, "application/vnd.oci.image.config.v1+json", testConfig(created, "RUN arm"))
			arm := f.put(t, mediaOCIManifest, testManifest(mediaOCIManifest, armCfg))
			c := f.put(t, "application/vnd.oci.image.config.v1+json", testConfig(created, "RUN make"))
			m := f.put(t, mediaOCIManifest, testManifest(mediaOCIManifest, c))
			idx := f.put(t, mediaOCIIndex, map[string]any{"schemaVersion": 2, "manifests": []map[string]any{
				{"mediaType": mediaOCIManifest, "digest": arm.Digest, "size": arm.Size, "platform": map[string]string{"os": "linux", "architecture": "arm64"}},
				{"mediaType": mediaOCIManifest, "digest": m.Digest, "size": m.Size, "platform": map[string]string{"os": "linux", "architecture": "amd64"}},
				{"mediaType": mediaOCIManifest, "digest": m.Digest, "size": m.Size, "platform": map[string]string{"os": "unknown", "architecture": "unknown"}},
			}})
			img := ctrImage{Name: "local/app:1", Target: idx, Labels: map[string]string{}}
			f.images[img.Name] = img
			return setup{f, c, idx, img}
		}, true, nil, created},
		{"index without the node's platform", func(t *testing.T) setup {
			f := newFakeContainerd()
			c := f.put(t, "application/vnd.oci.image.config.v1+json", testConfig(created))
			m := f.put(t, mediaOCIManifest, testManifest(mediaOCIManifest, c))
			idx := f.put(t, mediaDockerList, map[string]any{"schemaVersion": 2, "manifests": []map[string]any{
				{"mediaType": mediaOCIManifest, "digest": m.Digest, "size": m.Size, "platform": map[string]string{"os": "windows", "architecture": "amd64"}},
			}})
			img := ctrImage{Name: "local/app:1", Target: idx}
			f.images[img.Name] = img
			return setup{f, c, idx, img}
		}, false, errNotImage, time.Time{}},
		{"not an image (artifact config)", func(t *testing.T) setup {
			return plain(t, map[string]any{"created": created})
		}, false, errNotImage, time.Time{}},
		{"blob not its digest", func(t *testing.T) setup {
			s := plain(t, testConfig(created, "RUN make"))
			s.f.blobs[s.cfg.Digest] = []byte(`{"rootfs":{"type":"layers"},"created":"2026-12-01T11:59:00Z"}`)
			return s
		}, false, nil, time.Time{}},
		{"image gone", func(t *testing.T) setup {
			s := plain(t, testConfig(created, "RUN make"))
			delete(s.f.images, s.img.Name)
			return s
		}, false, nil, time.Time{}},
		{"config too large", func(t *testing.T) setup {
			f := newFakeContainerd()
			c := ctrDescriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: "sha256:" + strings.Repeat("b", 64), Size: maxBlob + 1}
			m := f.put(t, mediaOCIManifest, testManifest(mediaOCIManifest, c))
			img := ctrImage{Name: "local/app:1", Target: m}
			f.images[img.Name] = img
			return setup{f, c, m, img}
		}, false, ErrTooLarge, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.setup(t)
			w := &ContainerdWatcher{Client: s.f, Arch: "amd64", Clock: clocktest.New(at)}
			w.reported, w.examined, w.pending = map[string]time.Time{}, map[string]time.Time{}, map[ctrRef]ctrPending{}
			b, ok, err := w.examine(context.Background(), ctrRef{"default", s.img.Name}, at)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("examine = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if tt.name == "blob not its digest" {
				if err == nil || !strings.Contains(err.Error(), "hashes to") {
					t.Fatalf("examine = %v, want a digest mismatch", err)
				}
				return
			}
			var ce *ContainerdError
			if err != nil && !(errors.As(err, &ce) && ce.NotFound()) {
				t.Fatalf("examine: %v", err)
			}
			if ok != tt.want {
				t.Fatalf("examine = %+v, %v; want %v", b, ok, tt.want)
			}
			if !ok {
				return
			}
			want := BuildInfo{Tool: "containerd", ImageID: s.cfg.Digest, Tags: []string{s.img.Name}, Started: tt.wantStart, Finished: at}
			if b.ImageID != want.ImageID || b.Tool != want.Tool || !slices.Equal(b.Tags, want.Tags) || !b.Started.Equal(want.Started) || !b.Finished.Equal(want.Finished) || len(b.Steps) == 0 {
				t.Errorf("examine = %+v, want %+v", b, want)
			}
			// Examined once: the same record again reads nothing.
			reads := s.f.reads
			if _, ok, err := w.examine(context.Background(), ctrRef{"default", s.img.Name}, at); ok || err != nil || s.f.reads != reads {
				t.Errorf("examine again = %v, %v, %d reads; want false, nil, none", ok, err, s.f.reads-reads)
			}
		})
	}
}

func TestPullEvidence(t *testing.T) {
	tests := []struct {
		name   string
		img    ctrImage
		labels map[string]string
		want   string
	}{
		{"nothing", ctrImage{Name: "local/app:1"}, nil, ""},
		{"digest reference", ctrImage{Name: "docker.io/library/app@sha256:" + strings.Repeat("0", 64)}, nil, "a digest reference"},
		{"CRI", ctrImage{Name: "app:1", Labels: map[string]string{criManaged: "managed"}}, nil, "pulled by the CRI plugin (label io.cri-containerd.image)"},
		{"registry", ctrImage{Name: "app:1"}, map[string]string{"containerd.io/distribution.source.registry.example": "app"}, "fetched from a registry (label containerd.io/distribution.source.registry.example)"},
		{"other labels", ctrImage{Name: "app:1"}, map[string]string{"containerd.io/gc.ref.content.config": "sha256:x"}, ""},
	}
	for _, tt := range tests {
		if got := pullEvidence(tt.img, tt.labels); got != tt.want {
			t.Errorf("%s: pullEvidence = %q, want %q", tt.name, got, tt.want)
		}
	}
}

// imageEvent is an ImageCreate event as containerd 1.6 publishes it: its
// type URL is the bare protobuf name.
func imageEvent(name string, labels map[string]string) *anypb.Any {
	b, err := proto.Marshal(&ctrevents.ImageCreate{Name: name, Labels: labels})
	if err != nil {
		panic(err) // a valid message always marshals
	}
	return &anypb.Any{TypeUrl: "containerd.services.images.v1.ImageCreate", Value: b}
}

func TestImageEventName(t *testing.T) {
	update, err := anypb.New(&ctrevents.ImageUpdate{Name: "local/app:2"})
	if err != nil {
		t.Fatal(err)
	}
	del, err := anypb.New(&ctrevents.ImageDelete{Name: "gone:1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		in   *anypb.Any
		want string // "" for an error
	}{
		{"create", imageEvent("local/app:1", map[string]string{"a": "b"}), "local/app:1"},
		{"update, full type URL", update, "local/app:2"},
		{"create, Go package name", &anypb.Any{TypeUrl: "containerd.events.ImageCreate", Value: imageEvent("local/app:3", nil).Value}, "local/app:3"},
		{"delete", del, ""},
		{"no event", nil, ""},
		{"no name", imageEvent("", nil), ""},
		{"bad bytes", &anypb.Any{TypeUrl: "containerd.events.ImageCreate", Value: []byte{0x0a, 0x05, 0x01}}, ""},
		{"other type", &anypb.Any{TypeUrl: "containerd.events.ContainerCreate"}, ""},
	} {
		got, err := imageEventName(tt.in)
		if tt.want == "" {
			if !errors.Is(err, errMalformed) {
				t.Errorf("%s: imageEventName = %q, %v; want errMalformed", tt.name, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: imageEventName = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

func TestContainerdHandle(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	w := &ContainerdWatcher{Namespaces: []string{"k8s.io"}, Clock: clocktest.New(now)}
	w.pending = map[ctrRef]ctrPending{}
	ev := imageEvent("app:1", nil)
	for _, e := range []ctrEnvelope{
		{Timestamp: now.Add(-time.Second), Namespace: "k8s.io", Topic: "/images/create", Event: ev},
		{Timestamp: now, Namespace: "k8s.io", Topic: "/images/update", Event: ev},
		{Timestamp: now, Namespace: "other", Topic: "/images/create", Event: imageEvent("skipped:1", nil)},
		{Timestamp: now, Namespace: "k8s.io", Topic: "/images/delete", Event: imageEvent("deleted:1", nil)},
		{Timestamp: now.Add(time.Hour), Namespace: "k8s.io", Topic: "/images/create", Event: imageEvent("future:1", nil)},
		{Timestamp: now, Namespace: "k8s.io", Topic: "/images/create", Event: &anypb.Any{TypeUrl: "containerd.events.ImageCreate", Value: []byte{0xff}}},
		{Timestamp: now, Namespace: "k8s.io", Topic: "/images/create"},
	} {
		w.handle(e)
	}
	var got []string
	for r := range w.pending {
		got = append(got, r.ns+"/"+r.name)
	}
	slices.Sort(got)
	if want := []string{"k8s.io/app:1", "k8s.io/future:1"}; !slices.Equal(got, want) {
		t.Errorf("pending = %q, want %q", got, want)
	}
	if p := w.pending[ctrRef{"k8s.io", "app:1"}]; !p.at.Equal(now) {
		t.Errorf("pending app:1 at %s, want the latest event's %s", p.at, now)
	}
	// An event stamped an hour ahead does not move the resume point.
	if !w.lastTime.Equal(now) {
		t.Errorf("lastTime = %s, want %s", w.lastTime, now)
	}
}

func TestImageFromProto(t *testing.T) {
	updated := time.Date(2026, 12, 1, 11, 0, 0, 5, time.UTC)
	dgst := "sha256:" + strings.Repeat("c", 64)
	got, err := imageFromProto(&imagesapi.Image{
		Name:      "local/app:1",
		Labels:    map[string]string{"k": "v"},
		Target:    &ctrtypes.Descriptor{MediaType: mediaOCIManifest, Digest: dgst, Size: 512},
		UpdatedAt: timestamppb.New(updated),
	})
	want := ctrDescriptor{MediaType: mediaOCIManifest, Digest: dgst, Size: 512}
	if err != nil || got.Name != "local/app:1" || got.Labels["k"] != "v" || got.Target != want || !got.UpdatedAt.Equal(updated) || !got.CreatedAt.IsZero() {
		t.Errorf("imageFromProto = %+v, %v", got, err)
	}
	// A record without target or labels: empty, not a panic.
	if got, err := imageFromProto(&imagesapi.Image{Name: "bare:1"}); err != nil || got.Target != (ctrDescriptor{}) || got.Labels == nil {
		t.Errorf("imageFromProto(bare) = %+v, %v", got, err)
	}
	bad := &imagesapi.Image{Name: "x", UpdatedAt: &timestamppb.Timestamp{Nanos: 2e9}}
	if _, err := imageFromProto(bad); !errors.Is(err, errMalformed) {
		t.Errorf("imageFromProto(nanos 2e9) = %v, want errMalformed", err)
	}
}

func TestNewContainerd(t *testing.T) {
	for _, tt := range []struct{ in, path, err string }{
		{"unix:///run/containerd/containerd.sock", "/run/containerd/containerd.sock", ""},
		{"/run/k3s/containerd/containerd.sock", "/run/k3s/containerd/containerd.sock", ""},
		{"tcp://127.0.0.1:1", "", "want unix:///path"},
		{"unix://host/x", "", "want unix:///path"},
		{"relative.sock", "", "want unix:///path"},
	} {
		c, err := NewContainerd(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("NewContainerd(%q) = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || c.Path != tt.path {
			t.Errorf("NewContainerd(%q) = %v, %v; want path %s", tt.in, c, err, tt.path)
			continue
		}
		c.Close()
	}
}

// FuzzContainerdBlobs feeds untrusted content-store bytes to the index,
// manifest and config parsers: an error or a result, never a panic.
func FuzzContainerdBlobs(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}`))
	f.Add([]byte(`{"schemaVersion":2,"config":{"digest":"sha256:` + strings.Repeat("a", 64) + `","size":10}}`))
	f.Add([]byte(`{"created":"2026-12-01T12:00:00Z","history":[{"created":"2026-12-01T12:00:00Z","created_by":"RUN x"}],"rootfs":{"type":"layers"}}`))
	f.Add([]byte(`{"created":"not a time"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := pickPlatform(b, "linux", "amd64", ""); err == nil && checkDigest(d.Digest) != nil {
			t.Errorf("pickPlatform chose a bad digest %q", d.Digest)
		}
		if d, err := manifestConfig(b); err == nil && (checkDigest(d.Digest) != nil || d.Size > maxBlob) {
			t.Errorf("manifestConfig = %+v", d)
		}
		if cfg, err := parseImageConfig(b); err == nil {
			for _, s := range cfg.Steps {
				if strings.TrimSpace(s) != s || s == "" {
					t.Errorf("step %q not trimmed", s)
				}
			}
			at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
			if bi, ok := containerdBuild(ctrImage{Name: "x"}, "sha256:"+strings.Repeat("a", 64), cfg, "", at, 2*time.Hour); ok && bi.Finished.Before(bi.Started) {
				t.Errorf("build finished %s before started %s", bi.Finished, bi.Started)
			}
		}
	})
}

// TestAgentReportsContainerdBuild runs the agent with the containerd
// watcher alone: the build it finds is reported, by node and time, with
// the connection made during it, under a containerd event ID the server's
// parser takes.
func TestAgentReportsContainerdBuild(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	f := newFakeContainerd()
	c := f.put(t, "application/vnd.oci.image.config.v1+json", testConfig(now.Add(-3*time.Second), "RUN wget http://203.0.113.9/x"))
	m := f.put(t, mediaOCIManifest, testManifest(mediaOCIManifest, c))
	f.images["local/app:1"] = ctrImage{Name: "local/app:1", Target: m}
	f.events = []ctrEnvelope{{Timestamp: now.Add(-time.Second), Namespace: "default", Topic: "/images/create", Event: imageEvent("local/app:1", nil)}}
	sensor := fixedConns{conns: []conns.Conn{
		{Time: now.Add(-2 * time.Second), PID: 555, Comm: "wget", Dst: netip.MustParseAddrPort("203.0.113.9:80")},
	}}
	a := newTestAgent(t, &fakeEngine{}, sensor)
	a.Docker = nil
	a.Containerd = &ContainerdWatcher{Client: f, Arch: "amd64", Metrics: a.Metrics}
	r, data := runUntilBuild(t, a, "containerd", 1)()
	if len(r.Builds) != 1 || len(r.Connections) != 1 || r.Connections[0].PID != 555 {
		t.Fatalf("report %s: want the build and the wget's connection", data)
	}
	if b := r.Builds[0]; b.EventID != "containerd-build/"+c.Digest || b.ImageID != c.Digest || b.Tool != "containerd" || len(b.Steps) != 1 {
		t.Errorf("build %+v", b)
	}
	p, err := nodereport.ParseAgent(data)
	if err != nil || len(p.Errors) != 0 || len(p.Report.Builds) != 1 || len(p.Report.Connections) != 1 {
		t.Fatalf("ParseAgent = %+v, %v", p, err)
	}
}
