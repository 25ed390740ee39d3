package review

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// loginLimiter counts failed logins by remote address in fixed windows,
// so that guessing tokens (static tokens without a cluster, or any token
// sent on to the API server's TokenReview) is slow. Only failures count:
// a user with a valid token of their own cannot reset their counter.
type loginLimiter struct {
	max    int
	window time.Duration

	mu    sync.Mutex
	addrs map[string]failures
}

type failures struct {
	n     int
	start time.Time // of the window
}

// maxLimitedAddrs bounds the limiter's memory; addresses beyond it share
// one counter (overflowAddr), so that many addresses cannot evict the
// counter of one.
const (
	maxLimitedAddrs = 10000
	overflowAddr    = "overflow"
)

func newLoginLimiter(max int, window time.Duration) *loginLimiter {
	return &loginLimiter{max: max, window: window, addrs: map[string]failures{}}
}

// clientKey is the counter of a remote address: the IP, or its /64 for
// IPv6, where one host commonly has a whole prefix.
func clientKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// blocked reports whether key has used up its failures at now, and if so
// when it may try again.
func (l *loginLimiter) blocked(key string, now time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, ok := l.addrs[key]
	if !ok {
		f, ok = l.addrs[overflowAddr]
		if !ok || len(l.addrs) < maxLimitedAddrs {
			return time.Time{}, false
		}
	}
	end := f.start.Add(l.window)
	if f.n < l.max || !now.Before(end) {
		return time.Time{}, false
	}
	return end, true
}

// fail counts a failed login of key at now.
func (l *loginLimiter) fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.addrs[key]; !ok && len(l.addrs) >= maxLimitedAddrs {
		for k, f := range l.addrs {
			if !now.Before(f.start.Add(l.window)) {
				delete(l.addrs, k)
			}
		}
		if len(l.addrs) >= maxLimitedAddrs {
			key = overflowAddr
		}
	}
	f := l.addrs[key]
	if !now.Before(f.start.Add(l.window)) {
		f = failures{start: now}
	}
	f.n++
	l.addrs[key] = f
}
