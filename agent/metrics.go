package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the agent's own health, served on /metrics beside the
// firewall counters (countersCollector).
type metrics struct {
	applySeconds prometheus.Histogram
	// applyPhaseSeconds is applySeconds by phase (applyTiming).
	applyPhaseSeconds *prometheus.HistogramVec
	applyErrors       prometheus.Counter
	mapWrites         prometheus.Counter
	watchRestarts     prometheus.Counter
	resyncErrors      prometheus.Counter
	leaseGrants       prometheus.Counter
	etcdConnected     prometheus.Gauge
	revision          prometheus.Gauge
	inSync            prometheus.Gauge
	// dataPlaneReady and loadErrors say whether every managed
	// interface's XDP program is loaded, and how many attempts failed.
	dataPlaneReady prometheus.Gauge
	loadErrors     prometheus.Counter
	// docReads and docsAhead count rule-set versions read from etcd for
	// an apply, and those decoded from the watch before a rollout named
	// them (which the apply then does not read).
	docReads, docsAhead prometheus.Counter
	// watchEvents and watchBytes count what the watch brought: the
	// host's desired state and the versions of the rule sets it enforces.
	watchEvents, watchBytes prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xdpfw_agent_apply_duration_seconds",
			Help:    "Time from a desired-state change to the firewalls enforcing it: etcd reads, decoding, compile, map writes and the release of a big apply's memory.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		applyPhaseSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "xdpfw_agent_apply_phase_duration_seconds",
			Help: "Time of each phase of an apply: fetch (etcd reads of the desired state, documents and chunks), " +
				"decode (chunks to prefixes, documents to rule sets), compile (bpf.Compile), write (map writes, flip and attach), " +
				"settle (the kernel's RCU grace period after the flip, waited for after the status), " +
				"release (giving a big apply's memory back).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 17),
		}, []string{"phase"}),
		applyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpfw_agent_apply_errors_total",
			Help: "Desired states refused (bad document, compile or apply error); the last good rules stayed in force.",
		}),
		mapWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpfw_agent_map_writes_total",
			Help: "BPF map entries written or deleted by applies.",
		}),
		watchRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpfw_agent_watch_restarts_total",
			Help: "Times the etcd watch ended (compaction, lost leader, error) and the agent resynced.",
		}),
		resyncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpfw_agent_resync_errors_total",
			Help: "Failed reads of the desired state from etcd.",
		}),
		leaseGrants: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpfw_agent_lease_grants_total",
			Help: "Leases granted to this host (more than one means the lease expired or etcd was lost).",
		}),
		etcdConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xdpfw_agent_etcd_connected",
			Help: "1 while the host's lease is kept alive by etcd, else 0.",
		}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xdpfw_agent_applied_revision",
			Help: "The etcd revision of the desired state last applied or refused.",
		}),
		inSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xdpfw_agent_in_sync",
			Help: "1 when the firewalls enforce what etcd desires, else 0.",
		}),
		dataPlaneReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xdpfw_agent_dataplane_ready",
			Help: "1 when the XDP program and maps of every managed interface are loaded; 0 while one did not load (the agent applies nothing and retries; what was pinned before keeps filtering).",
		}),
		loadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpfw_agent_dataplane_load_errors_total",
			Help: "Attempts to load an interface's XDP program and maps that failed (the verifier refused the program, the kernel lacks a feature, ...).",
		}),
		docReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpfw_agent_document_reads_total",
			Help: "Rule-set versions read from etcd because the desired state named them and the watch had not brought them ahead.",
		}),
		docsAhead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpfw_agent_documents_ahead_total",
			Help: "Newer versions of enforced rule sets decoded from the watch before a rollout named them.",
		}),
		watchEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpfw_agent_watch_events_total",
			Help: "Events the watch brought: the host's desired state and versions of the rule sets it enforces (no other rule set's).",
		}),
		watchBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpfw_agent_watch_bytes_total",
			Help: "Bytes of the values the watch brought.",
		}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.applySeconds, m.applyPhaseSeconds, m.applyErrors, m.mapWrites, m.watchRestarts,
		m.resyncErrors, m.leaseGrants, m.etcdConnected, m.revision, m.inSync, m.dataPlaneReady, m.loadErrors,
		m.docReads, m.docsAhead, m.watchEvents, m.watchBytes}
}

// observeApply records a successful apply's phases and total.
func (m *metrics) observeApply(t *applyTiming, total time.Duration) {
	m.applySeconds.Observe(total.Seconds())
	for _, p := range []struct {
		name string
		d    time.Duration
	}{{"fetch", t.fetch}, {"decode", t.decode}, {"compile", t.compile}, {"write", t.write}, {"settle", t.settle}, {"release", t.release}} {
		m.applyPhaseSeconds.WithLabelValues(p.name).Observe(p.d.Seconds())
	}
}

var (
	rulePacketsDesc = prometheus.NewDesc("xdpfw_rule_packets_total",
		"Packets matched per rule, summed over CPUs.", []string{"interface", "ruleset", "rule", "action"}, nil)
	ruleBytesDesc = prometheus.NewDesc("xdpfw_rule_bytes_total",
		"Bytes matched per rule, summed over CPUs.", []string{"interface", "ruleset", "rule", "action"}, nil)
	ruleLimitedDesc = prometheus.NewDesc("xdpfw_rule_limited_packets_total",
		"Packets a rate-limit rule matched over its limit (dropped, or would-dropped in a dry-run set).",
		[]string{"interface", "ruleset", "rule"}, nil)
	actionPacketsDesc = prometheus.NewDesc("xdpfw_action_packets_total",
		"Packets per outcome (pass-rule, drop-rule, pass-default, parse-error, non-ip, would-drop, fragment, no-policy, rate-limited).",
		[]string{"interface", "outcome"}, nil)
	actionBytesDesc = prometheus.NewDesc("xdpfw_action_bytes_total",
		"Bytes per outcome.", []string{"interface", "outcome"}, nil)
)

// countersCollector serves every rule's counters from the telemetry
// loop's latest sample: full detail, which the etcd document leaves out.
type countersCollector struct{ a *Agent }

func (c *countersCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- rulePacketsDesc
	ch <- ruleLimitedDesc
	ch <- ruleBytesDesc
	ch <- actionPacketsDesc
	ch <- actionBytesDesc
}

func (c *countersCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.a.latest.Load()
	if s == nil {
		return
	}
	for _, is := range s.ifaces {
		for outcome, ctr := range is.stats.Actions {
			ch <- prometheus.MustNewConstMetric(actionPacketsDesc, prometheus.CounterValue, float64(ctr.Packets), is.name, outcome)
			ch <- prometheus.MustNewConstMetric(actionBytesDesc, prometheus.CounterValue, float64(ctr.Bytes), is.name, outcome)
		}
		for _, r := range is.stats.Rules {
			action := r.Action
			if r.DryRun {
				action += "-dry-run"
			}
			ch <- prometheus.MustNewConstMetric(rulePacketsDesc, prometheus.CounterValue, float64(r.Packets), is.name, r.RuleSet, r.ID, action)
			ch <- prometheus.MustNewConstMetric(ruleBytesDesc, prometheus.CounterValue, float64(r.Bytes), is.name, r.RuleSet, r.ID, action)
			if r.Action == "rate-limit" {
				ch <- prometheus.MustNewConstMetric(ruleLimitedDesc, prometheus.CounterValue, float64(r.Limited.Packets), is.name, r.RuleSet, r.ID)
			}
		}
	}
}
