package bpf

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/xdpfw/xdpfw/bpf/internal/packet"
	"github.com/xdpfw/xdpfw/bpf/reference"
	"github.com/xdpfw/xdpfw/proto"
)

// counters is a snapshot of every rule and action counter, by name.
type counters map[string]uint64

func snapshot(t testing.TB, fw *Firewall) counters {
	t.Helper()
	st, err := fw.Stats()
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	c := counters{}
	for _, r := range st.Rules {
		c[reference.Identity(r.RuleSet, r.ID)] = r.Packets
	}
	for name, a := range st.Actions {
		c["action:"+name] = a.Packets
	}
	return c
}

// delta lists the counters that moved between two snapshots.
func delta(before, after counters) counters {
	d := counters{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

const fieldRules = `
apiVersion: xdpfw/v1
kind: RuleSet
name: fields
mode: deny
rules:
  - id: office-ssh
    action: pass
    src: [198.51.100.0/24]
    protocol: tcp
    dstPorts: ["22"]
  - id: ssh
    action: drop
    protocol: tcp
    dstPorts: ["22"]
  - id: src4
    action: drop
    src: [203.0.113.0/24]
  - id: dst6
    action: drop
    dst: ["2001:db8:bad::/48"]
  - id: sport
    action: drop
    protocol: udp
    srcPorts: ["5353"]
  - id: dport-range
    action: drop
    protocol: tcp
    dstPorts: ["8000-8099"]
  - id: syn-only
    action: drop
    protocol: tcp
    tcpFlags: syn/syn,ack
    dstPorts: ["25"]
  - id: icmp-echo
    action: drop
    protocol: icmp
    icmpType: 8
  - id: icmp6-echo
    action: drop
    protocol: icmpv6
    icmpType: 128
  - id: udp-from-net
    action: drop
    src: [192.0.2.0/24]
    protocol: udp
`

const (
	syn    = proto.TCPFlagSYN
	synAck = proto.TCPFlagSYN | proto.TCPFlagACK
	ack    = proto.TCPFlagACK
)

func withVLANs(f packet.Frame, tags ...uint16) packet.Frame {
	for i, tpid := range tags {
		f.VLANs = append(f.VLANs, packet.VLAN{TPID: tpid, ID: uint16(100 + i)})
	}
	return f
}

func withFragment(f packet.Frame, offset uint16, more bool) packet.Frame {
	f.FragmentOffset, f.MoreFragments = offset, more
	if offset > 0 {
		f.Payload = make([]byte, 16)
	}
	return f
}

// TestEveryMatchField runs crafted packets through the program with
// BPF_PROG_RUN: each match field, v4 and v6, VLAN tags, IPv4 options, IPv6
// extension headers and fragments, and checks both the verdict and which
// counter moved.
func TestEveryMatchField(t *testing.T) {
	fw := openTestFirewall(t)
	sets := mustDecode(t, fieldRules)
	mustApply(t, fw, sets)
	ref, err := reference.New(sets, "")
	if err != nil {
		t.Fatal(err)
	}

	ipv6Ext := packet.TCP("2001:db8::1", "2001:db8::2", 1000, 8000, ack)
	ipv6Ext.IPv6ExtHeaders = []packet.ExtHeader{
		{Type: packet.ProtoHopByHop, Data: make([]byte, 6)},
		{Type: packet.ProtoDestOpts, Data: make([]byte, 14)},
		{Type: packet.ProtoRouting, Data: []byte{0, 0, 0, 0, 0, 0}},
		{Type: packet.ProtoAH, Data: make([]byte, 10)},
	}
	ipv4Opts := packet.TCP("198.18.0.1", "198.18.0.2", 1000, 8050, ack)
	ipv4Opts.IPv4Options = []byte{0x01, 0x01, 0x07, 0x07, 0x04, 0x00, 0x00, 0x00} // NOP NOP, record route

	cases := []struct {
		name  string
		frame packet.Frame
		rule  string // deciding rule id, "" for none
		drop  bool
		stat  string // the action counter that must move
	}{
		{"office ssh passes (first match wins)", packet.TCP("198.51.100.7", "198.18.0.2", 40000, 22, syn), "office-ssh", false, "pass-rule"},
		{"other ssh drops", packet.TCP("198.18.1.7", "198.18.0.2", 40000, 22, syn), "ssh", true, "drop-rule"},
		{"ssh over v6 drops", packet.TCP("2001:db8::7", "2001:db8::2", 40000, 22, syn), "ssh", true, "drop-rule"},
		{"src v4 prefix", packet.TCP("203.0.113.5", "198.18.0.2", 1000, 80, ack), "src4", true, "drop-rule"},
		{"src v4 just outside", packet.TCP("203.0.114.5", "198.18.0.2", 1000, 80, ack), "", false, "pass-default"},
		{"dst v6 prefix", packet.UDP("2001:db8::1", "2001:db8:bad:1::9", 1000, 80), "dst6", true, "drop-rule"},
		{"dst v6 just outside", packet.UDP("2001:db8::1", "2001:db8:bae::9", 1000, 80), "", false, "pass-default"},
		{"udp source port", packet.UDP("198.18.0.1", "198.18.0.2", 5353, 9), "sport", true, "drop-rule"},
		{"udp source port +1", packet.UDP("198.18.0.1", "198.18.0.2", 5354, 9), "", false, "pass-default"},
		{"tcp source port 5353 is not udp", packet.TCP("198.18.0.1", "198.18.0.2", 5353, 9, ack), "", false, "pass-default"},
		{"dport range low edge", packet.TCP("198.18.0.1", "198.18.0.2", 1000, 8000, ack), "dport-range", true, "drop-rule"},
		{"dport range high edge", packet.TCP("198.18.0.1", "198.18.0.2", 1000, 8099, ack), "dport-range", true, "drop-rule"},
		{"dport below range", packet.TCP("198.18.0.1", "198.18.0.2", 1000, 7999, ack), "", false, "pass-default"},
		{"dport above range", packet.TCP("198.18.0.1", "198.18.0.2", 1000, 8100, ack), "", false, "pass-default"},
		{"tcp flags syn", packet.TCP("198.18.0.1", "198.18.0.2", 1000, 25, syn), "syn-only", true, "drop-rule"},
		{"tcp flags syn+ack", packet.TCP("198.18.0.1", "198.18.0.2", 1000, 25, synAck), "", false, "pass-default"},
		{"icmp echo", packet.ICMP("198.18.0.1", "198.18.0.2", 8, 0), "icmp-echo", true, "drop-rule"},
		{"icmp echo reply", packet.ICMP("198.18.0.1", "198.18.0.2", 0, 0), "", false, "pass-default"},
		{"icmpv6 echo", packet.ICMP("2001:db8::1", "2001:db8::2", 128, 0), "icmp6-echo", true, "drop-rule"},
		{"icmpv6 neighbour solicitation", packet.ICMP("2001:db8::1", "2001:db8::2", 135, 0), "", false, "pass-default"},
		{"gre from a dropped source", packet.IP("203.0.113.9", "198.18.0.2", 47), "src4", true, "drop-rule"},
		{"802.1Q tag", withVLANs(packet.TCP("203.0.113.5", "198.18.0.2", 1, 80, ack), packet.EtherTypeVLAN), "src4", true, "drop-rule"},
		{"QinQ tags", withVLANs(packet.TCP("203.0.113.5", "198.18.0.2", 1, 80, ack), packet.EtherTypeQinQ, packet.EtherTypeVLAN), "src4", true, "drop-rule"},
		{"three tags is a parse error", withVLANs(packet.TCP("203.0.113.5", "198.18.0.2", 1, 80, ack), packet.EtherTypeQinQ, packet.EtherTypeVLAN, packet.EtherTypeVLAN), "", false, "parse-error"},
		{"ipv4 options", ipv4Opts, "dport-range", true, "drop-rule"},
		{"ipv6 extension headers", ipv6Ext, "dport-range", true, "drop-rule"},
		{"v4 first fragment has ports", withFragment(packet.UDP("198.18.0.1", "198.18.0.2", 5353, 9), 0, true), "sport", true, "drop-rule"},
		{"v4 non-first fragment has no ports", withFragment(packet.UDP("198.18.0.1", "198.18.0.2", 5353, 9), 100, false), "", false, "pass-default"},
		{"v4 non-first fragment matches address and protocol", withFragment(packet.UDP("192.0.2.9", "198.18.0.2", 1, 9), 100, true), "udp-from-net", true, "drop-rule"},
		{"v6 first fragment has ports", withFragment(packet.UDP("2001:db8::1", "2001:db8::2", 5353, 9), 0, true), "sport", true, "drop-rule"},
		{"v6 non-first fragment has no ports", withFragment(packet.UDP("2001:db8::1", "2001:db8::2", 5353, 9), 64, false), "", false, "pass-default"},
		{"v6 non-first fragment matches address", withFragment(packet.UDP("2001:db8::1", "2001:db8:bad::2", 1, 9), 64, false), "dst6", true, "drop-rule"},
		{"arp is not ip", packet.NonIP(packet.EtherTypeARP, make([]byte, 28)), "", false, "non-ip"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			frame := tc.frame.Bytes()
			before := snapshot(t, fw)
			got := run(t, fw, frame)
			d := delta(before, snapshot(t, fw))

			want := uint32(xdpPass)
			if tc.drop {
				want = xdpDrop
			}
			if got != want {
				t.Errorf("verdict %d, want %d", got, want)
			}
			wantDelta := counters{"action:" + tc.stat: 1}
			if tc.rule != "" {
				wantDelta[reference.Identity("fields", tc.rule)] = 1
			}
			if tc.frame.FragmentOffset > 0 {
				wantDelta["action:fragment"] = 1
			}
			if fmt.Sprint(d) != fmt.Sprint(wantDelta) {
				t.Errorf("counters moved %v, want %v", d, wantDelta)
			}

			// The Go mirror of the parser and the reference classifier
			// agree with the kernel on every case.
			p, res := packet.Parse(frame)
			if res == reference.ParseOK {
				r := ref.Classify(p)
				if r.Drop != tc.drop || r.Rule != ruleOrEmpty("fields", tc.rule) {
					t.Errorf("reference says %+v", r)
				}
			} else if tc.stat != res.String() {
				t.Errorf("Go parser says %s", res)
			}
		})
	}
}

func ruleOrEmpty(set, id string) string {
	if id == "" {
		return ""
	}
	return reference.Identity(set, id)
}

// TestTruncatedFrames cuts frames at every header boundary and one byte
// short of it: the program must never read out of bounds (the verifier
// guarantees that), must agree with the Go parser on what it can read, and
// must apply the parse-error policy to what it cannot.
func TestTruncatedFrames(t *testing.T) {
	fw := openTestFirewall(t)
	sets := mustDecode(t, fieldRules)
	mustApply(t, fw, sets)
	ref, err := reference.New(sets, "")
	if err != nil {
		t.Fatal(err)
	}
	v6ext := packet.UDP("2001:db8::1", "2001:db8:bad::2", 5353, 9)
	v6ext.IPv6ExtHeaders = []packet.ExtHeader{
		{Type: packet.ProtoHopByHop, Data: make([]byte, 6)},
		{Type: packet.ProtoFragment},
	}
	v6ext.MoreFragments = true
	frames := []packet.Frame{
		packet.TCP("203.0.113.5", "198.18.0.2", 1, 22, syn),
		withVLANs(packet.UDP("198.18.0.1", "198.18.0.2", 5353, 9), packet.EtherTypeQinQ, packet.EtherTypeVLAN),
		packet.ICMP("198.18.0.1", "198.18.0.2", 8, 0),
		packet.ICMP("2001:db8::1", "2001:db8::2", 128, 0),
		v6ext,
	}
	for _, dropErrors := range []bool{false, true} {
		if err := fw.SetPolicy(dropErrors, false); err != nil {
			t.Fatal(err)
		}
		for fi, f := range frames {
			full := f.Bytes()
			for _, b := range f.Boundaries() {
				for _, cut := range []int{b - 1, b} {
					if cut < 0 || cut > len(full) {
						continue
					}
					frame := full[:cut]
					if len(frame) < 14 {
						// BPF_PROG_RUN refuses frames shorter than an
						// Ethernet header; the kernel never hands XDP one.
						continue
					}
					p, res := packet.Parse(frame)
					want := uint32(xdpPass)
					switch res {
					case reference.ParseOK:
						if ref.Classify(p).Drop {
							want = xdpDrop
						}
					case reference.ParseError:
						if dropErrors {
							want = xdpDrop
						}
					}
					before := snapshot(t, fw)
					got := run(t, fw, frame)
					d := delta(before, snapshot(t, fw))
					if got != want {
						t.Errorf("frame %d cut at %d (%s, drop errors %v): verdict %d, want %d", fi, cut, res, dropErrors, got, want)
					}
					if res == reference.ParseError && d["action:parse-error"] != 1 {
						t.Errorf("frame %d cut at %d: parse-error counter moved by %d, want 1", fi, cut, d["action:parse-error"])
					}
				}
			}
		}
	}
}

// TestNonIPPolicy: ARP passes by default, even under an allow list, and
// drops only when configured.
func TestNonIPPolicy(t *testing.T) {
	fw := openTestFirewall(t)
	mustApply(t, fw, mustDecode(t, `
apiVersion: xdpfw/v1
kind: RuleSet
name: strict
mode: allow
rules: []
`))
	arp := packet.NonIP(packet.EtherTypeARP, make([]byte, 28)).Bytes()
	if got := run(t, fw, arp); got != xdpPass {
		t.Fatalf("arp under an empty allow list: verdict %d, want pass", got)
	}
	if got := run(t, fw, packet.UDP("198.18.0.1", "198.18.0.2", 1, 2).Bytes()); got != xdpDrop {
		t.Fatalf("udp under an empty allow list: verdict %d, want drop", got)
	}
	if err := fw.SetPolicy(false, true); err != nil {
		t.Fatal(err)
	}
	if got := run(t, fw, arp); got != xdpDrop {
		t.Fatalf("arp with non-ip drop: verdict %d, want drop", got)
	}
}

// TestKernelMatchesReference applies random rule sets and runs random
// packets through the program: every verdict must be the reference
// classifier's, and every rule counter must count exactly the packets the
// reference says that rule decided (dry-run decisions included).
func TestKernelMatchesReference(t *testing.T) {
	fw := openTestFirewall(t)
	for seed := uint64(1); seed <= 25; seed++ {
		g := newRuleGen(seed * 7919)
		sets := g.ruleSets(1+g.r.IntN(3), 15)
		// Seeds alternate between the LPM tries and the big-set range
		// tables, so applies also switch between the two.
		opts := CompileOptions{BigSetThreshold: -1}
		if seed%2 == 0 {
			opts.BigSetThreshold = 1
		}
		c, err := CompileWith(sets, fw.Interface(), opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fw.Apply(c); err != nil {
			t.Fatalf("seed %d: apply: %v", seed, err)
		}
		ref, err := reference.New(sets, "")
		if err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, fw)
		want := counters{}
		for i := 0; i < 300; i++ {
			p := g.packet()
			frame := frameFor(p).Bytes()
			r := ref.Classify(p)
			got := run(t, fw, frame)
			if (got == xdpDrop) != r.Drop {
				t.Fatalf("seed %d packet %+v: verdict %d, reference %+v", seed, p, got, r)
			}
			if r.Rule != "" {
				want[r.Rule]++
			}
			for _, d := range r.DryRun {
				want[d.Rule]++
				if d.Drop {
					want["action:would-drop"]++
				}
			}
		}
		d := delta(before, snapshot(t, fw))
		for k, v := range want {
			if d[k] != v {
				t.Fatalf("seed %d: counter %s moved %d, reference says %d (all: %v)", seed, k, d[k], v, d)
			}
		}
	}
}

// frameFor builds a frame carrying a packet's fields.
func frameFor(p reference.Packet) packet.Frame {
	f := packet.Frame{Src: p.Src, Dst: p.Dst, Proto: p.Proto}
	if p.SrcPort != reference.NoValue {
		f.SrcPort, f.DstPort = uint16(p.SrcPort), uint16(p.DstPort)
	}
	if p.TCPFlags != reference.NoValue {
		f.TCPFlags = uint8(p.TCPFlags)
	}
	if p.ICMPType != reference.NoValue {
		f.ICMPType = uint8(p.ICMPType)
	}
	if p.Fragment {
		f.FragmentOffset, f.Payload = 8, make([]byte, 8)
	}
	return f
}

// FuzzProgram feeds random frames to the XDP program through BPF_PROG_RUN
// and compares its verdict with the Go mirror of the parser and the
// reference classifier.
func FuzzProgram(f *testing.F) {
	fw := openTestFirewall(f)
	sets := mustDecode(f, fieldRules)
	mustApply(f, fw, sets)
	ref, err := reference.New(sets, "")
	if err != nil {
		f.Fatal(err)
	}
	seeds := []packet.Frame{
		packet.TCP("198.51.100.7", "198.18.0.2", 40000, 22, syn),
		packet.UDP("2001:db8::1", "2001:db8:bad:1::9", 5353, 80),
		packet.ICMP("198.18.0.1", "198.18.0.2", 8, 0),
		packet.ICMP("2001:db8::1", "2001:db8::2", 128, 0),
		withVLANs(packet.TCP("203.0.113.5", "198.18.0.2", 1, 8000, ack), packet.EtherTypeQinQ, packet.EtherTypeVLAN),
		withFragment(packet.UDP("192.0.2.9", "198.18.0.2", 1, 9), 100, true),
	}
	for _, s := range seeds {
		f.Add(s.Bytes())
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 {
			return // BPF_PROG_RUN refuses frames shorter than Ethernet
		}
		want := uint32(xdpPass)
		if p, res := packet.Parse(frame); res == reference.ParseOK && ref.Classify(p).Drop {
			want = xdpDrop
		}
		if got := run(t, fw, frame); got != want {
			p, res := packet.Parse(frame)
			t.Fatalf("frame %x: kernel %d, Go parser %s %+v wants %d", frame, got, res, p, want)
		}
	})
}

