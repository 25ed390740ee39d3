package nodeagent

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
)

// containerdAPI is what the containerd watcher asks containerd
// (*Containerd).
type containerdAPI interface {
	Subscribe(ctx context.Context, filters []string, fn func(*ctrEnvelope) error) error
	Image(ctx context.Context, ns, name string) (ctrImage, error)
	Images(ctx context.Context, ns string) ([]ctrImage, error)
	Info(ctx context.Context, ns, dgst string) (ctrContentInfo, error)
	Read(ctx context.Context, ns, dgst string, max int64) ([]byte, error)
}

// ContainerdWatcher follows containerd's image events and reports the
// images that look built on the node (nerdctl build, BuildKit with its
// containerd worker, Docker with the containerd image store, ctr import):
// an image created or updated whose config was created within Retention,
// that nothing shows to be pulled from a registry (pullEvidence), and
// whose manifest (or index) no image record held when the watch began: a
// new record for such a target is a retag (ctr images tag, nerdctl tag),
// not a build.
// Such a build has no step containers or processes: the Attributor judges
// it by node and time, as Docker's BuildKit builds.
type ContainerdWatcher struct {
	Client containerdAPI
	// Socket is the socket's path: while it does not exist the watcher
	// waits for it, and says so once. Empty: not checked.
	Socket string
	// Namespaces are the containerd namespaces watched. The default is
	// k8s.io (the CRI plugin's), moby (Docker's) and default (ctr's,
	// nerdctl's).
	Namespaces []string
	Log        *slog.Logger
	Metrics    *Metrics
	// Replay is how far back the first connection looks for images
	// changed, so that a build made while the agent was down is found.
	// The default is 10m.
	Replay time.Duration
	// Retention is how recently an image must have been created to count
	// as built here. The default is 2h.
	Retention time.Duration
	// MinBackoff and MaxBackoff bound the waits between reconnects. The
	// defaults are 500ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// OS, Arch and Variant choose an index's manifest. The defaults are
	// linux, runtime.GOARCH and none.
	OS, Arch, Variant string
	// Clock tells the time: when images fall due, what is old enough to
	// forget, and the times of the status. The default, nil, is the real
	// clock. The waits between reconnects, and the ticks that look for
	// images due, are on the real clock.
	Clock clock.Clock

	pending  map[ctrRef]ctrPending
	reported map[string]time.Time // config digests reported, and when
	examined map[string]time.Time // ns/name@target examined, and when
	lastTime time.Time            // latest time of the events received
	// known are the targets (ns@digest) of the image records changed
	// before the first catch-up's since: on the node before the watch.
	known  map[string]bool
	listed bool // known was taken
	state  runtimeState
}

// Status says whether the watcher is connected, and if not, why.
func (w *ContainerdWatcher) Status() RuntimeStatus { return w.state.get() }

func (w *ContainerdWatcher) connectedMetric(v float64) {
	if w.Metrics != nil {
		w.Metrics.containerdUp.Set(v)
	}
}

// subscribeGrace is how long after the subscription is sent the images
// changed while not watching are listed.
const subscribeGrace = 500 * time.Millisecond

// DefaultContainerdNamespaces are the namespaces watched by default,
// comma-separated: Kubernetes', Docker's and ctr's.
const DefaultContainerdNamespaces = "k8s.io,moby,default"

// containerdTopics are the events followed, as Subscribe filters.
var containerdTopics = []string{`topic=="/images/create"`, `topic=="/images/update"`}

type ctrRef struct{ ns, name string }

type ctrPending struct {
	at    time.Time // the event's time, or the record's update time
	due   time.Time
	tries int
}

func (w *ContainerdWatcher) now() time.Time {
	return clock.OrReal(w.Clock).Now()
}

func (w *ContainerdWatcher) log() *slog.Logger {
	return logger.OrDiscard(w.Log)
}

func (w *ContainerdWatcher) namespaces() []string {
	if len(w.Namespaces) == 0 {
		return strings.Split(DefaultContainerdNamespaces, ",")
	}
	return w.Namespaces
}

func (w *ContainerdWatcher) retention() time.Duration { return durOr(w.Retention, 2*time.Hour) }

