package agent

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/proto"
)

// maxTopSources is how many sources telemetry lists per rule.
const maxTopSources = 3

// maxTrackedSources bounds the sources tallied per rule between two
// documents: a spoofed flood brings a new source with every sample, and a
// long telemetry interval would otherwise grow the map without end.
const maxTrackedSources = 4096

// otherSources is the tally's key for the samples of sources past
// maxTrackedSources: counted (they are part of the rule's samples), not
// listed.
var otherSources = netip.Addr{}

// dropTally counts sampled drops by rule and source between two telemetry
// documents.
type dropTally struct {
	mu     sync.Mutex
	counts map[string]map[netip.Addr]uint64 // rule identity -> source -> samples
}

func (d *dropTally) add(rule string, src netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.counts == nil {
		d.counts = map[string]map[netip.Addr]uint64{}
	}
	bySrc := d.counts[rule]
	if bySrc == nil {
		bySrc = map[netip.Addr]uint64{}
		d.counts[rule] = bySrc
	}
	if _, known := bySrc[src]; !known && len(bySrc) >= maxTrackedSources {
		src = otherSources
	}
	bySrc[src]++
}

// take returns the tally so far and starts a new one.
func (d *dropTally) take() map[string]map[netip.Addr]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.counts
	d.counts = nil
	return c
}

// topSources lists a rule's most sampled sources, their sample counts
// scaled to the rule's drops over the same interval.
func topSources(bySrc map[netip.Addr]uint64, drops uint64) []proto.SourceCount {
	var samples uint64
	type entry struct {
		src netip.Addr
		n   uint64
	}
	var all []entry
	for src, n := range bySrc {
		samples += n
		if src != otherSources {
			all = append(all, entry{src, n})
		}
	}
	if samples == 0 {
		return nil
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].n != all[j].n {
			return all[i].n > all[j].n
		}
		return all[i].src.Less(all[j].src)
	})
	var out []proto.SourceCount
	for _, e := range all[:min(len(all), maxTopSources)] {
		est := e.n
		if drops > samples {
			est = uint64(float64(e.n) / float64(samples) * float64(drops))
		}
		out = append(out, proto.SourceCount{Src: e.src.String(), Packets: est})
	}
	return out
}

// dropSourceLoop reads the interface's sampled drop sources into its tally
// until ctx ends. It (re)opens the reader when it cannot read: another
// agent still holding the lease, or a firewall without samples.
func (a *Agent) dropSourceLoop(ctx context.Context, m *managedIface) {
	log := a.log.With(zap.String("iface", m.cfg.Name))
	warned := false
	for ctx.Err() == nil {
		r, err := m.fw.ReadDropSources()
		if err != nil {
			if !warned {
				log.Warn("no dropped-source counts for now; retrying", zap.Error(err))
				warned = true
			}
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
			continue
		}
		warned = false
		for ctx.Err() == nil {
			// Short deadlines, so the loop sees ctx end.
			r.SetDeadline(time.Now().Add(time.Second))
			s, err := r.Read()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if err != nil {
				log.Warn("read dropped-source samples", zap.Error(err))
				break
			}
			if s.Rule != "" && s.Src.IsValid() && !s.WouldDrop {
				m.dropped.add(s.Rule, s.Src)
			}
		}
		if err := r.Close(); err != nil {
			log.Warn("close dropped-source reader", zap.Error(err))
		}
	}
}

// ruleDrops is what a rule dropped between two counter readings.
func ruleDrops(old, cur bpf.RuleStats) uint64 {
	if cur.Action == "rate-limit" {
		return sub(cur.Limited.Packets, old.Limited.Packets)
	}
	return sub(cur.Packets, old.Packets)
}

func sub(cur, old uint64) uint64 {
	if cur < old {
		return cur // reset: count from zero
	}
	return cur - old
}
