// Package engine evaluates a workload: it gathers the facts policy.Decide
// needs (images looked up in their registries, their signatures and
// attestations, the nodes' evidence of their builds, the namespace's mode
// label) under one deadline, and calls it. The webhook, audit scans, the
// judging of late node evidence and `buildguard check` share it.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

// DefaultTimeout bounds one evaluation: the API server's default webhook
// timeout (10s) less 0.5s of headroom for the answer to travel back.
const DefaultTimeout = 9500 * time.Millisecond

// DefaultMaxImageBytes bounds what the images of one workload hold in
// memory once looked up (their build history, run config and digests, as
// registry.ImageBytes counts them) until the workload is decided.
const DefaultMaxImageBytes = 32 << 20

// ModeLabel is the namespace label that overrides the policy's mode.
const ModeLabel = "buildguard.dev/mode"

// Verifier checks an image's signatures and attestations against a
// policy's trust settings. *provenance.Verifier is one.
type Verifier interface {
	Verify(ctx context.Context, req registry.Request, img *policy.Image, p *policy.Policy) *policy.Provenance
}

// Resolver looks an image up in its registry. *registry.Client is one.
type Resolver interface {
	Resolve(ctx context.Context, r registry.Request) (*policy.Image, error)
}

// Keychains finds the credentials a pod would pull its images with.
type Keychains interface {
	For(ctx context.Context, namespace, serviceAccount string, pullSecrets []string) (registry.Auth, error)
}

// Namespaces returns the labels of a namespace.
type Namespaces interface {
	Labels(ctx context.Context, namespace string) (map[string]string, error)
}

// Workload is what is admitted: a pod spec and where it comes from.
type Workload struct {
	Namespace string
	Kind      string
	Name      string
	// Labels are the object's own labels, for policies' objectSelector.
	Labels map[string]string
	Spec   *corev1.PodSpec
	// Operation is CREATE or UPDATE; "" is taken as CREATE.
	Operation string
	// OldSpec is the pod spec before an UPDATE.
	OldSpec *corev1.PodSpec
	// Annotations are the object's and its pod template's annotations
	// (the object's win), where change IDs are found.
	Annotations map[string]string
	// Controlled is true when a controller owns the object (a Pod of a
	// ReplicaSet, a Job of a CronJob): the change was judged at the owner.
	Controlled bool
	// At is when the workload was admitted, for judging it again later
	// (late evidence): the policy decides as of then, so that a build
	// dated after the admission cannot be the build of what was admitted.
	// Zero means now.
	At time.Time
}

// ImageChange reports whether w changes what runs: a CREATE, or an UPDATE
// whose images differ from the old object's, of an object no controller
// owns. Scaling, relabelling or restarting changes no image.
func (w Workload) ImageChange() bool {
	if w.Controlled || w.Spec == nil {
		return false
	}
	if w.Operation != "UPDATE" || w.OldSpec == nil {
		return true
	}
	return !equalImages(Containers(w.Spec), Containers(w.OldSpec))
}

func equalImages(a, b []policy.Container) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Kind != b[i].Kind || a[i].Image != b[i].Image {
			return false
		}
	}
	return true
}

// Policies chooses the policies that govern a workload, and the
// exceptions that apply to it besides the policies' own.
type Policies interface {
	Select(namespace string, namespaceLabels, objectLabels map[string]string) (Selection, error)
}

// Selection is what Policies chose. No policy means the workload is not
// governed: it is admitted without a lookup.
type Selection struct {
	Policies   []*policy.Policy
	Exceptions policy.Exceptions
}

// PolicyFunc is a Policies that governs everything with one policy, such
// as a policy file's.
type PolicyFunc func() *policy.Policy

// Select implements Policies.
func (f PolicyFunc) Select(string, map[string]string, map[string]string) (Selection, error) {
	p := f()
	if p == nil {
		return Selection{}, errors.New("no policy loaded")
	}
	return Selection{Policies: []*policy.Policy{p}}, nil
}

