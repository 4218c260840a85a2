package bpf

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Counter is a packet and byte count, summed over CPUs.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// RuleStats is the counter of one rule of the active rule set.
type RuleStats struct {
	Index   int    `json:"index"`
	RuleSet string `json:"ruleSet"`
	ID      string `json:"id"`
	Action  string `json:"action"`
	DryRun  bool   `json:"dryRun,omitempty"`
	// Counter counts the packets the rule matched.
	Counter
	// Limited counts, for a rate-limit rule, the matched packets that were
	// over its limit: dropped (would-drops in a dry-run set). The rest
	// passed or went on to the next rule. (A value, not a pointer, so
	// RuleStats compare with ==.)
	Limited Counter `json:"limited,omitzero"`
	// Sources counts, for a per-source rate limit, what its sketch did.
	Sources SourceLimitStats `json:"sources,omitzero"`
}

// SourceLimitStats are a per-source limit's sketch counts (docs/dataplane.md,
// "Per-source limits under a flood"). Of the packets the rule matched, BucketPackets
// were of sources at their limit and took their bucket; the rest passed on
// the sketch alone. BucketsCreated is how many sources were given a bucket.
// Under a flood, BucketPackets near the rule's packets means the sketch is
// too small for it (Options.SourceSketchLines).
type SourceLimitStats struct {
	BucketPackets  uint64 `json:"bucketPackets"`
	BucketsCreated uint64 `json:"bucketsCreated"`
}

// Action counter names, in firewall.h's enum fw_stat order.
var actionNames = [...]string{
	"pass-rule", "drop-rule", "pass-default", "parse-error", "non-ip", "would-drop", "fragment", "no-policy",
	"rate-limited",
}

// Stats are the firewall's counters: per rule of the active rule set, in
// evaluation order, and per action (how packets ended).
type Stats struct {
	Rules   []RuleStats        `json:"rules"`
	Actions map[string]Counter `json:"actions"`
}

// Stats reads and sums the per-CPU counters.
func (fw *Firewall) Stats() (*Stats, error) {
	st := &Stats{Actions: make(map[string]Counter)}
	for i, name := range actionNames {
		c, err := sumCounter(fw.objs.ActionStats, uint32(i))
		if err != nil {
			return nil, fmt.Errorf("read action_stats[%s]: %w", name, err)
		}
		st.Actions[name] = c
	}
	gen, err := fw.ActiveGeneration()
	if errors.Is(err, ErrNoGeneration) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	var info firewallFwGenInfo
	if err := fw.objs.GenInfo.Lookup(gen, &info); err != nil {
		return nil, fmt.Errorf("read gen_info[%d]: %w", gen, err)
	}
	rules := make([]firewallFwRule, min(int(info.Rules), MaxRules))
	if err := readArray(fw.objs.Rules, gen*uint32(MaxRules), rules); err != nil {
		return nil, fmt.Errorf("read rules: %w", err)
	}
	for i, r := range rules {
		var name firewallFwRuleName
		if err := fw.objs.RuleNames.Lookup(r.Slot, &name); err != nil {
			return nil, fmt.Errorf("read rule_names[%d]: %w", r.Slot, err)
		}
		c, err := sumCounter(fw.objs.RuleStats, r.Slot)
		if err != nil {
			return nil, fmt.Errorf("read rule_stats[%d]: %w", r.Slot, err)
		}
		set, id, _ := strings.Cut(cString(name.Name[:]), "/")
		rs := RuleStats{
			Index: i, RuleSet: set, ID: id, Action: "pass",
			DryRun: r.Flags&uint8(firewallFwRuleFlagFW_RULE_DRY_RUN) != 0, Counter: c,
		}
		switch r.Action {
		case uint8(firewallFwActionFW_ACTION_DROP):
			rs.Action = "drop"
		case uint8(firewallFwActionFW_ACTION_RATE_LIMIT):
			rs.Action = "rate-limit"
			l, err := sumCounter(fw.objs.RuleLimited, r.Slot)
			if err != nil {
				return nil, fmt.Errorf("read rule_limited[%d]: %w", r.Slot, err)
			}
			rs.Limited = l
			if r.Limit.Per == uint8(firewallFwLimitPerFW_PER_SOURCE) {
				if rs.Sources, err = fw.sourceLimitStats(r.Slot); err != nil {
					return nil, err
				}
			}
		}
		st.Rules = append(st.Rules, rs)
	}
	return st, nil
}

// sourceLimitStats sums rl_src_stats[slot] over CPUs: zero from a pinned
// firewall of a version without the map.
func (fw *Firewall) sourceLimitStats(slot uint32) (SourceLimitStats, error) {
	m := fw.pinnedMap(&fw.objs.RlSrcStats, "rl_src_stats")
	if m == nil {
		return SourceLimitStats{}, nil
	}
	var per []firewallFwRlSrcStat
	if err := m.Lookup(slot, &per); err != nil {
		return SourceLimitStats{}, fmt.Errorf("read rl_src_stats[%d]: %w", slot, err)
	}
	var st SourceLimitStats
	for _, p := range per {
		st.BucketPackets += p.Checked
		st.BucketsCreated += p.Created
	}
	return st, nil
}

