package bpf

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/xdpfw/xdpfw/bpf/reference"
	"github.com/xdpfw/xdpfw/proto"
)

// ruleGen makes random, valid rule sets and packets that hit them: a small
// pool of nested and overlapping prefixes (v4 and v6, /0 to /32 and /128)
// and of ports, so that random packets land on rule edges often.
type ruleGen struct {
	r        *rand.Rand
	prefixes []netip.Prefix
	ports    []uint16
}

func newRuleGen(seed uint64) *ruleGen {
	g := &ruleGen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	bases := []netip.Addr{
		netip.MustParseAddr("203.0.113.77"), netip.MustParseAddr("198.51.100.200"),
		netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("2001:db8:aa:bb::1"),
		netip.MustParseAddr("2001:db8:aa:cc::5"), netip.MustParseAddr("fd00::1"),
	}
	for _, b := range bases {
		max := 32
		if b.Is6() {
			max = 128
		}
		for _, bits := range []int{0, 1, 8, 16, 20, 24, 31, max / 2, max - 1, max} {
			p, _ := b.Prefix(bits)
			g.prefixes = append(g.prefixes, p)
		}
	}
	g.ports = []uint16{0, 1, 22, 53, 79, 80, 81, 443, 1023, 1024, 8080, 65534, 65535}
	return g
}

func (g *ruleGen) prefix() netip.Prefix { return g.prefixes[g.r.IntN(len(g.prefixes))] }
func (g *ruleGen) port() uint16         { return g.ports[g.r.IntN(len(g.ports))] }

func (g *ruleGen) portSpecs() []proto.PortSpec {
	var out []proto.PortSpec
	for n := g.r.IntN(3) + 1; n > 0; n-- {
		a, b := g.port(), g.port()
		if a > b {
			a, b = b, a
		}
		if a == b || g.r.IntN(2) == 0 {
			out = append(out, proto.PortSpec(fmt.Sprint(a)))
		} else {
			out = append(out, proto.PortSpec(fmt.Sprintf("%d-%d", a, b)))
		}
	}
	return out
}

var flagNames = []string{"fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"}

// ruleSets makes n rule sets with up to maxRules rules each.
func (g *ruleGen) ruleSets(n, maxRules int) []proto.RuleSet {
	var out []proto.RuleSet
	for s := 0; s < n; s++ {
		rs := proto.RuleSet{
			APIVersion: proto.APIVersion, Kind: proto.KindRuleSet,
			Name: fmt.Sprintf("set-%d", s), Priority: g.r.IntN(3),
			Mode: proto.ModeDeny, Sets: map[string]proto.PrefixSet{},
		}
		if g.r.IntN(3) == 0 {
			rs.Mode = proto.ModeAllow
		}
		if g.r.IntN(4) == 0 {
			rs.Enforcement = proto.EnforcementDryRun
		}
		for k := 0; k < 2; k++ {
			var members []string
			for m := g.r.IntN(6) + 1; m > 0; m-- {
				members = append(members, g.prefix().String())
			}
			rs.Sets[fmt.Sprintf("s%d", k)] = proto.PrefixSet{Prefixes: members}
		}
		for i, nr := 0, g.r.IntN(maxRules)+1; i < nr; i++ {
			rs.Rules = append(rs.Rules, g.rule(i))
		}
		out = append(out, rs)
	}
	return out
}

func (g *ruleGen) rule(i int) proto.Rule {
	r := proto.Rule{ID: fmt.Sprintf("r%d", i), Action: proto.ActionDrop}
	switch g.r.IntN(8) {
	case 0, 1, 2:
		r.Action = proto.ActionPass
	case 3:
		// A limit no test reaches: the rule passes, or with "next" goes
		// on to the next rule, as the reference takes it.
		r.Action = proto.ActionRateLimit
		r.RateLimit = &proto.RateLimit{PPS: proto.MaxPPS, Burst: proto.MaxBurst}
		if g.r.IntN(2) == 0 {
			r.RateLimit.WithinLimit = proto.WithinNext
		}
	}
	// One family per rule: a rule with IPv4 sources and IPv6
	// destinations could never match, and the validator refuses it.
	v6 := g.r.IntN(2) == 0
	addrs := func() []string {
		var out []string
		for n := g.r.IntN(3) + 1; n > 0; n-- {
			if g.r.IntN(4) == 0 {
				out = append(out, fmt.Sprintf("set:s%d", g.r.IntN(2)))
				continue
			}
			p := g.prefix()
			for p.Addr().Is6() != v6 {
				p = g.prefix()
			}
			out = append(out, p.String())
		}
		return out
	}
	if g.r.IntN(2) == 0 {
		r.Src = addrs()
	}
	if g.r.IntN(3) == 0 {
		r.Dst = addrs()
	}
	switch g.r.IntN(6) {
	case 0, 1:
		r.Protocol = proto.ProtoTCP
	case 2:
		r.Protocol = proto.ProtoUDP
	case 3:
		r.Protocol = proto.ProtoICMP
	case 4:
		r.Protocol = proto.ProtoICMPv6
	}
	if r.Protocol == proto.ProtoTCP || r.Protocol == proto.ProtoUDP {
		if g.r.IntN(2) == 0 {
			r.DstPorts = g.portSpecs()
		}
		if g.r.IntN(4) == 0 {
			r.SrcPorts = g.portSpecs()
		}
	}
	if r.Protocol == proto.ProtoTCP && g.r.IntN(3) == 0 {
		value, mask := flagNames[g.r.IntN(8)], flagNames[g.r.IntN(8)]
		if value == mask || g.r.IntN(3) == 0 {
			r.TCPFlags = value
		} else if g.r.IntN(2) == 0 {
			r.TCPFlags = value + "/" + value + "," + mask
		} else {
			r.TCPFlags = "/" + mask
		}
	}
	if (r.Protocol == proto.ProtoICMP || r.Protocol == proto.ProtoICMPv6) && g.r.IntN(2) == 0 {
		t := []int{0, 3, 8, 128, 129, 135}[g.r.IntN(6)]
		r.ICMPType = &t
	}
	// Rules the validator refuses (an icmp rule with only v6 addresses,
	// say) are made matchable by dropping their address lists.
	if r.Protocol == proto.ProtoICMP || r.Protocol == proto.ProtoICMPv6 {
		r.Src, r.Dst = nil, nil
	}
	return r
}

