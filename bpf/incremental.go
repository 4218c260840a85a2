package bpf

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/xdpfw/xdpfw/proto"
)

// Incremental updates (docs/architecture.md, "Incremental updates"). A one-prefix change to a set
// of a million must not cost a whole compile (over a second: parse, sort,
// flatten, lay out): Compiled keeps what it was built from, and Update
// applies set deltas to it, touching only the prefixes that changed, the
// prefixes they contain, and (for a range table) the /16s under them. The
// result is the value Compile gives for the changed rule sets (the tests
// hold them equal), and it remembers which /16s it changed, so that Apply
// rewrites only those.

// SetDelta is how the members of one prefix set changed: the prefixes
// added and those removed (canonical, as proto.ParsePrefix returns them).
type SetDelta struct {
	RuleSet, Set   string
	Added, Removed []netip.Prefix
}

func (d SetDelta) String() string {
	return fmt.Sprintf("%s/%s +%d -%d", d.RuleSet, d.Set, len(d.Added), len(d.Removed))
}

// ErrNeedsCompile is returned by Update for a change it cannot make
// incrementally (a delta that does not fit what was compiled, or too many
// stale vectors): compile the rule sets whole instead.
var ErrNeedsCompile = errors.New("an incremental update cannot make this change")

// setRef names a set: its rule set's name and its own.
type setRef struct{ ruleSet, set string }

// wildSource is the source of the rules without an address match of a
// field: it lists only the /0s.
const wildSource = 0

// fieldState is what an incremental update of one address field (src or
// dst) needs: who lists each prefix, and each prefix's final vector.
type fieldState struct {
	// sources[s] is the vector of source s: wildSource, then one per rule
	// with literal prefixes (that rule's bit), then one per set some rule
	// names in this field (the bits of those rules).
	sources []VecID
	bySet   map[setRef]int32
	combos  *comboTable
	v4      table4
	v6      []entry6
}

func newFieldState() *fieldState {
	return &fieldState{sources: []VecID{0}, bySet: map[setRef]int32{}, combos: newComboTable()}
}

func (fs *fieldState) addSource(v VecID) int32 {
	fs.sources = append(fs.sources, v)
	return int32(len(fs.sources) - 1)
}

// own is the vector of a prefix whose sources are combo: their union.
func (fs *fieldState) own(in *interner, combo uint32) VecID {
	t := fs.combos
	if id, ok := t.own[combo]; ok {
		return id
	}
	list := t.lists[combo]
	id := fs.sources[list[0]]
	for _, s := range list[1:] {
		id = in.union(id, fs.sources[s])
	}
	t.own[combo] = id
	return id
}

// comboTable interns combinations of sources (sorted source lists): a
// prefix table holds a combination's id per prefix. There are few: most
// prefixes come from one set.
type comboTable struct {
	lists [][]int32
	byKey map[string]uint32
	own   map[uint32]VecID
}

func newComboTable() *comboTable {
	return &comboTable{byKey: map[string]uint32{}, own: map[uint32]VecID{}}
}

// of returns the id of a sorted, duplicate-free list of sources.
func (t *comboTable) of(list []int32) uint32 {
	var b strings.Builder
	for _, s := range list {
		b.WriteString(strconv.Itoa(int(s)))
		b.WriteByte(',')
	}
	key := b.String()
	if id, ok := t.byKey[key]; ok {
		return id
	}
	id := uint32(len(t.lists))
	t.lists = append(t.lists, slices.Clone(list))
	t.byKey[key] = id
	return id
}

// with returns combo with source s added (ok false: s was in it).
func (t *comboTable) with(combo uint32, s int32) (uint32, bool) {
	list := t.lists[combo]
	i, found := slices.BinarySearch(list, s)
	if found {
		return 0, false
	}
	return t.of(slices.Insert(slices.Clone(list), i, s)), true
}

// without returns combo with source s removed (ok false: s was not in
// it), and whether that leaves it empty.
func (t *comboTable) without(combo uint32, s int32) (uint32, bool, bool) {
	list := t.lists[combo]
	i, found := slices.BinarySearch(list, s)
	if !found {
		return 0, false, false
	}
	if len(list) == 1 {
		return 0, true, true
	}
	return t.of(slices.Delete(slices.Clone(list), i, i+1)), true, false
}

// entry4 is an IPv4 prefix of a field's table: its sources and final
// vector (its own and every enclosing prefix's).
type entry4 struct {
	key   key4
	combo uint32
	final VecID
}

