package agent

import (
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/xdpfw/xdpfw/proto"
)

// storedSets stores rule sets as the control plane does (big sets as
// chunk manifests) and keeps their chunks decoded, as the agent caches
// them.
type storedSets struct {
	chunks map[string][]string
	reads  int // prefixes handed out by chunk
}

func (s *storedSets) store(t *testing.T, sets map[string][]string, rules ...proto.Rule) proto.RuleSet {
	t.Helper()
	rs := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "edge", Mode: proto.ModeDeny,
		Sets: map[string]proto.PrefixSet{}}
	for name, ps := range sets {
		rs.Sets[name] = proto.PrefixSet{Prefixes: ps}
		rs.Rules = append(rs.Rules, proto.Rule{ID: "r-" + name, Action: proto.ActionDrop, Src: []string{"set:" + name}})
	}
	slices.SortFunc(rs.Rules, func(a, b proto.Rule) int { return strings.Compare(a.ID, b.ID) })
	rs.Rules = append(rs.Rules, rules...)
	stored, chunks, err := rs.ChunkSets()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		p, err := proto.DecodeChunk(c.Hash, c.Data)
		if err != nil {
			t.Fatal(err)
		}
		s.chunks[c.Hash] = p
	}
	return stored
}

func (s *storedSets) chunk(h string) ([]string, bool) {
	p, ok := s.chunks[h]
	s.reads += len(p)
	return p, ok
}