// addrNear picks an address inside or just outside a pool prefix.
func (g *ruleGen) addrNear(v6 bool) netip.Addr {
	for {
		p := g.prefix()
		if p.Addr().Is6() != v6 {
			continue
		}
		b := p.Addr().AsSlice()
		// Random host bits below the prefix; sometimes flip the last
		// prefix bit to land just outside it.
		for i := p.Bits(); i < len(b)*8; i++ {
			if g.r.IntN(2) == 0 {
				b[i/8] ^= 0x80 >> (i % 8)
			}
		}
		if p.Bits() > 0 && g.r.IntN(4) == 0 {
			i := p.Bits() - 1
			b[i/8] ^= 0x80 >> (i % 8)
		}
		a, _ := netip.AddrFromSlice(b)
		return a
	}
}

// packet makes a random packet near the rules.
func (g *ruleGen) packet() reference.Packet {
	v6 := g.r.IntN(2) == 0
	p := reference.Packet{
		Src: g.addrNear(v6), Dst: g.addrNear(v6),
		SrcPort: reference.NoValue, DstPort: reference.NoValue,
		TCPFlags: reference.NoValue, ICMPType: reference.NoValue,
	}
	switch g.r.IntN(5) {
	case 0, 1:
		p.Proto = 6
	case 2:
		p.Proto = 17
	case 3:
		p.Proto = 1
		if v6 {
			p.Proto = 58
		}
	default:
		p.Proto = uint8([]int{47, 50, 132}[g.r.IntN(3)])
	}
	if g.r.IntN(8) == 0 {
		p.Fragment = true
		return p
	}
	switch p.Proto {
	case 6, 17:
		p.SrcPort, p.DstPort = int(g.port()), int(g.port())
		if g.r.IntN(3) == 0 {
			p.SrcPort = g.r.IntN(65536)
		}
		if p.Proto == 6 {
			p.TCPFlags = g.r.IntN(256)
		}
	case 1, 58:
		p.ICMPType = []int{0, 3, 8, 128, 129, 135, 200}[g.r.IntN(7)]
	}
	return p
}

// TestCompiledMatchesReference checks the compiled tables, run by the Go
// model of the XDP search, against the linear reference classifier on
// random rule sets and random packets.
func TestCompiledMatchesReference(t *testing.T) {
	for seed := uint64(1); seed <= 150; seed++ {
		g := newRuleGen(seed)
		sets := g.ruleSets(1+g.r.IntN(3), 12)
		for i := range sets {
			if err := sets[i].Validate(); err != nil {
				t.Fatalf("seed %d: generated an invalid rule set: %v", seed, err)
			}
		}
		// Every fourth seed puts every prefix field in a range table.
		opts := CompileOptions{BigSetThreshold: -1}
		if seed%4 == 1 {
			opts.BigSetThreshold = 1
		}
		c, err := CompileWith(sets, "", opts)
		if err != nil {
			t.Fatalf("seed %d: compile: %v", seed, err)
		}
		ref, err := reference.New(sets, "")
		if err != nil {
			t.Fatalf("seed %d: reference: %v", seed, err)
		}
		for i := 0; i < 400; i++ {
			p := g.packet()
			want, got := ref.Classify(p), c.Classify(p)
			if !reflect.DeepEqual(want, got) {
				t.Fatalf("seed %d packet %+v:\ncompiled  %+v\nreference %+v", seed, p, got, want)
			}
		}
	}
}

func TestCompileIsDeterministic(t *testing.T) {
	g := newRuleGen(7)
	sets := g.ruleSets(3, 20)
	a, err := Compile(sets, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Compile(sets, "")
	if err != nil {
		t.Fatal(err)
	}
	// Each compile starts its own lineage of updates: the one field
	// that differs by design.
	a.inc.lineage = b.inc.lineage
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two compiles of the same rule sets differ")
	}
}
