package nodeagent

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
)

// BuildInfo is an image build the Docker watcher found.
type BuildInfo struct {
	Tool     string // "docker" (the classic builder, docker commit), "buildkit", "docker-import"
	ImageID  string // sha256:…, the config digest with the classic image store
	Tags     []string
	Started  time.Time
	Finished time.Time
	// ContainerIDs are the containers the build's steps ran in (RUN, and
	// the classic builder's other steps), oldest first.
	ContainerIDs []string
	// PIDs are the init processes of those containers, as far as they
	// were seen running.
	PIDs  []int
	Steps []string // created_by of the image's history, oldest first
}

// DockerWatcher follows a Docker Engine's events and reconstructs the
// image builds made on it.
//
// The classic builder runs each step in a short-lived container and
// commits it to an intermediate image whose Container field names that
// container; the final image is tagged. The watcher remembers the
// containers it sees created, and when an image is tagged, created,
// imported or committed, walks the image's parent chain: the chain's
// containers it saw are the build's steps. An image whose chain has none
// is a build only when it is new here and came from no registry or
// tarball: imported (docker import), or made outside Docker's containers
// (BuildKit) — created recently, without a registry digest, not loaded
// (docker load), and not on the node already when the watch began. A
// tag of any other image is a retag, not a build.
type DockerWatcher struct {
	Docker *Docker
	// Socket is the daemon's unix socket: while it does not exist (a node
	// without Docker) the watcher waits for it, and says so once. Empty:
	// not checked.
	Socket string
	Log    *slog.Logger
	// Replay is how far back the first connection asks for events, so
	// that a build that began before the agent (re)started is still
	// found. The default is 10m.
	Replay time.Duration
	// Retention is how long containers are remembered and how recently
	// an image must have been created to count as built here. The
	// default is 2h.
	Retention time.Duration
	// Settle is how long after an image event the image is examined, so
	// that all the tags of one build arrive first. The default is 1s.
	Settle time.Duration
	// MinBackoff and MaxBackoff bound the waits between reconnects. The
	// defaults are 500ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	Metrics                *Metrics
	// Clock tells the time: when images fall due, what is old enough to
	// forget, and the times of the status. The default, nil, is the real
	// clock. The waits between reconnects, and the ticks that look for
	// images due, are on the real clock.
	Clock clock.Clock

	ctrs     map[string]*seenContainer
	pending  map[string]pendingImage // image ID → when to examine it
	reported map[string]time.Time    // image IDs reported, and when
	// loaded are the images docker load brought (made elsewhere), and
	// when; known the images on the node, created within Retention,
	// before the events the first connection asked for.
	loaded   map[string]time.Time
	known    map[string]bool
	listed   bool                 // known was taken
	lastTime time.Time            // latest time of the events received
	seen     map[string]time.Time // keys of the events within resumeOverlap of lastTime (and up to as much older)
	pruned   time.Time            // when seen was last pruned, in event time
	state    runtimeState
}

// resumeOverlap is how far before the latest event received a reconnect
// resumes. dockerd stamps an event before it queues it, so two events made
// at once can arrive in the other order: the later-stamped first. Resuming
// a little earlier, and dropping the events already seen, loses neither.
const resumeOverlap = time.Second

// maxClockAhead is how far ahead of the agent's clock an event's time may
// be and still move the resume point: one stamped in the far future
// (a daemon's clock gone wrong) would make every reconnect ask for events
// since then, and miss all of them.
const maxClockAhead = time.Minute

// maxSeen bounds the keys of events kept for that (a storm of events
// within one resumeOverlap).
const maxSeen = 50000

type seenContainer struct {
	id      string
	created time.Time
	pid     int
}

type pendingImage struct {
	due    time.Time
	action string
	at     time.Time // the event's time
	ctr    string    // for commit: the committed container
	tries  int       // failed examinations so far
}

// maxExamineTries bounds the examinations of one image that fail with
// something other than not-found (2s apart: about 10 minutes), so that an
// image the daemon keeps failing on is not retried, and kept, forever.
const maxExamineTries = 300

// maxContainers bounds the containers remembered.
const maxContainers = 20000

var imageIDPattern = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func (w *DockerWatcher) now() time.Time {
	return clock.OrReal(w.Clock).Now()
}

func (w *DockerWatcher) log() *slog.Logger {
	return logger.OrDiscard(w.Log)
}

func durOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Run watches until ctx ends, reconnecting with exponential backoff when
// the daemon goes away, resuming from the last event received so that
// none is lost (those at the same instant are not seen twice). Builds go
// to out.
func (w *DockerWatcher) Run(ctx context.Context, out chan<- BuildInfo) error {
	w.ctrs = map[string]*seenContainer{}
	w.pending = map[string]pendingImage{}
	w.reported = map[string]time.Time{}
	w.seen = map[string]time.Time{}
	w.loaded = map[string]time.Time{}
	w.known = map[string]bool{}
	w.listed = false
	since := w.now().Add(-durOr(w.Replay, 10*time.Minute))
	first := since
	backoff := durOr(w.MinBackoff, 500*time.Millisecond)
	// dockerd skips a listener that does not take an event within 100ms:
	// read the stream promptly, handle the events from a deep queue.
	events := make(chan Event, 4096)
	missing := false
	for {
		if w.Socket != "" {
			if _, err := os.Stat(w.Socket); errors.Is(err, fs.ErrNotExist) {
				if !missing {
					w.log().Info("no docker socket; waiting for it", "socket", w.Socket)
					missing = true
				}
				w.state.set(StateWaiting, w.Socket, err, w.now())
				if !w.waitPending(ctx, backoff, out) {
					return ctx.Err()
				}
				backoff = min(2*backoff, durOr(w.MaxBackoff, 30*time.Second))
				continue
			}
		}
		missing = false
		streamCtx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		connected := make(chan struct{})
		go func() {
			errc <- w.Docker.Events(streamCtx, since, func(ev *Event) error {
				if ev == nil {
					close(connected)
					return nil
				}
				select {
				case events <- *ev:
					return nil
				case <-streamCtx.Done():
					return streamCtx.Err()
				}
			})
		}()
		err := w.loop(ctx, events, errc, connected, first, out)
		cancel()
		w.metric(func(m *Metrics) { m.dockerUp.Set(0) })
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if w.isConnected(connected) {
			backoff = durOr(w.MinBackoff, 500*time.Millisecond)
		}
		w.state.set(StateReconnecting, w.Socket, err, w.now())
		w.log().Warn("docker event stream lost; reconnecting", "error", err, "in", backoff)
		if !w.waitPending(ctx, backoff, out) {
			return ctx.Err()
		}
		backoff = min(2*backoff, durOr(w.MaxBackoff, 30*time.Second))
		if !w.lastTime.IsZero() {
			since = w.lastTime.Add(-resumeOverlap)
		}
	}
}

// Status says whether the watcher is connected, and if not, why.
func (w *DockerWatcher) Status() RuntimeStatus { return w.state.get() }

func (w *DockerWatcher) isConnected(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (w *DockerWatcher) metric(f func(*Metrics)) {
	if w.Metrics != nil {
		f(w.Metrics)
	}
}

// loop handles one connection's events until the stream ends.
func (w *DockerWatcher) loop(ctx context.Context, events chan Event, errc chan error, connected chan struct{}, first time.Time, out chan<- BuildInfo) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			// Events already queued were sent before the stream broke.
			for len(events) > 0 {
				w.handle(ctx, <-events)
			}
			return err
		case ev := <-events:
			w.handle(ctx, ev)
		case <-connected:
			connected = nil // a nil channel: announced once
			w.metric(func(m *Metrics) { m.dockerConnects.Inc(); m.dockerUp.Set(1) })
			w.state.set(StateConnected, w.Socket, nil, w.now())
			w.log().Info("docker event stream open", "host", w.Docker.Host)
			if !w.listed {
				w.listKnown(ctx, first)
			}
		case <-tick.C:
		}
		if err := w.examineDue(ctx, out, false); err != nil {
			return err
		}
	}
}

// listKnown remembers the images on the node created within Retention
// but before first, the start of the first events asked for: they came
// before the watch, by a way it cannot tell (a load, a pull, a build), so
// tagging one now is not building it. Images created since are judged by
// the events replayed. When the list cannot be had, the next connection
// tries again; until then such an image is judged as if it were new.
func (w *DockerWatcher) listKnown(ctx context.Context, first time.Time) {
	imgs, err := w.Docker.Images(ctx)
	if err != nil {
		w.log().Warn("listing the images on the node failed; will retry at the next connection", "error", err)
		return
	}
	cut := first.Add(-durOr(w.Retention, 2*time.Hour))
	for _, img := range imgs {
		created := time.Unix(img.Created, 0)
		if imageIDPattern.MatchString(img.ID) && created.Before(first) && !created.Before(cut) && len(w.known) < maxContainers {
			w.known[img.ID] = true
		}
	}
	w.listed = true
}

// waitPending waits d while still examining images that fall due.
func (w *DockerWatcher) waitPending(ctx context.Context, d time.Duration, out chan<- BuildInfo) bool {
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
			w.examineDue(ctx, out, false)
		}
	}
}

