package vfs

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/nimbus-fs/nimbus/cache"
)

// Remote changes reach the mount in two ways: a listing older than DirTTL
// is redone when it is next used, and Poll re-lists the directories used
// recently in the background, so that a program sitting in a folder sees
// another machine's changes within one poll interval. When a listing
// changes an entry, the old blocks are dropped and the kernel is told to
// forget its cached entry and pages (asynchronously, holding no lock).

// watchWindow is how long after its last use a directory is still polled.
const watchWindow = 30 * time.Minute

// maxWatched bounds the directories one poll round re-lists.
const maxWatched = 1000

// watchSet records when each directory was last used. GUARDED_BY(mu).
type watchSet struct {
	mu   sync.Mutex
	used map[string]time.Time
}

func (w *watchSet) touch(dir string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.used == nil {
		w.used = make(map[string]time.Time)
	}
	w.used[dir] = time.Now()
}

// recent returns the directories used within window, most recent first,
// and forgets the others.
func (w *watchSet) recent(window time.Duration, limit int) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	cutoff := time.Now().Add(-window)
	dirs := make([]string, 0, len(w.used))
	for d, t := range w.used {
		if t.Before(cutoff) {
			delete(w.used, d)
			continue
		}
		dirs = append(dirs, d)
	}
	sort.Slice(dirs, func(i, j int) bool { return w.used[dirs[i]].After(w.used[dirs[j]]) })
	if len(dirs) > limit {
		dirs = dirs[:limit]
	}
	return dirs
}

// Poll re-lists the recently used directories every interval until ctx
// ends. Offline rounds are skipped.
func (f *FS) Poll(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !f.online() {
			continue
		}
		f.refreshPins()
		for _, dir := range f.watched.recent(watchWindow, maxWatched) {
			if ctx.Err() != nil {
				return
			}
			if err := f.refreshDir(ctx, dir); err != nil {
				f.log.Debug("poll", "dir", dir, "err", err)
			}
		}
	}
}

// refreshDir lists dir now and applies what changed to the block cache
// and the kernel.
func (f *FS) refreshDir(ctx context.Context, dir string) error {
	before := make(map[string]cache.Entry)
	if err := f.cfg.Tree.Children(dir, func(e cache.Entry) bool { before[e.Name] = e; return true }); err != nil {
		return err
	}
	if err := f.listShared(ctx, dir); err != nil {
		return err
	}
	var changed []string
	err := f.cfg.Tree.Children(dir, func(e cache.Entry) bool {
		old, ok := before[e.Name]
		delete(before, e.Name)
		switch {
		case !ok:
			changed = append(changed, e.Name) // appeared
		case e.Local:
		case old.Dir != e.Dir || old.ETag != e.ETag || old.Size != e.Size:
			changed = append(changed, e.Name)
			if !e.Dir {
				f.contentChanged(cache.JoinPath(dir, e.Name), e)
			}
		case old.Mode != e.Mode || !old.MTime.Equal(e.MTime):
			// Same content, new mode or mtime (another mount's
			// chmod or touch, from its attribute index).
			changed = append(changed, e.Name)
			f.attrsChanged(cache.JoinPath(dir, e.Name), e)
		}
		return true
	})
	if err != nil {
		return err
	}
	for name := range before { // disappeared
		changed = append(changed, name)
	}
	if len(changed) > 0 {
		paths := make([]string, len(changed))
		for i, name := range changed {
			paths[i] = cache.JoinPath(dir, name)
		}
		f.background(func() { f.notifyEntries(paths) })
	}
	return nil
}

// contentChanged drops the old version of a file changed remotely: its
// blocks, and the kernel's pages if the kernel holds the file.
func (f *FS) contentChanged(path string, e cache.Entry) {
	f.cfg.Blocks.Forget(f.fileKey(path), e.ETag)
	n := f.liveFile(path)
	if n == nil {
		return
	}
	n.mu.Lock()
	local := n.work != nil || n.entry.Local
	if !local {
		n.entry = e
		n.openedETag = "" // the next open must not keep the old pages
	}
	n.mu.Unlock()
	if local {
		return
	}
	f.background(func() {
		if errno := n.NotifyContent(0, 0); errno != 0 {
			f.log.Debug("notify content", "path", path, "errno", errno)
		}
	})
}

// attrsChanged gives a live node without local changes the new mode and
// mtime of its unchanged content.
func (f *FS) attrsChanged(path string, e cache.Entry) {
	n := f.liveFile(path)
	if n == nil {
		return
	}
	n.mu.Lock()
	if n.work == nil && !n.entry.Local && n.entry.ETag == e.ETag {
		n.entry = e
	}
	n.mu.Unlock()
}
