package bpf

import (
	"errors"
	"fmt"
	"github.com/xdpfw/xdpfw/bpf/reference"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/xdpfw/xdpfw/proto"
)

// withRandomPrefixes adds n random prefixes to a generator's pool: IPv4 in
// 198.18.0.0/15 (/8 to /32, so that changes span one /16, several, or
// part of one) and IPv6 in 2001:db8::/32 (/16 to /128).
func withRandomPrefixes(g *ruleGen, n int) {
	for range n {
		if g.r.IntN(3) > 0 {
			a := 198<<24 | 18<<16 | g.r.Uint32N(1<<17)
			bits := []int{8, 14, 15, 16, 17, 20, 24, 28, 31, 32, 32, 32}[g.r.IntN(12)]
			p, _ := netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}).Prefix(bits)
			g.prefixes = append(g.prefixes, p)
			continue
		}
		var b [16]byte
		b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
		for i := 4; i < 16; i++ {
			b[i] = byte(g.r.IntN(4)) // few distinct values: nested and adjacent
		}
		bits := []int{16, 32, 33, 40, 47, 48, 56, 64, 65, 96, 128}[g.r.IntN(11)]
		p, _ := netip.AddrFrom16(b).Prefix(bits)
		g.prefixes = append(g.prefixes, p)
	}
}

// randomDelta changes a few members of one set of one rule set, in place,
// and returns the change as a SetDelta.
func randomDelta(g *ruleGen, sets []proto.RuleSet) SetDelta {
	rs := &sets[g.r.IntN(len(sets))]
	name := fmt.Sprintf("s%d", g.r.IntN(2))
	members := map[netip.Prefix]bool{}
	for _, s := range rs.Sets[name].Prefixes {
		members[netip.MustParsePrefix(s)] = true
	}
	d := SetDelta{RuleSet: rs.Name, Set: name}
	touched := map[netip.Prefix]bool{}
	for range 1 + g.r.IntN(6) {
		p := g.prefix()
		if touched[p] {
			continue
		}
		touched[p] = true
		if members[p] {
			delete(members, p)
			d.Removed = append(d.Removed, p)
		} else {
			members[p] = true
			d.Added = append(d.Added, p)
		}
	}
	var list []string
	for p := range members {
		list = append(list, p.String())
	}
	slices.Sort(list)
	rs.Sets[name] = proto.PrefixSet{Prefixes: list}
	return d
}

// cloneSets copies rule sets deeply enough for randomDelta.
func cloneSets(sets []proto.RuleSet) []proto.RuleSet {
	out := slices.Clone(sets)
	for i := range out {
		m := make(map[string]proto.PrefixSet, len(out[i].Sets))
		for k, v := range out[i].Sets {
			m[k] = v
		}
		out[i].Sets = m
	}
	return out
}

// sameTables checks that two Compiled values hold the same tables, up to
// the numbering of their vectors: what Apply writes, by content.
func sameTables(t *testing.T, what string, got, want *Compiled) {
	t.Helper()
	if got.Digest != want.Digest {
		t.Fatalf("%s: digest %x, a whole compile gives %x", what, got.Digest[:6], want.Digest[:6])
	}
	if got.Fields != want.Fields {
		t.Fatalf("%s: fields %#x, a whole compile gives %#x", what, got.Fields, want.Fields)
	}
	vec := func(c *Compiled, id VecID) Bitvec { return c.Vecs[id] }
	tries := []struct {
		name string
		g, w map[netip.Prefix]VecID
	}{{"src4", got.Src4, want.Src4}, {"dst4", got.Dst4, want.Dst4}, {"src6", got.Src6, want.Src6}, {"dst6", got.Dst6, want.Dst6}}
	for _, tr := range tries {
		if len(tr.g) != len(tr.w) {
			t.Fatalf("%s: %s has %d prefixes, a whole compile %d", what, tr.name, len(tr.g), len(tr.w))
		}
		for p, id := range tr.w {
			gid, ok := tr.g[p]
			if !ok || vec(got, gid) != vec(want, id) {
				t.Fatalf("%s: %s[%v] differs from a whole compile (present %v)", what, tr.name, p, ok)
			}
		}
	}
	ranges := []struct {
		name string
		g, w *range4
	}{{"src4 range", got.Src4Range, want.Src4Range}, {"dst4 range", got.Dst4Range, want.Dst4Range}}
	for _, r := range ranges {
		if (r.g == nil) != (r.w == nil) {
			t.Fatalf("%s: %s present %v, a whole compile %v", what, r.name, r.g != nil, r.w != nil)
		}
		if r.g == nil {
			continue
		}
		for i := range r4Directs {
			gp, wp := r.g.partsOf(i), r.w.partsOf(i)
			if len(gp) != len(wp) {
				t.Fatalf("%s: %s /16 %d: %d parts, a whole compile %d", what, r.name, i, len(gp), len(wp))
			}
			for k := range wp {
				if gp[k].start != wp[k].start || vec(got, gp[k].id) != vec(want, wp[k].id) {
					t.Fatalf("%s: %s /16 %d part %d differs from a whole compile", what, r.name, i, k)
				}
			}
		}
	}
	if (got.Src6Range == nil) != (want.Src6Range == nil) || (got.Dst6Range == nil) != (want.Dst6Range == nil) {
		t.Fatalf("%s: IPv6 range tables present differ from a whole compile", what)
	}
}