// handle takes one event into account, once: an event replayed after a
// reconnect was seen. An event stamped earlier than one already received
// is not a replay (those start resumeOverlap before the latest).
func (w *DockerWatcher) handle(ctx context.Context, ev Event) {
	t := ev.When()
	key := ev.key()
	if _, dup := w.seen[key]; dup {
		return
	}
	if t.After(w.lastTime) && !t.After(w.now().Add(maxClockAhead)) {
		w.lastTime = t
		// Pruned once per resumeOverlap, not per event: a storm of events
		// must not cost a pass over all the keys each.
		if t.Sub(w.pruned) > resumeOverlap {
			cut := t.Add(-resumeOverlap)
			for k, kt := range w.seen {
				if kt.Before(cut) {
					delete(w.seen, k)
				}
			}
			w.pruned = t
		}
	}
	if !t.Before(w.lastTime.Add(-resumeOverlap)) && len(w.seen) < maxSeen {
		w.seen[key] = t
	}
	w.metric(func(m *Metrics) { m.dockerEvents.WithLabelValues(ev.Type).Inc() })
	id := ev.Actor.ID
	switch ev.Type {
	case "container":
		switch ev.Action {
		case "create":
			w.remember(id, t)
		case "start":
			c := w.remember(id, t)
			// The init PID is only there while the container runs; a RUN
			// step may be over before this answer.
			if ci, err := w.Docker.ContainerInspect(ctx, id); err == nil && ci.State.Pid > 0 {
				c.pid = ci.State.Pid
			}
		case "commit":
			if img := ev.Actor.Attributes["imageID"]; imageIDPattern.MatchString(img) {
				w.schedule(img, ev.Action, t, id)
			}
		}
	case "image":
		switch ev.Action {
		case "tag", "import", "create", "build":
			if imageIDPattern.MatchString(id) {
				w.schedule(id, ev.Action, t, "")
			}
		case "load":
			// Made elsewhere: neither the load nor a later tag of it is
			// a build. Docker's containerd image store may name the
			// image rather than give its ID.
			if !imageIDPattern.MatchString(id) {
				img, err := w.Docker.ImageInspect(ctx, id)
				if err != nil {
					w.log().Warn("a loaded image could not be inspected", "image", clip(id, 200), "error", err)
					return
				}
				id = img.ID
			}
			if len(w.loaded) >= maxContainers {
				w.forgetOld(true)
			}
			w.loaded[id] = t
			delete(w.pending, id)
		}
	case "builder":
		if imageIDPattern.MatchString(id) {
			w.schedule(id, ev.Action, t, "")
		}
	}
}

func (w *DockerWatcher) remember(id string, t time.Time) *seenContainer {
	if c, ok := w.ctrs[id]; ok {
		return c
	}
	if len(w.ctrs) >= maxContainers {
		w.forgetOld(true)
	}
	c := &seenContainer{id: id, created: t}
	w.ctrs[id] = c
	return c
}

// forgetOld drops containers and reported images past the retention; when
// full, the oldest half of the containers too. Reported images beyond
// maxContainers (a node that builds more within the retention) lose their
// oldest half: one of them seen again is examined again, and the server
// takes its report again as a duplicate.
func (w *DockerWatcher) forgetOld(full bool) {
	cut := w.now().Add(-durOr(w.Retention, 2*time.Hour))
	for id, c := range w.ctrs {
		if c.created.Before(cut) {
			delete(w.ctrs, id)
		}
	}
	for _, m := range []map[string]time.Time{w.reported, w.loaded} {
		for id, t := range m {
			if t.Before(cut) {
				delete(m, id)
			}
		}
		if len(m) >= maxContainers {
			type rep struct {
				id string
				at time.Time
			}
			all := make([]rep, 0, len(m))
			for id, t := range m {
				all = append(all, rep{id, t})
			}
			sort.Slice(all, func(i, j int) bool { return all[i].at.Before(all[j].at) })
			for _, r := range all[:len(all)/2] {
				delete(m, r.id)
			}
		}
	}
	if full && len(w.ctrs) >= maxContainers {
		all := make([]*seenContainer, 0, len(w.ctrs))
		for _, c := range w.ctrs {
			all = append(all, c)
		}
		sort.Slice(all, func(i, j int) bool { return all[i].created.Before(all[j].created) })
		for _, c := range all[:len(all)/2] {
			delete(w.ctrs, c.id)
		}
	}
}

func (w *DockerWatcher) schedule(imageID, action string, at time.Time, ctr string) {
	// A commit or an import says more of the image than the tags that
	// follow it.
	if p, ok := w.pending[imageID]; ok && (p.ctr != "" || p.action == "import") {
		return
	}
	w.pending[imageID] = pendingImage{due: w.now().Add(durOr(w.Settle, time.Second)), action: action, at: at, ctr: ctr}
}

