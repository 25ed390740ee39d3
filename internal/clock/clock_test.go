package clock

import (
	"context"
	"testing"
	"time"
)

// stopped is a Clock that is not the real one.
type stopped struct{ Real }

func (stopped) Now() time.Time { return time.Unix(0, 0) }

func TestOrReal(t *testing.T) {
	if got := OrReal(nil); got != (Real{}) {
		t.Errorf("OrReal(nil) = %#v, want Real{}", got)
	}
	c := stopped{}
	if got := OrReal(c); got != c {
		t.Errorf("OrReal(c) = %#v, want c", got)
	}
}

// TestReal: the real clock's timers and tickers are the time package's.
func TestReal(t *testing.T) {
	var c Real
	before := time.Now()
	if now := c.Now(); now.Before(before) || now.Sub(before) > time.Minute {
		t.Errorf("Now() = %v, want about %v", now, before)
	}
	tm := c.NewTimer(time.Millisecond)
	if got := <-tm.C(); got.Before(before) {
		t.Errorf("the timer sent %v, before it was made (%v)", got, before)
	}
	if tm.Stop() {
		t.Error("Stop() of a fired timer = true, want false")
	}
	tk := c.NewTicker(time.Millisecond)
	<-tk.C()
	<-tk.C()
	tk.Stop()
	if c.NewTimer(time.Hour).Stop() != true {
		t.Error("Stop() of a timer not fired = false, want true")
	}
}

// TestSleepRealClock: a nil Clock sleeps on the real clock.
func TestSleepRealClock(t *testing.T) {
	if !Sleep(t.Context(), nil, time.Millisecond) {
		t.Error("Sleep(nil clock, 1ms) = false, want true")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if Sleep(ctx, nil, time.Hour) {
		t.Error("Sleep with its context ended = true, want false")
	}
}
