package clocktest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"buildguard.dev/buildguard/internal/clock"
)

var t0 = time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)

// none is a step's want for a waiter that does not fire.
const none = -1

// TestAdvance: timers fire once, when the clock has moved past their
// time; tickers every period, once however late; each sends the time it
// was due at.
func TestAdvance(t *testing.T) {
	type step struct {
		advance time.Duration
		want    []time.Duration // per waiter: when it fired (from t0), or none
	}
	tests := []struct {
		name    string
		timers  []time.Duration
		tickers []time.Duration
		steps   []step
	}{
		{"timer fires when due", []time.Duration{10 * time.Second}, nil, []step{
			{5 * time.Second, []time.Duration{none}},
			{5 * time.Second, []time.Duration{10 * time.Second}},
			{time.Hour, []time.Duration{none}},
		}},
		{"timer past its time fires at its time", []time.Duration{time.Second}, nil, []step{
			{time.Minute, []time.Duration{time.Second}},
		}},
		{"timer not positive fires at once", []time.Duration{0, -time.Second}, nil, []step{
			{0, []time.Duration{0, 0}},
			{time.Hour, []time.Duration{none, none}},
		}},
		{"timers fire each at its time", []time.Duration{20 * time.Second, 10 * time.Second}, nil, []step{
			{10 * time.Second, []time.Duration{none, 10 * time.Second}},
			{10 * time.Second, []time.Duration{20 * time.Second, none}},
		}},
		{"ticker fires every period", nil, []time.Duration{10 * time.Second}, []step{
			{10 * time.Second, []time.Duration{10 * time.Second}},
			{10 * time.Second, []time.Duration{20 * time.Second}},
			{5 * time.Second, []time.Duration{none}},
			{5 * time.Second, []time.Duration{30 * time.Second}},
		}},
		{"late ticker fires once, then on its beat", nil, []time.Duration{10 * time.Second}, []step{
			{35 * time.Second, []time.Duration{10 * time.Second}},
			{4 * time.Second, []time.Duration{none}},
			{time.Second, []time.Duration{40 * time.Second}},
		}},
		{"timer and ticker", []time.Duration{15 * time.Second}, []time.Duration{10 * time.Second}, []step{
			{10 * time.Second, []time.Duration{none, 10 * time.Second}},
			{10 * time.Second, []time.Duration{15 * time.Second, 20 * time.Second}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(t0)
			var chans []<-chan time.Time
			for _, d := range tt.timers {
				chans = append(chans, c.NewTimer(d).C())
			}
			for _, d := range tt.tickers {
				chans = append(chans, c.NewTicker(d).C())
			}
			var elapsed time.Duration
			for i, s := range tt.steps {
				c.Advance(s.advance)
				elapsed += s.advance
				if got := c.Now(); !got.Equal(t0.Add(elapsed)) {
					t.Errorf("step %d: Now() = %v, want %v", i, got, t0.Add(elapsed))
				}
				got := make([]time.Duration, len(chans))
				for j, ch := range chans {
					select {
					case at := <-ch:
						got[j] = at.Sub(t0)
					default:
						got[j] = none
					}
				}
				if diff := cmp.Diff(s.want, got); diff != "" {
					t.Errorf("step %d (Advance(%v)): fired (-want +got):\n%s", i, s.advance, diff)
				}
			}
		})
	}
}

// TestStop: a timer or ticker stopped does not fire and no longer
// waits; Stop reports whether it stopped a timer before it fired.
func TestStop(t *testing.T) {
	c := New(t0)
	stopped, fired := c.NewTimer(time.Second), c.NewTimer(time.Second)
	tick := c.NewTicker(time.Second)
	if n := c.Waiting(); n != 3 {
		t.Fatalf("Waiting() = %d with two timers and a ticker, want 3", n)
	}
	if !stopped.Stop() {
		t.Error("Stop() of a timer not fired = false, want true")
	}
	tick.Stop()
	c.Advance(time.Second)
	if fired.Stop() {
		t.Error("Stop() of a fired timer = true, want false")
	}
	if n := c.Waiting(); n != 0 {
		t.Errorf("Waiting() = %d once all stopped or fired, want 0", n)
	}
	select {
	case <-stopped.C():
		t.Error("a stopped timer fired")
	case <-tick.C():
		t.Error("a stopped ticker fired")
	default:
	}
	if stopped.Stop() {
		t.Error("a second Stop() = true, want false")
	}
}

// TestBlockUntil returns once the code under test waits on the clock,
// and with the context's error when it never does.
func TestBlockUntil(t *testing.T) {
	c := New(t0)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	woke := make(chan time.Time)
	go func() {
		tm := c.NewTimer(time.Minute)
		defer tm.Stop()
		woke <- <-tm.C()
	}()
	if err := c.BlockUntil(ctx, 1); err != nil {
		t.Fatalf("BlockUntil(1) with a goroutine making a timer = %v, want nil", err)
	}
	c.Advance(time.Minute)
	if got := <-woke; !got.Equal(t0.Add(time.Minute)) {
		t.Errorf("the timer sent %v, want %v", got, t0.Add(time.Minute))
	}
	short, cancelShort := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancelShort()
	if err := c.BlockUntil(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("BlockUntil(1) with nothing waiting = %v, want %v", err, context.DeadlineExceeded)
	}
}

func TestNewTickerNotPositive(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewTicker(0) did not panic, want a panic as time.NewTicker")
		}
	}()
	New(t0).NewTicker(0)
}

// TestSleep: clock.Sleep on the test clock returns true once the clock
// has moved by d, false when its context ends first.
func TestSleep(t *testing.T) {
	tests := []struct {
		name    string
		d       time.Duration
		advance time.Duration // 0: the context is canceled instead
		want    bool
	}{
		{"clock moves by d", time.Minute, time.Minute, true},
		{"clock moves past d", time.Minute, time.Hour, true},
		{"context ends", time.Minute, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(t0)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan bool)
			go func() { done <- clock.Sleep(ctx, c, tt.d) }()
			wait, cancelWait := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancelWait()
			if err := c.BlockUntil(wait, 1); err != nil {
				t.Fatal(err)
			}
			if tt.advance > 0 {
				c.Advance(tt.d - time.Nanosecond)
				select {
				case got := <-done:
					t.Fatalf("Sleep(%v) = %v with the clock moved %v, before d", tt.d, got, tt.d-time.Nanosecond)
				default:
				}
				c.Advance(tt.advance - tt.d + time.Nanosecond)
			} else {
				cancel()
			}
			if got := <-done; got != tt.want {
				t.Errorf("Sleep(%v) = %v, want %v", tt.d, got, tt.want)
			}
			if n := c.Waiting(); n != 0 {
				t.Errorf("Sleep left %d timers waiting, want 0", n)
			}
		})
	}
}