func mustPrefixes(t *testing.T, ss ...string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func deltaOf(t *testing.T, s *storedSets, prev, next proto.RuleSet) ([]setDelta, bool) {
	t.Helper()
	s.reads = 0
	d, ok, err := setDeltas(map[string]proto.RuleSet{prev.Name: prev}, []proto.RuleSet{next}, s.chunk)
	if err != nil {
		t.Fatal(err)
	}
	return d, ok
}

func TestSetDeltasOfOnePrefixReadOnlyTheChunksThatChanged(t *testing.T) {
	s := &storedSets{chunks: map[string][]string{}}
	base := prefixes4(100_000, 0)
	v1 := s.store(t, map[string][]string{"big": base, "small": {"192.0.2.0/24"}})
	v2 := s.store(t, map[string][]string{"big": append(slices.Clone(base), "198.18.0.1/32"), "small": {"192.0.2.0/24"}})
	v3 := s.store(t, map[string][]string{"big": slices.Delete(slices.Clone(base), 5000, 5001), "small": {"192.0.2.0/24"}})

	d, ok := deltaOf(t, s, v1, v2)
	if !ok || len(d) != 1 || d[0].set != "big" || d[0].ruleSet != "edge" ||
		!slices.Equal(d[0].added, mustPrefixes(t, "198.18.0.1/32")) || len(d[0].removed) != 0 {
		t.Fatalf("one prefix added: %v, incremental %v", d, ok)
	}
	// One or two chunks of each version, of some 50 chunks.
	if s.reads > 4*8192 {
		t.Errorf("read %d prefixes of chunks for a one-prefix change", s.reads)
	}
	d, ok = deltaOf(t, s, v2, v1)
	if !ok || len(d) != 1 || len(d[0].added) != 0 || !slices.Equal(d[0].removed, mustPrefixes(t, "198.18.0.1/32")) {
		t.Fatalf("one prefix removed: %v, incremental %v", d, ok)
	}
	d, ok = deltaOf(t, s, v1, v3)
	if !ok || len(d) != 1 || !slices.Equal(d[0].removed, mustPrefixes(t, base[5000])) || len(d[0].added) != 0 {
		t.Fatalf("a prefix in the middle removed: %v, incremental %v", d, ok)
	}
	if d, ok = deltaOf(t, s, v1, v1); !ok || len(d) != 0 || s.reads != 0 {
		t.Fatalf("the same version: %v, incremental %v, %d prefixes read", d, ok, s.reads)
	}
}

func TestSetDeltasOfSmallSetsAndSetsThatGrowPastTheChunkThreshold(t *testing.T) {
	s := &storedSets{chunks: map[string][]string{}}
	v1 := s.store(t, map[string][]string{"a": {"192.0.2.0/24", "198.51.100.0/24"}, "b": {"2001:db8::/32"}})
	v2 := s.store(t, map[string][]string{"a": {"192.0.2.0/24", "203.0.113.0/24"}, "b": {"2001:db8::/32"}})
	d, ok := deltaOf(t, s, v1, v2)
	if !ok || len(d) != 1 || d[0].set != "a" || !slices.Equal(d[0].added, mustPrefixes(t, "203.0.113.0/24")) ||
		!slices.Equal(d[0].removed, mustPrefixes(t, "198.51.100.0/24")) {
		t.Fatalf("small set: %v, incremental %v", d, ok)
	}
	// Inline to chunks: the set's old prefixes are among the new ones.
	grown := append(prefixes4(proto.ChunkThreshold+10, 0), "192.0.2.0/24", "198.51.100.0/24")
	v3 := s.store(t, map[string][]string{"a": grown, "b": {"2001:db8::/32"}})
	if len(v3.Sets["a"].Chunks) == 0 {
		t.Fatal("the grown set is not chunked")
	}
	d, ok = deltaOf(t, s, v1, v3)
	if !ok || len(d) != 1 || len(d[0].added) != proto.ChunkThreshold+10 || len(d[0].removed) != 0 {
		t.Fatalf("set grown into chunks: %d deltas, incremental %v", len(d), ok)
	}
}

func TestSetDeltasNeedAWholeCompile(t *testing.T) {
	s := &storedSets{chunks: map[string][]string{}}
	sets := map[string][]string{"big": prefixes4(10_000, 0)}
	v1 := s.store(t, sets)
	cases := map[string]struct {
		prev map[string]proto.RuleSet
		next proto.RuleSet
	}{
		"nothing applied before": {nil, v1},
		"a rule changed": {map[string]proto.RuleSet{"edge": v1},
			s.store(t, sets, proto.Rule{ID: "ssh", Action: proto.ActionDrop, Protocol: proto.ProtoTCP, DstPorts: []proto.PortSpec{"22"}})},
		"a set renamed":    {map[string]proto.RuleSet{"edge": v1}, s.store(t, map[string][]string{"other": prefixes4(10_000, 0)})},
		"another rule set": {map[string]proto.RuleSet{"other": v1}, v1},
		"the set replaced": {map[string]proto.RuleSet{"edge": s.store(t, map[string][]string{"big": prefixes4(40_000, 0)})},
			s.store(t, map[string][]string{"big": prefixes4(40_000, 100_000)})},
	}
	for name, c := range cases {
		d, ok, err := setDeltas(c.prev, []proto.RuleSet{c.next}, s.chunk)
		if err != nil || ok || d != nil {
			t.Errorf("%s: %v, incremental %v, %v", name, d, ok, err)
		}
	}
	// A chunk of the applied version that is not cached is an error.
	v2 := s.store(t, map[string][]string{"big": prefixes4(10_001, 0)})
	for _, h := range v1.Sets["big"].Chunks {
		delete(s.chunks, h)
	}
	if _, ok, err := setDeltas(map[string]proto.RuleSet{"edge": v1}, []proto.RuleSet{v2}, s.chunk); err == nil || ok {
		t.Fatalf("a missing chunk: incremental %v, %v", ok, err)
	}
}

// Random changes of a big set: the deltas are exactly the difference of
// the two versions' members.
func TestSetDeltasMatchTheDifferenceOfTheMembers(t *testing.T) {
	s := &storedSets{chunks: map[string][]string{}}
	rng := rand.New(rand.NewPCG(1, 2))
	members := map[string]bool{}
	for _, p := range prefixes4(30_000, 0) {
		members[p] = true
	}
	list := func() []string {
		var out []string
		for p := range members {
			out = append(out, p)
		}
		return out
	}
	prev := s.store(t, map[string][]string{"big": list()})
	for round := range 20 {
		before := maps.Clone(members)
		for range rng.IntN(20) + 1 {
			p := prefixes4(1, rng.IntN(40_000))[0]
			if members[p] {
				delete(members, p)
			} else {
				members[p] = true
			}
		}
		next := s.store(t, map[string][]string{"big": list()})
		d, ok := deltaOf(t, s, prev, next)
		if !ok {
			t.Fatalf("round %d: not incremental", round)
		}
		var wantAdded, wantRemoved []netip.Prefix
		for p := range members {
			if !before[p] {
				wantAdded = append(wantAdded, netip.MustParsePrefix(p))
			}
		}
		for p := range before {
			if !members[p] {
				wantRemoved = append(wantRemoved, netip.MustParsePrefix(p))
			}
		}
		slices.SortFunc(wantAdded, comparePrefix)
		slices.SortFunc(wantRemoved, comparePrefix)
		var gotAdded, gotRemoved []netip.Prefix
		if len(d) == 1 {
			gotAdded, gotRemoved = d[0].added, d[0].removed
		}
		if len(d) > 1 || !slices.Equal(gotAdded, wantAdded) || !slices.Equal(gotRemoved, wantRemoved) {
			t.Fatalf("round %d: deltas %v, want +%v -%v", round, d, wantAdded, wantRemoved)
		}
		prev = next
	}
}