// pinnedMap returns *m, or opens the pinned map name into it (OpenPinned
// opens only the maps every version has; Close closes this one too). Nil
// when it is not pinned.
func (fw *Firewall) pinnedMap(m **ebpf.Map, name string) *ebpf.Map {
	if *m == nil {
		if pinned, err := ebpf.LoadPinnedMap(filepath.Join(fw.dir, name), &ebpf.LoadPinOptions{ReadOnly: true}); err == nil {
			*m = pinned
		}
	}
	return *m
}

func sumCounter(m *ebpf.Map, key uint32) (Counter, error) {
	var per []firewallFwCounter
	if err := m.Lookup(key, &per); err != nil {
		return Counter{}, err
	}
	var c Counter
	for _, p := range per {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
	}
	return c, nil
}

// State describes what is attached and enforced on an interface.
type State struct {
	Interface  string     `json:"interface"`
	PinDir     string     `json:"pinDir"`
	Attached   bool       `json:"attached"`
	ProgramID  uint32     `json:"programId,omitempty"`
	Mode       AttachMode `json:"mode,omitempty"`
	Generation int        `json:"generation"`
	Seq        uint64     `json:"applySeq"`
	AppliedAt  time.Time  `json:"appliedAt"`
	Digest     string     `json:"digest"`
	Rules      int        `json:"rules"`
	RuleSets   []string   `json:"ruleSets"`
	// Tables says how each address field is looked up: "lpm" (kernel LPM
	// trie) or "range" (big-set range table); fields no rule matches on
	// are left out.
	Tables map[string]string `json:"tables,omitempty"`
	// SourceBuckets is the size of the per-source rate-limit buckets' LRU.
	SourceBuckets int `json:"sourceBuckets"`
	// SourceSketchLines is the size of the sketch per-source limits count
	// packets in (64 bytes a line); 0 from a version without one.
	SourceSketchLines int `json:"sourceSketchLines,omitempty"`
	// Sampling is the drop sampling and its readers.
	Sampling *SamplingStatus `json:"sampling,omitempty"`
}

// State reads the firewall's state from the pinned objects.
func (fw *Firewall) State() (*State, error) {
	s := &State{Interface: fw.iface, PinDir: fw.dir, Generation: -1, SourceBuckets: fw.SourceBuckets(),
		SourceSketchLines: fw.SourceSketchLines()}
	sampling, err := fw.Sampling()
	if err != nil {
		return nil, err
	}
	s.Sampling = sampling
	if l, err := link.LoadPinnedLink(filepath.Join(fw.dir, linkPin), nil); err == nil {
		if info, err := l.Info(); err == nil {
			s.Attached, s.ProgramID = true, uint32(info.Program)
		}
		l.Close()
		s.Mode = currentMode(fw.iface)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load pinned link: %w", err)
	}
	gen, err := fw.ActiveGeneration()
	if errors.Is(err, ErrNoGeneration) {
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	var info firewallFwGenInfo
	if err := fw.objs.GenInfo.Lookup(gen, &info); err != nil {
		return nil, fmt.Errorf("read gen_info[%d]: %w", gen, err)
	}
	s.Generation, s.Seq, s.Rules = int(gen), info.Seq, int(info.Rules)
	s.AppliedAt = time.Unix(0, int64(info.AppliedUnixNs)).UTC()
	s.Digest = hex.EncodeToString(info.Digest[:])
	s.Tables = map[string]string{}
	for _, f := range []struct {
		name      string
		used, big uint32
		bigName   string
	}{
		{"src4", fieldSrc, fieldSrc4Range, "range"}, {"src6", fieldSrc, fieldSrc6Range, "range"},
		{"dst4", fieldDst, fieldDst4Range, "range"}, {"dst6", fieldDst, fieldDst6Range, "range"},
	} {
		switch {
		case info.Fields&f.big != 0:
			s.Tables[f.name] = f.bigName
		case info.Fields&f.used != 0:
			s.Tables[f.name] = "lpm"
		}
	}
	st, err := fw.Stats()
	if err != nil {
		return nil, err
	}
	for _, r := range st.Rules {
		if len(s.RuleSets) == 0 || s.RuleSets[len(s.RuleSets)-1] != r.RuleSet {
			s.RuleSets = append(s.RuleSets, r.RuleSet)
		}
	}
	return s, nil
}

// SetPolicy sets what happens to frames the parser cannot read and to
// non-IP frames (both pass by default).
func (fw *Firewall) SetPolicy(dropParseErrors, dropNonIP bool) error {
	var s firewallFwSettings
	if dropParseErrors {
		s.ParseErrorAction = uint32(firewallFwActionFW_ACTION_DROP)
	}
	if dropNonIP {
		s.NonIpAction = uint32(firewallFwActionFW_ACTION_DROP)
	}
	if err := fw.objs.Settings.Put(uint32(0), &s); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	return nil
}
