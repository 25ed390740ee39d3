package registry

import (
	"container/list"
	"sync"
	"time"
)

// lru is a size-bounded, concurrency-safe cache whose entries may expire.
// It holds at most max entries and, when it weighs them, at most
// maxWeight in total.
type lru[V any] struct {
	mu        sync.Mutex
	max       int
	maxWeight int64
	weigh     func(V) int64 // nil: entries weigh nothing
	weight    int64
	ll        *list.List
	items     map[string]*list.Element
}

type lruEntry[V any] struct {
	key     string
	val     V
	expires time.Time // zero: never
	weight  int64
}

func newLRU[V any](max int) *lru[V] {
	return &lru[V]{max: max, ll: list.New(), items: make(map[string]*list.Element)}
}

// newWeighedLRU returns an lru that also bounds the total weight of its
// entries; an entry heavier than maxWeight is not kept at all.
func newWeighedLRU[V any](max int, maxWeight int64, weigh func(V) int64) *lru[V] {
	c := newLRU[V](max)
	c.maxWeight, c.weigh = maxWeight, weigh
	return c
}

// get returns the value for key unless it is missing or expired at now.
func (c *lru[V]) get(key string, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var zero V
	e, ok := c.items[key]
	if !ok {
		return zero, false
	}
	ent := e.Value.(*lruEntry[V])
	if !ent.expires.IsZero() && !now.Before(ent.expires) {
		c.remove(e)
		return zero, false
	}
	c.ll.MoveToFront(e)
	return ent.val, true
}

// add stores val under key; a zero expires never expires.
func (c *lru[V]) add(key string, val V, expires time.Time) {
	var w int64
	if c.weigh != nil {
		w = c.weigh(val)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[key]; ok {
		c.remove(e)
	}
	if c.weigh != nil && w > c.maxWeight {
		return
	}
	c.items[key] = c.ll.PushFront(&lruEntry[V]{key: key, val: val, expires: expires, weight: w})
	c.weight += w
	for c.ll.Len() > c.max || c.weight > c.maxWeight && c.weigh != nil {
		c.remove(c.ll.Back())
	}
}

func (c *lru[V]) remove(e *list.Element) {
	ent := e.Value.(*lruEntry[V])
	c.ll.Remove(e)
	delete(c.items, ent.key)
	c.weight -= ent.weight
}

func (c *lru[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
