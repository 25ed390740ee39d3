//go:build linux

package conns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// refusedAddr returns a loopback address with nothing listening: connect
// moves the socket to SYN_SENT, then fails at once with ECONNREFUSED, leaving
// no state behind.
func refusedAddr(t testing.TB, ip string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return addr
}

func dialRefused(t testing.TB, addr netip.AddrPort) {
	c, err := net.DialTimeout("tcp4", addr.String(), 5*time.Second)
	if err == nil {
		c.Close()
		return
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: %v", addr, err)
	}
}

// waitAttached connects to dst until seen says a watcher reported it.
func waitAttached(t testing.TB, dst netip.AddrPort, seen <-chan struct{}) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		dialRefused(t, dst)
		select {
		case <-seen:
			return
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("watcher reported no connection to %s in 60s", dst)
		}
	}
}

// TestEBPFDropsCounted: while emit is blocked the ring buffer fills, and the
// connections that did not fit are counted, not lost silently.
func TestEBPFDropsCounted(t *testing.T) {
	requireRoot(t)
	w, fallback := New(Options{Log: testLogger(t)})
	if fallback != nil {
		t.Fatalf("New: eBPF sensor did not load: %v", fallback)
	}
	dst := refusedAddr(t, "127.0.0.25")
	var mine atomic.Uint64
	block := make(chan struct{})
	first := make(chan struct{}, 1)
	stop := runWatcher(t, w, func(c Conn) {
		if c.Dst != dst || c.PID != os.Getpid() {
			return // other processes connect too
		}
		mine.Add(1)
		select {
		case first <- struct{}{}:
		default:
		}
		<-block
	})
	var once sync.Once
	release := func() { once.Do(func() { close(block) }) }
	defer release()
	// Wait until the watcher is attached and stuck in emit.
	waitAttached(t, dst, first)
	// Far more than the ring holds (ringBytes / (eventBytes + 8-byte header)).
	const n = 2 * ringBytes / (eventBytes + 8)
	for range n {
		dialRefused(t, dst)
	}
	release()
	stop()
	st := w.(StatsReporter).Stats()
	if st.Dropped == 0 {
		t.Fatalf("Stats() = %+v after %d connections with emit blocked, want drops", st, n)
	}
	if got := mine.Load(); got+st.Dropped < n {
		t.Errorf("reported %d of %d connections and dropped %d: some were lost uncounted", got, n, st.Dropped)
	}
	t.Logf("%d connections: %d reported, %d dropped", n, mine.Load(), st.Dropped)
}

// BenchmarkEBPFEvents measures connections per second from connect(2) to
// emit, through the ring buffer and /proc enrichment.
func BenchmarkEBPFEvents(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	w, fallback := New(Options{})
	if fallback != nil {
		b.Fatalf("New: %v", fallback)
	}
	dst := refusedAddr(b, "127.0.0.26")
	var got atomic.Int64
	seen := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- w.Run(ctx, func(c Conn) {
			if c.Dst == dst {
				got.Add(1)
				select {
				case seen <- struct{}{}:
				default:
				}
			}
		})
	}()
	waitAttached(b, dst, seen)
	st0 := w.(StatsReporter).Stats()
	base := got.Load()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		dialRefused(b, dst)
	}
	// Run reports what the ring holds before it returns.
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	elapsed := time.Since(start)
	st := w.(StatsReporter).Stats()
	b.ReportMetric(float64(got.Load()-base)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(st.Dropped-st0.Dropped), "dropped")
}

// BenchmarkProcfsSample measures one procfs sample of this machine.
func BenchmarkProcfsSample(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	w := newProcfsWatcher(Options{}.withDefaults())
	seen := make(map[connKey]bool)
	for range b.N {
		if err := w.sample(context.Background(), seen, func(Conn) {}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadProcInfo measures the /proc reads behind one event.
func BenchmarkReadProcInfo(b *testing.B) {
	pid := os.Getpid()
	for range b.N {
		if _, err := readProcInfo("/proc", pid); err != nil {
			b.Fatal(err)
		}
	}
}
