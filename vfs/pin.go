package vfs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
)

// Pinning keeps folders (or files) complete on this machine for offline
// use. A pinned path is recorded in the persisted pin set; a pin job finds
// every file under it with flat listings (about one request per 1,000
// keys) and has the block cache download and pin them. Pins are inherited:
// each poll round runs the job again for every pinned path, which fetches
// what appeared or changed remotely since (what is present costs nothing).

// pinSet is what the vfs needs from the persisted pin set.
type pinSet interface {
	Add(path string) error
	Remove(path string) (inherited bool, err error)
	Pinned(path string) (bool, string, error)
	List() ([]string, error)
}

// pinWorkers is how many files one pin job downloads at once; the block
// cache bounds the GETs across all of them.
const pinWorkers = 4

// PinProgress is the state of one pinned path, for nimbus status and the
// progress bar of nimbus pin.
type PinProgress struct {
	Path      string    `json:"path"`
	Files     int64     `json:"files"`
	FilesDone int64     `json:"files_done"`
	Bytes     int64     `json:"bytes"`
	BytesDone int64     `json:"bytes_done"`
	Started   time.Time `json:"started"`
	Running   bool      `json:"running"`
	Complete  bool      `json:"complete"` // the last run fetched everything
	Err       string    `json:"error,omitempty"`
}

// pinJob is the latest run of the pin job of one path.
type pinJob struct {
	path                          string
	started                       time.Time
	files, filesDone, bytes, done atomic.Int64
	finished                      chan struct{}
	err                           error // set before finished is closed
}

func (j *pinJob) progress() PinProgress {
	p := PinProgress{
		Path: j.path, Started: j.started,
		Files: j.files.Load(), FilesDone: j.filesDone.Load(),
		Bytes: j.bytes.Load(), BytesDone: j.done.Load(),
	}
	select {
	case <-j.finished:
		p.Complete = j.err == nil
		if j.err != nil {
			p.Err = j.err.Error()
		}
	default:
		p.Running = true
	}
	return p
}

// pinJobs tracks the latest job of each pinned path. GUARDED_BY(mu).
type pinJobs struct {
	mu   sync.Mutex
	jobs map[string]*pinJob
}

// Pin pins rel (a path below the mount root) and starts downloading it in
// the background. It fails at once when rel does not exist.
func (f *FS) Pin(ctx context.Context, rel string) error {
	if _, err := f.statPath(ctx, rel); err != nil {
		return err
	}
	if err := f.cfg.Pins.Add(rel); err != nil {
		return err
	}
	f.startPinJob(rel)
	return nil
}

// statPath tells whether rel is a folder, from the tree.
func (f *FS) statPath(ctx context.Context, rel string) (isDir bool, err error) {
	if rel == "" {
		return true, nil
	}
	dir, name := splitPath(rel)
	if err := f.ensureListed(ctx, dir); err != nil {
		return false, err
	}
	e, ok, err := f.cfg.Tree.Lookup(dir, name)
	if err != nil {
		return false, err
	}
	if !ok {
		return false, fmt.Errorf("%q: %w", rel, backend.ErrNotFound)
	}
	return e.Dir, nil
}

// startPinJob runs the pin job of rel unless one is running.
func (f *FS) startPinJob(rel string) *pinJob {
	f.pinJobs.mu.Lock()
	defer f.pinJobs.mu.Unlock()
	if f.pinJobs.jobs == nil {
		f.pinJobs.jobs = make(map[string]*pinJob)
	}
	if j := f.pinJobs.jobs[rel]; j != nil {
		select {
		case <-j.finished:
		default:
			return j // still running
		}
	}
	j := &pinJob{path: rel, started: time.Now(), finished: make(chan struct{})}
	f.pinJobs.jobs[rel] = j
	if !f.background(func() {
		j.err = f.runPinJob(f.bgCtx, j)
		if j.err != nil {
			f.log.Warn("pin incomplete", "path", rel, "err", j.err)
		} else {
			f.log.Info("pin complete", "path", rel, "files", j.files.Load(), "bytes", j.bytes.Load())
		}
		close(j.finished)
	}) {
		j.err = fmt.Errorf("pin %q: the mount is stopping", rel)
		close(j.finished)
	}
	return j
}

