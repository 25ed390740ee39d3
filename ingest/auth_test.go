package ingest_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"buildguard.dev/buildguard/ingest"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/kubeauth"
)

// TestTokenReviewCache counts the TokenReviews a real kube-apiserver
// receives while the clock moves.
func TestTokenReviewCache(t *testing.T) {
	env := sharedEnv(t)
	ctx := t.Context()
	newReviewer := func(t *testing.T) (*ingest.TokenReviewer, *atomic.Int64, *clocktest.Clock) {
		var n atomic.Int64
		r := env.reviewer(t, &n)
		clock := clocktest.New(time.Now())
		r.Clock, r.TTL, r.FailureTTL = clock, time.Minute, 10*time.Second
		return r, &n, clock
	}
	authenticate := func(t *testing.T, r *ingest.TokenReviewer, token string) (ingest.Identity, error) {
		t.Helper()
		id, err := r.Authenticate(ctx, token)
		var ae *kubeauth.Error
		if err != nil && !errors.As(err, &ae) {
			t.Fatalf("Authenticate: %v", err)
		}
		return id, err
	}
	// eventually waits for the count to reach want: a review ahead of
	// expiry runs in the background.
	eventually := func(t *testing.T, n *atomic.Int64, want int64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); n.Load() < want && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if got := n.Load(); got != want {
			t.Fatalf("%d reviews, want %d", got, want)
		}
	}

	t.Run("an answer is reused for its TTL, and reviewed again ahead of expiry", func(t *testing.T) {
		r, n, clock := newReviewer(t)
		for _, step := range []struct {
			advance time.Duration
			reviews int64
		}{
			{0, 1},                // first use: reviewed
			{30 * time.Second, 1}, // cached
			{17 * time.Second, 1}, // 47 s: cached
			{2 * time.Second, 2},  // 49 s, in the last fifth: answered from the cache, reviewed in the background
			{20 * time.Second, 2}, // 69 s: the refreshed answer, reviewed at 49 s
			{60 * time.Second, 3}, // 129 s, unused since 69 s: expired, reviewed on the request's path
		} {
			clock.Advance(step.advance)
			id, err := authenticate(t, r, env.bound7)
			if err != nil || id.Node != "worker-7" || id.User != agentUser || id.Forwarder {
				t.Fatalf("Authenticate = %+v, %v", id, err)
			}
			eventually(t, n, step.reviews)
		}
	})

	t.Run("a refusal is reused for FailureTTL", func(t *testing.T) {
		r, n, clock := newReviewer(t)
		for _, step := range []struct {
			advance time.Duration
			reviews int64
		}{{0, 1}, {9 * time.Second, 1}, {2 * time.Second, 2}} {
			clock.Advance(step.advance)
			if _, err := authenticate(t, r, env.wrongAudience); err == nil {
				t.Fatal("a token for another audience was accepted")
			}
			eventually(t, n, step.reviews)
		}
	})

	t.Run("concurrent requests with a new token share one review", func(t *testing.T) {
		r, n, _ := newReviewer(t)
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				if _, err := r.Authenticate(ctx, env.bound8); err != nil {
					t.Errorf("Authenticate: %v", err)
				}
			})
		}
		wg.Wait()
		if got := n.Load(); got != 1 {
			t.Errorf("50 concurrent requests made %d reviews, want 1", got)
		}
	})

	t.Run("the cache is bounded, least recently used out first", func(t *testing.T) {
		r, n, _ := newReviewer(t)
		r.CacheSize = 2
		for i, tc := range []struct {
			token   string
			reviews int64
		}{
			{env.bound7, 1}, {env.bound8, 2}, {env.bound7, 2}, // bound7 used last
			{env.forwarderToken, 3}, // bound8 goes
			{env.bound7, 3}, {env.bound8, 4},
		} {
			authenticate(t, r, tc.token)
			if got := n.Load(); got != tc.reviews {
				t.Fatalf("step %d: %d reviews, want %d", i, got, tc.reviews)
			}
		}
	})

	t.Run("what is not a JWT costs no review", func(t *testing.T) {
		r, n, _ := newReviewer(t)
		for _, tok := range []string{"x", "a.b", "a..c", "a.b.c.d", "a b.c.d", "é.b.c"} {
			if _, err := authenticate(t, r, tok); err == nil {
				t.Errorf("Authenticate(%q) succeeded", tok)
			}
		}
		if got := n.Load(); got != 0 {
			t.Errorf("%d reviews, want 0", got)
		}
	})

	t.Run("a caller that gives up does not fail the others", func(t *testing.T) {
		r, _, _ := newReviewer(t)
		gone, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := r.Authenticate(gone, env.forwarderBound); err == nil {
			t.Errorf("Authenticate with a cancelled context succeeded at once")
		}
		id, err := r.Authenticate(ctx, env.forwarderBound)
		if err != nil || !id.Forwarder || id.Node != "worker-7" {
			t.Errorf("Authenticate after a cancelled one = %+v, %v; want the forwarder, on worker-7", id, err)
		}
	})
}