// table4 is a field's IPv4 prefixes by /16: a change rebuilds the /16s
// under it, and copies only their slices.
type table4 struct {
	// short are the prefixes shorter than /16 (with the /0), sorted.
	short []entry4
	// slash16 holds the prefixes of /16 and longer of each /16, sorted.
	slash16 *paged16[entry4]
	n       int
}

func newTable4(t prefixTable, combos []uint32) table4 {
	tb := table4{slash16: &paged16[entry4]{}, n: len(t.prefixes)}
	all := make([]entry4, len(t.prefixes))
	i := 0
	for i < len(t.prefixes) && t.prefixes[i].Bits() < 16 {
		i++
	}
	// Prefixes shorter than /16 sort before the longer ones of their
	// first /16 but after those of earlier /16s: split by length, keep
	// the order.
	var short []entry4
	k := 0
	for j, p := range t.prefixes {
		e := entry4{prefixKey4(p), combos[j], t.ids[j]}
		if p.Bits() < 16 {
			short = append(short, e)
			continue
		}
		all[k] = e
		k++
	}
	all = all[:k]
	for j := 0; j < len(all); {
		b := int(all[j].key >> 24)
		end := j
		for end < len(all) && int(all[end].key>>24) == b {
			end++
		}
		tb.slash16.set(b, all[j:end:end])
		j = end
	}
	tb.short = short
	return tb
}

// entry6 is an IPv6 prefix of a field's table, as entry4.
type entry6 struct {
	key   key6
	combo uint32
	final VecID
}

func newTable6(t prefixTable, combos []uint32) []entry6 {
	out := make([]entry6, len(t.prefixes))
	for i, p := range t.prefixes {
		out[i] = entry6{prefixKey6(p), combos[i], t.ids[i]}
	}
	return out
}

// incState is what Compiled keeps for Update.
type incState struct {
	in      *interner
	opts    CompileOptions
	iface   string
	header  appliedDoc // the rule sets, without their sets' members
	members []setMembers
	byRef   map[setRef]int
	fields  [2]*fieldState // src, dst
	// lineage names the Compile a chain of updates started from; epoch
	// counts the updates since. changes are the tables' changes of the
	// last updates, newest last (see Apply).
	lineage uint64
	epoch   uint64
	changes []tableChanges
}

// tableChanges is what one update changed in the range tables: the /16s
// of each IPv4 table (all: every one, or the table came or went), and
// whether each IPv6 table changed.
type tableChanges struct {
	epoch   uint64
	slash16 [2][]int
	all4    [2]bool
	v6      [2]bool
}

// keptChanges is how many updates' changes a Compiled keeps: an Apply
// into a generation that many updates behind rewrites only what they
// changed.
const keptChanges = 4

// lineages numbers Compile results (see incState.lineage).
var lineages atomic.Uint64

func nextLineage() uint64 { return lineages.Add(1) }

// membersOf turns a set's parsed prefixes (sorted, as SetPrefixes returns
// them) into keys.
func membersOf(ruleSet int, name string, ps []netip.Prefix) (setMembers, error) {
	m := setMembers{ruleSet: ruleSet, set: name}
	n4 := 0
	for n4 < len(ps) && ps[n4].Addr().Is4() {
		n4++
	}
	v4 := make([]key4, n4)
	for i, p := range ps[:n4] {
		v4[i] = prefixKey4(p)
	}
	var err error
	if m.v4, err = codec4.blocks(v4); err != nil {
		return m, fmt.Errorf("set %s: %w", name, err)
	}
	if n4 < len(ps) {
		v6 := make([]key6, len(ps)-n4)
		for i, p := range ps[n4:] {
			v6[i] = prefixKey6(p)
		}
		if m.v6, err = codec6.blocks(v6); err != nil {
			return m, fmt.Errorf("set %s: %w", name, err)
		}
	}
	return m, nil
}

// withoutMembers copies rule sets with every set emptied: the members are
// kept as keys beside them.
func withoutMembers(sets []proto.RuleSet) []proto.RuleSet {
	out := make([]proto.RuleSet, len(sets))
	for i, rs := range sets {
		if rs.Sets != nil {
			empty := make(map[string]proto.PrefixSet, len(rs.Sets))
			for name := range rs.Sets {
				empty[name] = proto.PrefixSet{}
			}
			rs.Sets = empty
		}
		out[i] = rs
	}
	return out
}