// TestRange4EveryAddressOfDenseSlash16s lays out /16s whose trees have
// every depth the kernel walks (one line, two, three and four levels), and
// checks every address of them, and of their neighbours' edges, in the
// kernel against the reference classifier.
func TestRange4EveryAddressOfDenseSlash16s(t *testing.T) {
	fw := openTestFirewall(t)
	var dense []string
	for k := 0; k < 2100; k++ { // 4,200 intervals: four levels
		dense = append(dense, fmt.Sprintf("203.0.%d.%d/32", k*3/256, k*3%256))
	}
	var sparse []string
	for k := 0; k < 100; k++ { // 200 intervals: two levels
		sparse = append(sparse, fmt.Sprintf("198.51.%d.%d/31", k*600/256, k*600%256))
	}
	var mid []string
	for k := 0; k < 700; k++ { // 1,400 intervals: three levels
		mid = append(mid, fmt.Sprintf("192.0.%d.%d/32", k*90/256, k*90%256))
	}
	doc := `
apiVersion: xdpfw/v1
kind: RuleSet
name: dense
mode: deny
sets:
  dense: [` + strings.Join(dense, ", ") + `]
  sparse: [` + strings.Join(sparse, ", ") + `]
  mid: [` + strings.Join(mid, ", ") + `]
rules:
  - id: few
    action: drop
    src: [100.64.100.64/26, 100.64.100.77/32, 100.64.100.200/30]
  - id: pass-nested
    action: pass
    src: [203.0.0.12/32, 198.51.0.0/20]
  - id: many
    action: drop
    src: [set:dense, set:sparse, set:mid]
  - id: wide
    action: drop
    src: [203.0.112.0/23]
    protocol: tcp
`
	sets := mustDecode(t, doc)
	c, err := CompileWith(sets, fw.Interface(), CompileOptions{BigSetThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	if c.Src4Range == nil {
		t.Fatal("the sources are not in a range table")
	}
	depths := map[int]bool{}
	for i := range r4Directs {
		if n := len(c.Src4Range.partsOf(i)); n > 1 {
			depths[len(treeShape(n))] = true
		}
	}
	for d := 1; d <= r4MaxDepth; d++ {
		if !depths[d] {
			t.Fatalf("no /16 with a tree of depth %d (%v): the test does not cover it", d, depths)
		}
	}
	if _, err := fw.Apply(c); err != nil {
		t.Fatal(err)
	}
	ref, err := reference.New(sets, "")
	if err != nil {
		t.Fatal(err)
	}
	check := func(src string) {
		for _, f := range []packet.Frame{
			packet.UDP(src, "198.18.0.2", 1, 2),
			packet.TCP(src, "198.18.0.2", 1, 2, ack),
		} {
			p, _ := packet.Parse(f.Bytes())
			want := ref.Classify(p).Drop
			if got := run(t, fw, f.Bytes()); (got == xdpDrop) != want {
				t.Fatalf("%s proto %d: verdict %d, reference drop=%v", p.Src, p.Proto, got, want)
			}
		}
	}
	for _, net := range []string{"203.0", "198.51", "192.0"} {
		for a := 0; a < 1<<16; a++ {
			if net != "203.0" && a > 24*256 { // past the last prefix: one check a /24
				a |= 255
			}
			check(fmt.Sprintf("%s.%d.%d", net, a>>8, a&255))
		}
	}
	for _, edge := range []string{"202.255.255.255", "203.1.0.0", "198.50.255.255", "198.52.0.0", "100.64.100.63", "100.64.100.64",
		"100.64.100.77", "100.64.100.78", "100.64.100.127", "100.64.100.128", "100.64.100.199", "100.64.100.203", "100.64.100.204"} {
		check(edge)
	}
}

// TestRange6InTheKernel puts IPv6 prefixes that give every kind of entry
// of the range table (structured6) and random clustered prefixes of every
// length under rules with different vectors, and checks edge and random
// addresses in the kernel against the reference classifier.
func TestRange6InTheKernel(t *testing.T) {
	fw := openTestFirewall(t)
	r := rand.New(rand.NewPCG(4, 8))
	bases := []uint64{0x20010db8_00000000, 0x20010db8_aaaa0000, 0xfd00_0000_0000_0000, 0x2001_0dbd_0000_0000}
	addr := func() netip.Addr {
		hi := bases[r.IntN(len(bases))] | r.Uint64()&0xFFFF_FFFF
		if r.IntN(3) == 0 {
			hi &^= 0xFF0000 // crowd a few /48s
		}
		return v6Addr(hi, r.Uint64())
	}
	rs, all := structuredRuleSet(r)
	members := [][]string{}
	for _, name := range []string{"s0", "s1", "s2", "s3"} {
		members = append(members, rs.Sets[name].Prefixes)
	}
	for s := range members {
		for i := 0; i < 600; i++ {
			bits := []int{33, 40, 47, 48, 49, 52, 56, 60, 64, 64, 64, 65, 128}[r.IntN(13)]
			p, _ := addr().Prefix(bits)
			members[s] = append(members[s], p.String())
			all = append(all, p)
		}
		slices.Sort(members[s])
		rs.Sets[fmt.Sprintf("s%d", s)] = proto.PrefixSet{Prefixes: slices.Compact(members[s])}
	}
	sets := []proto.RuleSet{rs}
	c, err := CompileWith(sets, fw.Interface(), CompileOptions{BigSetThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	if missing := missingKinds(placeInMemory(t, c.Src6Range).kinds()); len(missing) > 0 {
		t.Fatalf("no %v: the rule set does not exercise every kind (%v)", missing, placeInMemory(t, c.Src6Range).kinds())
	}
	if _, err := fw.Apply(c); err != nil {
		t.Fatal(err)
	}
	ref, err := reference.New(sets, "")
	if err != nil {
		t.Fatal(err)
	}
	probe := func(a netip.Addr) {
		for _, f := range []packet.Frame{packet.UDP(a.String(), "2001:db8::2", 1, 2), packet.TCP(a.String(), "2001:db8::2", 1, 2, ack)} {
			p, _ := packet.Parse(f.Bytes())
			want := ref.Classify(p).Drop
			if got := run(t, fw, f.Bytes()); (got == xdpDrop) != want {
				t.Fatalf("%s proto %d: verdict %d, reference drop=%v", a, p.Proto, got, want)
			}
		}
	}
	for _, p := range all {
		for _, a := range edges(p) {
			probe(a)
		}
	}
	for i := 0; i < 3000; i++ {
		probe(addr())
	}

	// A table of scattered /48 to /128s only: no dense /32, so the
	// program skips H32.
	sparse := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "sparse", Mode: proto.ModeDeny,
		Sets: map[string]proto.PrefixSet{}}
	all = all[:0]
	for s := 0; s < 2; s++ {
		members := []string{[]string{"2000::/3", "2a00::/16"}[s]}
		for i := 0; i < 400; i++ {
			p := prefix6(0x2000_0000_0000_0000|r.Uint64()>>3, r.Uint64(), []int{48, 52, 56, 60, 64, 64, 96, 128}[r.IntN(8)])
			members = append(members, p.String())
			all = append(all, p)
		}
		name := fmt.Sprintf("s%d", s)
		slices.Sort(members)
		sparse.Sets[name] = proto.PrefixSet{Prefixes: slices.Compact(members)}
		sparse.Rules = append(sparse.Rules, proto.Rule{ID: "r-" + name, Action: []proto.Action{proto.ActionDrop, proto.ActionPass}[s],
			Src: []string{"set:" + name}, Protocol: proto.ProtoUDP})
	}
	sets = []proto.RuleSet{sparse}
	if c, err = CompileWith(sets, fw.Interface(), CompileOptions{BigSetThreshold: 1}); err != nil {
		t.Fatal(err)
	}
	if c.Fields&fieldSrc6Dense != 0 || c.Fields&fieldSrc6Range == 0 {
		t.Fatalf("fields %#x: want a range table without dense /32s", c.Fields)
	}
	if _, err := fw.Apply(c); err != nil {
		t.Fatal(err)
	}
	if ref, err = reference.New(sets, ""); err != nil {
		t.Fatal(err)
	}
	for _, p := range all {
		for _, a := range edges(p) {
			probe(a)
		}
	}
}

// structuredRuleSet puts the prefixes of structured6 in four sets (the
// shorter than /32 in a set of their own: the longer ones' vectors then
// differ from theirs) of rules of different actions, and returns them.
func structuredRuleSet(r *rand.Rand) (proto.RuleSet, []netip.Prefix) {
	rs := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "v6", Mode: proto.ModeDeny,
		Sets: map[string]proto.PrefixSet{}}
	members := make([][]string, 4)
	var all []netip.Prefix
	structure := map[netip.Prefix]VecID{}
	structured6(structure, func() VecID { return VecID(r.IntN(3)) })
	for p, s := range structure {
		if p.Bits() < 32 {
			s = 3
		}
		members[s] = append(members[s], p.String())
		all = append(all, p)
	}
	// Short prefixes, but none over the structured ones: a prefix of
	// every rule over them would give their /48s all one vector.
	members[0] = append(members[0], "fd00::/16", "2001:db8::/31")
	members[1] = append(members[1], "2001:db8:aa00::/40")
	for s := range members {
		name := fmt.Sprintf("s%d", s)
		slices.Sort(members[s])
		rs.Sets[name] = proto.PrefixSet{Prefixes: members[s]}
		action := proto.ActionDrop
		if s%2 == 1 {
			action = proto.ActionPass
		}
		rs.Rules = append(rs.Rules, proto.Rule{ID: "r-" + name, Action: action, Src: []string{"set:" + name}, Protocol: proto.ProtoUDP})
	}
	rs.Rules = append(rs.Rules, proto.Rule{ID: "tail", Action: proto.ActionDrop, Src: []string{"set:s1"}})
	return rs, all
}

// TestSetChangesKeepMatchingTheReference applies random sequences of adds
// and deletes to nested and overlapping prefix sets (v4 and v6; /0, /32 and
// /128 edges), in both table layouts, and checks the kernel against the
// reference classifier after every step, each step applied through the
// inactive generation.
func TestSetChangesKeepMatchingTheReference(t *testing.T) {
	fw := openTestFirewall(t)
	for _, threshold := range []int{-1, 1} {
		g := newRuleGen(uint64(100 + threshold))
		sets := g.ruleSets(2, 10)
		rs := &sets[0]
		rs.Rules = append(rs.Rules, proto.Rule{ID: "feed", Action: proto.ActionDrop, Src: []string{"set:s0"}})
		members := map[string]bool{}
		for _, m := range rs.Sets["s0"].Prefixes {
			members[m] = true
		}
		for step := 0; step < 30; step++ {
			// Add or delete a few pool prefixes (nested, overlapping, /0,
			// host routes), sometimes emptying the set.
			for k := 0; k < 1+g.r.IntN(4); k++ {
				p := g.prefix().String()
				if members[p] && len(members) > 0 {
					delete(members, p)
				} else {
					members[p] = true
				}
			}
			var list []string
			for m := range members {
				list = append(list, m)
			}
			rs.Sets["s0"] = proto.PrefixSet{Prefixes: list}
			c, err := CompileWith(sets, fw.Interface(), CompileOptions{BigSetThreshold: threshold})
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if _, err := fw.Apply(c); err != nil {
				t.Fatalf("step %d: apply: %v", step, err)
			}
			ref, err := reference.New(sets, "")
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 150; i++ {
				p := g.packet()
				r := ref.Classify(p)
				if got := run(t, fw, frameFor(p).Bytes()); (got == xdpDrop) != r.Drop {
					t.Fatalf("threshold %d step %d packet %+v: verdict %d, reference %+v", threshold, step, p, got, r)
				}
			}
		}
	}
}