// examineDue examines the images whose settle time passed (all of them
// when all is set).
func (w *DockerWatcher) examineDue(ctx context.Context, out chan<- BuildInfo, all bool) error {
	now := w.now()
	var due []string
	for id, p := range w.pending {
		if all || !now.Before(p.due) {
			due = append(due, id)
		}
	}
	sort.Strings(due)
	for _, id := range due {
		p := w.pending[id]
		b, ok, err := w.examine(ctx, id, p)
		var de *DockerError
		if err != nil && !(errors.As(err, &de) && de.NotFound()) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			p.tries++
			if p.tries < maxExamineTries {
				// The daemon is going away: examine it after the reconnect.
				w.log().Warn("examining an image failed; will retry", "digest", id, "error", err)
				p.due = now.Add(2 * time.Second)
				w.pending[id] = p
				continue
			}
			w.log().Error("examining an image kept failing; giving up on it", "digest", id, "tries", p.tries, "error", err)
		}
		delete(w.pending, id)
		if !ok {
			continue
		}
		w.reported[id] = now
		w.metric(func(m *Metrics) { m.builds.WithLabelValues(b.Tool).Inc() })
		w.log().Info("image build", "digest", b.ImageID, "tags", b.Tags, "tool", b.Tool,
			"started", b.Started.UTC().Format(time.RFC3339Nano), "containers", len(b.ContainerIDs), "pids", b.PIDs)
		select {
		case out <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if len(due) > 0 {
		w.forgetOld(false)
	}
	return nil
}

// maxChain bounds the parent chain walked: Docker's own limit on layers
// is 127, intermediate images of the classic builder add one per step.
const maxChain = 1000

// examine decides whether image id was built here and how.
func (w *DockerWatcher) examine(ctx context.Context, id string, p pendingImage) (BuildInfo, bool, error) {
	if _, done := w.reported[id]; done {
		return BuildInfo{}, false, nil
	}
	img, err := w.Docker.ImageInspect(ctx, id)
	if err != nil {
		return BuildInfo{}, false, err
	}
	hist, err := w.Docker.ImageHistory(ctx, id)
	if err != nil {
		return BuildInfo{}, false, err
	}
	b := BuildInfo{ImageID: img.ID, Finished: p.at}
	for _, t := range img.RepoTags {
		if t != "<none>:<none>" {
			b.Tags = append(b.Tags, t)
		}
	}
	buildkit := false
	for i := len(hist) - 1; i >= 0; i-- {
		if s := strings.TrimSpace(hist[i].CreatedBy); s != "" {
			b.Steps = append(b.Steps, s)
			if strings.HasSuffix(s, "# buildkit") {
				buildkit = true
			}
		}
	}
	// The classic builder's chain: each image names the container it was
	// committed from.
	cur := img
	for range maxChain {
		if c, ok := w.ctrs[cur.Container]; ok && cur.Container != "" {
			b.ContainerIDs = append(b.ContainerIDs, c.id)
			if c.pid > 0 {
				b.PIDs = append(b.PIDs, c.pid)
			}
			if b.Started.IsZero() || c.created.Before(b.Started) {
				b.Started = c.created
			}
		}
		if cur.Parent == "" {
			break
		}
		if cur, err = w.Docker.ImageInspect(ctx, cur.Parent); err != nil {
			var de *DockerError
			if errors.As(err, &de) && de.NotFound() {
				break // the parent was removed since
			}
			return BuildInfo{}, false, err
		}
	}
	slices.Reverse(b.ContainerIDs)
	slices.Reverse(b.PIDs)
	if len(b.ContainerIDs) > 0 {
		b.Tool = "docker"
		return b, true, nil
	}
	// Nothing of it ran in a container seen here: built elsewhere on the
	// node (BuildKit), imported — or an image made elsewhere, tagged.
	// An image with a registry digest was pulled (or pushed already), one
	// docker load brought was built where it was saved, one on the node
	// before the watch began came by a way not seen, one created long ago
	// is old: tagging any of them is not building it.
	retention := durOr(w.Retention, 2*time.Hour)
	if img.Created.IsZero() || p.at.Sub(img.Created) > retention || len(img.RepoDigests) > 0 {
		return BuildInfo{}, false, nil
	}
	if _, loaded := w.loaded[id]; loaded && p.action != "import" {
		return BuildInfo{}, false, nil
	}
	if w.known[id] && p.action != "import" {
		return BuildInfo{}, false, nil
	}
	switch {
	case buildkit:
		b.Tool = "buildkit"
	case p.action == "import":
		b.Tool = "docker-import"
	default:
		b.Tool = "docker"
	}
	// The build's steps were committed after it began; the earliest
	// recent step is the best estimate of its start.
	b.Started = img.Created
	for _, h := range hist {
		ht := time.Unix(h.Created, 0)
		if h.Created > 0 && ht.Before(b.Started) && p.at.Sub(ht) <= retention {
			b.Started = ht
		}
	}
	if b.Finished.Before(b.Started) {
		b.Finished = b.Started
	}
	return b, true, nil
}