func sortedSetNames(sets map[string]proto.PrefixSet) []string {
	names := make([]string, 0, len(sets))
	for name := range sets {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// maxStaleVectors bounds the vectors an update chain may intern: Update
// never drops a vector, and Apply places every one. Past it, compile whole.
var maxStaleVectors = MaxVectors * 3 / 4

// Update returns the result of compiling the same rule sets with the sets'
// members changed by deltas. c is not changed (the two share what the
// deltas leave alone). A delta of a rule set not compiled for this
// interface changes nothing; one that does not fit what was compiled (an
// unknown set, a prefix added twice or removed that was not there) is
// ErrNeedsCompile.
func (c *Compiled) Update(deltas []SetDelta) (*Compiled, error) {
	if c.inc == nil {
		return nil, fmt.Errorf("%w: not compiled by this process", ErrNeedsCompile)
	}
	old := c.inc
	n := *c
	inc := *old
	n.inc = &inc
	inc.epoch++
	inc.members = slices.Clone(old.members)
	ch := tableChanges{epoch: inc.epoch}

	// The members first, so that a delta that does not fit changes
	// nothing at all.
	compiled := map[string]bool{}
	for _, rs := range c.RuleSets {
		compiled[rs] = true
	}
	type fieldOps struct {
		src          int32
		add4, rm4    []key4
		add6, rm6    []key6
		field, delta int
	}
	var ops []fieldOps
	for di, d := range deltas {
		if !compiled[d.RuleSet] {
			continue
		}
		ref := setRef{d.RuleSet, d.Set}
		mi, ok := old.byRef[ref]
		if !ok {
			return nil, fmt.Errorf("%w: rule set %s has no set %q", ErrNeedsCompile, d.RuleSet, d.Set)
		}
		add4, add6, err := deltaKeys(d.Added)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrNeedsCompile, d, err)
		}
		rm4, rm6, err := deltaKeys(d.Removed)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrNeedsCompile, d, err)
		}
		m := inc.members[mi]
		if m.v4, err = codec4.merge(m.v4, add4, rm4); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrNeedsCompile, d, err)
		}
		if m.v6, err = codec6.merge(m.v6, add6, rm6); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrNeedsCompile, d, err)
		}
		if m.count() > proto.MaxPrefixesPerSet {
			return nil, fmt.Errorf("rule set %s: set %s: %d prefixes, limit is %d", d.RuleSet, d.Set, m.count(), proto.MaxPrefixesPerSet)
		}
		inc.members[mi] = m
		for f, fs := range old.fields {
			if src, ok := fs.bySet[ref]; ok {
				ops = append(ops, fieldOps{src, add4, rm4, add6, rm6, f, di})
			}
		}
	}

	// Then each field's tables.
	for f := range inc.fields {
		var mine []fieldOps
		for _, o := range ops {
			if o.field == f {
				mine = append(mine, o)
			}
		}
		if len(mine) == 0 {
			continue
		}
		fs := *old.fields[f]
		inc.fields[f] = &fs
		var dirty4 []key4
		changed6 := false
		for _, o := range mine {
			d, err := fs.update4(o.src, o.add4, o.rm4)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrNeedsCompile, deltas[o.delta], err)
			}
			dirty4 = append(dirty4, d...)
			if len(o.add6) > 0 || len(o.rm6) > 0 {
				if fs.v6, err = fs.update6(o.src, o.add6, o.rm6); err != nil {
					return nil, fmt.Errorf("%w: %s: %v", ErrNeedsCompile, deltas[o.delta], err)
				}
				changed6 = true
			}
		}
		if len(dirty4) > 0 {
			n.rebuild4(f, dirty4, &ch)
		}
		if changed6 {
			n.rebuild6(f, &ch)
		}
	}
	if len(inc.in.vecs) > maxStaleVectors {
		return nil, fmt.Errorf("%w: %d vectors interned", ErrNeedsCompile, len(inc.in.vecs))
	}
	if len(inc.in.vecs) > MaxVectors {
		return nil, fmt.Errorf("%w: %d distinct rule combinations, the limit is %d", ErrTooLarge, len(inc.in.vecs), MaxVectors)
	}
	n.Vecs = inc.in.vecs
	inc.changes = append(slices.Clone(old.changes[max(0, len(old.changes)-keptChanges+1):]), ch)
	if err := n.encode(); err != nil {
		return nil, err
	}
	return &n, nil
}

func cmpKey4(a, b key4) int { return cmp.Compare(a, b) }