// Engine evaluates workloads. Policies and Resolver are required.
type Engine struct {
	// Policies chooses the policies in force; it is asked once per
	// evaluation, so a new policy applies without a restart.
	Policies Policies
	// Resolver looks images up.
	Resolver Resolver
	// Keychains gives the pod's pull credentials. When nil, registries are
	// accessed anonymously.
	Keychains Keychains
	// Evidence holds node reports. When nil, node evidence is not used.
	Evidence Evidence
	// Namespaces gives namespace labels. When nil, the policy's mode
	// applies everywhere.
	Namespaces Namespaces
	// Clock tells the time a workload without one (Workload.At) is
	// judged at. The default, nil, is the real clock.
	Clock clock.Clock
	// Timeout bounds one evaluation. The default is DefaultTimeout.
	Timeout time.Duration
	// Log receives lookup failures. The default discards them.
	Log *slog.Logger
	// Verifier checks signatures and attestations for the policies that
	// ask for them (Policy.NeedsProvenance). When nil, no provenance is
	// verified and such policies find every image unsigned.
	Verifier Verifier
	// MaxImageBytes bounds what the images of one workload may hold in
	// memory to be judged. The image that takes them past it, and every
	// image not yet looked up, are unresolvable (too-large): a workload
	// cannot make buildguard hold its registries' content without bound,
	// nor turn that into a lookup failure failurePolicy allow admits. The
	// default is DefaultMaxImageBytes.
	MaxImageBytes int64

	refs refCache
}

// Evaluate judges w. An error means the facts could not be gathered at
// all (say the context ended before anything was decided); registry
// failures are facts, decided by the policy's failurePolicy.
func (e *Engine) Evaluate(ctx context.Context, w Workload) (policy.Verdict, error) {
	timeout := e.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	// The webhook has already bounded ctx by the API server's timeout,
	// nearly always the sooner: a second timer would only cost.
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > timeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	log := logger.OrDiscard(e.Log)
	at := w.At
	if at.IsZero() {
		at = clock.OrReal(e.Clock).Now()
	}
	facts := policy.Facts{Now: at, Namespace: w.Namespace,
		Change: policy.ChangeFacts{ImageChange: w.ImageChange(), Annotations: w.Annotations}}
	var nsLabels map[string]string
	if e.Namespaces != nil && w.Namespace != "" {
		var err error
		nsLabels, err = e.Namespaces.Labels(ctx, w.Namespace)
		if err != nil {
			// Without the labels no policy selector can be trusted to
			// match: fail closed rather than judge under no policy.
			return policy.Verdict{}, fmt.Errorf("labels of namespace %s: %w", w.Namespace, err)
		}
		facts.NamespaceMode = nsLabels[ModeLabel]
	}
	sel, err := e.Policies.Select(w.Namespace, nsLabels, w.Labels)
	if err != nil {
		return policy.Verdict{}, err
	}
	facts.Exceptions = sel.Exceptions
	if w.Spec == nil {
		return decideAll(sel.Policies, facts), nil
	}
	facts.Containers = Containers(w.Spec)
	if len(sel.Policies) == 0 {
		return decideAll(nil, facts), nil
	}
	for _, v := range w.Spec.Volumes {
		if v.HostPath != nil {
			facts.HostPaths = append(facts.HostPaths, policy.HostPathVolume{Volume: v.Name, Path: v.HostPath.Path})
		}
	}

	// Look each distinct allowed image up once, all in parallel.
	maxBytes := e.MaxImageBytes
	if maxBytes <= 0 {
		maxBytes = DefaultMaxImageBytes
	}
	l := &lookups{e: e, ctx: ctx, log: log, policies: sel.Policies, maxBytes: maxBytes,
		verifies: e.Verifier != nil && anyNeedsProvenance(sel.Policies)}
	if e.Evidence != nil {
		l.window = buildWindow(sel.Policies)
	}
	// fetchesMore is set when an image's lookup goes on to signatures or
	// node evidence, which may wait for a registry or the store.
	fetchesMore := l.verifies || l.window > 0
	cr, canCache := e.Resolver.(cachedResolver)
	images := make([]image, 0, len(facts.Containers))
	var ix imageIndex
	var auth registry.Auth
	haveAuth := false
	var pending []*image
	for _, c := range facts.Containers {
		if ix.find(images, c.Image) >= 0 {
			continue
		}
		images = append(images, image{name: c.Image})
		// images has room for every container: im stays put.
		im := &images[len(images)-1]
		ix.add(images)
		ref, err := e.refs.parse(c.Image, false)
		if err != nil || !anyAllows(sel.Policies, ref) {
			if err == nil {
				im.ref = ref
			}
			continue // never contact a registry no policy allows
		}
		im.ref, im.looked = ref, true
		if !haveAuth {
			a, err := e.auth(ctx, w)
			auth, haveAuth = a, true
			if err != nil {
				log.Warn("pull credentials unavailable; trying anonymously", "namespace", w.Namespace, "error", err)
			}
		}
		im.req = registry.Request{Ref: ref, Auth: auth, Insecure: anyInsecure(sel.Policies, ref)}
		if im.req.Insecure {
			// Re-parse so go-containerregistry speaks plain HTTP to it.
			if r2, err := e.refs.parse(c.Image, true); err == nil {
				im.req.Ref = r2
			}
		}
		// An image in the caches, with nothing more to fetch about it,
		// is judged without a goroutine or a context of its own: that is
		// every image of nearly every review.
		if canCache && !fetchesMore {
			if img, ok := cr.Cached(im.req); ok {
				l.done(im, img, nil)
				continue
			}
		}
		pending = append(pending, im)
	}
	l.resolve(pending)
	for i := range facts.Containers {
		c := &facts.Containers[i]
		im := &images[ix.find(images, c.Image)]
		c.Ref = im.ref
		if im.looked {
			c.Resolved, c.Err = im.img, im.err
			c.Provenance = im.prov
			c.Builds = im.builds
		}
	}
	return decideAll(sel.Policies, facts), nil
}

