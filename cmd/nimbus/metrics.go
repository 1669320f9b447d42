package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/nimbus-fs/nimbus/backend/counting"
)

// Prometheus metrics of a mount (--metrics-addr), served at /metrics.
//
// The counters the mount keeps anyway (requests by the counting decorator,
// the block store's and the journal's stats, the health checker's state)
// are read at scrape time by mountCollector, so no package counts twice.
// Only the FUSE operations are measured here, by fuseMetrics, a
// RawFileSystem around go-fuse's node bridge: go-fuse v2.12.1 has no
// latency hook (Server.RecordLatencies does nothing), and the errno of
// every answer is visible there.

// requestOps are the counting decorator's request counters, by S3
// operation.
var requestOps = []string{counting.ListObjectsV2, counting.HeadObject, counting.GetObject, counting.PutObject,
	counting.UploadPartCopy, counting.CopyObject, counting.DeleteObject}

// mountCollector exports the mount's own counters.
type mountCollector struct {
	m *mountState

	requests, bytes                        *prometheus.Desc
	cacheUsed, cacheCapacity, cachePinned  *prometheus.Desc
	cacheHits, cacheMisses, cacheEvictions *prometheus.Desc
	pending, pendingBytes, uploading       *prometheus.Desc
	uploadErrors, conflicts, online        *prometheus.Desc
}

var (
	_ prometheus.Collector = (*mountCollector)(nil)
	_ fuse.RawFileSystem   = (*fuseMetrics)(nil)
)

func newMountCollector(m *mountState) *mountCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("nimbus_"+name, help, labels, nil)
	}
	return &mountCollector{
		m:              m,
		requests:       d("s3_requests_total", "Requests to the store, by S3 operation (the dir store counts the same).", "op"),
		bytes:          d("s3_bytes_total", "Bytes moved: in (read from GET bodies), out (uploaded), copied (server-side, instead of uploaded).", "direction"),
		cacheUsed:      d("cache_used_bytes", "Clean cached bytes, counted against the cache capacity."),
		cacheCapacity:  d("cache_capacity_bytes", "The cache capacity (--cache-size)."),
		cachePinned:    d("cache_pinned_bytes", "Cached bytes of pinned content, outside the capacity."),
		cacheHits:      d("cache_hits_total", "Blocks a read found cached."),
		cacheMisses:    d("cache_misses_total", "Blocks a read had to fetch."),
		cacheEvictions: d("cache_evictions_total", "Blocks evicted to stay within the capacity."),
		pending:        d("uploads_pending", "Changes not uploaded yet."),
		pendingBytes:   d("uploads_pending_bytes", "Content bytes of the changes not uploaded yet."),
		uploading:      d("uploads_in_flight", "Changes being uploaded now."),
		uploadErrors:   d("upload_errors", "Pending changes whose last upload failed: retrying (will be retried) or parked (refused: see nimbus status).", "kind"),
		conflicts:      d("conflicts", "Recorded conflicts (see nimbus conflicts)."),
		online:         d("online", "1 when the store is reachable, 0 when the mount is offline."),
	}
}

func (c *mountCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c *mountCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counts := c.m.counts.Snapshot()
	for _, op := range requestOps {
		counter(c.requests, counts[op], op)
	}
	counter(c.bytes, counts[counting.BytesIn], "in")
	counter(c.bytes, counts[counting.BytesOut], "out")
	counter(c.bytes, counts[counting.BytesCopied], "copied")

	bs := c.m.blocks.Stats()
	gauge(c.cacheUsed, bs.Used)
	gauge(c.cacheCapacity, bs.Capacity)
	gauge(c.cachePinned, bs.Pinned)
	counter(c.cacheHits, bs.Hits)
	counter(c.cacheMisses, bs.Misses)
	counter(c.cacheEvictions, bs.Evictions)

	js := c.m.journal.Stats()
	gauge(c.pending, int64(js.Pending))
	gauge(c.pendingBytes, js.PendingBytes)
	gauge(c.uploading, int64(js.Uploading))
	gauge(c.uploadErrors, int64(len(js.Retrying)), "retrying")
	gauge(c.uploadErrors, int64(len(js.Parked)), "parked")
	gauge(c.conflicts, int64(js.Conflicts))
	var online int64
	if c.m.health.Online() {
		online = 1
	}
	gauge(c.online, online)
}

// fuseMetrics measures the FUSE operations of a RawFileSystem: how many,
// how long each took, and which failed with which errno.
type fuseMetrics struct {
	fuse.RawFileSystem
	latency *prometheus.HistogramVec
	errors  *prometheus.CounterVec
}

func newFuseMetrics(raw fuse.RawFileSystem, reg prometheus.Registerer) *fuseMetrics {
	f := &fuseMetrics{
		RawFileSystem: raw,
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "nimbus_fuse_operation_duration_seconds",
			Help: "Time to answer a FUSE operation, by operation.",
			// 50µs (served from memory) to 20s (a large fetch).
			Buckets: prometheus.ExponentialBuckets(50e-6, 4, 10),
		}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nimbus_fuse_errors_total",
			Help: "FUSE operations answered with an error, by operation and errno (ENOENT from lookup is a name that is not there).",
		}, []string{"op", "errno"}),
	}
	reg.MustRegister(f.latency, f.errors)
	return f
}

// observe records one operation that started at start and answered st.
func (f *fuseMetrics) observe(op string, start time.Time, st fuse.Status) {
	f.latency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if st != fuse.OK {
		f.errors.WithLabelValues(op, errnoName(st)).Inc()
	}
}

// errnoName names a FUSE status as errno does: "ENOENT", "EIO".
func errnoName(st fuse.Status) string {
	if name := unix.ErrnoName(syscall.Errno(st)); name != "" {
		return name
	}
	return fmt.Sprintf("errno %d", int32(st))
}

// listenMetrics serves reg at http://addr/metrics until the server is
// closed.
func listenMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", metricsListenAddr(addr))
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w: give a free HOST:PORT, such as 127.0.0.1:9101", addr, err)
	}
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return srv, nil
}

// metricsListenAddr is addr with loopback for an empty host (":9101"):
// the metrics have no authentication, so listening on every interface
// takes saying so (0.0.0.0:9101, [::]:9101).
func metricsListenAddr(addr string) string {
	if host, port, err := net.SplitHostPort(addr); err == nil && host == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

// newMetricsRegistry holds the mount's metrics and Go's own.
func newMetricsRegistry(m *mountState) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newMountCollector(m), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
