package bpf

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/xdpfw/xdpfw/proto"
)

// Layout constants of firewall.h, under Go names.
const (
	MaxRules     = int(firewallFwLimitsFW_MAX_RULES)
	vecWords     = int(firewallFwLimitsFW_VEC_WORDS)
	MaxVectors   = int(firewallFwLimitsFW_MAX_VECS)
	counterSlots = int(firewallFwLimitsFW_COUNTER_SLOTS)
	portNone     = int(firewallFwLimitsFW_PORT_NONE)
	portSlots    = int(firewallFwLimitsFW_PORT_SLOTS)
	byteNone     = int(firewallFwLimitsFW_BYTE_NONE)
	byteSlots    = int(firewallFwLimitsFW_BYTE_SLOTS)
	protoSlots   = int(firewallFwLimitsFW_PROTO_SLOTS)
	ruleNameLen  = int(firewallFwLimitsFW_RULE_NAME_LEN)
	maxRounds    = int(firewallFwLimitsFW_MAX_ITER)
)

const (
	fieldSrc       = uint32(firewallFwFieldFW_FIELD_SRC)
	fieldDst       = uint32(firewallFwFieldFW_FIELD_DST)
	fieldSport     = uint32(firewallFwFieldFW_FIELD_SPORT)
	fieldDport     = uint32(firewallFwFieldFW_FIELD_DPORT)
	fieldProto     = uint32(firewallFwFieldFW_FIELD_PROTO)
	fieldTCPFlags  = uint32(firewallFwFieldFW_FIELD_TCPFLAGS)
	fieldICMPType  = uint32(firewallFwFieldFW_FIELD_ICMPTYPE)
	fieldSrc4Range = uint32(firewallFwFieldFW_FIELD_SRC4RANGE)
	fieldDst4Range = uint32(firewallFwFieldFW_FIELD_DST4RANGE)
	fieldSrc6Range = uint32(firewallFwFieldFW_FIELD_SRC6RANGE)
	fieldDst6Range = uint32(firewallFwFieldFW_FIELD_DST6RANGE)
	fieldSrc6Dense = uint32(firewallFwFieldFW_FIELD_SRC6DENSE)
	fieldDst6Dense = uint32(firewallFwFieldFW_FIELD_DST6DENSE)
)

// DefaultBigSetThreshold is the number of prefixes of one field (src or
// dst) and family from which that field uses a range table instead of the
// LPM trie for that family.
// Measured (make bench, pool mode): the LPM trie costs about as much as the
// tables' reads at a few thousand random prefixes and grows with the count.
const DefaultBigSetThreshold = 4096

// CompileOptions tunes how rule sets are laid out.
type CompileOptions struct {
	// BigSetThreshold overrides DefaultBigSetThreshold (tests use 1 to put
	// small sets in the big-set tables); 0 means the default, -1 never.
	BigSetThreshold int
}

// ErrTooLarge is returned when compiled rule sets exceed the map layout.
var ErrTooLarge = errors.New("rule sets exceed the data plane's limits")

// VecID names an interned bit vector of a Compiled.
type VecID = uint32

// Bitvec is a set of rule indexes: bit i of word i/64 is rule i.
type Bitvec [vecWords]uint64

func (b *Bitvec) set(i int) { b[i/64] |= 1 << (i % 64) }

func (b *Bitvec) or(o *Bitvec) {
	for i := range b {
		b[i] |= o[i]
	}
}

// summary has bit w set when word w is non-zero.
func (b *Bitvec) summary() uint64 {
	var s uint64
	for w, word := range b {
		if word != 0 {
			s |= 1 << w
		}
	}
	return s
}

// CompiledRule is one entry of the merged, ordered rule list.
type CompiledRule struct {
	// Identity is "ruleset/rule-id": the key counters are kept under.
	Identity string
	RuleSet  string
	ID       string
	Drop     bool
	DryRun   bool
	Implicit bool
	// RateLimit is set for action rate-limit; limit is its kernel value,
	// computed by Compile.
	RateLimit *proto.RateLimit
	limit     firewallFwLimit
	// Next is the index of the first rule after this rule's set.
	Next int
}

