// Package clocktest is a clock tests move by hand: its time stands still
// until Advance, which fires the timers and tickers that fall due, so
// that a test of a loop that waits on a clock.Clock neither sleeps nor
// depends on the machine's speed.
package clocktest

import (
	"context"
	"slices"
	"sync"
	"time"

	"buildguard.dev/buildguard/internal/clock"
)

// Clock is a clock.Clock that moves only when told to. It is safe for
// concurrent use. Its timers and tickers send on channels of one element,
// without blocking: a tick a slow receiver has not taken yet is dropped,
// as time.Ticker drops it.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	waiting []*waiter
	// changed is closed, and reset to nil, when a timer or ticker starts
	// or stops waiting (BlockUntil waits on it).
	changed chan struct{}
}

var _ clock.Clock = (*Clock)(nil)

// New returns a clock stopped at t.
func New(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d, then fires the timers and
// tickers due by then, in the order of their times; each sends the time
// it was due at. A ticker due several times by then fires once, as a
// time.Ticker does for a receiver that is late. Whoever is told reads the
// time Advance moved to.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	var due []*waiter
	for _, w := range c.waiting {
		if !w.due.After(c.now) {
			due = append(due, w)
		}
	}
	slices.SortStableFunc(due, func(a, b *waiter) int { return a.due.Compare(b.due) })
	for _, w := range due {
		select {
		case w.ch <- w.due:
		default:
		}
		if w.period > 0 {
			w.due = w.due.Add(w.period * (c.now.Sub(w.due)/w.period + 1))
		} else {
			c.remove(w)
		}
	}
}

// Waiting is how many timers and tickers wait on the clock: made, and
// neither stopped nor (timers) fired.
func (c *Clock) Waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiting)
}

// BlockUntil returns once at least n timers and tickers wait on the
// clock (see Waiting), or with ctx's error when ctx ends first. A test
// calls it to know that the code it drives has reached its wait before
// it advances the clock.
func (c *Clock) BlockUntil(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		if len(c.waiting) >= n {
			c.mu.Unlock()
			return nil
		}
		if c.changed == nil {
			c.changed = make(chan struct{})
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// NewTimer returns a timer that fires when the clock has advanced by d;
// at once when d is not positive.
func (c *Clock) NewTimer(d time.Duration) clock.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &waiter{c: c, ch: make(chan time.Time, 1), due: c.now.Add(d)}
	if d <= 0 {
		w.ch <- c.now
		return timer{w}
	}
	c.add(w)
	return timer{w}
}

// NewTicker returns a ticker that fires each time the clock has advanced
// by another d. It panics when d is not positive, as time.NewTicker does.
func (c *Clock) NewTicker(d time.Duration) clock.Ticker {
	if d <= 0 {
		panic("clocktest: non-positive interval for NewTicker")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &waiter{c: c, ch: make(chan time.Time, 1), due: c.now.Add(d), period: d}
	c.add(w)
	return ticker{w}
}

func (c *Clock) add(w *waiter) {
	c.waiting = append(c.waiting, w)
	c.notify()
}

// remove takes w off the waiting list and reports whether it was on it.
func (c *Clock) remove(w *waiter) bool {
	for i, x := range c.waiting {
		if x == w {
			c.waiting = append(c.waiting[:i], c.waiting[i+1:]...)
			c.notify()
			return true
		}
	}
	return false
}

func (c *Clock) notify() {
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

// waiter is a timer (period 0) or a ticker waiting on a Clock.
type waiter struct {
	c      *Clock
	ch     chan time.Time
	due    time.Time
	period time.Duration
}

func (w *waiter) stop() bool {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	return w.c.remove(w)
}

type timer struct{ w *waiter }

func (t timer) C() <-chan time.Time { return t.w.ch }
func (t timer) Stop() bool          { return t.w.stop() }

type ticker struct{ w *waiter }

func (t ticker) C() <-chan time.Time { return t.w.ch }
func (t ticker) Stop()               { t.w.stop() }
