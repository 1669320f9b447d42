package attrindex

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// seenCache remembers, per folder, the sidecar this mount last read or
// wrote, least recently used first out, bounded by folders and entries.
type seenCache struct {
	mu      sync.Mutex
	lru     *simplelru.LRU[string, sidecar] // GUARDED_BY(mu)
	entries int                             // GUARDED_BY(mu): files held in all
}

func (c *seenCache) init() {
	// NewLRU fails only for a size below 1.
	c.lru, _ = simplelru.NewLRU(maxSeenFolders, func(_ string, s sidecar) { c.entries -= len(s.files) })
}

func (c *seenCache) get(dir string) (sidecar, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Get(dir)
}

func (c *seenCache) put(dir string, s sidecar) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(dir) // Add would replace it without the eviction callback
	if len(s.files) > maxSeenEntries {
		return
	}
	c.lru.Add(dir, s)
	c.entries += len(s.files)
	for c.entries > maxSeenEntries {
		c.lru.RemoveOldest()
	}
}