// Compiled is the content of one generation of the policy maps, with
// compiler-local vector ids (Apply places them in the kernel's id space).
// Compile is pure and deterministic: the same rule sets give the same value.
type Compiled struct {
	Rules []CompiledRule
	// Vecs[0] is every rule (FW_VEC_ALL).
	Vecs []Bitvec
	// Src4, Dst4, Src6 and Dst6 are the LPM trie contents of the fields
	// that use one (nil where the field uses a big-set table).
	Src4, Dst4, Src6, Dst6 map[netip.Prefix]VecID
	SrcPort, DstPort       []VecID // portSlots entries
	Proto                  []VecID // protoSlots entries
	TCPFlags, ICMPType     []VecID // byteSlots entries
	// Fields has a FW_FIELD_* bit for each field some rule matches on.
	Fields uint32
	// Digest identifies the input (sha256 of the canonical rule sets).
	Digest [32]byte
	// RuleSets names the compiled sets in evaluation order.
	RuleSets []string
	// doc is what was compiled (an appliedDoc and the sets' members, see
	// encodeDocParts), kept with the generation (see AppliedRuleSets).
	doc docParts
	// inc is what Update needs.
	inc *incState

	// Src4Range and Dst4Range, when set, hold the field's IPv4 prefixes as
	// a range table (built from Src4/Dst4), which the kernel uses instead
	// of the LPM trie.
	Src4Range, Dst4Range *range4
	// Src6Range and Dst6Range, likewise, hold the field's IPv6 prefixes
	// as a range table (built from Src6/Dst6).
	Src6Range, Dst6Range *range6
}

// interner gives each distinct bit vector one id and memoizes unions.
type interner struct {
	ids    map[Bitvec]VecID
	vecs   []Bitvec
	unions map[[2]VecID]VecID
}

func newInterner() *interner {
	return &interner{ids: make(map[Bitvec]VecID), unions: make(map[[2]VecID]VecID)}
}

func (in *interner) intern(b *Bitvec) VecID {
	if id, ok := in.ids[*b]; ok {
		return id
	}
	id := VecID(len(in.vecs))
	in.ids[*b] = id
	in.vecs = append(in.vecs, *b)
	return id
}

func (in *interner) union(a, b VecID) VecID {
	if a == b {
		return a
	}
	if a > b {
		a, b = b, a
	}
	key := [2]VecID{a, b}
	if id, ok := in.unions[key]; ok {
		return id
	}
	v := in.vecs[a]
	v.or(&in.vecs[b])
	id := in.intern(&v)
	in.unions[key] = id
	return id
}

// ruleFields is a rule with its match fields parsed.
type ruleFields struct {
	src, dst           []netip.Prefix
	srcSets, dstSets   []string
	proto              int // -1 any
	sports, dports     [][2]uint16
	hasFlags           bool
	flagValue, flagMsk uint8
	icmpType           int // -1 any
	ruleSet            *proto.RuleSet
}

// Compile merges the rule sets that apply to interface iface (docs/architecture.md,
// "Rule semantics": by priority, then name; within a set in order) and computes the
// content of every policy map. Each set is validated first; an invalid set
// fails the whole compile, so nothing is applied half-way.
func Compile(sets []proto.RuleSet, iface string) (*Compiled, error) {
	return CompileWith(sets, iface, CompileOptions{})
}

