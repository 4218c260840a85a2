package flood

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/proto"
)

// Firewall is an xdpfw firewall on the receiving veth holding one named
// set of prefixes, with every packet dropped: by the rule on the set, or by
// the rule after it. It is opened and applied through package bpf's public
// API only, so the benchmark follows whatever table layout bpf chooses.
type Firewall struct {
	FW *bpf.Firewall
	// PinPath is the firewall's private pin path (removed by Close).
	PinPath string
	// Compile and Apply are the times of compiling the rule set and of
	// its first apply; Memory the kernel memory of all the firewall's
	// maps, with both generations holding the set.
	Compile, Apply time.Duration
	Memory         uint64
	// RangeTable says the source prefixes are in a range table (above
	// bpf's threshold), not in the LPM trie.
	RangeTable bool
}

// RuleSet is the benchmark's rule document: one set, one rule that drops
// its members, one that drops the rest (deny mode passes what no rule
// drops, so the second rule is what makes every packet a drop).
func RuleSet(prefixes []netip.Prefix) proto.RuleSet {
	members := make([]string, len(prefixes))
	for i, p := range prefixes {
		members[i] = p.String()
	}
	return proto.RuleSet{
		APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "flood", Mode: proto.ModeDeny,
		Sets: map[string]proto.PrefixSet{"flood": {Prefixes: members}},
		Rules: []proto.Rule{
			{ID: "set", Action: proto.ActionDrop, Src: []string{"set:flood"}},
			{ID: "rest", Action: proto.ActionDrop},
		},
	}
}

// The rate limit of LimitRuleSet: what a DNS server might set per source.
// A spoofed flood's sources each send a packet or so, far within it.
const (
	LimitPPS   = 100
	LimitBurst = 200
)

// DropRuleSet is the plain drop rule the per-source limit is compared with:
// one rule on the flood's protocol and port (UDP to 53), drop.
func DropRuleSet() proto.RuleSet {
	return proto.RuleSet{
		APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "flood", Mode: proto.ModeDeny,
		Rules: []proto.Rule{
			{ID: "dns", Action: proto.ActionDrop, Protocol: proto.ProtoUDP, DstPorts: []proto.PortSpec{"53"}},
		},
	}
}

// LimitRuleSet is the same rule as a per-source rate limit whose packets
// within the limit go on to the next rule, and a rule that drops the rest:
// every packet of the flood (a new source each, within its limit) is
// counted in the limit's sketch, goes on, and is dropped by the second rule.
func LimitRuleSet() proto.RuleSet {
	return proto.RuleSet{
		APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "flood", Mode: proto.ModeDeny,
		Rules: []proto.Rule{
			{ID: "dns", Action: proto.ActionRateLimit, Protocol: proto.ProtoUDP, DstPorts: []proto.PortSpec{"53"},
				RateLimit: &proto.RateLimit{PPS: LimitPPS, Burst: LimitBurst, Per: proto.PerSource, WithinLimit: proto.WithinNext}},
			{ID: "rest", Action: proto.ActionDrop},
		},
	}
}

// NewFirewall opens a firewall on the receiving veth in a fresh pin path
// and applies the rule set of a prefix set (RuleSet) twice, so both
// generations hold it as they do on a host after its second update. It
// does not attach (see Pair.AttachNative).
func NewFirewall(p *Pair, prefixes []netip.Prefix) (*Firewall, error) {
	fw, err := NewFirewallOf(p, RuleSet(prefixes))
	if err != nil {
		return nil, fmt.Errorf("a set of %d prefixes: %w", len(prefixes), err)
	}
	return fw, nil
}

