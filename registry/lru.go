package registry

import (
	"container/list"
	"sync"
	"time"
)

// lru is a size-bounded, concurrency-safe cache whose entries may expire.
type lru[V any] struct {
	mu    sync.Mutex
	max   int
	ll    *list.List
	items map[string]*list.Element
}

type lruEntry[V any] struct {
	key     string
	val     V
	expires time.Time // zero: never
}

func newLRU[V any](max int) *lru[V] {
	return &lru[V]{max: max, ll: list.New(), items: make(map[string]*list.Element)}
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
		c.ll.Remove(e)
		delete(c.items, key)
		return zero, false
	}
	c.ll.MoveToFront(e)
	return ent.val, true
}

// add stores val under key; a zero expires never expires.
func (c *lru[V]) add(key string, val V, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[key]; ok {
		ent := e.Value.(*lruEntry[V])
		ent.val, ent.expires = val, expires
		c.ll.MoveToFront(e)
		return
	}
	c.items[key] = c.ll.PushFront(&lruEntry[V]{key: key, val: val, expires: expires})
	for c.ll.Len() > c.max {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.items, last.Value.(*lruEntry[V]).key)
	}
}

func (c *lru[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
