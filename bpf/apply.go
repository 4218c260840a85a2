package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"github.com/xdpfw/xdpfw/proto"
)

// ApplyReport says what an apply changed.
type ApplyReport struct {
	// Generation is the generation now active (0 or 1).
	Generation int
	// Writes counts map entries written or deleted, per map.
	Writes map[string]int
	// Incremental is set when the apply placed only what the updates
	// since the generation was last written changed.
	Incremental bool
	// DocBytes is the size of the stored copy of the applied rule sets
	// (rewritten whole on every apply; not a policy entry, not in Writes).
	DocBytes int
	// Rules and Vectors size the applied generation.
	Rules, Vectors int
	Digest         [32]byte
	Duration       time.Duration
	// Steps is where Duration went.
	Steps ApplySteps
}

// ApplySteps times the steps of an apply: reading what the generations
// hold and placing the new content (Place), writing the policy tables
// (Tables) and the stored rule sets (Docs), and the flip until packets see
// it (Flip).
type ApplySteps struct {
	Place, Tables, Docs, Flip time.Duration
}

// TotalWrites is the number of map entries the apply wrote or deleted.
func (r *ApplyReport) TotalWrites() int {
	n := 0
	for _, w := range r.Writes {
		n += w
	}
	return n
}

// genState is the content of one generation, in kernel vector ids.
type genState struct {
	info                   firewallFwGenInfo
	vecs                   []Bitvec // MaxVectors entries
	src4, dst4, src6, dst6 map[netip.Prefix]uint32
	sport, dport           []uint32
	proto                  []uint32
	tcpflags, icmptype     []uint32
	rules                  []firewallFwRule // MaxRules entries
	// vecWrites lists the vector ids place changed (to write).
	vecWrites []uint32
	// src4r and dst4r are the field's range tables, nil when the field
	// uses the LPM trie for IPv4.
	src4r, dst4r *range4State
	// src6r and dst6r are the field's IPv6 range tables, nil when the
	// field uses the LPM trie for IPv6.
	src6r, dst6r *range6State
	// from names the Compiled written (zero: unknown, read back).
	from compiledFrom
}

// compiledFrom names a Compiled: its compile and how many updates since.
type compiledFrom struct{ lineage, epoch uint64 }

// errPlaceWhole says an apply must place every table whole.
var errPlaceWhole = errors.New("the apply must place every table whole")

// changesSince returns what the updates of c since from changed in the
// IPv4 range tables (each field's /16s, sorted), or nil when a generation
// written from from must be rewritten whole: another compile, or more
// updates ago than c remembers.
func changesSince(c *Compiled, from compiledFrom) *tableChanges {
	if c.inc == nil || from.lineage != c.inc.lineage || from.epoch > c.inc.epoch {
		return nil
	}
	u := &tableChanges{epoch: c.inc.epoch}
	seen := 0
	for _, ch := range c.inc.changes {
		if ch.epoch <= from.epoch {
			continue
		}
		seen++
		for f := range 2 {
			u.slash16[f] = append(u.slash16[f], ch.slash16[f]...)
			u.all4[f] = u.all4[f] || ch.all4[f]
			u.v6[f] = u.v6[f] || ch.v6[f]
		}
	}
	if uint64(seen) != c.inc.epoch-from.epoch {
		return nil
	}
	for f := range 2 {
		slices.Sort(u.slash16[f])
		u.slash16[f] = slices.Compact(u.slash16[f])
	}
	return u
}

// Apply makes c the active rule set: it writes c into the inactive
// generation (only the entries that differ from what that generation holds),
// then flips the active generation in one map update. A packet sees the old
// rule set or the new one, never a mix. On error nothing changes for
// packets: the active generation is untouched.
func (fw *Firewall) Apply(c *Compiled) (*ApplyReport, error) {
	rep, err := fw.Enforce(c)
	if err != nil {
		return nil, err
	}
	if err := fw.settle(rep); err != nil {
		return nil, err
	}
	return rep, nil
}

// Enforce is Apply without its wait at the end: it returns as soon as
// packets see c. The kernel returns from the update that flips the
// generation only after an RCU grace period (about 10 ms on an idle
// machine, and more on a busy one), which guarantees no program still runs
// on the generation it replaced; Enforce leaves that wait, and freeing the
// counter slots of the rules c dropped, to Settle. Whatever writes a
// generation (Apply, Enforce, PrepareStandby, Close) settles first, so
// calling Settle is never needed for correctness: call it off the path of
// the change (after reporting it) to keep the wait out of the next one.
func (fw *Firewall) Enforce(c *Compiled) (*ApplyReport, error) {
	if err := fw.Settle(); err != nil {
		return nil, err
	}
	return fw.apply(c, fw.flip)
}

