package agent

import (
	"context"
	"encoding/json"
	"net/netip"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/proto"
)

// maxTelemetryRules caps the rules of one interface in the etcd telemetry
// document (docs/architecture.md, "Telemetry": a few KB per host); /metrics has them all.
const maxTelemetryRules = 16

// telemetryBudget bounds the encoded telemetry document (docs/architecture.md,
// "Telemetry"): when the busiest rules' names and rates would take it past this, the
// least busy of them are left out (and counted in RulesOmitted).
const telemetryBudget = 5 << 10

// sample is the counters of every interface at one moment.
type sample struct {
	at     time.Time
	ifaces []ifaceSample
}

type ifaceSample struct {
	name  string
	stats *bpf.Stats
	// dropped is the sampled drops by rule and source since the last
	// document (set when a document is made).
	dropped map[string]map[netip.Addr]uint64
}

// telemetryLoop samples the counters every interval, keeps the latest
// sample for /metrics, and hands the reporter a telemetry document when a
// counter moved (an idle host writes nothing).
func (a *Agent) telemetryLoop(ctx context.Context) {
	interval := time.Duration(a.cfg.TelemetryInterval)
	t := time.NewTicker(interval)
	defer t.Stop()
	prev := a.sample()
	a.latest.Store(prev)
	a.telemetry.set(telemetryDoc(a.cfg.Host, nil, prev))
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur := a.sample()
		a.latest.Store(cur)
		if sameCounters(prev, cur) {
			continue
		}
		for i := range cur.ifaces {
			for _, m := range a.ifaces {
				if m.cfg.Name == cur.ifaces[i].name {
					cur.ifaces[i].dropped = m.dropped.take()
				}
			}
		}
		a.telemetry.set(telemetryDoc(a.cfg.Host, prev, cur))
		prev = cur
	}
}

func (a *Agent) sample() *sample {
	s := &sample{at: time.Now()}
	for _, m := range a.ifaces {
		st, err := m.fw.Stats()
		if err != nil {
			a.log.Warn("read counters", zap.String("iface", m.cfg.Name), zap.Error(err))
			continue
		}
		s.ifaces = append(s.ifaces, ifaceSample{name: m.cfg.Name, stats: st})
	}
	return s
}

func sameCounters(a, b *sample) bool {
	if len(a.ifaces) != len(b.ifaces) {
		return false
	}
	for i := range a.ifaces {
		x, y := a.ifaces[i].stats, b.ifaces[i].stats
		if len(x.Rules) != len(y.Rules) || len(x.Actions) != len(y.Actions) {
			return false
		}
		for k, c := range x.Actions {
			if y.Actions[k] != c {
				return false
			}
		}
		for j := range x.Rules {
			if x.Rules[j] != y.Rules[j] {
				return false
			}
		}
	}
	return true
}

// telemetryDoc builds the document of cur, with rates since prev (none
// for the first sample).
func telemetryDoc(host string, prev, cur *sample) proto.HostTelemetry {
	doc := proto.HostTelemetry{
		APIVersion: proto.APIVersion, Kind: proto.KindHostTelemetry, Host: host, At: cur.at.UTC(),
		Interfaces: []proto.InterfaceTelemetry{},
	}
	dt := 0.0
	if prev != nil {
		dt = cur.at.Sub(prev.at).Seconds()
		doc.IntervalSeconds = dt
	}
	for _, is := range cur.ifaces {
		var before *bpf.Stats
		if prev != nil {
			for _, p := range prev.ifaces {
				if p.name == is.name {
					before = p.stats
				}
			}
		}
		it := proto.InterfaceTelemetry{Name: is.name, Actions: map[string]proto.Rate{}}
		for outcome, c := range is.stats.Actions {
			var old bpf.Counter
			if before != nil {
				old = before.Actions[outcome]
			}
			it.Actions[outcome] = rate(old, c, dt)
		}
		oldRules := map[string]bpf.RuleStats{}
		if before != nil {
			for _, r := range before.Rules {
				oldRules[r.RuleSet+"/"+r.ID] = r
			}
		}
		for _, r := range is.stats.Rules {
			if r.Packets == 0 {
				it.RulesOmitted++ // never matched: nothing to tell
				continue
			}
			old := oldRules[r.RuleSet+"/"+r.ID]
			rt := proto.RuleTelemetry{
				RuleSet: r.RuleSet, ID: r.ID, Action: r.Action, DryRun: r.DryRun,
				Rate: rate(old.Counter, r.Counter, dt),
			}
			if r.Action == "rate-limit" {
				limited := rate(old.Limited, r.Limited, dt)
				rt.Limited = &limited
			}
			rt.TopSources = topSources(is.dropped[r.RuleSet+"/"+r.ID], ruleDrops(old, r))
			it.Rules = append(it.Rules, rt)
		}
		sort.SliceStable(it.Rules, func(i, j int) bool {
			if it.Rules[i].PPS != it.Rules[j].PPS {
				return it.Rules[i].PPS > it.Rules[j].PPS
			}
			return it.Rules[i].Packets > it.Rules[j].Packets
		})
		if len(it.Rules) > maxTelemetryRules {
			it.RulesOmitted += len(it.Rules) - maxTelemetryRules
			it.Rules = it.Rules[:maxTelemetryRules]
		}
		if it.Rules == nil {
			it.Rules = []proto.RuleTelemetry{}
		}
		doc.Interfaces = append(doc.Interfaces, it)
	}
	trimToBudget(&doc)
	return doc
}

// trimToBudget leaves out the least busy listed rule of the interface that
// lists the most, until the document fits telemetryBudget.
func trimToBudget(doc *proto.HostTelemetry) {
	for {
		data, err := json.Marshal(doc)
		if err != nil || len(data) <= telemetryBudget {
			return
		}
		most := -1
		for i, it := range doc.Interfaces {
			if len(it.Rules) > 0 && (most < 0 || len(it.Rules) > len(doc.Interfaces[most].Rules)) {
				most = i
			}
		}
		if most < 0 {
			return // nothing left to trim: the totals alone are over
		}
		it := &doc.Interfaces[most]
		it.Rules = it.Rules[:len(it.Rules)-1]
		it.RulesOmitted++
	}
}

// rate is a counter with its rate since old; a counter that went back
// (a rule's slot was reset) counts from zero.
func rate(old, cur bpf.Counter, dt float64) proto.Rate {
	r := proto.Rate{Packets: cur.Packets, Bytes: cur.Bytes}
	if dt <= 0 {
		return r
	}
	if cur.Packets < old.Packets || cur.Bytes < old.Bytes {
		old = bpf.Counter{}
	}
	r.PPS = float64(cur.Packets-old.Packets) / dt
	r.BPS = float64(cur.Bytes-old.Bytes) / dt
	return r
}