// image is one distinct image of a workload, and what was found of it.
type image struct {
	name string
	// ref is nil when the image reference does not parse.
	ref name.Reference
	// looked is set when a policy allows the image's registry: it is
	// looked up, and img or err is set.
	looked bool
	req    registry.Request
	img    *policy.Image
	err    *policy.ResolveError
	// prov is the provenance verified per policy name.
	prov map[string]*policy.Provenance
	// builds are the builds nodes reported of the image.
	builds []policy.BuildEvidence
}

// imageIndex finds an image among the distinct images of a workload:
// by scanning them while they are few, as they nearly always are, and
// through a map past that.
type imageIndex struct {
	m map[string]int
}

// maxScannedImages is the most distinct images imageIndex scans.
const maxScannedImages = 8

func (x *imageIndex) find(images []image, name string) int {
	if x.m != nil {
		if i, ok := x.m[name]; ok {
			return i
		}
		return -1
	}
	for i := range images {
		if images[i].name == name {
			return i
		}
	}
	return -1
}

// add indexes the last of images.
func (x *imageIndex) add(images []image) {
	switch {
	case x.m != nil:
		x.m[images[len(images)-1].name] = len(images) - 1
	case len(images) > maxScannedImages:
		x.m = make(map[string]int, 2*len(images))
		for i := range images {
			x.m[images[i].name] = i
		}
	}
}

// lookups gathers the facts of one workload's images: it bounds the
// memory they hold together (Engine.MaxImageBytes) and ends the lookups
// still running once they hold too much.
type lookups struct {
	e        *Engine
	ctx      context.Context
	log      *slog.Logger
	policies []*policy.Policy
	verifies bool
	// window is the widest build window of the policies, when node
	// evidence is used; zero otherwise.
	window   time.Duration
	maxBytes int64
	held     atomic.Int64
	// lctx is the context of the lookups that need a registry, and stop
	// ends them; both are nil until resolve starts such lookups.
	lctx context.Context
	stop context.CancelCauseFunc

	tooLargeOnce sync.Once
	tooLargeErr  *policy.ResolveError
}