// Settle waits until no program runs on the generation the last flip
// replaced, then frees the counter slots of the rules that flip dropped.
// It returns at once when there is nothing to wait for.
func (fw *Firewall) Settle() error {
	return fw.settle(&ApplyReport{Writes: map[string]int{}})
}

// settle is Settle counting the slot releases in rep.
func (fw *Firewall) settle(rep *ApplyReport) error {
	var err error
	if fw.settling != nil {
		err = <-fw.settling
		fw.settling = nil
		if err != nil {
			// The flip took effect (it is only waited for once gen_sel
			// names the new generation), so this is the kernel saying
			// something unexpected after it: report it, release anyway.
			err = fmt.Errorf("wait for the grace period of the last flip: %w", err)
		}
	}
	if fw.removed != nil {
		plan := fw.removed
		fw.removed = nil
		err = errors.Join(err, fw.releaseSlots(plan, rep))
	}
	return err
}

// PrepareStandby writes c, which must be what the active generation holds
// (the last Apply's), into the inactive generation as well, without making
// it active. A generation otherwise holds what was applied two changes
// ago, so the first Apply of an update of a whole compile would place
// every table whole (tens of milliseconds at a million prefixes); after
// PrepareStandby it writes only what the update changed. It does nothing
// when c is not what is active. Call it after an Apply of a whole
// compile, off the path of the change that was applied.
func (fw *Firewall) PrepareStandby(c *Compiled) (*ApplyReport, error) {
	if err := fw.Settle(); err != nil {
		return nil, err
	}
	active, err := fw.ActiveGeneration()
	if err != nil || c.inc == nil {
		return nil, err
	}
	cur := fw.cache[active]
	if cur == nil || cur.from != (compiledFrom{c.inc.lineage, c.inc.epoch}) {
		return nil, nil
	}
	// The flip is left out: the active generation stays. Its rules are
	// c's, so no counter slot is released.
	return fw.apply(c, func(uint32) error { return nil })
}

// apply takes the flip as a parameter so tests can make it fail.
func (fw *Firewall) apply(c *Compiled, flip func(gen uint32) error) (*ApplyReport, error) {
	start := time.Now()
	if fw.objs.XdpfwFilter == nil {
		return nil, fmt.Errorf("apply to %s: firewall opened read-only", fw.iface)
	}
	active, err := fw.ActiveGeneration()
	if err != nil && !errors.Is(err, ErrNoGeneration) {
		return nil, err
	}
	hasActive := err == nil
	target := uint32(0)
	if hasActive {
		target = 1 - active
	}

	var infos [2]firewallFwGenInfo
	for g := uint32(0); g < 2; g++ {
		if err := fw.objs.GenInfo.Lookup(g, &infos[g]); err != nil {
			return nil, fmt.Errorf("read gen_info[%d]: %w", g, err)
		}
	}
	cur := fw.cache[target]
	if cur == nil || cur.info.Seq != infos[target].Seq {
		if cur, err = fw.readGeneration(target); err != nil {
			return nil, err
		}
	}

	rep := &ApplyReport{Generation: int(target), Writes: map[string]int{}, Rules: len(c.Rules), Vectors: len(c.Vecs), Digest: c.Digest}

	slots, plan, err := fw.assignSlots(c, active, hasActive, rep)
	if err != nil {
		return nil, err
	}

	// A generation written from an earlier update of the same compile
	// needs only what the updates since changed; place says when it
	// cannot keep the rest (out of vector ids).
	changed := changesSince(c, cur.from)
	want, err := place(c, cur, slots, changed)
	if errors.Is(err, errPlaceWhole) {
		// Returned before anything of cur was taken over: try whole.
		changed = nil
		want, err = place(c, cur, slots, nil)
	}
	if err != nil {
		fw.cache[target] = nil // place may have taken over cur's arrays
		return nil, err
	}
	rep.Incremental = changed != nil
	if c.inc != nil {
		want.from = compiledFrom{c.inc.lineage, c.inc.epoch}
	}
	want.info.Seq = max(infos[0].Seq, infos[1].Seq) + 1
	want.info.AppliedUnixNs = uint64(time.Now().UnixNano())

	fw.cache[target] = nil // until written completely
	rep.Steps.Place = time.Since(start)
	if err := fw.writeGeneration(target, c, cur, want, rep); err != nil {
		return nil, err
	}
	fw.cache[target] = want

	flipStart := time.Now()
	if err := flip(target); err != nil {
		return nil, err
	}
	rep.Steps.Flip = time.Since(flipStart)
	// The slots of dropped rules are freed once no program can count
	// into them any more (Settle).
	fw.removed = plan
	rep.Duration = time.Since(start)
	return rep, nil
}