// NewFirewallOf is NewFirewall with any rule set.
func NewFirewallOf(p *Pair, rs proto.RuleSet) (fw *Firewall, err error) {
	dir, err := os.MkdirTemp("/sys/fs/bpf", "xdpfw-flood-")
	if err != nil {
		return nil, fmt.Errorf("make a pin path (needs root and a bpffs at /sys/fs/bpf): %w", err)
	}
	fw = &Firewall{PinPath: dir}
	defer func() {
		if err != nil {
			fw.Close()
			fw = nil
		}
	}()
	// Open checks the interface by name: it must run in the receiver's
	// namespace. Nothing else it does depends on the namespace.
	err = p.InReceiver(func() error {
		var err error
		fw.FW, err = bpf.Open(bpf.Options{PinPath: dir, Interface: ReceiverIface})
		return err
	})
	if err != nil {
		return fw, fmt.Errorf("open xdpfw on %s: %w", ReceiverIface, err)
	}
	start := time.Now()
	c, err := bpf.Compile([]proto.RuleSet{rs}, ReceiverIface)
	if err != nil {
		return fw, fmt.Errorf("compile: %w", err)
	}
	fw.Compile = time.Since(start)
	fw.RangeTable = c.Src4Range != nil || c.Src6Range != nil
	start = time.Now()
	if _, err := fw.FW.Apply(c); err != nil {
		return fw, fmt.Errorf("apply: %w", err)
	}
	fw.Apply = time.Since(start)
	if _, err := fw.FW.Apply(c); err != nil {
		return fw, fmt.Errorf("apply again: %w", err)
	}
	if fw.Memory, err = firewallMemory(fw.FW); err != nil {
		return fw, err
	}
	return fw, nil
}

// Close closes the firewall and removes its pins (maps and all).
func (fw *Firewall) Close() error {
	var errs []error
	if fw.FW != nil {
		errs = append(errs, fw.FW.Close())
	}
	if err := os.RemoveAll(fw.PinPath); err != nil {
		errs = append(errs, fmt.Errorf("remove pin path %s: %w", fw.PinPath, err))
	}
	return errors.Join(errs...)
}

// firewallMemory sums the kernel memory (memlock, as bpftool and
// /proc/PID/fdinfo report it) of every map of a firewall: the maps its
// program uses, the maps pinned in its directory, and every inner map of
// the map-in-map ones, each counted once. It needs nothing of bpf's
// internals, so it follows bpf's layout as that changes.
func firewallMemory(fw *bpf.Firewall) (uint64, error) {
	info, err := fw.Program().Info()
	if err != nil {
		return 0, fmt.Errorf("program info: %w", err)
	}
	ids, ok := info.MapIDs()
	if !ok {
		return 0, errors.New("this kernel does not list a program's maps")
	}
	var maps []*ebpf.Map
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return 0, fmt.Errorf("open map %d: %w", id, err)
		}
		maps = append(maps, m)
	}
	entries, err := os.ReadDir(fw.PinDir())
	if err != nil {
		return 0, fmt.Errorf("list pins: %w", err)
	}
	for _, e := range entries {
		m, err := ebpf.LoadPinnedMap(filepath.Join(fw.PinDir(), e.Name()), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			continue // the link, or not a map
		}
		maps = append(maps, m)
	}
	seen := map[ebpf.MapID]bool{}
	var total uint64
	// maps grows as inner maps are found.
	for i := 0; i < len(maps); i++ {
		m := maps[i]
		mi, err := m.Info()
		if err != nil {
			return 0, fmt.Errorf("map info: %w", err)
		}
		id, ok := mi.ID()
		if !ok {
			return 0, errors.New("this kernel gives maps no IDs")
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		// 0 (not ok) for some empty maps; a kernel without the
		// figure at all fails below.
		mem, _ := mi.Memlock()
		total += mem
		if t := m.Type(); t != ebpf.ArrayOfMaps && t != ebpf.HashOfMaps {
			continue
		}
		// A lookup from user space in a map of maps gives the inner
		// map's ID.
		var key []byte
		var inner uint32
		it := m.Iterate()
		for it.Next(&key, &inner) {
			im, err := ebpf.NewMapFromID(ebpf.MapID(inner))
			if err != nil {
				return 0, fmt.Errorf("open inner map %d of %s: %w", inner, mi.Name, err)
			}
			maps = append(maps, im)
		}
		if err := it.Err(); err != nil {
			return 0, fmt.Errorf("list inner maps of %s: %w", mi.Name, err)
		}
	}
	if total == 0 {
		return 0, errors.New("no map memory in /proc/self/fdinfo (memlock)")
	}
	return total, nil
}