// CompileWith is Compile with options.
func CompileWith(sets []proto.RuleSet, iface string, opts CompileOptions) (*Compiled, error) {
	ordered, err := orderSets(sets, iface)
	if err != nil {
		return nil, err
	}

	c := &Compiled{}
	var fields []ruleFields
	for i := range ordered {
		rs := &ordered[i]
		c.RuleSets = append(c.RuleSets, rs.Name)
		dry := rs.EffectiveEnforcement() == proto.EnforcementDryRun
		first := len(c.Rules)
		for j, r := range rs.Rules {
			rf, err := parseRule(rs, r)
			if err != nil {
				return nil, fmt.Errorf("rule set %s: rules[%d]: %w", rs.Name, j, err)
			}
			fields = append(fields, rf)
			c.Rules = append(c.Rules, CompiledRule{
				Identity: proto.RuleIdentity(rs.Name, r.ID), RuleSet: rs.Name, ID: r.ID,
				Drop: r.Action == proto.ActionDrop, DryRun: dry,
			})
			if r.Action == proto.ActionRateLimit {
				rl := *r.RateLimit
				cr := &c.Rules[len(c.Rules)-1]
				cr.RateLimit = &rl
				if cr.limit, err = kernelLimit(cr.Identity, &rl); err != nil {
					return nil, fmt.Errorf("rule set %s: rules[%d]: %w", rs.Name, j, err)
				}
			}
		}
		if rs.Mode == proto.ModeAllow {
			fields = append(fields, ruleFields{proto: -1, icmpType: -1, ruleSet: rs})
			c.Rules = append(c.Rules, CompiledRule{
				Identity: proto.RuleIdentity(rs.Name, proto.ImplicitDropRuleID), RuleSet: rs.Name,
				ID: proto.ImplicitDropRuleID, Drop: true, DryRun: dry, Implicit: true,
			})
		}
		for k := first; k < len(c.Rules); k++ {
			c.Rules[k].Next = len(c.Rules)
		}
		if len(c.Rules) > MaxRules {
			return nil, fmt.Errorf("%w: more than %d rules (allow-mode sets count one more each)", ErrTooLarge, MaxRules)
		}
	}

	in := newInterner()
	var all Bitvec
	for i := range c.Rules {
		all.set(i)
	}
	in.intern(&all) // id 0: FW_VEC_ALL

	for _, f := range fields {
		if len(f.src) > 0 || len(f.srcSets) > 0 {
			c.Fields |= fieldSrc
		}
		if len(f.dst) > 0 || len(f.dstSets) > 0 {
			c.Fields |= fieldDst
		}
		if len(f.sports) > 0 {
			c.Fields |= fieldSport
		}
		if len(f.dports) > 0 {
			c.Fields |= fieldDport
		}
		if f.proto >= 0 {
			c.Fields |= fieldProto
		}
		if f.hasFlags {
			c.Fields |= fieldTCPFlags
		}
		if f.icmpType >= 0 {
			c.Fields |= fieldICMPType
		}
	}

	// Every set's members, parsed once: for the tables and, as keys, for
	// the stored document and incremental updates.
	inc := &incState{in: in, opts: opts, iface: iface, byRef: map[setRef]int{}, lineage: nextLineage()}
	parsed := make(map[setRef][]netip.Prefix)
	for i := range ordered {
		rs := &ordered[i]
		for _, name := range sortedSetNames(rs.Sets) {
			ps, err := rs.SetPrefixes(name)
			if err != nil {
				return nil, fmt.Errorf("rule set %s: set %s: %w", rs.Name, name, err)
			}
			ref := setRef{rs.Name, name}
			parsed[ref] = ps
			inc.byRef[ref] = len(inc.members)
			m, err := membersOf(i, name, ps)
			if err != nil {
				return nil, fmt.Errorf("rule set %s: %w", rs.Name, err)
			}
			inc.members = append(inc.members, m)
		}
	}

	src4, src6, srcState, err := compilePrefixes(in, fields, false, parsed)
	if err != nil {
		return nil, err
	}
	dst4, dst6, dstState, err := compilePrefixes(in, fields, true, parsed)
	if err != nil {
		return nil, err
	}
	inc.fields = [2]*fieldState{srcState, dstState}
	c.SrcPort = compilePorts(in, fields, func(f *ruleFields) [][2]uint16 { return f.sports })
	c.DstPort = compilePorts(in, fields, func(f *ruleFields) [][2]uint16 { return f.dports })
	c.Proto = compileBytes(in, fields, protoSlots, -1, func(f *ruleFields, b int) (bool, bool) {
		return f.proto < 0, f.proto == b
	})
	c.TCPFlags = compileBytes(in, fields, byteSlots, byteNone, func(f *ruleFields, b int) (bool, bool) {
		return !f.hasFlags, uint8(b)&f.flagMsk == f.flagValue
	})
	c.ICMPType = compileBytes(in, fields, byteSlots, byteNone, func(f *ruleFields, b int) (bool, bool) {
		return f.icmpType < 0, f.icmpType == b
	})

	// Big fields get their tables; the others (and only they) keep maps
	// for the LPM tries.
	if opts.big(len(src4.prefixes)) {
		c.Src4Range, c.Fields = buildRange4(src4), c.Fields|fieldSrc4Range
	} else {
		c.Src4 = src4.asMap()
	}
	if opts.big(len(dst4.prefixes)) {
		c.Dst4Range, c.Fields = buildRange4(dst4), c.Fields|fieldDst4Range
	} else {
		c.Dst4 = dst4.asMap()
	}
	if opts.big(len(src6.prefixes)) {
		c.Src6Range, c.Fields = buildRange6(src6), c.Fields|fieldSrc6Range
		if len(c.Src6Range.dense) > 0 {
			c.Fields |= fieldSrc6Dense
		}
	} else {
		c.Src6 = src6.asMap()
	}
	if opts.big(len(dst6.prefixes)) {
		c.Dst6Range, c.Fields = buildRange6(dst6), c.Fields|fieldDst6Range
		if len(c.Dst6Range.dense) > 0 {
			c.Fields |= fieldDst6Dense
		}
	} else {
		c.Dst6 = dst6.asMap()
	}

	if len(in.vecs) > MaxVectors {
		return nil, fmt.Errorf("%w: %d distinct rule combinations, the limit is %d", ErrTooLarge, len(in.vecs), MaxVectors)
	}
	c.Vecs = in.vecs

	inc.header = appliedDoc{Interface: iface, Options: opts, RuleSets: withoutMembers(ordered)}
	c.inc = inc
	if err := c.encode(); err != nil {
		return nil, err
	}
	return c, nil
}