// ActiveGeneration reads which generation packets use now.
func (fw *Firewall) ActiveGeneration() (uint32, error) {
	var innerID uint32
	if err := fw.objs.GenSel.Lookup(uint32(0), &innerID); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, ErrNoGeneration
		}
		return 0, fmt.Errorf("read gen_sel: %w", err)
	}
	inner, err := ebpf.NewMapFromID(ebpf.MapID(innerID))
	if err != nil {
		return 0, fmt.Errorf("open gen_sel inner map %d: %w", innerID, err)
	}
	defer inner.Close()
	var active firewallFwActive
	if err := inner.Lookup(uint32(0), &active); err != nil {
		return 0, fmt.Errorf("read active generation: %w", err)
	}
	if active.Gen > 1 {
		return 0, fmt.Errorf("%w %d in gen_sel", errBadGeneration, active.Gen)
	}
	return active.Gen, nil
}

// flip makes gen the active generation and returns as soon as packets use
// it. The kernel makes an update of a map-in-map slot visible at once but
// returns from it only after an RCU grace period (synchronize_rcu in
// maybe_wait_bpf_programs), after which no program runs with the old
// generation any more and it can be rewritten. So the update runs on its
// own goroutine; flip waits until gen_sel names the new selector (the
// flip is in force) and leaves the rest of the wait to Settle, through
// fw.settling. An update that fails fails before it changes anything.
//
// The new selector also carries the generation's field set (from gen_info,
// written before), which the program reads with it.
func (fw *Firewall) flip(gen uint32) error {
	if fw.settling != nil {
		return errors.New("flip: the last flip has not settled") // a bug: apply settles first
	}
	var info firewallFwGenInfo
	if err := fw.objs.GenInfo.Lookup(gen, &info); err != nil {
		return fmt.Errorf("read gen_info[%d]: %w", gen, err)
	}
	spec := fw.spec.Maps["gen_sel"].InnerMap.Copy()
	spec.Contents = []ebpf.MapKV{{Key: uint32(0), Value: firewallFwActive{Gen: gen, Fields: info.Fields}}}
	inner, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("create generation selector: %w", err)
	}
	mi, err := inner.Info()
	var id ebpf.MapID
	ok := false
	if err == nil {
		id, ok = mi.ID()
	}
	if !ok {
		// No ID to recognise the flip by (a kernel without map IDs
		// cannot run this program anyway): wait for the update whole.
		defer inner.Close()
		if err := fw.objs.GenSel.Put(uint32(0), inner); err != nil {
			return fmt.Errorf("flip to generation %d: %w", gen, err)
		}
		return nil
	}
	done := make(chan error, 1)
	go func() {
		err := fw.objs.GenSel.Put(uint32(0), inner)
		inner.Close() // gen_sel holds its own reference
		done <- err
	}()
	// The update swaps the pointer as soon as it runs; poll for it.
	for wait := time.Microsecond; ; wait = min(2*wait, time.Millisecond) {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("flip to generation %d: %w", gen, err)
			}
			return nil // in force and settled
		case <-time.After(wait):
		}
		var cur uint32
		if err := fw.objs.GenSel.Lookup(uint32(0), &cur); err == nil && ebpf.MapID(cur) == id {
			fw.settling = done
			return nil
		}
	}
}