// deltaKeys splits canonical prefixes into sorted, duplicate-free keys.
func deltaKeys(ps []netip.Prefix) ([]key4, []key6, error) {
	var k4 []key4
	var k6 []key6
	for _, p := range ps {
		if !p.IsValid() || p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return nil, nil, fmt.Errorf("%v is not a canonical prefix", p)
		}
		if p.Addr().Is4() {
			k4 = append(k4, prefixKey4(p))
		} else {
			k6 = append(k6, prefixKey6(p))
		}
	}
	slices.Sort(k4)
	slices.SortFunc(k6, compareKey6)
	return slices.Compact(k4), slices.CompactFunc(k6, func(a, b key6) bool { return a == b }), nil
}

// mergeKeys returns the sorted keys s with add inserted and rm removed
// (both sorted), in a new slice; a key added that s holds, or removed that
// it lacks, is an error. It finds each change by binary search and copies
// the runs between them: a few changes to a million keys cost one copy.
func mergeKeys[K any](s, add, rm []K, compare func(a, b K) int) ([]K, error) {
	if len(add) == 0 && len(rm) == 0 {
		return s, nil
	}
	out := make([]K, 0, len(s)+len(add))
	i, a, r := 0, 0, 0 // s[i:] is still to copy
	for a < len(add) || r < len(rm) {
		var k K
		adding := false
		switch {
		case r == len(rm) || a < len(add) && compare(add[a], rm[r]) < 0:
			k, adding = add[a], true
			a++
		case a < len(add) && compare(add[a], rm[r]) == 0:
			return nil, fmt.Errorf("a prefix both added and removed")
		default:
			k = rm[r]
			r++
		}
		j, found := slices.BinarySearchFunc(s[i:], k, compare)
		out = append(out, s[i:i+j]...)
		i += j
		switch {
		case adding && found:
			return nil, fmt.Errorf("an added prefix is already a member")
		case adding:
			out = append(out, k)
		case !found:
			return nil, fmt.Errorf("a removed prefix is not a member")
		default:
			i++
		}
	}
	return append(out, s[i:]...), nil
}

func searchEntry4(s []entry4, k key4) (int, bool) {
	return slices.BinarySearchFunc(s, k, func(e entry4, k key4) int { return cmp.Compare(e.key, k) })
}

// update4 adds source src to the IPv4 prefixes add and takes it from those
// of rm, in copies of the slices it changes. It returns the prefixes whose
// sources changed: the finals under them are stale until rebuild4.
func (fs *fieldState) update4(src int32, add, rm []key4) ([]key4, error) {
	if len(add) == 0 && len(rm) == 0 {
		return nil, nil
	}
	t := &fs.v4
	t.slash16 = t.slash16.fork()
	t.short = slices.Clone(t.short)
	copied := map[int]*[]entry4{} // the /16s changed, copied
	slot := func(k key4) *[]entry4 {
		if k&0xff < 16 {
			return &t.short
		}
		b := int(k >> 24)
		if s, ok := copied[b]; ok {
			return s
		}
		s := slices.Clone(t.slash16.get(b))
		copied[b] = &s
		return &s
	}
	defer func() {
		for b, s := range copied {
			t.slash16.set(b, *s)
		}
	}()
	for _, k := range rm {
		s := slot(k)
		i, found := searchEntry4(*s, k)
		if !found {
			return nil, fmt.Errorf("%v is not in the table", key4Prefix(k))
		}
		combo, ok, empty := fs.combos.without((*s)[i].combo, src)
		switch {
		case !ok:
			return nil, fmt.Errorf("%v was not a member", key4Prefix(k))
		case empty:
			*s = slices.Delete(*s, i, i+1)
			t.n--
		default:
			(*s)[i].combo = combo
		}
	}
	for _, k := range add {
		s := slot(k)
		i, found := searchEntry4(*s, k)
		if !found {
			*s = slices.Insert(*s, i, entry4{key: k, combo: fs.combos.of([]int32{src})})
			t.n++
			continue
		}
		combo, ok := fs.combos.with((*s)[i].combo, src)
		if !ok {
			return nil, fmt.Errorf("%v is already a member", key4Prefix(k))
		}
		(*s)[i].combo = combo
	}
	return slices.Concat(add, rm), nil
}

// contains4 says whether prefix a holds prefix b.
func contains4(a, b key4) bool {
	bits := a & 0xff
	if b&0xff < bits {
		return false
	}
	mask := uint64(0)
	if bits > 0 {
		mask = ^uint64(0) << (32 - bits)
	}
	return (a>>8)&mask == (b>>8)&mask
}