// Run watches until ctx ends. When containerd goes away it reconnects
// with exponential backoff, and lists the images changed since the last
// event it received (resumeOverlap before), so that a build made while
// it was disconnected is found. Builds go to out.
func (w *ContainerdWatcher) Run(ctx context.Context, out chan<- BuildInfo) error {
	w.pending = map[ctrRef]ctrPending{}
	w.reported = map[string]time.Time{}
	w.examined = map[string]time.Time{}
	w.known, w.listed = map[string]bool{}, false
	since := w.now().Add(-durOr(w.Replay, 10*time.Minute))
	minB, maxB := durOr(w.MinBackoff, 500*time.Millisecond), durOr(w.MaxBackoff, 30*time.Second)
	backoff := minB
	missing := false
	for {
		if w.Socket != "" {
			if _, err := os.Stat(w.Socket); errors.Is(err, fs.ErrNotExist) {
				if !missing {
					w.log().Info("no containerd socket; waiting for it", "socket", w.Socket)
					missing = true
				}
				w.state.set(StateWaiting, w.Socket, err, w.now())
				if !w.wait(ctx, backoff, out) {
					return ctx.Err()
				}
				backoff = min(2*backoff, maxB)
				continue
			}
		}
		missing = false
		connected, err := w.session(ctx, since, out)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if connected {
			backoff = minB
		}
		w.connectedMetric(0)
		w.state.set(StateReconnecting, w.Socket, err, w.now())
		w.log().Warn("containerd event stream lost; reconnecting", "socket", w.Socket, "error", err, "in", backoff)
		if !w.wait(ctx, backoff, out) {
			return ctx.Err()
		}
		backoff = min(2*backoff, maxB)
		if !w.lastTime.IsZero() && w.lastTime.Add(-resumeOverlap).After(since) {
			since = w.lastTime.Add(-resumeOverlap)
		}
	}
}

// session follows one subscription until it breaks. Once it is open, the
// images changed since since are examined: the subscription comes first,
// so an image changed in between is seen twice rather than not at all.
func (w *ContainerdWatcher) session(ctx context.Context, since time.Time, out chan<- BuildInfo) (bool, error) {
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan ctrEnvelope, 1024)
	opened := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- w.Client.Subscribe(subCtx, containerdTopics, func(e *ctrEnvelope) error {
			if e == nil {
				close(opened)
				return nil
			}
			select {
			case events <- *e:
				return nil
			case <-subCtx.Done():
				return subCtx.Err()
			}
		})
	}()
	connected := false
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	// The catch-up waits subscribeGrace after the request went out:
	// containerd acknowledges a subscription with nothing, and the list
	// must come after it to miss nothing.
	var catchUp <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return connected, ctx.Err()
		case err := <-errc:
			for len(events) > 0 {
				w.handle(<-events)
			}
			return connected, err
		case <-opened:
			opened, connected = nil, true
			w.log().Info("containerd event stream open", "socket", w.Socket)
			w.state.set(StateConnected, w.Socket, nil, w.now())
			w.connectedMetric(1)
			t := time.NewTimer(subscribeGrace)
			defer t.Stop()
			catchUp = t.C
		case <-catchUp:
			catchUp = nil
			if err := w.catchUp(ctx, since); err != nil {
				return connected, err
			}
		case e := <-events:
			w.handle(e)
		case <-tick.C:
		}
		if err := w.examineDue(ctx, out); err != nil {
			return connected, err
		}
	}
}

// wait waits d while still examining images that fall due.
func (w *ContainerdWatcher) wait(ctx context.Context, d time.Duration, out chan<- BuildInfo) bool {
	end := time.NewTimer(d)
	defer end.Stop()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-end.C:
			return true
		case <-tick.C:
			if len(w.pending) > 0 {
				w.examineDue(ctx, out)
			}
		}
	}
}