// readGeneration reads a generation's content back from the maps: what a
// process does when another one wrote the maps last (or after a restart).
func (fw *Firewall) readGeneration(gen uint32) (*genState, error) {
	st := &genState{}
	if err := fw.objs.GenInfo.Lookup(gen, &st.info); err != nil {
		return nil, fmt.Errorf("read gen_info[%d]: %w", gen, err)
	}
	raw := make([]firewallFwBitvec, MaxVectors)
	if err := readArray(fw.objs.Bitvecs, gen*uint32(MaxVectors), raw); err != nil {
		return nil, fmt.Errorf("read bitvecs: %w", err)
	}
	st.vecs = make([]Bitvec, MaxVectors)
	for i := range raw {
		st.vecs[i] = raw[i].Words
	}
	var err error
	if st.src4, err = readLPM4(fw.objs.Src4, gen); err != nil {
		return nil, err
	}
	if st.dst4, err = readLPM4(fw.objs.Dst4, gen); err != nil {
		return nil, err
	}
	if st.src6, err = readLPM6(fw.objs.Src6, gen); err != nil {
		return nil, err
	}
	if st.dst6, err = readLPM6(fw.objs.Dst6, gen); err != nil {
		return nil, err
	}
	arrays := []struct {
		m     *ebpf.Map
		slots int
		out   *[]uint32
	}{
		{fw.objs.Sport, portSlots, &st.sport}, {fw.objs.Dport, portSlots, &st.dport},
		{fw.objs.Proto, protoSlots, &st.proto},
		{fw.objs.Tcpflags, byteSlots, &st.tcpflags}, {fw.objs.Icmptype, byteSlots, &st.icmptype},
	}
	for _, a := range arrays {
		*a.out = make([]uint32, a.slots)
		if err := readArray(a.m, gen*uint32(a.slots), *a.out); err != nil {
			return nil, fmt.Errorf("read %s: %w", a.m, err)
		}
	}
	st.rules = make([]firewallFwRule, MaxRules)
	if err := readArray(fw.objs.Rules, gen*uint32(MaxRules), st.rules); err != nil {
		return nil, fmt.Errorf("read rules: %w", err)
	}
	if st.src4r, err = readRange4(fw.range4Maps(false), gen); err != nil {
		return nil, err
	}
	if st.dst4r, err = readRange4(fw.range4Maps(true), gen); err != nil {
		return nil, err
	}
	if st.src6r, err = readRange6(fw.range6Maps(false), gen); err != nil {
		return nil, err
	}
	if st.dst6r, err = readRange6(fw.range6Maps(true), gen); err != nil {
		return nil, err
	}
	return st, nil
}

// readArray reads len(out) consecutive entries of an array map from index
// first. Batch lookups walk an array from its start, so it reads from 0 in
// large batches and keeps the wanted range.
func readArray[T any](m *ebpf.Map, first uint32, out []T) error {
	end := int(first) + len(out)
	if end > int(m.MaxEntries()) {
		return fmt.Errorf("read %s[%d:%d]: past its %d entries", m, first, end, m.MaxEntries())
	}
	const chunk = 8192
	keys := make([]uint32, chunk)
	vals := make([]T, chunk)
	var cursor ebpf.MapBatchCursor
	read := 0
	for read < end {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if k := int(keys[i]); k >= int(first) && k < end {
				out[k-int(first)] = vals[i]
			}
		}
		read += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return fmt.Errorf("batch lookup %s: %w", m, err)
		}
	}
	if read < end {
		return fmt.Errorf("read %s: got %d of %d entries", m, read, end)
	}
	return nil
}

func readLPM4(m *ebpf.Map, gen uint32) (map[netip.Prefix]uint32, error) {
	out := make(map[netip.Prefix]uint32)
	var k firewallFwLpm4Key
	var v uint32
	it := m.Iterate()
	for it.Next(&k, &v) {
		if uint32(k.Gen) != gen {
			continue
		}
		out[netip.PrefixFrom(netip.AddrFrom4(k.Addr), int(k.Prefixlen)-8)] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", m, err)
	}
	return out, nil
}

func readLPM6(m *ebpf.Map, gen uint32) (map[netip.Prefix]uint32, error) {
	out := make(map[netip.Prefix]uint32)
	var k firewallFwLpm6Key
	var v uint32
	it := m.Iterate()
	for it.Next(&k, &v) {
		if uint32(k.Gen) != gen {
			continue
		}
		out[netip.PrefixFrom(netip.AddrFrom16(k.Addr), int(k.Prefixlen)-8)] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", m, err)
	}
	return out, nil
}

