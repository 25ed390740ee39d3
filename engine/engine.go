// Package engine evaluates a workload: it gathers the facts policy.Decide
// needs (images looked up in their registries, the namespace's mode
// label) under one deadline, and calls it. The webhook and `buildguard
// check` share it.
package engine

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"

	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

// DefaultTimeout bounds one evaluation: the API server's default webhook
// timeout (10s) less 0.5s of headroom for the answer to travel back.
const DefaultTimeout = 9500 * time.Millisecond

// ModeLabel is the namespace label that overrides the policy's mode.
const ModeLabel = "buildguard.dev/mode"

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
	Spec      *corev1.PodSpec
}

// Engine evaluates workloads. Policy, Resolver and Now are required.
type Engine struct {
	// Policy returns the policy in force; it is called once per
	// evaluation so a new policy applies without a restart.
	Policy func() *policy.Policy
	// Resolver looks images up.
	Resolver Resolver
	// Keychains gives the pod's pull credentials. When nil, registries are
	// accessed anonymously.
	Keychains Keychains
	// Namespaces gives namespace labels. When nil, the policy's mode
	// applies everywhere.
	Namespaces Namespaces
	// Now is the clock.
	Now func() time.Time
	// Timeout bounds one evaluation. The default is DefaultTimeout.
	Timeout time.Duration
	// Log receives lookup failures. The default discards them.
	Log *slog.Logger
}

// Evaluate judges w. An error means the facts could not be gathered at
// all (say the context ended before anything was decided); registry
// failures are facts, decided by the policy's failurePolicy.
func (e *Engine) Evaluate(ctx context.Context, w Workload) (policy.Verdict, error) {
	timeout := e.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	log := e.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := e.Policy()
	if p == nil {
		return policy.Verdict{}, errors.New("no policy loaded")
	}
	facts := policy.Facts{Now: e.Now(), Namespace: w.Namespace}
	if w.Spec == nil {
		return policy.Decide(p, facts), nil
	}
	if e.Namespaces != nil && w.Namespace != "" {
		labels, err := e.Namespaces.Labels(ctx, w.Namespace)
		if err != nil {
			log.Warn("namespace labels unavailable; using the policy's mode", "namespace", w.Namespace, "error", err)
		}
		facts.NamespaceMode = labels[ModeLabel]
	}
	facts.Containers = Containers(w.Spec)
	for _, v := range w.Spec.Volumes {
		if v.HostPath != nil {
			facts.HostPaths = append(facts.HostPaths, policy.HostPathVolume{Volume: v.Name, Path: v.HostPath.Path})
		}
	}

	// Look each distinct allowed image up once, all in parallel.
	type result struct {
		img *policy.Image
		err *policy.ResolveError
	}
	results := map[string]*result{}
	var auth *registry.Auth
	var wg sync.WaitGroup
	for _, c := range facts.Containers {
		if _, seen := results[c.Image]; seen {
			continue
		}
		ref, err := name.ParseReference(c.Image)
		if err != nil || !p.RegistryAllowed(ref.Context()) {
			continue // never contact a registry the policy does not allow
		}
		if auth == nil {
			a, err := e.auth(ctx, w)
			auth = &a
			if err != nil {
				log.Warn("pull credentials unavailable; trying anonymously", "namespace", w.Namespace, "error", err)
			}
		}
		res := &result{}
		results[c.Image] = res
		req := registry.Request{Ref: ref, Auth: *auth, Insecure: p.Insecure(ref.Context().RegistryStr())}
		if req.Insecure {
			// Re-parse so go-containerregistry speaks plain HTTP to it.
			if r2, err := name.ParseReference(c.Image, name.Insecure); err == nil {
				req.Ref = r2
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			img, err := e.Resolver.Resolve(ctx, req)
			if err != nil {
				var re *policy.ResolveError
				if !errors.As(err, &re) {
					re = &policy.ResolveError{Kind: policy.ErrUnavailable, Message: err.Error()}
				}
				res.err = re
				log.Info("image lookup failed", "image", c.Image, "reason", string(re.Kind), "error", re.Message)
				return
			}
			res.img = img
		}()
	}
	wg.Wait()
	for i := range facts.Containers {
		if r, ok := results[facts.Containers[i].Image]; ok {
			facts.Containers[i].Resolved, facts.Containers[i].Err = r.img, r.err
		}
	}
	return policy.Decide(p, facts), nil
}

func (e *Engine) auth(ctx context.Context, w Workload) (registry.Auth, error) {
	if e.Keychains == nil {
		return registry.Anonymous, nil
	}
	secrets := make([]string, 0, len(w.Spec.ImagePullSecrets))
	for _, s := range w.Spec.ImagePullSecrets {
		secrets = append(secrets, s.Name)
	}
	a, err := e.Keychains.For(ctx, w.Namespace, w.Spec.ServiceAccountName, secrets)
	if err != nil {
		return registry.Anonymous, err
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
