package registry

import (
	"sync"
	"time"
	"unsafe"
)

// lru is a size-bounded, concurrency-safe cache whose entries may expire.
// It holds at most max entries and, when it weighs them, at most
// maxWeight in total.
type lru[V any] struct {
	mu        sync.Mutex
	max       int
	maxWeight int64
	weigh     func(key string, val V) int64 // nil: entries weigh nothing
	weight    int64
	items     map[string]*lruEntry[V]
	// ring links the entries, most recently used first after it and
	// least recently used last; its own key and value are unused. An
	// entry is one allocation, not a container/list element and a value
	// besides: 32 bytes less for each of 10000 images.
	ring lruEntry[V]
}

type lruEntry[V any] struct {
	prev, next *lruEntry[V]
	key        string
	val        V
	expires    time.Time // zero: never
	weight     int64
}

func newLRU[V any](max int) *lru[V] {
	c := &lru[V]{max: max, items: make(map[string]*lruEntry[V])}
	c.ring.prev, c.ring.next = &c.ring, &c.ring
	return c
}

// newWeighedLRU returns an lru that also bounds the total weight of its
// entries; an entry heavier than maxWeight is not kept at all.
func newWeighedLRU[V any](max int, maxWeight int64, weigh func(key string, val V) int64) *lru[V] {
	c := newLRU[V](max)
	c.maxWeight, c.weigh = maxWeight, weigh
	return c
}

// entryBytes is at least what an lru holds for an entry of key besides
// its value: the key, the entry and its slot in the map, which is at
// least 7/16 full (Go's maps grow when 7/8 full, to twice the slots).
func entryBytes[V any](key string) int64 {
	var e *lruEntry[V]
	slot := unsafe.Sizeof(key) + unsafe.Sizeof(e) + 1 // the slot's control byte
	return allocBytes(len(key)) + allocBytes(int(unsafe.Sizeof(*e))) + int64(slot*16/7+1)
}

// get returns the value for key unless it is missing or expired at now.
func (c *lru[V]) get(key string, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.use(c.items[key], now)
}

// getBytes is get of the key held in key, which it does not keep: a
// lookup needs no string of its own (the compiler looks a map up by
// string(key) without copying it).
func (c *lru[V]) getBytes(key []byte, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.use(c.items[string(key)], now)
}

// use returns the value of e, nil when missing, unless it is expired at
// now; c.mu is held.
func (c *lru[V]) use(e *lruEntry[V], now time.Time) (V, bool) {
	var zero V
	if e == nil {
		return zero, false
	}
	if !e.expires.IsZero() && !now.Before(e.expires) {
		c.remove(e)
		return zero, false
	}
	c.unlink(e)
	c.pushFront(e)
	return e.val, true
}

// add stores val under key; a zero expires never expires.
func (c *lru[V]) add(key string, val V, expires time.Time) {
	var w int64
	if c.weigh != nil {
		w = c.weigh(key, val)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[key]; ok {
		c.remove(e)
	}
	if c.weigh != nil && w > c.maxWeight {
		return
	}
	e := &lruEntry[V]{key: key, val: val, expires: expires, weight: w}
	c.items[key] = e
	c.pushFront(e)
	c.weight += w
	for len(c.items) > c.max || c.weight > c.maxWeight && c.weigh != nil {
		c.remove(c.ring.prev)
	}
}

func (c *lru[V]) pushFront(e *lruEntry[V]) {
	e.prev, e.next = &c.ring, c.ring.next
	e.prev.next, e.next.prev = e, e
}

func (c *lru[V]) unlink(e *lruEntry[V]) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (c *lru[V]) remove(e *lruEntry[V]) {
	c.unlink(e)
	delete(c.items, e.key)
	c.weight -= e.weight
}

func (c *lru[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}

// bytes is the total weight of the entries.
func (c *lru[V]) bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.weight
}