// place translates compiler vector ids into kernel ids of the target
// generation, reusing an id wherever the generation already holds the same
// vector, so an unchanged rule set rewrites nothing and a small change
// writes few entries.
//
// With changed set, the IPv4 range tables are placed only where they
// changed, and the rest of cur's must stay valid: no vector id cur's
// tables use may get new content (errPlaceWhole when that cannot be
// avoided).
func place(c *Compiled, cur *genState, slots []uint32, changed *tableChanges) (*genState, error) {
	used := make([]bool, MaxVectors)
	used[0] = true
	mark := func(ids ...[]uint32) {
		for _, list := range ids {
			for _, id := range list {
				used[id] = true
			}
		}
	}
	for _, m := range []map[netip.Prefix]uint32{cur.src4, cur.dst4, cur.src6, cur.dst6} {
		for _, id := range m {
			used[id] = true
		}
	}
	mark(cur.sport, cur.dport, cur.proto, cur.tcpflags, cur.icmptype)
	for _, r := range []*range4State{cur.src4r, cur.dst4r} {
		if r == nil {
			continue
		}
		for id := range r.usedVecs {
			used[id] = true
		}
	}
	for _, r := range []*range6State{cur.src6r, cur.dst6r} {
		if r == nil {
			continue
		}
		for id := range r.usedVecs {
			used[id] = true
		}
	}

	byContent := make(map[Bitvec]uint32)
	for id, u := range used {
		if u && id != 0 {
			if _, dup := byContent[cur.vecs[id]]; !dup {
				byContent[cur.vecs[id]] = uint32(id)
			}
		}
	}

	kid := make([]uint32, len(c.Vecs))
	taken := make([]bool, MaxVectors)
	taken[0] = true
	for k := 1; k < len(c.Vecs); k++ {
		if id, ok := byContent[c.Vecs[k]]; ok && !taken[id] {
			kid[k] = id
			taken[id] = true
		}
	}
	next := uint32(1)
	for k := 1; k < len(c.Vecs); k++ {
		if kid[k] != 0 {
			continue
		}
		// Prefer ids no table of this generation points at.
		for next < uint32(MaxVectors) && (taken[next] || used[next]) {
			next++
		}
		if next >= uint32(MaxVectors) && changed != nil {
			return nil, errPlaceWhole
		}
		if next >= uint32(MaxVectors) {
			// Fall back to any id not taken by the new content.
			next = 1
			for next < uint32(MaxVectors) && taken[next] {
				next++
			}
			if next >= uint32(MaxVectors) {
				return nil, fmt.Errorf("%w: out of vector ids", ErrTooLarge)
			}
		}
		kid[k] = next
		taken[next] = true
	}

	want := &genState{
		// Ids this generation no longer uses keep their old content:
		// nothing points at them, and leaving them saves writes. The
		// slice is cur's own: cur is stale once want is written.
		vecs: cur.vecs,
		src4: remap(c.Src4, kid), dst4: remap(c.Dst4, kid),
		src6: remap(c.Src6, kid), dst6: remap(c.Dst6, kid),
		sport: remapSlice(c.SrcPort, kid), dport: remapSlice(c.DstPort, kid),
		proto:    remapSlice(c.Proto, kid),
		tcpflags: remapSlice(c.TCPFlags, kid), icmptype: remapSlice(c.ICMPType, kid),
		rules: make([]firewallFwRule, MaxRules),
	}
	for k, id := range kid {
		if want.vecs[id] != c.Vecs[k] {
			want.vecs[id] = c.Vecs[k]
			want.vecWrites = append(want.vecWrites, id)
		}
	}
	sort.Slice(want.vecWrites, func(i, j int) bool { return want.vecWrites[i] < want.vecWrites[j] })
	for i, r := range c.Rules {
		fr := firewallFwRule{Slot: slots[i], Next: uint16(r.Next)}
		if r.Drop {
			fr.Action = uint8(firewallFwActionFW_ACTION_DROP)
		}
		if r.DryRun {
			fr.Flags |= uint8(firewallFwRuleFlagFW_RULE_DRY_RUN)
		}
		if r.Implicit {
			fr.Flags |= uint8(firewallFwRuleFlagFW_RULE_IMPLICIT)
		}
		if r.RateLimit != nil {
			fr.Action = uint8(firewallFwActionFW_ACTION_RATE_LIMIT)
			if r.RateLimit.WithinLimit == proto.WithinNext {
				fr.Flags |= uint8(firewallFwRuleFlagFW_RULE_LIMIT_NEXT)
			}
			fr.Limit = r.limit
		}
		want.rules[i] = fr
	}
	var err error
	place4 := func(f int, r *range4, cur *range4State) (*range4State, error) {
		if changed != nil && !changed.all4[f] && cur != nil && cur.direct != nil {
			return placeRange4Changed(r, cur, kid, changed.slash16[f])
		}
		return placeRange4(r, cur, kid)
	}
	if c.Src4Range != nil {
		want.src4 = map[netip.Prefix]uint32{} // IPv4 sources go to the table
		if want.src4r, err = place4(0, c.Src4Range, cur.src4r); err != nil {
			return nil, err
		}
	}
	if c.Dst4Range != nil {
		want.dst4 = map[netip.Prefix]uint32{}
		if want.dst4r, err = place4(1, c.Dst4Range, cur.dst4r); err != nil {
			return nil, err
		}
	}
	if c.Src6Range != nil {
		want.src6 = remap(c.Src6Range.short, kid) // the trie keeps the short prefixes only
		if want.src6r, err = placeRange6(c.Src6Range, cur.src6r, kid); err != nil {
			return nil, err
		}
	}
	if c.Dst6Range != nil {
		want.dst6 = remap(c.Dst6Range.short, kid)
		if want.dst6r, err = placeRange6(c.Dst6Range, cur.dst6r, kid); err != nil {
			return nil, err
		}
	}
	want.info.Fields = c.Fields
	want.info.Rules = uint32(len(c.Rules))
	want.info.Digest = c.Digest
	return want, nil
}