// big says whether a field of n prefixes (of one family) uses a range
// table.
func (o CompileOptions) big(n int) bool {
	threshold := o.BigSetThreshold
	if threshold == 0 {
		threshold = DefaultBigSetThreshold
	}
	return threshold > 0 && n > threshold
}

// orderSets validates, filters by interface and sorts the rule sets.
func orderSets(sets []proto.RuleSet, iface string) ([]proto.RuleSet, error) {
	seen := make(map[string]bool)
	var ordered []proto.RuleSet
	for _, rs := range sets {
		if err := rs.Validate(); err != nil {
			return nil, fmt.Errorf("rule set %q: %w", rs.Name, err)
		}
		if seen[rs.Name] {
			return nil, fmt.Errorf("rule set %q given twice", rs.Name)
		}
		seen[rs.Name] = true
		if !appliesTo(rs, iface) {
			continue
		}
		ordered = append(ordered, rs)
	}
	if len(ordered) > proto.MaxRuleSetsPerHost {
		return nil, fmt.Errorf("%w: %d rule sets, the limit is %d", ErrTooLarge, len(ordered), proto.MaxRuleSetsPerHost)
	}
	sort.SliceStable(ordered, func(i, j int) bool {
		if ordered[i].Priority != ordered[j].Priority {
			return ordered[i].Priority < ordered[j].Priority
		}
		return ordered[i].Name < ordered[j].Name
	})
	return ordered, nil
}

func appliesTo(rs proto.RuleSet, iface string) bool {
	if iface == "" || len(rs.Interfaces) == 0 {
		return true
	}
	for _, name := range rs.Interfaces {
		if name == iface {
			return true
		}
	}
	return false
}

func parseRule(rs *proto.RuleSet, r proto.Rule) (ruleFields, error) {
	f := ruleFields{proto: -1, icmpType: -1, ruleSet: rs}
	for _, item := range r.Src {
		m, err := proto.ParseAddrMatch(item)
		if err != nil {
			return f, err
		}
		if m.Set != "" {
			f.srcSets = append(f.srcSets, m.Set)
		} else {
			f.src = append(f.src, m.Prefix)
		}
	}
	for _, item := range r.Dst {
		m, err := proto.ParseAddrMatch(item)
		if err != nil {
			return f, err
		}
		if m.Set != "" {
			f.dstSets = append(f.dstSets, m.Set)
		} else {
			f.dst = append(f.dst, m.Prefix)
		}
	}
	if num, any := proto.ProtocolNumber(r.Protocol); !any {
		f.proto = int(num)
	}
	for _, p := range r.SrcPorts {
		lo, hi, err := proto.ParsePortSpec(p)
		if err != nil {
			return f, err
		}
		f.sports = append(f.sports, [2]uint16{lo, hi})
	}
	for _, p := range r.DstPorts {
		lo, hi, err := proto.ParsePortSpec(p)
		if err != nil {
			return f, err
		}
		f.dports = append(f.dports, [2]uint16{lo, hi})
	}
	if r.TCPFlags != "" {
		v, m, err := proto.ParseTCPFlags(r.TCPFlags)
		if err != nil {
			return f, err
		}
		f.hasFlags, f.flagValue, f.flagMsk = true, v, m
	}
	if r.ICMPType != nil {
		f.icmpType = *r.ICMPType
	}
	return f, nil
}

