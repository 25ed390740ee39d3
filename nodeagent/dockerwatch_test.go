package nodeagent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"buildguard.dev/buildguard/internal/clock/clocktest"
)

// fakeEngine is the part of the Docker Engine API the watcher uses,
// served on a unix socket: a fixed log of events (GET /events honours
// since and can be made to break the stream after some events, as a
// daemon restart does), images, their histories and containers.
type fakeEngine struct {
	mu         sync.Mutex
	events     []Event
	images     map[string]Image
	history    map[string][]HistoryEntry
	containers map[string]Container
	list       []ImageSummary // GET /images/json
	// breakAfter ends the first stream after that many events.
	breakAfter int
	sinces     []string
}

func (f *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	path := strings.TrimPrefix(r.URL.Path, "/v"+DockerAPIVersion)
	switch {
	case path == "/events":
		var filters map[string][]string
		if err := json.Unmarshal([]byte(r.URL.Query().Get("filters")), &filters); err != nil || len(filters["type"]) != 3 {
			http.Error(w, "bad filters", 400)
			return
		}
		since := r.URL.Query().Get("since")
		f.sinces = append(f.sinces, since)
		sec, nsec, _ := strings.Cut(since, ".")
		s, _ := strconv.ParseInt(sec, 10, 64)
		ns, _ := strconv.ParseInt(nsec, 10, 64)
		from := time.Unix(s, ns)
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		n := 0
		for _, ev := range f.events {
			if ev.When().Before(from) {
				continue
			}
			if f.breakAfter > 0 && n == f.breakAfter {
				f.breakAfter = 0
				return // the daemon went away
			}
			json.NewEncoder(w).Encode(ev)
			n++
		}
		w.(http.Flusher).Flush()
		f.mu.Unlock()
		<-r.Context().Done()
		f.mu.Lock()
	case path == "/images/json":
		json.NewEncoder(w).Encode(f.list)
	case strings.HasPrefix(path, "/images/") && strings.HasSuffix(path, "/json"):
		img, ok := f.images[strings.TrimSuffix(strings.TrimPrefix(path, "/images/"), "/json")]
		if !ok {
			http.Error(w, `{"message":"no such image"}`, 404)
			return
		}
		json.NewEncoder(w).Encode(img)
	case strings.HasPrefix(path, "/images/") && strings.HasSuffix(path, "/history"):
		json.NewEncoder(w).Encode(f.history[strings.TrimSuffix(strings.TrimPrefix(path, "/images/"), "/history")])
	case strings.HasPrefix(path, "/containers/"):
		c, ok := f.containers[strings.TrimSuffix(strings.TrimPrefix(path, "/containers/"), "/json")]
		if !ok {
			http.Error(w, `{"message":"no such container"}`, 404)
			return
		}
		json.NewEncoder(w).Encode(c)
	default:
		http.Error(w, "not found", 404)
	}
}

