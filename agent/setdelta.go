package agent

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	"github.com/xdpfw/xdpfw/proto"
)

// maxSetDelta bounds the prefixes setDeltas compares: beyond it, an
// incremental update would save little over a whole compile.
const maxSetDelta = 1 << 16

// setDelta is how the members of one prefix set changed from the version
// of its rule set that the firewalls enforce to the one being applied.
type setDelta struct {
	ruleSet, set string
	// added and removed are disjoint, each sorted (by address family,
	// address, then length) and without duplicates.
	added, removed []netip.Prefix
}

func (d setDelta) String() string {
	return fmt.Sprintf("%s/%s +%d -%d", d.ruleSet, d.set, len(d.added), len(d.removed))
}

// setDeltas compares the rule sets the firewalls enforce (prev, by name)
// with those about to be applied (next), both as stored: big sets are
// chunk manifests, not prefixes. When they differ only in the members of
// their sets, it returns each changed set's added and removed prefixes and
// incremental true; otherwise (a rule, a mode, a rule set or a set's name
// changed, or nothing was applied before) incremental is false and only a
// whole compile will do.
//
// Chunks are immutable and named by their content's hash, so a chunk in
// both versions holds the same prefixes in both: only the chunks in one
// version and not the other are read. A one-prefix change of a
// million-prefix set reads the one or two chunks it rewrote (a few
// thousand prefixes), never the set; over maxSetDelta prefixes to compare
// (a set replaced) it gives up, with incremental false. chunk returns a
// cached chunk's prefixes (checked when fetched); a chunk it lacks is an
// error.
func setDeltas(prev map[string]proto.RuleSet, next []proto.RuleSet, chunk func(hash string) ([]string, bool)) (deltas []setDelta, incremental bool, err error) {
	if len(prev) == 0 || len(prev) != len(next) {
		return nil, false, nil
	}
	compared := 0
	for _, n := range next {
		p, ok := prev[n.Name]
		if !ok || !sameButMembers(p, n) {
			return nil, false, nil
		}
		for _, name := range sortedSetNames(n.Sets) {
			old, cur := p.Sets[name], n.Sets[name]
			// Prefixes only in the old version and only in the new one:
			// those of the chunks one version names and the other does
			// not, and the inline prefixes of a small set.
			gone, err := chunkPrefixes(onlyIn(old.Chunks, cur.Chunks), chunk, &compared)
			if err != nil {
				return nil, false, fmt.Errorf("set %s/%s: %w", n.Name, name, err)
			}
			come, err := chunkPrefixes(onlyIn(cur.Chunks, old.Chunks), chunk, &compared)
			if err != nil {
				return nil, false, fmt.Errorf("set %s/%s: %w", n.Name, name, err)
			}
			oldInline, curInline := old.Prefixes, cur.Prefixes
			if slices.Equal(oldInline, curInline) {
				oldInline, curInline = nil, nil
			}
			if compared += len(oldInline) + len(curInline); compared > maxSetDelta {
				return nil, false, nil
			}
			gone = append(gone, oldInline...)
			come = append(come, curInline...)
			d := setDelta{ruleSet: n.Name, set: name}
			if d.removed, d.added, err = prefixDiff(gone, come); err != nil {
				return nil, false, fmt.Errorf("set %s/%s: %w", n.Name, name, err)
			}
			if len(d.added) > 0 || len(d.removed) > 0 {
				deltas = append(deltas, d)
			}
		}
	}
	return deltas, true, nil
}

// chunkPrefixes returns the prefixes of the chunks named, adding their
// count to compared; nothing once compared is over maxSetDelta.
func chunkPrefixes(hashes []string, chunk func(hash string) ([]string, bool), compared *int) ([]string, error) {
	parts := make([][]string, len(hashes))
	for i, h := range hashes {
		ps, ok := chunk(h)
		if !ok {
			return nil, fmt.Errorf("chunk %s is not cached", h)
		}
		parts[i] = ps
		*compared += len(ps)
	}
	if *compared > maxSetDelta {
		return nil, nil
	}
	return slices.Concat(parts...), nil
}

// sameButMembers says whether two versions of a rule set differ at most
// in the members of their sets: the same sets by name, everything else
// equal.
func sameButMembers(a, b proto.RuleSet) bool {
	if len(a.Sets) != len(b.Sets) {
		return false
	}
	for name := range a.Sets {
		if _, ok := b.Sets[name]; !ok {
			return false
		}
	}
	a.Sets, b.Sets = nil, nil
	return reflect.DeepEqual(a, b)
}

func sortedSetNames(sets map[string]proto.PrefixSet) []string {
	names := make([]string, 0, len(sets))
	for name := range sets {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// onlyIn returns the hashes of a that b lacks.
func onlyIn(a, b []string) []string {
	if len(a) == 0 {
		return nil
	}
	in := make(map[string]bool, len(b))
	for _, h := range b {
		in[h] = true
	}
	var out []string
	for _, h := range a {
		if !in[h] {
			out = append(out, h)
		}
	}
	return out
}

// prefixDiff returns the prefixes of gone that come lacks (removed) and
// those of come that gone lacks (added), each sorted and without
// duplicates. Prefixes compare parsed, not as text.
func prefixDiff(gone, come []string) (removed, added []netip.Prefix, err error) {
	g, err := prefixSet(gone)
	if err != nil {
		return nil, nil, err
	}
	c, err := prefixSet(come)
	if err != nil {
		return nil, nil, err
	}
	for p := range g {
		if !c[p] {
			removed = append(removed, p)
		}
	}
	for p := range c {
		if !g[p] {
			added = append(added, p)
		}
	}
	slices.SortFunc(removed, comparePrefix)
	slices.SortFunc(added, comparePrefix)
	return removed, added, nil
}

func prefixSet(ss []string) (map[netip.Prefix]bool, error) {
	m := make(map[netip.Prefix]bool, len(ss))
	for _, s := range ss {
		p, err := proto.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		m[p] = true
	}
	return m, nil
}

// comparePrefix orders IPv4 before IPv6, then by address, then shorter
// first.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
