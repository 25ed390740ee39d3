package registry

import (
	"container/list"
	"context"
	"sync"
)

// budget bounds the bytes of manifests and configs that lookups hold at
// once, from the moment their response header arrives until they are
// decoded. A lookup whose body does not fit waits for others to finish;
// one that waits past its deadline is unavailable, as for a registry
// that did not answer in time.
//
// Lookups under way come first: a config, or an index's child, is served
// before the manifest of a lookup that has not started, so that under
// load lookups finish one after the other instead of all of them
// reading their manifests first and none finishing in time.
type budget struct {
	mu   sync.Mutex
	size int64
	used int64
	// waiting are the waiters of each priority, in arrival order.
	waiting [2]list.List
}

// Priorities of a wait for the budget.
const (
	underWay = 0 // the next step of a lookup that has begun
	starting = 1 // the first step of a lookup
)

type waiter struct {
	n     int64
	ready chan struct{}
}

func newBudget(size int64) *budget { return &budget{size: size} }

// acquire waits until n bytes are free, or ctx ends. n is at most the
// budget's size.
func (b *budget) acquire(ctx context.Context, n int64, prio int) error {
	b.mu.Lock()
	if b.size-b.used >= n && b.waiting[underWay].Len() == 0 && (prio == underWay || b.waiting[starting].Len() == 0) {
		b.used += n
		b.mu.Unlock()
		return nil
	}
	w := &waiter{n: n, ready: make(chan struct{})}
	el := b.waiting[prio].PushBack(w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	select {
	case <-w.ready:
		// Served as the context ended: give it back.
		b.used -= n
	default:
		b.waiting[prio].Remove(el)
	}
	b.serve()
	b.mu.Unlock()
	return ctx.Err()
}

func (b *budget) release(n int64) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.serve()
	b.mu.Unlock()
}

// serve hands free bytes to waiters in order; a waiter that does not fit
// stops everyone behind it, so a large body is not starved by small ones.
func (b *budget) serve() {
	for p := range b.waiting {
		for e := b.waiting[p].Front(); e != nil; e = b.waiting[p].Front() {
			w := e.Value.(*waiter)
			if b.size-b.used < w.n {
				return
			}
			b.used += w.n
			b.waiting[p].Remove(e)
			close(w.ready)
		}
	}
}

// lease is what one step of a lookup holds of the budget: the bodies it
// read, until the step has decoded them and let go of the bytes. A step
// reads one manifest or one config: it never waits for more budget while
// holding some, so steps cannot starve each other into a deadlock.
type lease struct {
	b    *budget
	prio int
	mu   sync.Mutex
	held int64
}

func (b *budget) lease(prio int) *lease { return &lease{b: b, prio: prio} }

// acquire waits until n more bytes are free, or ctx ends.
func (l *lease) acquire(ctx context.Context, n int64) error {
	if n <= 0 {
		return nil
	}
	if err := l.b.acquire(ctx, n, l.prio); err != nil {
		return err
	}
	l.mu.Lock()
	l.held += n
	l.mu.Unlock()
	return nil
}

// giveBack returns n of the bytes held: a body without a Content-Length
// was reserved at its limit and turned out shorter.
func (l *lease) giveBack(n int64) {
	l.mu.Lock()
	n = min(n, l.held)
	l.held -= n
	l.mu.Unlock()
	l.b.release(n)
}

// release returns everything held.
func (l *lease) release() {
	l.mu.Lock()
	n := l.held
	l.held = 0
	l.mu.Unlock()
	l.b.release(n)
}

type leaseKey struct{}

// withLease makes the bodies read with ctx count against l until l is
// released. Bodies read without a lease count until they are closed.
func withLease(ctx context.Context, l *lease) context.Context {
	return context.WithValue(ctx, leaseKey{}, l)
}

func leaseOf(ctx context.Context) *lease {
	l, _ := ctx.Value(leaseKey{}).(*lease)
	return l
}

type underWayKey struct{}

// withUnderWay marks the lookups made with ctx as steps of one under way:
// an index's children.
func withUnderWay(ctx context.Context) context.Context {
	return context.WithValue(ctx, underWayKey{}, true)
}

// priorityOf is the priority of a lookup's first step made with ctx.
func priorityOf(ctx context.Context) int {
	if v, _ := ctx.Value(underWayKey{}).(bool); v {
		return underWay
	}
	return starting
}