// tooLarge is the error of the images not judged because the workload's
// images hold too much; made only for a workload that does, it is the
// cause that ends the lookups.
func (l *lookups) tooLarge() *policy.ResolveError {
	l.tooLargeOnce.Do(func() {
		l.tooLargeErr = &policy.ResolveError{Kind: policy.ErrTooLarge, Message: fmt.Sprintf(
			"the images of this workload hold more than %d bytes of build history and run config; buildguard judges no more of them", l.maxBytes)}
	})
	return l.tooLargeErr
}

// resolve looks up the images the caches did not hold, all in parallel,
// and waits for them.
func (l *lookups) resolve(pending []*image) {
	if len(pending) == 0 {
		return
	}
	// Lookups end early once the workload's images hold too much; the
	// cached ones judged before may already have taken the room.
	var stop context.CancelCauseFunc
	l.lctx, stop = context.WithCancelCause(l.ctx)
	defer stop(nil)
	l.stop = stop
	if l.held.Load() > l.maxBytes {
		stop(l.tooLarge())
	}
	// The last lookup runs on this goroutine: most workloads have one
	// image, and a cached lookup costs less than starting a goroutine.
	var wg sync.WaitGroup
	for _, im := range pending[:len(pending)-1] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.lookup(im)
		}()
	}
	l.lookup(pending[len(pending)-1])
	wg.Wait()
}

// lookup looks im up in its registry.
func (l *lookups) lookup(im *image) {
	img, err := l.e.Resolver.Resolve(l.lctx, im.req)
	l.done(im, img, err)
}

// done records the lookup of im, and what more the policies need of it.
func (l *lookups) done(im *image, img *policy.Image, err error) {
	if err == nil && l.held.Add(registry.ImageBytes(img)) > l.maxBytes {
		img, err = nil, l.tooLarge()
		if l.stop != nil {
			l.stop(l.tooLarge())
		}
	}
	if err != nil && l.lctx != nil {
		if cause, ok := context.Cause(l.lctx).(*policy.ResolveError); ok && cause == l.tooLarge() {
			// Not judged because the others took the room: too
			// large with them, not a registry failure.
			err = cause
		}
	}
	if err != nil {
		var re *policy.ResolveError
		if !errors.As(err, &re) {
			re = &policy.ResolveError{Kind: policy.ErrUnavailable, Message: err.Error()}
		}
		im.err = re
		l.log.Info("image lookup failed", "image", im.name, "reason", string(re.Kind), "error", re.Message)
		return
	}
	im.img = img
	if l.verifies {
		im.prov = l.e.verify(l.ctx, im.req, img, l.policies)
	}
	if l.window > 0 {
		im.builds = l.e.builds(l.ctx, l.log, im.req.Ref, img, l.window)
	}
}

// Evidence is where node reports of image builds and connections are
// kept. *evidence.SQLite and *evidence.Postgres are.
type Evidence interface {
	BuildsByImageID(ctx context.Context, imageID string) ([]evidence.Build, error)
	BuildsByTag(ctx context.Context, tag string, limit int) ([]evidence.Build, error)
	Connections(ctx context.Context, node string, from, to time.Time, limit int) ([]evidence.Connection, error)
}

// maxBuildsPerImage and maxConnectionsPerBuild bound what one admission
// reads from the store.
const (
	maxBuildsPerImage      = 8
	maxConnectionsPerBuild = 500
)

// buildWindow is the widest build window of the policies using node
// evidence; zero when none does.
func buildWindow(ps []*policy.Policy) time.Duration {
	var w time.Duration
	for _, p := range ps {
		w = max(w, p.BuildWindow())
	}
	return w
}