// prefixTable is one field's prefixes of one family in sortPrefixes order,
// each with its final vector: the rules of that prefix and of every
// shorter prefix that contains it, plus the rules with no address match.
type prefixTable struct {
	prefixes []netip.Prefix
	ids      []VecID
}

func (t prefixTable) asMap() map[netip.Prefix]VecID {
	m := make(map[netip.Prefix]VecID, len(t.prefixes))
	for i, p := range t.prefixes {
		m[p] = t.ids[i]
	}
	return m
}

// compilePrefixes builds the src (or dst) prefix tables of both families,
// so that one longest-prefix lookup returns every rule an address
// satisfies. Both always hold a /0 entry: the rules that match any address.
// It works on sorted slices, not maps: at a million prefixes, map inserts
// and lookups cost seconds. members holds every set's parsed prefixes.
//
// It also returns the field's state for incremental updates: which
// sources (the rules without an address match, one rule's literal
// prefixes, one set) list each prefix.
func compilePrefixes(in *interner, fields []ruleFields, dst bool, members map[setRef][]netip.Prefix) (v4, v6 prefixTable, fs *fieldState, err error) {
	var wild Bitvec
	size := 2
	for _, f := range fields {
		size += len(f.src) + len(f.dst)
		for _, s := range append(f.srcSets, f.dstSets...) {
			size += len(members[setRef{f.ruleSet.Name, s}])
		}
	}
	fs = newFieldState()
	entries := make([]prefixEntry, 0, size)
	setRules := make(map[setRef]*Bitvec)
	var setOrder []setRef
	for i := range fields {
		f := &fields[i]
		lits, sets := f.src, f.srcSets
		if dst {
			lits, sets = f.dst, f.dstSets
		}
		if len(lits) == 0 && len(sets) == 0 {
			wild.set(i)
			continue
		}
		if len(lits) > 0 {
			var one Bitvec
			one.set(i)
			src := fs.addSource(in.intern(&one))
			for _, p := range lits {
				entries = append(entries, prefixEntry{p, src})
			}
		}
		for _, s := range sets {
			k := setRef{f.ruleSet.Name, s}
			if setRules[k] == nil {
				setRules[k] = new(Bitvec)
				setOrder = append(setOrder, k)
			}
			setRules[k].set(i)
		}
	}
	for _, k := range setOrder {
		ps, ok := members[k]
		if !ok {
			return v4, v6, nil, fmt.Errorf("rule set %s: unknown set %q", k.ruleSet, k.set)
		}
		src := fs.addSource(in.intern(setRules[k]))
		fs.bySet[k] = src
		for _, p := range ps {
			entries = append(entries, prefixEntry{p, src})
		}
	}
	fs.sources[wildSource] = in.intern(&wild)
	entries = append(entries,
		prefixEntry{netip.PrefixFrom(netip.IPv4Unspecified(), 0), wildSource},
		prefixEntry{netip.PrefixFrom(netip.IPv6Unspecified(), 0), wildSource})
	sortEntries(entries)

	// A prefix listed by several sources: one entry, with the combination
	// of its sources, whose vector is their union.
	type merged struct {
		p     netip.Prefix
		combo uint32
	}
	var list []merged
	var srcs []int32
	flush := func(p netip.Prefix) {
		slices.Sort(srcs)
		list = append(list, merged{p, fs.combos.of(slices.Compact(srcs))})
		srcs = srcs[:0]
	}
	for i, e := range entries {
		if i > 0 && entries[i-1].p != e.p {
			flush(entries[i-1].p)
		}
		srcs = append(srcs, e.src)
	}
	flush(entries[len(entries)-1].p)

	// Sorted by address then length, every prefix comes after the prefixes
	// that contain it: a stack of the enclosing prefixes gives each one's
	// inherited rules in one pass.
	type frame struct {
		p  netip.Prefix
		id VecID
	}
	var stack []frame
	prefixes := make([]netip.Prefix, len(list))
	ids := make([]VecID, len(list))
	combos := make([]uint32, len(list))
	for i, e := range list {
		for len(stack) > 0 && !(stack[len(stack)-1].p.Bits() <= e.p.Bits() && stack[len(stack)-1].p.Contains(e.p.Addr())) {
			stack = stack[:len(stack)-1]
		}
		id := fs.own(in, e.combo)
		if len(stack) > 0 {
			id = in.union(stack[len(stack)-1].id, id)
		}
		stack = append(stack, frame{e.p, id})
		prefixes[i], ids[i], combos[i] = e.p, id, e.combo
	}
	n4 := 0
	for n4 < len(prefixes) && prefixes[n4].Addr().Is4() {
		n4++
	}
	v4, v6 = prefixTable{prefixes[:n4], ids[:n4]}, prefixTable{prefixes[n4:], ids[n4:]}
	fs.v4 = newTable4(v4, combos[:n4])
	fs.v6 = newTable6(v6, combos[n4:])
	return v4, v6, fs, nil
}