// catchUp schedules the images of the watched namespaces changed since
// since. The first time, it remembers the targets of the records changed
// before: those images were on the node before the watch, by a way it
// cannot tell (an import of an image made elsewhere, a pull whose labels
// were lost, a build), and a new name for one is not a build.
func (w *ContainerdWatcher) catchUp(ctx context.Context, since time.Time) error {
	n := 0
	known := map[string]bool{}
	for _, ns := range w.namespaces() {
		imgs, err := w.Client.Images(ctx, ns)
		if err != nil {
			return err
		}
		for _, img := range imgs {
			t := img.UpdatedAt
			if t.IsZero() {
				t = img.CreatedAt
			}
			if t.Before(since) {
				if !w.listed && len(known) < maxContainers {
					known[ns+"@"+img.Target.Digest] = true
				}
				continue
			}
			w.schedule(ctrRef{ns, img.Name}, t)
			n++
		}
	}
	if !w.listed {
		w.known, w.listed = known, true
	}
	w.log().Info("containerd images changed while not watching", "since", since.UTC().Format(time.RFC3339Nano), "images", n)
	return nil
}

// handle takes an image event of a watched namespace.
func (w *ContainerdWatcher) handle(e ctrEnvelope) {
	if !slices.Contains(w.namespaces(), e.Namespace) {
		return
	}
	if e.Topic != "/images/create" && e.Topic != "/images/update" {
		return
	}
	name, err := imageEventName(e.Event)
	if err != nil {
		w.log().Warn("undecodable containerd image event", "namespace", e.Namespace, "topic", e.Topic, "type", e.Event.GetTypeUrl(), "error", err)
		return
	}
	t := e.Timestamp
	if t.IsZero() {
		t = w.now()
	}
	if t.After(w.lastTime) && !t.After(w.now().Add(maxClockAhead)) {
		w.lastTime = t
	}
	w.schedule(ctrRef{e.Namespace, name}, t)
}

// maxCtrPending bounds the images waiting to be examined (a storm of
// image events, or a node of many images changed while not watching).
const maxCtrPending = 20000

func (w *ContainerdWatcher) schedule(r ctrRef, at time.Time) {
	p, ok := w.pending[r]
	if ok && !at.After(p.at) {
		return
	}
	if !ok && len(w.pending) >= maxCtrPending {
		w.log().Error("too many containerd images waiting to be examined; one is left out", "namespace", r.ns, "image", r.name)
		return
	}
	w.pending[r] = ctrPending{at: at, due: w.now()}
}