// builds finds the builds nodes reported of img — by config digest, the
// Docker image ID, for each platform; by tag only when no digest matched,
// and then only builds that name no image ID — with their nodes'
// connections around them. A store that fails is
// logged and yields no evidence: it never blocks admission by itself.
func (e *Engine) builds(ctx context.Context, log *slog.Logger, ref name.Reference, img *policy.Image, window time.Duration) []policy.BuildEvidence {
	var out []policy.BuildEvidence
	seen := map[string]bool{}
	lookup := func(id, platform string) bool {
		bs, err := e.Evidence.BuildsByImageID(ctx, id)
		if err != nil {
			log.Warn("node evidence unavailable", "image", ref.String(), "digest", id, "error", err)
			return false
		}
		// The store lists every node's newest build first; an event ID is
		// one node's (another node may report the same one).
		for _, b := range bs[:min(len(bs), maxBuildsPerImage)] {
			if k := b.Node + "\x00" + b.Source + "\x00" + b.EventID; !seen[k] {
				seen[k] = true
				out = append(out, toBuildEvidence(b, "image-id", platform))
			}
		}
		return true
	}
	// Docker's classic image store names an image by its config digest;
	// its containerd image store by the manifest or index digest.
	for _, pl := range img.Platforms {
		for _, id := range []string{pl.ConfigDigest, pl.Digest} {
			if id != "" && !lookup(id, pl.Platform) {
				return nil
			}
		}
	}
	if img.Index && !lookup(img.Digest, "") {
		return nil
	}
	if t, ok := ref.(name.Tag); ok && len(out) == 0 {
		// Nodes report tags as docker wrote them: "nginx:1" as well as
		// "index.docker.io/library/nginx:1".
		var bs []evidence.Build
		for _, tag := range []string{t.String(), t.Name()} {
			found, err := e.Evidence.BuildsByTag(ctx, tag, maxBuildsPerImage)
			if err != nil {
				log.Warn("node evidence unavailable", "image", ref.String(), "error", err)
				return nil
			}
			if bs = found; len(bs) > 0 || t.String() == t.Name() {
				break
			}
		}
		digests := imageDigests(img)
		for _, b := range bs {
			// A build that names its image ID built the image of that ID:
			// none of this image's digests, so another image that had the
			// tag (a tag moves). Only a build that names no image is tied
			// to this one by its tag.
			if b.ImageID != "" && !digests[b.ImageID] {
				log.Debug("build of another image with this tag ignored", "image", ref.String(), "digest", b.ImageID, "node", b.Node)
				continue
			}
			out = append(out, toBuildEvidence(b, "tag", ""))
		}
	}
	for i := range out {
		b := &out[i]
		end := b.Finished
		if end.IsZero() {
			end = b.Started
		}
		// The build's own span first, then the windows around it: a busy
		// node must not push the build's connections past the limit.
		seenConn := map[string]bool{}
		for _, span := range [][2]time.Time{{b.Started, end}, {b.Started.Add(-window), b.Started}, {end, end.Add(window)}} {
			cs, err := e.Evidence.Connections(ctx, b.Node, span[0], span[1], maxConnectionsPerBuild)
			if err != nil {
				log.Warn("node evidence unavailable", "image", ref.String(), "error", err)
				break
			}
			for _, c := range cs {
				k := c.Source + "\x00" + c.EventID
				if seenConn[k] {
					continue
				}
				seenConn[k] = true
				b.Connections = append(b.Connections, policy.ConnectionEvidence{
					Source: c.Source, Reporter: c.Reporter, Node: c.Node, Time: c.Time, Process: c.Process, PID: c.PID, Cmdline: c.Cmdline,
					ContainerID: c.ContainerID, DestIP: c.DestIP, DestPort: c.DestPort, DestName: c.DestName,
				})
			}
		}
	}
	return out
}

// imageDigests are the digests a node may name img by: its index's, and
// each platform's manifest and config digests.
func imageDigests(img *policy.Image) map[string]bool {
	ds := map[string]bool{img.Digest: true}
	for _, pl := range img.Platforms {
		ds[pl.Digest], ds[pl.ConfigDigest] = true, true
	}
	delete(ds, "")
	return ds
}

func toBuildEvidence(b evidence.Build, matchedBy, platform string) policy.BuildEvidence {
	return policy.BuildEvidence{
		Source: b.Source, Reporter: b.Reporter, Node: b.Node, Tool: b.Tool, ImageID: b.ImageID, Tags: b.Tags, Started: b.Started, Finished: b.Finished,
		MatchedBy: matchedBy, Platform: platform, PIDs: b.PIDs, ContainerIDs: b.ContainerIDs,
	}
}

