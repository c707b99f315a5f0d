package appliance

import (
	"context"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"tandem.io/tandem/replication"
	"tandem.io/tandem/volume/block"
)

// metrics is the node's Prometheus registry (one per node: no global
// state). I/O is counted by a wrapper around each primary's device; the
// cluster's state (raft, gossip, replicas, resync) is read at scrape time.
type metrics struct {
	n       *Node
	reg     *prometheus.Registry
	ops     *prometheus.CounterVec
	bytes   *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

func newMetrics(n *Node) *metrics {
	m := &metrics{n: n, reg: prometheus.NewRegistry(),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_volume_ops_total",
			Help: "I/O operations served by this node as the volume's primary."}, []string{"volume", "op"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_volume_bytes_total",
			Help: "Bytes read and written by initiators through this node as the volume's primary."}, []string{"volume", "op"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tandem_volume_latency_seconds",
			Help:    "Time the volume's device took per operation (mirrored writes wait for every in-sync copy).",
			Buckets: prometheus.ExponentialBuckets(20e-6, 2, 16)}, []string{"volume", "op"}),
	}
	m.reg.MustRegister(m.ops, m.bytes, m.latency, clusterCollector{n})
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// forget drops a volume's series (it is no longer served here).
func (m *metrics) forget(volume string) {
	for _, v := range []*prometheus.MetricVec{m.ops.MetricVec, m.bytes.MetricVec, m.latency.MetricVec} {
		v.DeletePartialMatch(prometheus.Labels{"volume": volume})
	}
}

// metered counts a device's I/O. It keeps the optional interfaces of the
// device it wraps that the target uses (unmap, mapping, sendfile).
type metered struct {
	dev                  meteredDevice
	reads, writes        prometheus.Counter
	readBytes, wroteByts prometheus.Counter
	flushes, unmaps      prometheus.Counter
	readLat, writeLat    prometheus.Observer
	flushLat             prometheus.Observer
}

// meteredDevice is what a primary serves: a mirror.
type meteredDevice interface {
	block.Device
	block.Unmapper
	block.Mapper
}

func (m *metrics) wrap(volume string, dev meteredDevice) *metered {
	return &metered{dev: dev,
		reads: m.ops.WithLabelValues(volume, "read"), writes: m.ops.WithLabelValues(volume, "write"),
		flushes: m.ops.WithLabelValues(volume, "flush"), unmaps: m.ops.WithLabelValues(volume, "unmap"),
		readBytes: m.bytes.WithLabelValues(volume, "read"), wroteByts: m.bytes.WithLabelValues(volume, "write"),
		readLat: m.latency.WithLabelValues(volume, "read"), writeLat: m.latency.WithLabelValues(volume, "write"),
		flushLat: m.latency.WithLabelValues(volume, "flush"),
	}
}

func (d *metered) Size() int64 { return d.dev.Size() }

func (d *metered) ReadAt(ctx context.Context, p []byte, off int64) error {
	t := time.Now()
	err := d.dev.ReadAt(ctx, p, off)
	d.readLat.Observe(time.Since(t).Seconds())
	d.reads.Inc()
	d.readBytes.Add(float64(len(p)))
	return err
}

func (d *metered) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	t := time.Now()
	err := d.dev.WriteAt(ctx, p, off, fua)
	d.writeLat.Observe(time.Since(t).Seconds())
	d.writes.Inc()
	d.wroteByts.Add(float64(len(p)))
	return err
}

func (d *metered) Flush(ctx context.Context) error {
	t := time.Now()
	err := d.dev.Flush(ctx)
	d.flushLat.Observe(time.Since(t).Seconds())
	d.flushes.Inc()
	return err
}

func (d *metered) Unmap(ctx context.Context, off, length int64) error {
	d.unmaps.Inc()
	return d.dev.Unmap(ctx, off, length)
}

func (d *metered) Mapping(ctx context.Context, off int64) (bool, int64, error) {
	return d.dev.Mapping(ctx, off)
}

// meteredSender is a metered device whose device can send from its files.
type meteredSender struct{ *metered }

func (d meteredSender) SendTo(ctx context.Context, dst syscall.Conn, off, n int64) (int64, error) {
	t := time.Now()
	sent, err := d.dev.(block.Sender).SendTo(ctx, dst, off, n)
	d.readLat.Observe(time.Since(t).Seconds())
	d.reads.Inc()
	d.readBytes.Add(float64(sent))
	return sent, err
}

// device returns the metered device with the interfaces of the one it wraps.
func (d *metered) device() block.Device {
	if _, ok := d.dev.(block.Sender); ok {
		return meteredSender{d}
	}
	return d
}

// clusterCollector reads raft, gossip and replica state at scrape time.
type clusterCollector struct{ n *Node }

var (
	descRaftLeader = prometheus.NewDesc("tandem_raft_leader", "1 if this node is the raft leader.", nil, nil)
	descRaftStat   = prometheus.NewDesc("tandem_raft_stat", "Raft statistics of this node (numeric ones).", []string{"stat"}, nil)
	descMembers    = prometheus.NewDesc("tandem_members", "Nodes in the gossip by state, as this node sees them.", []string{"state"}, nil)
	descInSync     = prometheus.NewDesc("tandem_replica_in_sync", "1 if the replica is in the volume's in-sync set (on the primary).", []string{"volume", "replica"}, nil)
	descLag        = prometheus.NewDesc("tandem_replica_outstanding_writes", "Writes sent to the replica and not yet acknowledged.", []string{"volume", "replica"}, nil)
	descDirty      = prometheus.NewDesc("tandem_resync_regions_remaining", "Regions the replica still has to receive.", []string{"volume", "replica"}, nil)
	descCopied     = prometheus.NewDesc("tandem_resync_bytes_copied_total", "Bytes copied to the replica by resyncs and rebuilds.", []string{"volume", "replica"}, nil)
)

func (c clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRaftLeader, descRaftStat, descMembers, descInSync, descLag, descDirty, descCopied} {
		ch <- d
	}
}

func (c clusterCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	if n.cluster == nil || n.members == nil {
		return
	}
	leader := 0.0
	if n.cluster.IsLeader() {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descRaftLeader, prometheus.GaugeValue, leader)
	for k, v := range n.cluster.Stats() {
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			ch <- prometheus.MustNewConstMetric(descRaftStat, prometheus.GaugeValue, f, k)
		}
	}
	counts := map[string]float64{"alive": 0, "suspect": 0, "dead": 0, "left": 0}
	for _, m := range n.members.Members() {
		counts[string(m.State)]++
	}
	for s, k := range counts {
		ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, k, s)
	}
	n.mu.Lock()
	type vm struct {
		name string
		m    replication.Spread
	}
	var mirrors []vm
	for name, s := range n.vols {
		if m := s.spread(); m != nil {
			mirrors = append(mirrors, vm{name, m})
		}
	}
	n.mu.Unlock()
	for _, x := range mirrors {
		for _, r := range x.m.Status() {
			in := 0.0
			if r.State == replication.InSync {
				in = 1
			}
			ch <- prometheus.MustNewConstMetric(descInSync, prometheus.GaugeValue, in, x.name, r.Name)
			ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(r.Outstanding), x.name, r.Name)
			ch <- prometheus.MustNewConstMetric(descDirty, prometheus.GaugeValue, float64(r.RegionsToCopy-r.RegionsCopied), x.name, r.Name)
			ch <- prometheus.MustNewConstMetric(descCopied, prometheus.CounterValue, float64(r.BytesCopied), x.name, r.Name)
		}
	}
}
