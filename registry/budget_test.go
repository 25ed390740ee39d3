package registry

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// acquired starts acquire(n, prio) and returns a channel that receives
// its result.
func acquired(ctx context.Context, b *budget, n int64, prio int) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- b.acquire(ctx, n, prio) }()
	return ch
}

// waitQueued waits until n acquisitions wait at prio.
func waitQueued(t *testing.T, b *budget, prio, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		b.mu.Lock()
		got := b.waiting[prio].Len()
		b.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiting at priority %d, want %d", got, prio, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBudgetUnderWayFirst: bytes freed go to the lookups under way before
// lookups that have not started, whatever the order they asked in.
func TestBudgetUnderWayFirst(t *testing.T) {
	b := newBudget(10)
	if err := b.acquire(t.Context(), 10, starting); err != nil {
		t.Fatal(err)
	}
	first := acquired(t.Context(), b, 4, starting)
	waitQueued(t, b, starting, 1)
	next := acquired(t.Context(), b, 8, underWay)
	waitQueued(t, b, underWay, 1)

	b.release(10)
	if err := <-next; err != nil {
		t.Fatalf("under way: %v", err)
	}
	select {
	case err := <-first:
		t.Fatalf("the starting lookup got 4 of 2 free bytes (%v)", err)
	default:
	}
	b.release(8)
	if err := <-first; err != nil {
		t.Fatalf("starting: %v", err)
	}
	b.release(4)
	if b.used != 0 {
		t.Errorf("used = %d after everything was released, want 0", b.used)
	}
}

// TestBudgetGivesUp: a wait that ends with its context takes nothing and
// no longer holds up those behind it.
func TestBudgetGivesUp(t *testing.T) {
	b := newBudget(10)
	if err := b.acquire(t.Context(), 6, underWay); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	big := acquired(ctx, b, 10, starting)
	waitQueued(t, b, starting, 1)
	small := acquired(t.Context(), b, 4, starting)
	waitQueued(t, b, starting, 2)
	select {
	case <-small:
		t.Fatal("a small wait passed a large one ahead of it")
	case <-time.After(10 * time.Millisecond):
	}
	cancel()
	if err := <-big; err == nil {
		t.Fatal("the canceled wait acquired")
	}
	if err := <-small; err != nil {
		t.Fatalf("the wait behind the canceled one: %v", err)
	}
	b.release(10)
	if b.used != 0 {
		t.Errorf("used = %d, want 0", b.used)
	}
}

// TestBudgetConcurrent: many leases at once never hold more than the
// budget and give everything back.
func TestBudgetConcurrent(t *testing.T) {
	b := newBudget(100)
	var mu sync.Mutex
	var peak int64
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := b.lease(i % 2)
			ctx, cancel := context.WithTimeout(t.Context(), time.Duration(rand.IntN(20))*time.Millisecond)
			defer cancel()
			if l.acquire(ctx, int64(1+rand.IntN(60))) == nil {
				mu.Lock()
				b.mu.Lock()
				peak = max(peak, b.used)
				b.mu.Unlock()
				mu.Unlock()
				l.giveBack(1)
			}
			l.release()
		}()
	}
	wg.Wait()
	if peak > 100 || b.used != 0 {
		t.Errorf("peak %d, used %d after all leases ended; want at most 100 and 0", peak, b.used)
	}
}
