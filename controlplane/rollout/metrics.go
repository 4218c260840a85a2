package rollout

import "github.com/prometheus/client_golang/prometheus"

// metrics are the controller's Prometheus collectors.
type metrics struct {
	leader        prometheus.Gauge
	rollouts      *prometheus.GaugeVec
	desiredWrites prometheus.Counter
	roundSeconds  prometheus.Histogram
	rounds        *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xdpfw_controller_leader",
			Help: "1 while this replica leads and runs the rollout controller, else 0.",
		}),
		rollouts: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "xdpfw_controller_rollouts",
			Help: "Rollouts by state, as the leader last saw them (nothing on other replicas).",
		}, []string{"state"}),
		desiredWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xdpfw_controller_desired_writes_total",
			Help: "Hosts' desired-state keys written.",
		}),
		roundSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xdpfw_controller_round_duration_seconds",
			Help:    "Time of one controller round: snapshot, rollout steps and writes.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
		}),
		rounds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xdpfw_controller_rounds_total",
			Help: "Controller rounds by result: ok, stale (a key changed under the round: run again), deposed, error.",
		}, []string{"result"}),
	}
}

// Collectors returns the controller's Prometheus collectors, for the
// caller to register: xdpfw_controller_leader,
// xdpfw_controller_rollouts{state},
// xdpfw_controller_desired_writes_total,
// xdpfw_controller_round_duration_seconds and
// xdpfw_controller_rounds_total{result}.
func (c *Controller) Collectors() []prometheus.Collector {
	m := c.metrics
	return []prometheus.Collector{m.leader, m.rollouts, m.desiredWrites, m.roundSeconds, m.rounds}
}