type prefixEntry struct {
	p   netip.Prefix
	src int32
}

// sortPrefixes orders prefixes v4 first, then by address, then shorter
// first. It sorts integer keys: netip's comparisons cost three times more,
// which shows at a million prefixes.
func sortPrefixes(ps []netip.Prefix) {
	es := make([]prefixEntry, len(ps))
	for i, p := range ps {
		es[i].p = p
	}
	sortEntries(es)
	for i := range es {
		ps[i] = es[i].p
	}
}

// sortEntries sorts prefix entries in sortPrefixes order.
func sortEntries(es []prefixEntry) {
	type keyed struct {
		v6     bool
		hi, lo uint64
		bits   int
		e      prefixEntry
	}
	ks := make([]keyed, len(es))
	for i, e := range es {
		k := keyed{bits: e.p.Bits(), e: e}
		if a := e.p.Addr(); a.Is4() {
			b := a.As4()
			k.hi = uint64(binary.BigEndian.Uint32(b[:]))
		} else {
			b := a.As16()
			k.v6, k.hi, k.lo = true, binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
		}
		ks[i] = k
	}
	slices.SortFunc(ks, func(x, y keyed) int {
		if x.v6 != y.v6 {
			if x.v6 {
				return 1
			}
			return -1
		}
		if c := cmp.Compare(x.hi, y.hi); c != 0 {
			return c
		}
		if c := cmp.Compare(x.lo, y.lo); c != 0 {
			return c
		}
		return cmp.Compare(x.bits, y.bits)
	})
	for i := range ks {
		es[i] = ks[i].e
	}
}

// compilePorts maps every port (and FW_PORT_NONE) to the rules it satisfies,
// sweeping the range boundaries once.
func compilePorts(in *interner, fields []ruleFields, ranges func(*ruleFields) [][2]uint16) []VecID {
	var wild Bitvec
	type event struct {
		at    int
		rule  int
		delta int
	}
	var events []event
	for i := range fields {
		rs := ranges(&fields[i])
		if len(rs) == 0 {
			wild.set(i)
			continue
		}
		for _, r := range rs {
			events = append(events, event{int(r[0]), i, +1}, event{int(r[1]) + 1, i, -1})
		}
	}
	sort.Slice(events, func(a, b int) bool { return events[a].at < events[b].at })

	out := make([]VecID, portSlots)
	active := make([]int, len(fields))
	cur := wild
	curID := in.intern(&cur)
	e := 0
	for port := 0; port < portNone; {
		changed := false
		for e < len(events) && events[e].at == port {
			ev := events[e]
			active[ev.rule] += ev.delta
			if active[ev.rule] > 0 {
				cur.set(ev.rule)
			} else {
				cur[ev.rule/64] &^= 1 << (ev.rule % 64)
			}
			changed = true
			e++
		}
		if changed {
			curID = in.intern(&cur)
		}
		next := portNone
		if e < len(events) && events[e].at < next {
			next = events[e].at
		}
		for ; port < next; port++ {
			out[port] = curID
		}
	}
	out[portNone] = in.intern(&wild)
	return out
}

// compileBytes maps each value of a one-byte field (protocol, TCP flags,
// ICMP type) to the rules it satisfies; none, when >= 0, is the index of
// packets without the field, where only rules without the field match.
func compileBytes(in *interner, fields []ruleFields, slots, none int, match func(f *ruleFields, b int) (wild, hit bool)) []VecID {
	out := make([]VecID, slots)
	for b := 0; b < slots; b++ {
		var v Bitvec
		for i := range fields {
			wild, hit := match(&fields[i], b)
			if wild || (b != none && hit) {
				v.set(i)
			}
		}
		out[b] = in.intern(&v)
	}
	return out
}
