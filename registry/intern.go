package registry

import (
	"sync"

	"buildguard.dev/buildguard/policy"
)

// Bounds of an interner: it holds at most maxInternStrings strings of
// maxInternBytes together, none longer than maxInternString.
const (
	maxInternStrings = 4096
	maxInternBytes   = 1 << 20
	maxInternString  = 4 << 10
)

// interner keeps one copy of the strings of the images decoded lately,
// which the images decoded next take instead of their own when they have
// the same: the steps of a base image and of a repository's earlier
// builds, an environment, an entrypoint recur across cached images, and
// were most of a cached image's memory. When full it starts over; the
// images keep the copies they took. It counts no one's references, so
// what it holds itself is bounded apart (by the constants above, about
// 1.5 MiB at most) and a cached image's weight counts all of its strings
// as its own. The zero value is ready.
type interner struct {
	mu    sync.Mutex
	m     map[string]string
	bytes int
}

// platform replaces the strings of pl, not shared with anyone yet, with
// the copies the interner holds.
func (t *interner) platform(pl *policy.Platform) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pl.Platform = t.intern(pl.Platform)
	for i := range pl.History {
		pl.History[i].CreatedBy = t.intern(pl.History[i].CreatedBy)
	}
	for _, ss := range [][]string{pl.Config.Env, pl.Config.Entrypoint, pl.Config.Cmd} {
		for i := range ss {
			ss[i] = t.intern(ss[i])
		}
	}
	pl.Config.WorkingDir = t.intern(pl.Config.WorkingDir)
}

// string returns the interner's copy of s.
func (t *interner) string(s string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.intern(s)
}

func (t *interner) intern(s string) string {
	if s == "" || len(s) > maxInternString {
		return s
	}
	if c, ok := t.m[s]; ok {
		return c
	}
	if t.m == nil || len(t.m) >= maxInternStrings || t.bytes+len(s) > maxInternBytes {
		t.m, t.bytes = make(map[string]string), 0
	}
	t.m[s] = s
	t.bytes += len(s)
	return s
}
