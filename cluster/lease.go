package cluster

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"

	"buildguard.dev/buildguard/internal/logger"
)

// DefaultStatusLease is the name of the Lease that elects the replica
// writing the status of ClusterBuildPolicies and BuildPolicyExceptions.
const DefaultStatusLease = "buildguard-status"

// StatusLease elects, through a coordination.k8s.io Lease, the one
// replica that writes status: replicas that all wrote it overwrote each
// other (the API server's "the object has been modified"), and during a
// rollout two versions could disagree on a policy and flip its status.
// Every replica still reads and applies every policy; only the writing
// is elected.
type StatusLease struct {
	Client          kubernetes.Interface
	Namespace, Name string
	// Identity names this replica in the Lease (its pod's name and a
	// random suffix, say). Required, and unique among the replicas.
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's leader
	// election timings: how long a lease not renewed keeps others out,
	// how long the holder tries to renew before it gives up, how often
	// each replica tries. The defaults are 15s, 10s and 2s.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Log                                       *slog.Logger

	leading atomic.Bool
}

// Leading reports whether this replica holds the Lease.
func (l *StatusLease) Leading() bool { return l.leading.Load() }

func (l *StatusLease) log() *slog.Logger {
	return logger.OrDiscard(l.Log)
}

// Run campaigns for the Lease until ctx ends, and again after losing it.
// Each time this replica gets it, onLead runs with a context that ends
// when it loses it. When ctx ends the Lease is released, so that another
// replica takes over at once rather than after LeaseDuration.
func (l *StatusLease) Run(ctx context.Context, onLead func(context.Context)) error {
	d := func(v, def time.Duration) time.Duration {
		if v > 0 {
			return v
		}
		return def
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: l.Namespace, Name: l.Name},
		Client:     l.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: l.Identity},
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		Name:            l.Name,
		LeaseDuration:   d(l.LeaseDuration, 15*time.Second),
		RenewDeadline:   d(l.RenewDeadline, 10*time.Second),
		RetryPeriod:     d(l.RetryPeriod, 2*time.Second),
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				l.leading.Store(true)
				l.log().Info("this replica writes policy status", "lease", l.Namespace+"/"+l.Name, "identity", l.Identity)
				onLead(lctx)
			},
			OnStoppedLeading: func() {
				if l.leading.Swap(false) {
					l.log().Info("this replica no longer writes policy status", "lease", l.Namespace+"/"+l.Name)
				}
			},
			OnNewLeader: func(id string) {
				if id != l.Identity {
					l.log().Info("policy status is written by another replica", "lease", l.Namespace+"/"+l.Name, "holder", id)
				}
			},
		},
	})
	if err != nil {
		return err
	}
	// client-go logs through klog: into our log instead, at its levels,
	// but for the races of replicas that start together.
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(raceAsInfo{l.log().Handler()}))
	for ctx.Err() == nil {
		le.Run(ctx)
	}
	return nil
}

// raceAsInfo logs at info the errors of replicas racing for the same
// object, which the API server settles (one creates the Lease, the other
// is told it exists; one updates it, the other is told it changed): not
// errors, and a first install of two replicas has them every time.
type raceAsInfo struct{ slog.Handler }

func (h raceAsInfo) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		race := false
		r.Attrs(func(a slog.Attr) bool {
			if err, ok := a.Value.Any().(error); ok && (apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err)) {
				race = true
			}
			return !race
		})
		if race {
			r.Level = slog.LevelInfo
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h raceAsInfo) WithAttrs(attrs []slog.Attr) slog.Handler {
	return raceAsInfo{h.Handler.WithAttrs(attrs)}
}

func (h raceAsInfo) WithGroup(name string) slog.Handler { return raceAsInfo{h.Handler.WithGroup(name)} }
