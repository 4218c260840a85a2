package bpf

import (
	"math/bits"
	"net/netip"

	"github.com/xdpfw/xdpfw/bpf/reference"
	"github.com/xdpfw/xdpfw/proto"
)

// Classify runs the compiled tables in Go, exactly as the XDP program does:
// one lookup per field, AND, lowest set bit. Tests check it against the
// reference classifier, and the kernel against it. Rate-limit rules decide
// as if the packet were within their limit.
func (c *Compiled) Classify(p reference.Packet) reference.Result {
	var res reference.Result
	v := [7]*Bitvec{}
	for i := range v {
		v[i] = &c.Vecs[0]
	}
	lookup := func(table4, table6 map[netip.Prefix]VecID, rt4 *range4, rt6 *range6, a netip.Addr) *Bitvec {
		if rt4 != nil && a.Is4() {
			return &c.Vecs[rt4.lookup(a)]
		}
		if rt6 != nil && a.Is6() {
			return &c.Vecs[rt6.lookup(a)]
		}
		table, bits := table4, 32
		if a.Is6() {
			table, bits = table6, 128
		}
		for l := bits; l >= 0; l-- {
			pfx, _ := a.Prefix(l)
			if id, ok := table[pfx]; ok {
				return &c.Vecs[id]
			}
		}
		return &Bitvec{}
	}
	idx := func(val, none int) int {
		if val == reference.NoValue {
			return none
		}
		return val
	}
	if c.Fields&fieldSrc != 0 {
		v[0] = lookup(c.Src4, c.Src6, c.Src4Range, c.Src6Range, p.Src)
	}
	if c.Fields&fieldDst != 0 {
		v[1] = lookup(c.Dst4, c.Dst6, c.Dst4Range, c.Dst6Range, p.Dst)
	}
	if c.Fields&fieldSport != 0 {
		v[2] = &c.Vecs[c.SrcPort[idx(p.SrcPort, portNone)]]
	}
	if c.Fields&fieldDport != 0 {
		v[3] = &c.Vecs[c.DstPort[idx(p.DstPort, portNone)]]
	}
	if c.Fields&fieldProto != 0 {
		v[4] = &c.Vecs[c.Proto[p.Proto]]
	}
	if c.Fields&fieldTCPFlags != 0 {
		v[5] = &c.Vecs[c.TCPFlags[idx(p.TCPFlags, byteNone)]]
	}
	if c.Fields&fieldICMPType != 0 {
		v[6] = &c.Vecs[c.ICMPType[idx(p.ICMPType, byteNone)]]
	}
	summary := ^uint64(0)
	for _, b := range v {
		summary &= b.summary()
	}
	start := 0
	for round := 0; summary != 0 && round < maxRounds; round++ {
		w := bits.TrailingZeros64(summary)
		word := ^uint64(0)
		for _, b := range v {
			word &= b[w]
		}
		if w == start/64 {
			word &= ^uint64(0) << (start % 64)
		}
		if word == 0 {
			summary &= summary - 1
			continue
		}
		index := w*64 + bits.TrailingZeros64(word)
		r := c.Rules[index]
		if r.RateLimit != nil && r.RateLimit.WithinLimit == proto.WithinNext {
			// Within its limit (Classify has no clock), the packet goes
			// on to the next rule.
			start = index + 1
			if start >= MaxRules {
				break
			}
			summary &= ^uint64(0) << (start / 64)
			continue
		}
		if !r.DryRun {
			res.Rule, res.Drop = r.Identity, r.Drop
			return res
		}
		res.DryRun = append(res.DryRun, reference.DryRunDecision{Rule: r.Identity, Drop: r.Drop})
		start = r.Next
		if start >= MaxRules {
			break
		}
		summary &= ^uint64(0) << (start / 64)
	}
	return res
}