// decideAll decides under every policy; the strictest verdict wins. With
// no policy, every image is admitted without findings.
func decideAll(ps []*policy.Policy, f policy.Facts) policy.Verdict {
	if len(ps) == 0 {
		v := policy.Verdict{Outcome: policy.OutcomeAllow, Allowed: true}
		for _, c := range f.Containers {
			v.Images = append(v.Images, policy.ImageVerdict{Container: c.Name, ContainerKind: c.Kind, Image: c.Image, Outcome: policy.OutcomeAllow, Findings: []policy.Finding{}, Checks: []string{}})
		}
		return v
	}
	if len(ps) == 1 {
		return policy.Decide(ps[0], f) // as Combine of one verdict is
	}
	vs := make([]policy.Verdict, len(ps))
	for i, p := range ps {
		vs[i] = policy.Decide(p, f)
	}
	return policy.Combine(vs)
}

// cachedResolver is a Resolver that answers from its caches without
// waiting. *registry.Client is one.
type cachedResolver interface {
	Cached(r registry.Request) (*policy.Image, bool)
}

func anyNeedsProvenance(ps []*policy.Policy) bool {
	for _, p := range ps {
		if p.NeedsProvenance() {
			return true
		}
	}
	return false
}

func anyAllows(ps []*policy.Policy, ref name.Reference) bool {
	for _, p := range ps {
		if p.RegistryAllowed(ref.Context()) {
			return true
		}
	}
	return false
}

func anyInsecure(ps []*policy.Policy, ref name.Reference) bool {
	for _, p := range ps {
		if p.Insecure(ref.Context().RegistryStr()) {
			return true
		}
	}
	return false
}

func (e *Engine) auth(ctx context.Context, w Workload) (registry.Auth, error) {
	if e.Keychains == nil {
		return registry.Anonymous(), nil
	}
	secrets := make([]string, 0, len(w.Spec.ImagePullSecrets))
	for _, s := range w.Spec.ImagePullSecrets {
		secrets = append(secrets, s.Name)
	}
	a, err := e.Keychains.For(ctx, w.Namespace, w.Spec.ServiceAccountName, secrets)
	if err != nil {
		return registry.Anonymous(), err
	}
	return a, nil
}

// Containers lists every container of a pod spec — containers,
// initContainers and ephemeralContainers — as policy facts. It is the one
// place that walks the three lists.
func Containers(spec *corev1.PodSpec) []policy.Container {
	out := make([]policy.Container, 0, len(spec.Containers)+len(spec.InitContainers)+len(spec.EphemeralContainers))
	add := func(kind policy.ContainerKind, name, image string, pull corev1.PullPolicy, mounts []corev1.VolumeMount) {
		c := policy.Container{Name: name, Kind: kind, Image: image, PullPolicy: string(pull)}
		for _, m := range mounts {
			c.Mounts = append(c.Mounts, policy.Mount{Volume: m.Name, SubPath: m.SubPath})
		}
		out = append(out, c)
	}
	for _, c := range spec.InitContainers {
		add(policy.KindInitContainer, c.Name, c.Image, c.ImagePullPolicy, c.VolumeMounts)
	}
	for _, c := range spec.Containers {
		add(policy.KindContainer, c.Name, c.Image, c.ImagePullPolicy, c.VolumeMounts)
	}
	for _, c := range spec.EphemeralContainers {
		add(policy.KindEphemeralContainer, c.Name, c.Image, c.ImagePullPolicy, c.VolumeMounts)
	}
	return out
}

// verify asks the verifier about img once per policy that needs it, in
// parallel; the verifier caches what policies with the same trust
// settings share.
func (e *Engine) verify(ctx context.Context, req registry.Request, img *policy.Image, ps []*policy.Policy) map[string]*policy.Provenance {
	out := map[string]*policy.Provenance{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range ps {
		if !p.NeedsProvenance() || !p.RegistryAllowed(req.Ref.Context()) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pv := e.Verifier.Verify(ctx, req, img, p)
			mu.Lock()
			out[p.Name()] = pv
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}