// TestUpdateMatchesCompile: a chain of random set changes applied with
// Update gives, after every step, the tables and digest a whole compile of
// the changed rule sets gives, and classifies random packets the same;
// for tries, range tables, and fields that cross the threshold between
// them.
func TestUpdateMatchesCompile(t *testing.T) {
	for seed := uint64(1); seed <= 24; seed++ {
		g := newRuleGen(seed)
		withRandomPrefixes(g, 60)
		sets := g.ruleSets(1+g.r.IntN(2), 8)
		// Rules that name the sets in either field, so that every change
		// shows.
		for i := range sets {
			sets[i].Rules = append(sets[i].Rules,
				proto.Rule{ID: "by-src", Action: proto.ActionDrop, Src: []string{"set:s0"}},
				proto.Rule{ID: "by-dst", Action: proto.ActionDrop, Protocol: proto.ProtoTCP, Dst: []string{"set:s1"}})
		}
		opts := CompileOptions{BigSetThreshold: []int{-1, 1, 6}[seed%3]}
		c, err := CompileWith(sets, "", opts)
		if err != nil {
			t.Fatalf("seed %d: compile: %v", seed, err)
		}
		for step := range 25 {
			next := cloneSets(sets)
			d := randomDelta(g, next)
			u, err := c.Update([]SetDelta{d})
			if err != nil {
				t.Fatalf("seed %d step %d: update %s: %v", seed, step, d, err)
			}
			whole, err := CompileWith(next, "", opts)
			if err != nil {
				t.Fatalf("seed %d step %d: compile: %v", seed, step, err)
			}
			what := fmt.Sprintf("seed %d step %d (%s, threshold %d)", seed, step, d, opts.BigSetThreshold)
			sameTables(t, what, u, whole)
			for range 200 {
				p := g.packet()
				if got, want := u.Classify(p), whole.Classify(p); !reflect.DeepEqual(got, want) {
					t.Fatalf("%s: packet %+v: updated %+v, compiled %+v", what, p, got, want)
				}
			}
			// The one updated from is unchanged.
			if step%5 == 0 {
				before, err := CompileWith(sets, "", opts)
				if err != nil {
					t.Fatal(err)
				}
				sameTables(t, what+", the original", c, before)
			}
			sets = next
			if step%7 == 6 {
				c = whole // a new lineage now and then
			} else {
				c = u
			}
		}
	}
}