func remap(m map[netip.Prefix]VecID, kid []uint32) map[netip.Prefix]uint32 {
	out := make(map[netip.Prefix]uint32, len(m))
	for p, id := range m {
		out[p] = kid[id]
	}
	return out
}

func remapSlice(s []VecID, kid []uint32) []uint32 {
	out := make([]uint32, len(s))
	for i, id := range s {
		out[i] = kid[id]
	}
	return out
}

// writeGeneration writes the difference between cur and want into gen.
func (fw *Firewall) writeGeneration(gen uint32, c *Compiled, cur, want *genState, rep *ApplyReport) error {
	start := time.Now()
	defer func() { rep.Steps.Tables = time.Since(start) - rep.Steps.Docs }()
	// Vectors first, then the tables that point at them; the generation is
	// inactive, so the order only matters for readability.
	var vkeys []uint32
	var vvals []firewallFwBitvec
	for _, id := range want.vecWrites {
		vkeys = append(vkeys, gen*uint32(MaxVectors)+id)
		vvals = append(vvals, firewallFwBitvec{Summary: want.vecs[id].summary(), Words: want.vecs[id]})
	}
	if err := putMany(fw.objs.Bitvecs, vkeys, vvals, rep, "bitvecs"); err != nil {
		return err
	}

	if err := diffLPM(fw.objs.Src4, gen, cur.src4, want.src4, rep, "src4"); err != nil {
		return err
	}
	if err := diffLPM(fw.objs.Dst4, gen, cur.dst4, want.dst4, rep, "dst4"); err != nil {
		return err
	}
	if err := diffLPM(fw.objs.Src6, gen, cur.src6, want.src6, rep, "src6"); err != nil {
		return err
	}
	if err := diffLPM(fw.objs.Dst6, gen, cur.dst6, want.dst6, rep, "dst6"); err != nil {
		return err
	}
	arrays := []struct {
		name      string
		m         *ebpf.Map
		cur, want []uint32
	}{
		{"sport", fw.objs.Sport, cur.sport, want.sport}, {"dport", fw.objs.Dport, cur.dport, want.dport},
		{"proto", fw.objs.Proto, cur.proto, want.proto},
		{"tcpflags", fw.objs.Tcpflags, cur.tcpflags, want.tcpflags},
		{"icmptype", fw.objs.Icmptype, cur.icmptype, want.icmptype},
	}
	for _, a := range arrays {
		var keys, vals []uint32
		for i := range a.want {
			if a.want[i] != a.cur[i] {
				keys = append(keys, gen*uint32(len(a.want))+uint32(i))
				vals = append(vals, a.want[i])
			}
		}
		if err := putMany(a.m, keys, vals, rep, a.name); err != nil {
			return err
		}
	}
	if err := fw.writeRange4(gen, fw.range4Maps(false), cur.src4r, want.src4r, rep); err != nil {
		return err
	}
	if err := fw.writeRange4(gen, fw.range4Maps(true), cur.dst4r, want.dst4r, rep); err != nil {
		return err
	}
	if err := fw.writeRange6(gen, fw.range6Maps(false), cur.src6r, want.src6r, rep); err != nil {
		return err
	}
	if err := fw.writeRange6(gen, fw.range6Maps(true), cur.dst6r, want.dst6r, rep); err != nil {
		return err
	}
	var rkeys []uint32
	var rvals []firewallFwRule
	for i := range want.rules {
		if want.rules[i] != cur.rules[i] {
			rkeys = append(rkeys, gen*uint32(MaxRules)+uint32(i))
			rvals = append(rvals, want.rules[i])
		}
	}
	if err := putMany(fw.objs.Rules, rkeys, rvals, rep, "rules"); err != nil {
		return err
	}
	docsStart := time.Now()
	if err := fw.writeDocs(gen, c, rep); err != nil {
		return err
	}
	rep.Steps.Docs = time.Since(docsStart)
	// gen_info last: its seq says the generation is complete.
	if err := fw.objs.GenInfo.Put(gen, &want.info); err != nil {
		return fmt.Errorf("write gen_info[%d]: %w", gen, err)
	}
	rep.Writes["gen_info"]++
	return nil
}