func (f *fakeEngine) start(t *testing.T) *Docker {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	d, err := NewDocker("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func hexID(c byte) string { return strings.Repeat(string(c), 64) }

func ev(typ, action, id string, t time.Time, attrs map[string]string) Event {
	e := Event{Type: typ, Action: action, Time: t.Unix(), TimeNano: t.UnixNano()}
	e.Actor.ID, e.Actor.Attributes = id, attrs
	return e
}

// classicBuild is what dockerd 20.10's classic builder does for
// FROM base + RUN echo + RUN wget, tagged app:1.
func classicBuild(t0 time.Time) *fakeEngine {
	base, mid, final := "sha256:"+hexID('b'), "sha256:"+hexID('c'), "sha256:"+hexID('d')
	c1, c2, other := hexID('1'), hexID('2'), hexID('9')
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	f := &fakeEngine{
		events: []Event{
			ev("container", "create", other, at(0), map[string]string{"image": "nginx"}),
			ev("container", "create", c1, at(10), map[string]string{"image": base}),
			ev("container", "start", c1, at(20), nil),
			ev("container", "die", c1, at(30), nil),
			ev("container", "destroy", c1, at(40), nil),
			ev("container", "create", c2, at(50), map[string]string{"image": mid}),
			ev("container", "start", c2, at(60), nil),
			ev("container", "die", c2, at(70), nil),
			ev("container", "destroy", c2, at(80), nil),
			ev("image", "tag", final, at(90), map[string]string{"name": "app:1"}),
			ev("image", "tag", final, at(90), map[string]string{"name": "app:latest"}),
		},
		images: map[string]Image{
			final: {ID: final, Parent: mid, Container: c2, Created: at(85), RepoTags: []string{"app:1", "app:latest"}},
			mid:   {ID: mid, Parent: base, Container: c1, Created: at(35)},
			base:  {ID: base, Created: t0.Add(-90 * 24 * time.Hour), RepoTags: []string{"local/busybox:1"}},
		},
		history: map[string][]HistoryEntry{final: {
			{ID: final, CreatedBy: "/bin/sh -c wget -O /payload http://127.0.0.23:8080/payload"},
			{ID: mid, CreatedBy: "/bin/sh -c echo hi > /x"},
			{ID: base, CreatedBy: ""},
		}},
		containers: map[string]Container{c2: {ID: c2}},
	}
	c := f.containers[c2]
	c.State.Pid, c.State.Running = 4242, true
	f.containers[c2] = c
	return f
}

func runWatcher(t *testing.T, f *fakeEngine, want int) []BuildInfo {
	t.Helper()
	d := f.start(t)
	w := &DockerWatcher{Docker: d, Settle: 20 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Metrics: NewMetrics()}
	ctx, cancel := context.WithCancel(t.Context())
	out := make(chan BuildInfo, 10)
	done := make(chan struct{})
	go func() { w.Run(ctx, out); close(done) }()
	var got []BuildInfo
	timeout := time.After(20 * time.Second)
	for len(got) < want {
		select {
		case b := <-out:
			got = append(got, b)
		case <-timeout:
			t.Fatalf("%d builds within 20s, want %d", len(got), want)
		}
	}
	// Nothing more comes.
	select {
	case b := <-out:
		t.Errorf("unexpected build %+v", b)
	case <-time.After(300 * time.Millisecond):
	}
	cancel()
	<-done
	return got
}

func TestDockerWatcherClassicBuild(t *testing.T) {
	t0 := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	for _, breakAfter := range []int{0, 4, 9} {
		t.Run(fmt.Sprintf("stream breaks after %d events", breakAfter), func(t *testing.T) {
			f := classicBuild(t0)
			f.breakAfter = breakAfter
			got := runWatcher(t, f, 1)
			want := BuildInfo{
				Tool: "docker", ImageID: "sha256:" + hexID('d'), Tags: []string{"app:1", "app:latest"},
				Started: t0.Add(10 * time.Millisecond), Finished: t0.Add(90 * time.Millisecond),
				ContainerIDs: []string{hexID('1'), hexID('2')}, PIDs: []int{4242},
				Steps: []string{"/bin/sh -c echo hi > /x", "/bin/sh -c wget -O /payload http://127.0.0.23:8080/payload"},
			}
			// cmp compares the span's times as instants (time.Time.Equal).
			if diff := cmp.Diff(want, got[0]); diff != "" {
				t.Errorf("build (-want +got):\n%s", diff)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if breakAfter > 0 {
				// Resumed from the last event received (less the overlap
				// for events stamped out of order), not from the start.
				last := f.events[breakAfter-1].When().Add(-resumeOverlap)
				if len(f.sinces) < 2 || f.sinces[1] != fmt.Sprintf("%d.%09d", last.Unix(), last.Nanosecond()) {
					t.Errorf("since of the reconnects: %v, want the second to be %v before the time of event %d (%v)", f.sinces, resumeOverlap, breakAfter-1, last)
				}
			}
		})
	}
}

func TestDockerWatcherWithoutContainers(t *testing.T) {
	now := time.Now()
	fresh, old, imported, pulled := "sha256:"+hexID('e'), "sha256:"+hexID('f'), "sha256:"+hexID('a'), "sha256:"+hexID('5')
	loaded, known := "sha256:"+hexID('7'), "sha256:"+hexID('8')
	f := &fakeEngine{
		list: []ImageSummary{{ID: known, Created: now.Add(-20 * time.Minute).Unix()}, {ID: old, Created: now.Add(-30 * 24 * time.Hour).Unix()}},
		events: []Event{
			// Built by CI a minute ago, saved, loaded and tagged here.
			ev("image", "load", loaded, now.Add(-3*time.Second), map[string]string{"name": loaded}),
			ev("image", "tag", loaded, now.Add(-3*time.Second), map[string]string{"name": "shop/api:1"}),
			// On the node before the agent started (loaded, say, while
			// it was down), tagged now.
			ev("image", "tag", known, now.Add(-2*time.Second), map[string]string{"name": "shop/web:1"}),
			ev("image", "tag", old, now.Add(-3*time.Second), map[string]string{"name": "mirror/nginx:1"}),
			ev("image", "tag", fresh, now.Add(-2*time.Second), map[string]string{"name": "bk:1"}),
			ev("image", "import", imported, now.Add(-time.Second), nil),
			ev("image", "pull", "nginx:1", now.Add(-time.Second), nil),
			ev("image", "tag", pulled, now.Add(-time.Second), map[string]string{"name": "mine:1"}),
		},
		images: map[string]Image{
			old:      {ID: old, Created: now.Add(-30 * 24 * time.Hour), RepoTags: []string{"nginx:1", "mirror/nginx:1"}},
			fresh:    {ID: fresh, Created: now.Add(-2 * time.Second), RepoTags: []string{"bk:1"}},
			imported: {ID: imported, Created: now.Add(-time.Second)},
			// Pushed by CI a minute ago, pulled and tagged here.
			pulled: {ID: pulled, Created: now.Add(-time.Minute), RepoTags: []string{"mine:1"}, RepoDigests: []string{"registry.example/mine@sha256:" + hexID('6')}},
			loaded: {ID: loaded, Created: now.Add(-time.Minute), RepoTags: []string{"shop/api:1"}},
			known:  {ID: known, Created: now.Add(-20 * time.Minute), RepoTags: []string{"shop/web:1"}},
		},
		history: map[string][]HistoryEntry{
			fresh: {
				{ID: fresh, Created: now.Add(-2 * time.Second).Unix(), CreatedBy: "RUN /bin/sh -c wget http://203.0.113.9/x # buildkit"},
				{ID: "<missing>", Created: now.Add(-40 * time.Second).Unix(), CreatedBy: "COPY . / # buildkit"},
				{ID: "<missing>", Created: now.Add(-400 * 24 * time.Hour).Unix(), CreatedBy: "/bin/sh -c #(nop) ADD file:abc in / "},
			},
			imported: {{ID: imported, Created: now.Add(-time.Second).Unix(), Comment: "Imported from -"}},
		},
	}
	got := runWatcher(t, f, 2)
	byID := map[string]BuildInfo{}
	for _, b := range got {
		byID[b.ImageID] = b
	}
	if b := byID[fresh]; b.Tool != "buildkit" || len(b.ContainerIDs) != 0 || b.Started.Unix() != now.Add(-40*time.Second).Unix() || len(b.Steps) != 3 {
		t.Errorf("BuildKit build: %+v", b)
	}
	if b := byID[imported]; b.Tool != "docker-import" {
		t.Errorf("import: %+v", b)
	}
	if _, ok := byID[old]; ok {
		t.Errorf("retagging an old image reported as a build")
	}
	if _, ok := byID[pulled]; ok {
		t.Errorf("tagging a pulled image reported as a build")
	}
	if _, ok := byID[loaded]; ok {
		t.Errorf("loading and tagging an image built elsewhere reported as a build")
	}
	if _, ok := byID[known]; ok {
		t.Errorf("tagging an image on the node before the watch reported as a build")
	}
}

func TestDecodeEventsSkipsOddLines(t *testing.T) {
	in := "not json\n{\"Type\":\"image\"}\n\n{\"Type\":\"image\",\"Action\":\"tag\",\"timeNano\":5}\n[1,2]\n"
	var got []Event
	err := decodeEvents(strings.NewReader(in), func(e *Event) error { got = append(got, *e); return nil })
	if err == nil || len(got) != 1 || got[0].Action != "tag" {
		t.Errorf("decodeEvents = %v, %+v; want one tag event and the stream-ended error", err, got)
	}
}

// A line longer than the bound is skipped, not the end of the stream:
// the reconnect resumes at that line, so ending there would end every
// stream there.
func TestDecodeEventsSkipsHugeLines(t *testing.T) {
	huge := `{"Type":"image","Action":"tag","timeNano":1,"Actor":{"ID":"` + strings.Repeat("x", maxEventLine) + `"}}`
	in := huge + "\n" + `{"Type":"image","Action":"delete","timeNano":2}` + "\n" + huge
	var got []Event
	err := decodeEvents(strings.NewReader(in), func(e *Event) error { got = append(got, *e); return nil })
	if err == nil || err.Error() != "docker /events: stream ended" || len(got) != 1 || got[0].Action != "delete" {
		t.Errorf("decodeEvents = %v, %d events %+v; want the delete event and the stream-ended error", err, len(got), got)
	}
}

func FuzzDecodeEvents(f *testing.F) {
	f.Add([]byte(`{"Type":"container","Action":"create","Actor":{"ID":"abc","Attributes":{"image":"x"}},"time":1,"timeNano":1000000000}` + "\n"))
	f.Add([]byte(`{"Type":"image","Action":"tag","Actor":{"ID":"sha256:0"},"timeNano":-1}`))
	f.Add([]byte("\n\n{\"Type\":1}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		decodeEvents(strings.NewReader(string(data)), func(e *Event) error {
			if e.Type == "" {
				t.Fatal("an event without a type was passed on")
			}
			_ = e.When()
			_ = e.key()
			return nil
		})
	})
}

// An image the daemon keeps failing on (not a 404) is given up after
// maxExamineTries, not retried and kept forever.
func TestDockerWatcherGivesUpOnAnImage(t *testing.T) {
	d, err := NewDocker("unix://" + filepath.Join(t.TempDir(), "nothing.sock"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	clk := clocktest.New(now)
	w := &DockerWatcher{Docker: d, Clock: clk,
		ctrs: map[string]*seenContainer{}, pending: map[string]pendingImage{}, reported: map[string]time.Time{}}
	w.schedule("sha256:"+hexID('a'), "tag", now, "")
	out := make(chan BuildInfo, 1)
	for i := range maxExamineTries {
		clk.Advance(3 * time.Second)
		if err := w.examineDue(t.Context(), out, false); err != nil {
			t.Fatalf("examineDue #%d: %v", i+1, err)
		}
		if left := len(w.pending); (i < maxExamineTries-1) != (left == 1) {
			t.Fatalf("after %d failed examinations %d images pending", i+1, left)
		}
	}
	if len(out) != 0 {
		t.Errorf("a build came out of an image that could not be examined")
	}
}

// dockerd stamps events before queueing them: one stamped earlier can
// arrive after a later one. It is handled, not taken for a replay; a
// replay after a reconnect, which starts resumeOverlap earlier, is not
// handled twice.
func TestDockerWatcherEventOrder(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	ev := func(ms int, id string) Event {
		e := Event{Type: "image", Action: "tag", TimeNano: t0.Add(time.Duration(ms) * time.Millisecond).UnixNano()}
		e.Actor.ID = id
		return e
	}
	m := NewMetrics()
	w := &DockerWatcher{Metrics: m, Clock: clocktest.New(t0),
		ctrs: map[string]*seenContainer{}, pending: map[string]pendingImage{}, reported: map[string]time.Time{}, seen: map[string]time.Time{}}
	a, b, c := "sha256:"+hexID('a'), "sha256:"+hexID('b'), "sha256:"+hexID('c')
	live := []Event{ev(10, a), ev(5, b), ev(2000, c)}
	// The reconnect after them resumes at 1s and replays c.
	replay := []Event{ev(2000, c)}
	for _, e := range append(live, replay...) {
		w.handle(t.Context(), e)
	}
	if _, ok := w.pending[b]; !ok || len(w.pending) != 3 {
		t.Errorf("pending images %v, want a, b and c", w.pending)
	}
	if got := testutil.ToFloat64(m.dockerEvents.WithLabelValues("image")); got != 3 {
		t.Errorf("%v image events handled, want 3 (the replay of c skipped)", got)
	}
}

// An event stamped in the far future (a daemon's clock gone wrong) is
// handled but does not move the resume point past the events to come.
func TestDockerWatcherFutureEvent(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	w := &DockerWatcher{Clock: clocktest.New(t0),
		ctrs: map[string]*seenContainer{}, pending: map[string]pendingImage{}, reported: map[string]time.Time{}, seen: map[string]time.Time{}}
	w.handle(t.Context(), ev("image", "tag", "sha256:"+hexID('a'), t0.Add(-time.Second), nil))
	w.handle(t.Context(), ev("image", "tag", "sha256:"+hexID('b'), t0.Add(24*time.Hour), nil))
	if !w.lastTime.Equal(t0.Add(-time.Second)) || len(w.pending) != 2 {
		t.Errorf("resume point %v with %d images pending; want %v and 2", w.lastTime, len(w.pending), t0.Add(-time.Second))
	}
}

// The images reported are remembered within the retention, but no more of
// them than maxContainers: the oldest half goes.
func TestDockerWatcherBoundsReported(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	w := &DockerWatcher{Clock: clocktest.New(t0),
		ctrs: map[string]*seenContainer{}, pending: map[string]pendingImage{}, reported: map[string]time.Time{}}
	for i := range maxContainers + 2 {
		w.reported[fmt.Sprintf("sha256:%064x", i)] = t0.Add(-time.Duration(maxContainers+2-i) * time.Millisecond)
	}
	w.forgetOld(false)
	newest := fmt.Sprintf("sha256:%064x", maxContainers+1)
	if _, ok := w.reported[newest]; !ok || len(w.reported) != (maxContainers+2)-(maxContainers+2)/2 {
		t.Errorf("%d images remembered (newest kept: %v), want %d", len(w.reported), ok, (maxContainers+2)-(maxContainers+2)/2)
	}
}
