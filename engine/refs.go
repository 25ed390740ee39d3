package engine

import (
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
)

// maxParsedRefs bounds the references an Engine keeps parsed. A cluster
// runs far fewer distinct images; a workload that names more only makes
// the cache start over.
const maxParsedRefs = 8192

// refCache keeps image references parsed. Parsing one
// (name.ParseReference validates it with regular expressions) cost more
// than everything else a cached lookup does: 11% of `buildguard serve`'s
// CPU for a 3-container Deployment answered from the caches, twice per
// image of a registry reached over plain HTTP. A name.Reference is
// immutable, so one parse serves every review. The zero value is ready.
type refCache struct {
	mu sync.RWMutex
	m  map[refKey]parsedRef
}

type refKey struct {
	image    string
	insecure bool
}

type parsedRef struct {
	ref name.Reference
	err error
}

// parse returns name.ParseReference(image), with name.Insecure when
// insecure is set.
func (c *refCache) parse(image string, insecure bool) (name.Reference, error) {
	k := refKey{image, insecure}
	c.mu.RLock()
	p, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return p.ref, p.err
	}
	if insecure {
		p.ref, p.err = name.ParseReference(image, name.Insecure)
	} else {
		p.ref, p.err = name.ParseReference(image)
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxParsedRefs {
		c.m = make(map[refKey]parsedRef)
	}
	c.m[k] = p
	c.mu.Unlock()
	return p.ref, p.err
}