func putMany[V any](m *ebpf.Map, keys []uint32, vals []V, rep *ApplyReport, name string) error {
	if len(keys) == 0 {
		return nil
	}
	n, err := m.BatchUpdate(keys, vals, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		for i := range keys {
			if err := m.Put(keys[i], &vals[i]); err != nil {
				return fmt.Errorf("write %s[%d]: %w", name, keys[i], err)
			}
		}
		n, err = len(keys), nil
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	rep.Writes[name] += n
	return nil
}

func diffLPM(m *ebpf.Map, gen uint32, cur, want map[netip.Prefix]uint32, rep *ApplyReport, name string) error {
	var del, put []netip.Prefix
	for p := range cur {
		if _, ok := want[p]; !ok {
			del = append(del, p)
		}
	}
	for p, id := range want {
		if old, ok := cur[p]; !ok || old != id {
			put = append(put, p)
		}
	}
	// Sorted so an apply writes in the same order every time.
	sortPrefixes(put)
	sortPrefixes(del)
	for _, p := range put {
		if err := m.Put(lpmKey(gen, p), want[p]); err != nil {
			return fmt.Errorf("write %s %s: %w", name, p, err)
		}
	}
	for _, p := range del {
		if err := m.Delete(lpmKey(gen, p)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %s %s: %w", name, p, err)
		}
	}
	rep.Writes[name] += len(put) + len(del)
	return nil
}

func lpmKey(gen uint32, p netip.Prefix) any {
	if p.Addr().Is4() {
		return &firewallFwLpm4Key{Prefixlen: uint32(8 + p.Bits()), Gen: uint8(gen), Addr: p.Addr().As4()}
	}
	return &firewallFwLpm6Key{Prefixlen: uint32(8 + p.Bits()), Gen: uint8(gen), Addr: p.Addr().As16()}
}

// slotPlan is what releaseSlots needs after the flip.
type slotPlan struct {
	named  map[uint32]string // every named slot, after assignment
	wanted map[string]bool   // identities of the new generation
}

// assignSlots gives every compiled rule its counter slot: the slot its
// identity already has (so counters survive swaps), or a free one whose
// counters are zeroed first. Slots the active generation still counts into
// are never handed out.
func (fw *Firewall) assignSlots(c *Compiled, active uint32, hasActive bool, rep *ApplyReport) ([]uint32, *slotPlan, error) {
	// Slot names are read once per Open: this process holds the writer
	// lock, so only it changes them (resetSlot keeps the copy current).
	if fw.slotNames == nil {
		names := make([]firewallFwRuleName, counterSlots)
		if err := readArray(fw.objs.RuleNames, 0, names); err != nil {
			return nil, nil, fmt.Errorf("read rule_names: %w", err)
		}
		fw.slotNames = make(map[uint32]string)
		for i := range names {
			if n := cString(names[i].Name[:]); n != "" {
				fw.slotNames[uint32(i)] = n
			}
		}
	}
	bySlot := make(map[uint32]string, len(fw.slotNames))
	byName := make(map[string]uint32, len(fw.slotNames))
	for slot, n := range fw.slotNames {
		bySlot[slot] = n
		byName[n] = slot
	}
	busy := make(map[uint32]bool)
	if hasActive {
		var info firewallFwGenInfo
		if err := fw.objs.GenInfo.Lookup(active, &info); err != nil {
			return nil, nil, fmt.Errorf("read gen_info[%d]: %w", active, err)
		}
		var rules []firewallFwRule
		if cached := fw.cache[active]; cached != nil && cached.info.Seq == info.Seq {
			rules = cached.rules[:min(int(info.Rules), MaxRules)]
		} else {
			rules = make([]firewallFwRule, min(int(info.Rules), MaxRules))
			if err := readArray(fw.objs.Rules, active*uint32(MaxRules), rules); err != nil {
				return nil, nil, fmt.Errorf("read active rules: %w", err)
			}
		}
		for _, r := range rules {
			busy[r.Slot] = true
		}
	}
	wantedNames := make(map[string]bool, len(c.Rules))
	for _, r := range c.Rules {
		wantedNames[r.Identity] = true
	}

	slots := make([]uint32, len(c.Rules))
	next := uint32(0)
	for i, r := range c.Rules {
		if s, ok := byName[r.Identity]; ok {
			slots[i] = s
			continue
		}
		// A free slot: unnamed, or named for a rule that neither the
		// active generation nor the new one uses (left by a crash).
		for ; next < uint32(counterSlots); next++ {
			n, named := bySlot[next]
			if !busy[next] && (!named || !wantedNames[n]) {
				break
			}
		}
		if next >= uint32(counterSlots) {
			return nil, nil, fmt.Errorf("%w: out of counter slots", ErrTooLarge)
		}
		s := next
		next++
		if err := fw.resetSlot(s, r.Identity); err != nil {
			return nil, nil, err
		}
		rep.Writes["rule_names"]++
		rep.Writes["rule_stats"]++
		rep.Writes["rule_limited"]++
		if old, named := bySlot[s]; named {
			delete(byName, old)
		}
		bySlot[s] = r.Identity
		byName[r.Identity] = s
		slots[i] = s
	}
	return slots, &slotPlan{named: bySlot, wanted: wantedNames}, nil
}

// releaseSlots frees, after the flip, the slots of rules that left: no
// program counts into them any more.
func (fw *Firewall) releaseSlots(plan *slotPlan, rep *ApplyReport) error {
	var free []uint32
	for s, n := range plan.named {
		if !plan.wanted[n] {
			free = append(free, s)
		}
	}
	sort.Slice(free, func(i, j int) bool { return free[i] < free[j] })
	for _, s := range free {
		if err := fw.resetSlot(s, ""); err != nil {
			return err
		}
		rep.Writes["rule_names"]++
		rep.Writes["rule_stats"]++
		rep.Writes["rule_limited"]++
	}
	return nil
}

// resetSlot names a counter slot (or frees it, with name "") and zeroes its
// per-CPU counters.
func (fw *Firewall) resetSlot(slot uint32, name string) error {
	zero := make([]firewallFwCounter, ebpf.MustPossibleCPU())
	if err := fw.objs.RuleStats.Put(slot, zero); err != nil {
		return fmt.Errorf("reset rule_stats[%d]: %w", slot, err)
	}
	if err := fw.objs.RuleLimited.Put(slot, zero); err != nil {
		return fmt.Errorf("reset rule_limited[%d]: %w", slot, err)
	}
	var n firewallFwRuleName
	if len(name) >= ruleNameLen {
		return fmt.Errorf("rule identity %q longer than %d bytes", name, ruleNameLen-1)
	}
	for i := 0; i < len(name); i++ {
		n.Name[i] = int8(name[i])
	}
	if err := fw.objs.RuleNames.Put(slot, &n); err != nil {
		fw.slotNames = nil // unknown now: read again next time
		return fmt.Errorf("write rule_names[%d]: %w", slot, err)
	}
	if fw.slotNames != nil {
		if name == "" {
			delete(fw.slotNames, slot)
		} else {
			fw.slotNames[slot] = name
		}
	}
	return nil
}

func cString(b []int8) string {
	buf := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		buf = append(buf, byte(c))
	}
	return string(bytes.Clone(buf))
}