// TestUpdateRefusesWhatDoesNotFit: a delta that does not match the
// compiled members is ErrNeedsCompile, and changes nothing.
func TestUpdateRefusesWhatDoesNotFit(t *testing.T) {
	sets := []proto.RuleSet{{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "web", Mode: proto.ModeDeny,
		Sets:  map[string]proto.PrefixSet{"b": {Prefixes: []string{"198.18.0.0/24", "2001:db8::/48"}}},
		Rules: []proto.Rule{{ID: "b", Action: proto.ActionDrop, Src: []string{"set:b"}}}}}
	c, err := CompileWith(sets, "", CompileOptions{BigSetThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix
	for _, d := range []SetDelta{
		{RuleSet: "web", Set: "b", Added: []netip.Prefix{p("198.18.0.0/24")}},
		{RuleSet: "web", Set: "b", Removed: []netip.Prefix{p("198.18.1.0/24")}},
		{RuleSet: "web", Set: "b", Added: []netip.Prefix{p("2001:db8::/48")}},
		{RuleSet: "web", Set: "b", Removed: []netip.Prefix{p("2001:db8:1::/48")}},
		{RuleSet: "web", Set: "b", Added: []netip.Prefix{p("198.18.2.0/24")}, Removed: []netip.Prefix{p("198.18.2.0/24")}},
		{RuleSet: "web", Set: "nope", Added: []netip.Prefix{p("198.18.2.0/24")}},
		{RuleSet: "web", Set: "b", Added: []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("198.18.2.1"), 24)}},
	} {
		if _, err := c.Update([]SetDelta{d}); !errors.Is(err, ErrNeedsCompile) {
			t.Errorf("update %s: %v, want ErrNeedsCompile", d, err)
		}
	}
	again, err := CompileWith(sets, "", CompileOptions{BigSetThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	sameTables(t, "after refused updates", c, again)
	// A rule set not compiled (not for this interface) changes nothing.
	u, err := c.Update([]SetDelta{{RuleSet: "other", Set: "b", Added: []netip.Prefix{p("198.18.9.0/24")}}})
	if err != nil || u.Digest != c.Digest {
		t.Fatalf("update of another rule set: %v (digest changed %v)", err, err == nil && u.Digest != c.Digest)
	}
}

// TestUpdatesAppliedInTheKernel: a chain of updates applied one after
// another is enforced exactly as the reference classifier says, each apply
// placing only what changed (Incremental: the standby generation is
// prepared after each whole compile), with a whole compile now and then (a
// new lineage: a whole placement again).
func TestUpdatesAppliedInTheKernel(t *testing.T) {
	fw := openTestFirewall(t)
	for _, threshold := range []int{1, 6} {
		g := newRuleGen(uint64(500 + threshold))
		withRandomPrefixes(g, 200)
		sets := g.ruleSets(2, 8)
		for i := range sets {
			sets[i].Rules = append([]proto.Rule{
				{ID: "by-src", Action: proto.ActionDrop, Src: []string{"set:s0"}},
				{ID: "by-dst", Action: proto.ActionDrop, Protocol: proto.ProtoTCP, Dst: []string{"set:s1"}}},
				sets[i].Rules...)
		}
		opts := CompileOptions{BigSetThreshold: threshold}
		c, err := CompileWith(sets, fw.Interface(), opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fw.Apply(c); err != nil {
			t.Fatal(err)
		}
		prepare := func(c *Compiled) {
			t.Helper()
			if _, err := fw.PrepareStandby(c); err != nil {
				t.Fatalf("prepare standby: %v", err)
			}
		}
		prepare(c)
		incremental := 0
		for step := range 30 {
			next := cloneSets(sets)
			d := randomDelta(g, next)
			u, err := c.Update([]SetDelta{d})
			if err != nil {
				t.Fatalf("step %d: update %s: %v", step, d, err)
			}
			if step == 20 {
				if u, err = CompileWith(next, fw.Interface(), opts); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := fw.Apply(u)
			if err != nil {
				t.Fatalf("step %d: apply: %v", step, err)
			}
			if rep.Incremental {
				incremental++
			}
			if step == 20 {
				prepare(u)
			}
			if want := step != 20; rep.Incremental != want && u.Src4Range != nil {
				t.Errorf("threshold %d step %d: incremental apply %v, want %v", threshold, step, rep.Incremental, want)
			}
			ref, err := reference.New(next, "")
			if err != nil {
				t.Fatal(err)
			}
			for range 300 {
				p := g.packet()
				r := ref.Classify(p)
				if got := run(t, fw, frameFor(p).Bytes()); (got == xdpDrop) != r.Drop {
					t.Fatalf("threshold %d step %d (%s) packet %+v: verdict %d, reference %+v", threshold, step, d, p, got, r)
				}
			}
			sets, c = next, u
		}
		if incremental == 0 {
			t.Errorf("threshold %d: no apply was incremental", threshold)
		}
	}
}

// TestMergeBlocksMatchesMergeKeys: changes to keys kept in blocks give
// the keys a merge of one slice gives, in the very blocks (keys and
// digests) that cutting the result whole gives: the digest of a set does
// not depend on how it was reached.
func TestMergeBlocksMatchesMergeKeys(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for round := range 100 {
		n := r.IntN(5 * memberBlockAverage)
		keys := make([]key4, 0, n)
		for len(keys) < n {
			keys = append(keys, key4(r.Uint32N(1<<24))<<16|32)
		}
		slices.Sort(keys)
		keys = slices.Compact(keys)
		blocks, err := codec4.blocks(slices.Clone(keys))
		if err != nil {
			t.Fatal(err)
		}
		in := map[key4]bool{}
		for _, k := range keys {
			in[k] = true
		}
		var add, rm []key4
		changed := map[key4]bool{}
		for range r.IntN([]int{3, 100, 3 * memberBlockAverage}[round%3]) {
			k := key4(r.Uint32N(1<<24))<<16 | 32
			if r.IntN(2) == 0 && len(keys) > 0 {
				k = keys[r.IntN(len(keys))]
			}
			if changed[k] {
				continue // each key changes once
			}
			changed[k] = true
			if in[k] {
				rm = append(rm, k)
			} else {
				add = append(add, k)
			}
		}
		slices.Sort(add)
		slices.Sort(rm)
		want, err := mergeKeys(keys, add, rm, cmpKey4)
		if err != nil {
			t.Fatal(err)
		}
		got, err := codec4.merge(blocks, add, rm)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		whole, err := codec4.blocks(want)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(whole) {
			t.Fatalf("round %d: %d blocks, cutting whole gives %d", round, len(got), len(whole))
		}
		for i := range got {
			if !slices.Equal(got[i].keys, whole[i].keys) || got[i].sum != whole[i].sum || !slices.Equal(got[i].rec, whole[i].rec) {
				t.Fatalf("round %d: block %d differs from cutting whole", round, i)
			}
		}
	}
	// A key added twice or removed that is not there is an error.
	blocks, err := codec4.blocks([]key4{1<<16 | 32, 2<<16 | 32, 3<<16 | 32})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := codec4.merge(blocks, []key4{2<<16 | 32}, nil); err == nil {
		t.Error("adding a member: no error")
	}
	if _, err := codec4.merge(blocks, nil, []key4{4<<16 | 32}); err == nil {
		t.Error("removing a non-member: no error")
	}
}
