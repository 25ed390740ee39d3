package registry

import (
	"testing"
	"time"
)

// TestLRUWeight: a weighed cache drops its least recently used entries
// to stay under its weight, and never keeps one heavier than all of it.
func TestLRUWeight(t *testing.T) {
	c := newWeighedLRU(10, 100, func(_ string, v int64) int64 { return v })
	c.add("a", 60, time.Time{})
	c.add("b", 30, time.Time{})
	c.get("a", time.Time{}) // b is now the least recently used
	c.add("c", 20, time.Time{})
	if _, ok := c.get("b", time.Time{}); ok {
		t.Error("b kept, want it evicted for c")
	}
	for _, k := range []string{"a", "c"} {
		if _, ok := c.get(k, time.Time{}); !ok {
			t.Errorf("%s evicted, want it kept", k)
		}
	}
	c.add("huge", 101, time.Time{})
	if _, ok := c.get("huge", time.Time{}); ok || c.len() != 2 || c.weight != 80 {
		t.Errorf("after an entry heavier than the cache: kept %v, %d entries weighing %d; want not kept, 2 weighing 80", ok, c.len(), c.weight)
	}
	c.add("a", 10, time.Time{}) // replaced: its old weight goes
	if c.weight != 30 {
		t.Errorf("weight after replacing a = %d, want 30", c.weight)
	}
}

// TestAllocBytes: allocBytes is at least what the Go allocator takes for
// an allocation, which append shows as the capacity it gives a slice.
// The smallest size of each size class (up to 32 KiB, then pages) is
// the one rounded up the most.
func TestAllocBytes(t *testing.T) {
	classes := 0
	for n := 1; n <= 1<<20; classes++ {
		took := cap(append([]byte(nil), make([]byte, n)...))
		if got := allocBytes(n); got < int64(took) {
			t.Errorf("allocBytes(%d) = %d, less than the %d bytes Go allocates", n, got, took)
		}
		n = took + 1
	}
	if classes < 60 {
		t.Errorf("checked %d sizes, want every size class (more than 60)", classes)
	}
	if got := allocBytes(0); got != 0 {
		t.Errorf("allocBytes(0) = %d, want 0", got)
	}
}