// noVec is no vector: the base of the prefixes shorter than /16, whose
// /0 has no parent.
const noVec = ^VecID(0)

// finals4 sets each entry's final vector: its own, with that of the
// innermost entry before it that holds it, or base.
func (fs *fieldState) finals4(in *interner, es []entry4, base VecID) {
	var stack []int
	for i := range es {
		for len(stack) > 0 && !contains4(es[stack[len(stack)-1]].key, es[i].key) {
			stack = stack[:len(stack)-1]
		}
		parent := base
		if len(stack) > 0 {
			parent = es[stack[len(stack)-1]].final
		}
		es[i].final = fs.own(in, es[i].combo)
		if parent != noVec {
			es[i].final = in.union(parent, es[i].final)
		}
		stack = append(stack, i)
	}
}

// basesOf returns, for each /16 of list (sorted), the final vector of the
// innermost prefix shorter than /16 that holds it (the /0 holds every
// one): one sweep of the short prefixes, which are sorted by address.
func (t *table4) basesOf(list []int) []VecID {
	out := make([]VecID, len(list))
	var stack []entry4
	j := 0
	for i, b := range list {
		a := key4(b) << 24 // /16 b's first address, as a key of length 0
		for j < len(t.short) && t.short[j].key>>8 <= a>>8 {
			for len(stack) > 0 && !contains4(stack[len(stack)-1].key, t.short[j].key) {
				stack = stack[:len(stack)-1]
			}
			stack = append(stack, t.short[j])
			j++
		}
		for len(stack) > 0 && !contains4(stack[len(stack)-1].key, a|32) {
			stack = stack[:len(stack)-1]
		}
		if len(stack) == 0 {
			panic("bpf: IPv4 table without a /0")
		}
		out[i] = stack[len(stack)-1].final
	}
	return out
}

// parts16 flattens the prefixes of /16 b (those of its bucket) over base
// into the /16's parts.
func parts16(es []entry4, base VecID, b int) []part {
	lo := uint64(b) << 16
	iv := flattenRanges(len(es), func(i int) (uint64, uint64, VecID) {
		start := uint64(es[i].key>>8) - lo
		return start, start + 1<<(32-es[i].key&0xff) - 1, es[i].final
	}, base, 0xFFFF)
	ps := make([]part, len(iv))
	for i, x := range iv {
		ps[i] = part{uint16(x.start), x.id}
	}
	return ps
}

// rebuild4 recomputes field f's IPv4 finals under the changed prefixes
// and its table: the range table's /16s under them, or the trie's map.
func (c *Compiled) rebuild4(f int, changed []key4, ch *tableChanges) {
	inc := c.inc
	fs := inc.fields[f]
	t := &fs.v4
	dirty := map[int]bool{}
	shortChanged := false
	for _, k := range changed {
		bits, a := int(k&0xff), int(k>>24)
		if bits >= 16 {
			dirty[a] = true
			continue
		}
		shortChanged = true
		for b := a; b < a+1<<(16-bits); b++ {
			dirty[b] = true
		}
	}
	if shortChanged {
		t.short = slices.Clone(t.short)
		fs.finals4(inc.in, t.short, noVec)
	}
	list := make([]int, 0, len(dirty))
	for b := range dirty {
		list = append(list, b)
	}
	slices.Sort(list)
	bases := t.basesOf(list)
	for i, b := range list {
		if es := t.slash16.get(b); len(es) > 0 {
			es = slices.Clone(es)
			fs.finals4(inc.in, es, bases[i])
			t.slash16.set(b, es)
		}
	}

	rng, trie, bit := &c.Src4Range, &c.Src4, fieldSrc4Range
	if f == 1 {
		rng, trie, bit = &c.Dst4Range, &c.Dst4, fieldDst4Range
	}
	switch {
	case inc.opts.big(t.n) && *rng != nil:
		r := &range4{slash16: (*rng).slash16.fork()}
		for i, b := range list {
			r.slash16.set(b, parts16(t.slash16.get(b), bases[i], b))
		}
		*rng = r
		ch.slash16[f] = append(ch.slash16[f], list...)
	case inc.opts.big(t.n):
		r := &range4{slash16: &paged16[part]{}}
		all := make([]int, r4Directs)
		for b := range all {
			all[b] = b
		}
		for b, base := range t.basesOf(all) {
			r.slash16.set(b, parts16(t.slash16.get(b), base, b))
		}
		*rng, *trie, c.Fields = r, nil, c.Fields|bit
		ch.all4[f] = true
	default:
		m := make(map[netip.Prefix]VecID, t.n)
		for _, e := range t.short {
			m[key4Prefix(e.key)] = e.final
		}
		for b := range r4Directs {
			for _, e := range t.slash16.get(b) {
				m[key4Prefix(e.key)] = e.final
			}
		}
		if *rng != nil {
			ch.all4[f] = true
		}
		*rng, *trie, c.Fields = nil, m, c.Fields&^bit
	}
}

