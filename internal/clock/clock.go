// Package clock is the one clock buildguard's components read the time
// from and wait on. A component has a Clock field whose nil value is the
// real clock (OrReal), so that a test can set a clocktest.Clock and move
// time by hand instead of sleeping.
package clock

import (
	"context"
	"time"
)

// Clock tells the time and makes timers and tickers that follow it.
type Clock interface {
	// Now returns the current time, as time.Now.
	Now() time.Time
	// NewTimer returns a timer that fires once, d from now, as
	// time.NewTimer.
	NewTimer(d time.Duration) Timer
	// NewTicker returns a ticker that fires every d, as time.NewTicker; d
	// must be positive.
	NewTicker(d time.Duration) Ticker
}

// Timer is a time.Timer made by a Clock.
type Timer interface {
	// C is the channel the time is sent on when the timer fires.
	C() <-chan time.Time
	// Stop prevents the timer from firing, as time.Timer.Stop: it
	// reports whether it stopped the timer before it fired.
	Stop() bool
}

// Ticker is a time.Ticker made by a Clock.
type Ticker interface {
	// C is the channel the ticks are sent on.
	C() <-chan time.Time
	// Stop turns the ticker off, as time.Ticker.Stop.
	Stop()
}

// Real is the clock of the time package.
type Real struct{}

// Now returns time.Now().
func (Real) Now() time.Time { return time.Now() }

// NewTimer returns a time.Timer.
func (Real) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

// NewTicker returns a time.Ticker.
func (Real) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

type realTicker struct{ t *time.Ticker }

func (t realTicker) C() <-chan time.Time { return t.t.C }
func (t realTicker) Stop()               { t.t.Stop() }

// OrReal is c, or the real clock when c is nil: the default of every
// component's Clock field.
func OrReal(c Clock) Clock {
	if c == nil {
		return Real{}
	}
	return c
}

// Sleep waits d on c (the real clock when nil), or until ctx ends. It
// reports whether d passed.
func Sleep(ctx context.Context, c Clock, d time.Duration) bool {
	t := OrReal(c).NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}