// examineDue examines the images whose time came.
func (w *ContainerdWatcher) examineDue(ctx context.Context, out chan<- BuildInfo) error {
	now := w.now()
	var due []ctrRef
	for r, p := range w.pending {
		if !now.Before(p.due) {
			due = append(due, r)
		}
	}
	sort.Slice(due, func(i, j int) bool { return due[i].ns+"/"+due[i].name < due[j].ns+"/"+due[j].name })
	for _, r := range due {
		p := w.pending[r]
		b, ok, err := w.examine(ctx, r, p.at)
		var ce *ContainerdError
		if err != nil && !(errors.As(err, &ce) && ce.NotFound()) && !errors.Is(err, errNotImage) && !errors.Is(err, ErrTooLarge) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			p.tries++
			if p.tries < maxExamineTries {
				w.log().Warn("examining a containerd image failed; will retry", "namespace", r.ns, "image", r.name, "error", err)
				p.due = now.Add(2 * time.Second)
				w.pending[r] = p
				continue
			}
			w.log().Error("examining a containerd image kept failing; giving up on it", "namespace", r.ns, "image", r.name, "tries", p.tries, "error", err)
		} else if err != nil {
			w.log().Debug("containerd image not examined", "namespace", r.ns, "image", r.name, "error", err)
		}
		delete(w.pending, r)
		if !ok {
			continue
		}
		w.reported[b.ImageID] = now
		if w.Metrics != nil {
			w.Metrics.builds.WithLabelValues(b.Tool).Inc()
		}
		w.log().Info("image build", "digest", b.ImageID, "tags", b.Tags, "tool", b.Tool, "namespace", r.ns,
			"started", b.Started.UTC().Format(time.RFC3339Nano))
		select {
		case out <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if len(due) > 0 {
		w.forgetOld(now)
	}
	return nil
}

// forgetOld drops what was reported or examined before the retention,
// and the oldest half when there is too much of it.
func (w *ContainerdWatcher) forgetOld(now time.Time) {
	cut := now.Add(-w.retention())
	for _, m := range []map[string]time.Time{w.reported, w.examined} {
		for k, t := range m {
			if t.Before(cut) {
				delete(m, k)
			}
		}
		if len(m) > maxContainers {
			type kv struct {
				k string
				t time.Time
			}
			all := make([]kv, 0, len(m))
			for k, t := range m {
				all = append(all, kv{k, t})
			}
			sort.Slice(all, func(i, j int) bool { return all[i].t.Before(all[j].t) })
			for _, x := range all[:len(all)/2] {
				delete(m, x.k)
			}
		}
	}
}

// examine decides whether image r, changed at at, was built here.
func (w *ContainerdWatcher) examine(ctx context.Context, r ctrRef, at time.Time) (BuildInfo, bool, error) {
	img, err := w.Client.Image(ctx, r.ns, r.name)
	if err != nil {
		return BuildInfo{}, false, err
	}
	key := r.ns + "/" + r.name + "@" + img.Target.Digest
	if _, done := w.examined[key]; done {
		return BuildInfo{}, false, nil
	}
	if strings.Contains(img.Name, "@sha256:") || img.Labels[criManaged] == "managed" {
		w.examined[key] = w.now()
		return BuildInfo{}, false, nil // pulled: nothing more to read
	}
	if w.known[r.ns+"@"+img.Target.Digest] {
		w.examined[key] = w.now()
		w.log().Debug("containerd image on the node before the watch, named again: not a build", "namespace", r.ns, "image", r.name, "digest", img.Target.Digest)
		return BuildInfo{}, false, nil
	}
	manifest, cfgDesc, err := w.resolve(ctx, r.ns, img.Target)
	if err != nil {
		return BuildInfo{}, false, err
	}
	if _, done := w.reported[cfgDesc.Digest]; done {
		w.examined[key] = w.now()
		return BuildInfo{}, false, nil
	}
	cfgBytes, err := w.read(ctx, r.ns, cfgDesc.Digest)
	if err != nil {
		return BuildInfo{}, false, err
	}
	cfg, err := parseImageConfig(cfgBytes)
	if err != nil {
		return BuildInfo{}, false, err
	}
	var labels []map[string]string
	for _, d := range []string{img.Target.Digest, manifest, cfgDesc.Digest} {
		info, err := w.Client.Info(ctx, r.ns, d)
		if err != nil {
			return BuildInfo{}, false, err
		}
		labels = append(labels, info.Labels)
	}
	pulled := pullEvidence(img, labels...)
	b, ok := containerdBuild(img, cfgDesc.Digest, cfg, pulled, at, w.retention())
	w.examined[key] = w.now()
	if !ok && pulled != "" {
		w.log().Debug("containerd image pulled, not built", "namespace", r.ns, "image", r.name, "digest", cfgDesc.Digest, "why", pulled)
	}
	return b, ok, nil
}

// maxIndexDepth bounds nested indexes.
const maxIndexDepth = 3

// resolve is the manifest digest and config descriptor of target: a
// manifest, or an index whose child for the node's platform is one.
func (w *ContainerdWatcher) resolve(ctx context.Context, ns string, target ctrDescriptor) (string, ctrDescriptor, error) {
	d := target
	arch := w.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	osName := w.OS
	if osName == "" {
		osName = "linux"
	}
	for range maxIndexDepth {
		if err := checkDigest(d.Digest); err != nil {
			return "", ctrDescriptor{}, err
		}
		if !isIndex(d.MediaType) && !isManifest(d.MediaType) {
			return "", ctrDescriptor{}, errNotImage
		}
		b, err := w.read(ctx, ns, d.Digest)
		if err != nil {
			return "", ctrDescriptor{}, err
		}
		if isManifest(d.MediaType) {
			cfg, err := manifestConfig(b)
			return d.Digest, cfg, err
		}
		if d, err = pickPlatform(b, osName, arch, w.Variant); err != nil {
			return "", ctrDescriptor{}, err
		}
	}
	return "", ctrDescriptor{}, errNotImage
}

// read reads blob dgst, at most maxBlob, and checks its digest.
func (w *ContainerdWatcher) read(ctx context.Context, ns, dgst string) ([]byte, error) {
	b, err := w.Client.Read(ctx, ns, dgst, maxBlob)
	if err != nil {
		return nil, err
	}
	if err := verifyBlob(dgst, b); err != nil {
		return nil, err
	}
	return b, nil
}
