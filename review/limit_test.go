package review

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// loginFrom posts a login form from a remote address.
func (f *fixture) loginFrom(addr, token string) *httptest.ResponseRecorder {
	f.t.Helper()
	r := httptest.NewRequest("POST", "/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Sec-Fetch-Site", "same-origin")
	r.RemoteAddr = addr
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	return w
}

func TestLoginFailuresLimited(t *testing.T) {
	f := newFixture(t)
	const attacker = "198.51.100.7:40000"
	for i := range DefaultLoginFailures {
		if w := f.loginFrom(attacker, fmt.Sprintf("guess-%d", i)); w.Code != http.StatusUnauthorized {
			t.Fatalf("failed login %d = %d, want 401", i+1, w.Code)
		}
	}
	// Even a valid token is refused now, unchecked.
	w := f.loginFrom("198.51.100.7:40001", "alice-token")
	if w.Code != http.StatusTooManyRequests || len(w.Result().Cookies()) != 0 ||
		w.Header().Get("Retry-After") != "300" || !strings.Contains(text(w.Body.String()), "Too many failed logins from your address; try again in 5m0s.") {
		t.Fatalf("login after %d failures = %d (Retry-After %q, cookies %v), want 429 and no session\n%s",
			DefaultLoginFailures, w.Code, w.Header().Get("Retry-After"), w.Result().Cookies(), text(w.Body.String()))
	}
	// Another address is not affected.
	if w := f.loginFrom("203.0.113.5:1234", "alice-token"); w.Code != http.StatusSeeOther {
		t.Errorf("login from another address = %d, want 303", w.Code)
	}
	f.clock.Advance(DefaultLoginWindow)
	if w := f.loginFrom(attacker, "alice-token"); w.Code != http.StatusSeeOther {
		t.Errorf("login after the window = %d, want 303", w.Code)
	}

	// An IPv6 /64 is one client.
	for i := range DefaultLoginFailures {
		f.loginFrom(fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1), "guess")
	}
	if w := f.loginFrom("[2001:db8:1:2:ffff::1]:443", "alice-token"); w.Code != http.StatusTooManyRequests {
		t.Errorf("login from the same /64 = %d, want 429", w.Code)
	}
	if w := f.loginFrom("[2001:db8:1:3::1]:443", "alice-token"); w.Code != http.StatusSeeOther {
		t.Errorf("login from another /64 = %d, want 303", w.Code)
	}
}

func TestLoginLimiterBounded(t *testing.T) {
	l := newLoginLimiter(2, time.Minute)
	now := t0
	for i := range maxLimitedAddrs + 100 {
		l.fail(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now)
	}
	if n := len(l.addrs); n > maxLimitedAddrs+1 {
		t.Fatalf("limiter tracks %d addresses, want at most %d", n, maxLimitedAddrs+1)
	}
	// Addresses beyond the bound share one counter, which they used up.
	if _, blocked := l.blocked("192.0.2.200", now); !blocked {
		t.Error("a new address is not limited while the limiter is full of failing ones")
	}
	// Expired counters make room again.
	now = now.Add(time.Minute)
	if _, blocked := l.blocked("192.0.2.200", now); blocked {
		t.Error("blocked after the window")
	}
	l.fail("192.0.2.200", now)
	if _, ok := l.addrs["192.0.2.200"]; !ok || len(l.addrs) != 1 {
		t.Errorf("after the window, the limiter tracks %d addresses, want only the new one", len(l.addrs))
	}
}

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:80":               "192.0.2.1",
		"[::ffff:192.0.2.1]:80":      "192.0.2.1",
		"[2001:db8::1]:80":           "2001:db8::/64",
		"[2001:db8:0:0:ffff::9]:443": "2001:db8::/64",
		"@":                          "@",
		"":                           "",
	} {
		if got := clientKey(in); got != want {
			t.Errorf("clientKey(%q) = %q, want %q", in, got, want)
		}
	}
}