func searchEntry6(s []entry6, k key6) (int, bool) {
	return slices.BinarySearchFunc(s, k, func(e entry6, k key6) int { return compareKey6(e.key, k) })
}

// update6 is update4 for the IPv6 prefixes, into a new slice.
func (fs *fieldState) update6(src int32, add, rm []key6) ([]entry6, error) {
	es := slices.Clone(fs.v6)
	for _, k := range rm {
		i, found := searchEntry6(es, k)
		if !found {
			return nil, fmt.Errorf("%v is not in the table", k.prefix())
		}
		combo, ok, empty := fs.combos.without(es[i].combo, src)
		switch {
		case !ok:
			return nil, fmt.Errorf("%v was not a member", k.prefix())
		case empty:
			es = slices.Delete(es, i, i+1)
		default:
			es[i].combo = combo
		}
	}
	for _, k := range add {
		i, found := searchEntry6(es, k)
		if !found {
			es = slices.Insert(es, i, entry6{key: k, combo: fs.combos.of([]int32{src})})
			continue
		}
		combo, ok := fs.combos.with(es[i].combo, src)
		if !ok {
			return nil, fmt.Errorf("%v is already a member", k.prefix())
		}
		es[i].combo = combo
	}
	return es, nil
}

// contains6 says whether prefix a holds prefix b.
func contains6(a, b key6) bool {
	if b.bits < a.bits {
		return false
	}
	switch {
	case a.bits == 0:
		return true
	case a.bits <= 64:
		mask := ^uint64(0) << (64 - a.bits)
		return a.hi&mask == b.hi&mask
	default:
		mask := ^uint64(0) << (128 - a.bits)
		return a.hi == b.hi && a.lo&mask == b.lo&mask
	}
}

// rebuild6 recomputes field f's IPv6 finals and table, whole: IPv6 range
// tables are not updated in place (yet).
func (c *Compiled) rebuild6(f int, ch *tableChanges) {
	inc := c.inc
	fs := inc.fields[f]
	es := fs.v6
	var stack []int
	t := prefixTable{prefixes: make([]netip.Prefix, len(es)), ids: make([]VecID, len(es))}
	for i := range es {
		for len(stack) > 0 && !contains6(es[stack[len(stack)-1]].key, es[i].key) {
			stack = stack[:len(stack)-1]
		}
		own := fs.own(inc.in, es[i].combo)
		if len(stack) > 0 {
			own = inc.in.union(es[stack[len(stack)-1]].final, own)
		}
		es[i].final = own
		stack = append(stack, i)
		t.prefixes[i], t.ids[i] = es[i].key.prefix(), own
	}
	rng, trie, bit, dense := &c.Src6Range, &c.Src6, fieldSrc6Range, fieldSrc6Dense
	if f == 1 {
		rng, trie, bit, dense = &c.Dst6Range, &c.Dst6, fieldDst6Range, fieldDst6Dense
	}
	c.Fields &^= bit | dense
	if inc.opts.big(len(es)) {
		*rng, *trie = buildRange6(t), nil
		c.Fields |= bit
		if len((*rng).dense) > 0 {
			c.Fields |= dense
		}
	} else {
		*rng, *trie = nil, t.asMap()
	}
	ch.v6[f] = true
}

// SetSize returns the number of distinct prefixes of a compiled set.
func (c *Compiled) SetSize(ruleSet, set string) (int, bool) {
	if c.inc == nil {
		return 0, false
	}
	i, ok := c.inc.byRef[setRef{ruleSet, set}]
	if !ok {
		return 0, false
	}
	return c.inc.members[i].count(), true
}

// encode sets the stored document (see encodeDoc) and the digest from the
// state.
func (c *Compiled) encode() error {
	var err error
	c.doc, c.Digest, err = encodeDocParts(c.inc.header, c.inc.members)
	return err
}