// runPinJob downloads and pins every file under j.path.
func (f *FS) runPinJob(ctx context.Context, j *pinJob) error {
	isDir, err := f.statPath(ctx, j.path)
	if err != nil {
		return err
	}
	var contents []cache.Content
	if isDir {
		err := f.cfg.Store.ListFlat(ctx, f.dirKeyPrefix(j.path), func(p backend.Page) error {
			for _, o := range p.Objects {
				if strings.HasSuffix(o.Key, "/") || !showable(o.Key) {
					continue // markers, nimbus's own objects, and keys no path can show
				}
				contents = append(contents, cache.Content{Key: o.Key, ETag: o.ETag, Size: o.Size})
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("list %q: %w", j.path, err)
		}
	} else {
		dir, name := splitPath(j.path)
		e, _, err := f.cfg.Tree.Lookup(dir, name)
		if err != nil {
			return err
		}
		contents = append(contents, cache.Content{Key: f.fileKey(j.path), ETag: e.ETag, Size: e.Size})
	}
	for _, c := range contents {
		j.bytes.Add(c.Size)
	}
	j.files.Store(int64(len(contents)))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan cache.Content)
	errs := make(chan error, pinWorkers)
	var wg sync.WaitGroup
	for range pinWorkers {
		wg.Go(func() {
			for c := range work {
				if err := f.pinContent(ctx, c, j); err != nil {
					errs <- err
					cancel() // the first error stops the job
					return
				}
				j.filesDone.Add(1)
			}
		})
	}
feed:
	for _, c := range contents {
		select {
		case work <- c:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return ctx.Err()
}

// pinContent pins one file, following it once if it changed remotely
// since it was listed. Files with local changes are local already.
func (f *FS) pinContent(ctx context.Context, c cache.Content, j *pinJob) error {
	if _, pending := f.cfg.Journal.Pending(c.Key); pending {
		j.done.Add(c.Size)
		return nil
	}
	// Older versions of the file, pinned by an earlier run, make way.
	f.cfg.Blocks.Forget(c.Key, c.ETag)
	err := f.cfg.Blocks.Pin(ctx, c, func(n int64) { j.done.Add(n) })
	if errors.Is(err, backend.ErrPrecondition) {
		info, serr := f.cfg.Store.Stat(ctx, c.Key)
		if serr != nil {
			return fmt.Errorf("pin %q: %w", c.Key, serr)
		}
		f.cfg.Blocks.Forget(c.Key, info.ETag)
		j.bytes.Add(info.Size - c.Size)
		err = f.cfg.Blocks.Pin(ctx, cache.Content{Key: c.Key, ETag: info.ETag, Size: info.Size}, func(n int64) { j.done.Add(n) })
	}
	if err != nil {
		return fmt.Errorf("pin %q: %w", c.Key, err)
	}
	return nil
}

// showable reports whether every segment of key can be a POSIX name that
// is the user's (not one of nimbus's own objects).
func showable(key string) bool {
	for _, seg := range strings.Split(key, "/") {
		if whyUnshowable(seg) != "" || reservedName(seg) {
			return false
		}
	}
	return true
}

// Unpin returns rel to on-demand: its cached content becomes evictable. It
// reports whether rel stays pinned through a pinned folder above it.
func (f *FS) Unpin(rel string) (inherited bool, err error) {
	if inherited, err = f.cfg.Pins.Remove(rel); err != nil || inherited {
		return inherited, err
	}
	f.pinJobs.mu.Lock()
	delete(f.pinJobs.jobs, rel)
	f.pinJobs.mu.Unlock()
	for _, key := range f.keysUnder(rel) {
		f.cfg.Blocks.Unpin(key)
	}
	return false, nil
}

// Free drops the cached content under rel now. Data not yet uploaded is
// not in the block cache (it is in the journal), so it is never dropped.
// While rel, or a path under it, is pinned, Free refuses,
// since freeing would silently undo the pin, unless unpin is set: then
// those pins go first, and are returned. A path pinned through a folder
// above it cannot be freed: that would undo the folder's pin.
func (f *FS) Free(rel string, unpin bool) (freed int64, unpinned []string, err error) {
	if pinned, by, err := f.cfg.Pins.Pinned(rel); err != nil {
		return 0, nil, err
	} else if pinned && by != rel {
		return 0, nil, fmt.Errorf("%q is pinned through %q: unpin that folder first", "/"+rel, "/"+by)
	}
	paths, err := f.cfg.Pins.List()
	if err != nil {
		return 0, nil, err
	}
	var under []string
	for _, p := range paths {
		if rel == "" || p == rel || strings.HasPrefix(p, rel+"/") {
			under = append(under, p)
		}
	}
	if len(under) > 0 && !unpin {
		return 0, nil, fmt.Errorf("%s kept for offline use: nimbus free --unpin unpins and frees, or nimbus unpin first", pinList(under))
	}
	for _, p := range under {
		if _, err := f.Unpin(p); err != nil {
			return 0, unpinned, err
		}
		unpinned = append(unpinned, p)
	}
	for _, key := range f.keysUnder(rel) {
		freed += f.cfg.Blocks.Free(key)
	}
	return freed, unpinned, nil
}

// pinList names pinned paths for a message, the first few only.
func pinList(paths []string) string {
	const show = 3
	names := make([]string, 0, show)
	for _, p := range paths[:min(len(paths), show)] {
		names = append(names, "/"+p)
	}
	out := strings.Join(names, ", ")
	if len(paths) > show {
		out += fmt.Sprintf(" and %d more", len(paths)-show)
	}
	if len(paths) == 1 {
		return out + " is pinned,"
	}
	return out + " are pinned,"
}

// keysUnder returns the keys the block cache holds at or below rel.
func (f *FS) keysUnder(rel string) []string {
	if rel == "" {
		return f.cfg.Blocks.Keys(f.cfg.Prefix)
	}
	keys := f.cfg.Blocks.Keys(f.dirKeyPrefix(rel))
	file := f.fileKey(rel)
	for _, k := range f.cfg.Blocks.Keys(file) {
		if k == file {
			keys = append(keys, k)
		}
	}
	return keys
}

// PinStatus reports every pinned path with the progress of its latest job.
func (f *FS) PinStatus() ([]PinProgress, error) {
	paths, err := f.cfg.Pins.List()
	if err != nil {
		return nil, err
	}
	out := make([]PinProgress, 0, len(paths))
	f.pinJobs.mu.Lock()
	defer f.pinJobs.mu.Unlock()
	for _, p := range paths {
		if j := f.pinJobs.jobs[p]; j != nil {
			out = append(out, j.progress())
		} else {
			out = append(out, PinProgress{Path: p})
		}
	}
	return out, nil
}

// refreshPins runs the pin job of every pinned path that has no job
// running: new and changed remote files under a pinned folder are fetched.
func (f *FS) refreshPins() {
	paths, err := f.cfg.Pins.List()
	if err != nil {
		f.log.Warn("list pins", "err", err)
		return
	}
	for _, p := range paths {
		f.startPinJob(p)
	}
}

// pinnedPath reports whether rel is pinned (itself or through a folder).
func (f *FS) pinnedPath(rel string) bool {
	pinned, _, err := f.cfg.Pins.Pinned(rel)
	if err != nil {
		f.log.Warn("pin state", "path", rel, "err", err)
	}
	return pinned
}
