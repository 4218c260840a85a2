package packet

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/xdpfw/xdpfw/bpf/reference"
)

// frameCase is a well-formed frame and the shortest prefix of it the
// parser accepts, worked out by hand from firewall.c: the furthest byte
// any of its bounds checks asks for.
type frameCase struct {
	name   string
	frame  Frame
	minLen int
}

func wellFormed() []frameCase {
	v4 := func(f Frame, edit func(*Frame)) Frame { edit(&f); return f }
	return []frameCase{
		{"tcp4 syn", TCP("10.0.0.1", "10.0.0.2", 1234, 80, flagSYN), 54},
		{"tcp4 payload", v4(TCP("10.0.0.1", "192.168.1.1", 80, 1234, flagACK|flagPSH), func(f *Frame) { f.Payload = []byte("hello") }), 54},
		{"tcp4 router alert", v4(TCP("10.0.0.1", "10.0.0.2", 1, 2, flagFIN), func(f *Frame) { f.IPv4Options = []byte{0x94, 4, 0, 0} }), 58},
		{"tcp4 5 option bytes", v4(TCP("10.0.0.1", "10.0.0.2", 1, 2, 0xFF), func(f *Frame) { f.IPv4Options = []byte{1, 1, 1, 1, 1} }), 62},
		{"udp4", UDP("10.0.0.1", "10.0.0.2", 53, 5353), 42},
		{"udp4 odd payload", v4(UDP("10.0.0.1", "10.0.0.2", 53, 5353), func(f *Frame) { f.Payload = []byte{1, 2, 3} }), 42},
		{"udp4 padded", v4(UDP("10.0.0.1", "10.0.0.2", 0, 65535), func(f *Frame) { f.Pad = true }), 42},
		{"icmp4 echo", ICMP("10.0.0.1", "10.0.0.2", 8, 0), 38},
		{"icmp4 port unreachable", ICMP("10.0.0.1", "10.0.0.2", 3, 3), 38},
		{"gre4", v4(IP("10.0.0.1", "10.0.0.2", ProtoGRE), func(f *Frame) { f.Payload = []byte{0, 0, 8, 0} }), 34},
		// Only the header-length check stands between a truncated option
		// and ParseOK when there is no L4 header to read.
		{"gre4 router alert", v4(IP("10.0.0.1", "10.0.0.2", ProtoGRE), func(f *Frame) { f.IPv4Options = []byte{0x94, 4, 0, 0} }), 38},
		{"esp4 empty", IP("10.0.0.1", "10.0.0.2", ProtoESP), 34},
		{"tcp4 first fragment", v4(TCP("10.0.0.1", "10.0.0.2", 1, 2, flagSYN), func(f *Frame) { f.MoreFragments = true }), 54},
		{"tcp4 middle fragment", v4(TCP("10.0.0.1", "10.0.0.2", 1, 2, flagSYN), func(f *Frame) {
			f.FragmentOffset, f.MoreFragments, f.Payload = 185, true, make([]byte, 16)
		}), 34},
		{"udp4 last fragment", v4(UDP("10.0.0.1", "10.0.0.2", 1, 2), func(f *Frame) { f.FragmentOffset = 1 }), 34},
		// The C reads ICMPv6 over IPv4 (and ICMP over IPv6) alike.
		{"icmpv6 over ipv4", v4(IP("10.0.0.1", "10.0.0.2", ProtoICMPv6), func(f *Frame) { f.ICMPType = 135 }), 38},
		{"tcp6", TCP("2001:db8::1", "2001:db8::2", 50000, 443, flagSYN|flagACK), 74},
		{"udp6", UDP("2001:db8::1", "ff02::fb", 5353, 5353), 62},
		{"icmp6 echo", ICMP("2001:db8::1", "2001:db8::2", 128, 0), 58},
		{"icmp over ipv6", v4(IP("fe80::1", "fe80::2", ProtoICMP), func(f *Frame) { f.ICMPType = 8 }), 58},
		{"udp6 v4-mapped", UDP("::ffff:10.0.0.1", "::ffff:10.0.0.2", 1, 2), 62},
		{"tcp6 every ext header", everyExtHeader(), 138},
		{"udp6 non-first fragment", v4(UDP("2001:db8::1", "2001:db8::2", 1, 2), func(f *Frame) { f.FragmentOffset = 10 }), 62},
		{"tcp6 fragment after hop-by-hop", v4(TCP("2001:db8::1", "2001:db8::2", 1, 2, flagSYN), func(f *Frame) {
			f.IPv6ExtHeaders = []ExtHeader{{Type: ProtoHopByHop}}
			f.FragmentOffset, f.MoreFragments = 100, true
		}), 70},
		{"udp6 first fragment", v4(UDP("2001:db8::1", "2001:db8::2", 1, 2), func(f *Frame) { f.MoreFragments = true }), 70},
		// With no L4 header to read, only the first two bytes of the last
		// extension header are checked.
		{"gre6 after dest opts", v4(IP("2001:db8::1", "2001:db8::2", ProtoGRE), func(f *Frame) {
			f.IPv6ExtHeaders = []ExtHeader{{Type: ProtoDestOpts, Data: make([]byte, 14)}}
		}), 56},
		{"no next header after AH", v4(IP("2001:db8::1", "2001:db8::2", ProtoNoNext), func(f *Frame) {
			f.IPv6ExtHeaders = []ExtHeader{{Type: ProtoAH}}
		}), 56},
		{"esp6", IP("2001:db8::1", "2001:db8::2", ProtoESP), 54},
		{"tcp4 in a vlan", withVLANs(TCP("10.0.0.1", "10.0.0.2", 1, 2, flagSYN), VLAN{ID: 10}), 58},
		{"udp6 in qinq", withVLANs(UDP("2001:db8::1", "2001:db8::2", 1, 2), VLAN{TPID: EtherTypeQinQ, ID: 100}, VLAN{ID: 200}), 70},
		{"icmp4 in two 802.1q tags", withVLANs(ICMP("10.0.0.1", "10.0.0.2", 0, 0), VLAN{ID: 1}, VLAN{ID: 0xF002}), 46},
		{"arp", NonIP(EtherTypeARP, make([]byte, 28)), 14},
		{"arp in a vlan", withVLANs(NonIP(EtherTypeARP, make([]byte, 28)), VLAN{ID: 3}), 18},
		{"lldp in two tags", withVLANs(NonIP(EtherTypeLLDP, nil), VLAN{TPID: EtherTypeQinQ, ID: 1}, VLAN{ID: 2}), 22},
	}
}

// expected is what Parse must find in f.Bytes(), worked out from the Frame
// description rather than the bytes.
func expected(f Frame) (reference.Packet, reference.ParseResult) {
	if !f.Src.IsValid() {
		return reference.Packet{}, reference.ParseNonIP
	}
	p := reference.Packet{
		Src: f.Src, Dst: f.Dst, Proto: f.Proto, Fragment: f.FragmentOffset > 0,
		SrcPort: reference.NoValue, DstPort: reference.NoValue,
		TCPFlags: reference.NoValue, ICMPType: reference.NoValue,
	}
	if p.Fragment {
		return p, reference.ParseOK
	}
	switch f.Proto {
	case ProtoTCP:
		p.SrcPort, p.DstPort, p.TCPFlags = int(f.SrcPort), int(f.DstPort), int(f.TCPFlags)
	case ProtoUDP:
		p.SrcPort, p.DstPort = int(f.SrcPort), int(f.DstPort)
	case ProtoICMP, ProtoICMPv6:
		p.ICMPType = int(f.ICMPType)
	}
	return p, reference.ParseOK
}

func TestParseRoundTrip(t *testing.T) {
	for _, tc := range wellFormed() {
		t.Run(tc.name, func(t *testing.T) {
			wantPkt, wantRes := expected(tc.frame)
			gotPkt, gotRes := Parse(tc.frame.Bytes())
			if gotRes != wantRes || gotPkt != wantPkt {
				t.Errorf("Parse() = %+v, %v\n          want %+v, %v", gotPkt, gotRes, wantPkt, wantRes)
			}
		})
	}
}

// TestParseTruncated cuts each frame at every header boundary, one byte
// short of each, and at every other length too: shorter than minLen is a
// parse error, anything longer parses as the whole frame.
func TestParseTruncated(t *testing.T) {
	for _, tc := range wellFormed() {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.frame.Bytes()
			full, fullRes := Parse(b)
			check := func(n int, why string) {
				t.Helper()
				pkt, res := Parse(b[:n])
				if n < tc.minLen {
					if res != reference.ParseError {
						t.Errorf("%s: %d of %d bytes: %v, want parse-error", why, n, len(b), res)
					}
					if pkt != (reference.Packet{}) {
						t.Errorf("%s: %d bytes: packet %+v on error, want zero", why, n, pkt)
					}
					return
				}
				if res != fullRes || pkt != full {
					t.Errorf("%s: %d of %d bytes: %+v, %v; want the whole frame's %+v, %v", why, n, len(b), pkt, res, full, fullRes)
				}
			}
			sawMin := false
			for _, end := range tc.frame.Boundaries() {
				check(end, "boundary")
				check(end-1, "boundary-1")
				sawMin = sawMin || end == tc.minLen
			}
			for n := range len(b) + 1 {
				check(n, "length")
			}
			// Where the parser stops is a header boundary, except when it
			// only peeks at an extension header's first two bytes.
			peeksOnly := len(tc.frame.IPv6ExtHeaders) > 0 && l4HeaderLen(tc.frame) == 0
			if !sawMin && !peeksOnly {
				t.Errorf("minLen %d is no boundary of %v", tc.minLen, tc.frame.Boundaries())
			}
		})
	}
}

// patch returns f's bytes with edit applied, for malformed frames the
// builder will not write.
func patch(f Frame, edit func(b []byte)) []byte {
	b := f.Bytes()
	edit(b)
	return b
}

func TestParseMalformed(t *testing.T) {
	tcp4 := TCP("10.0.0.1", "10.0.0.2", 1234, 80, flagSYN)
	tcp6 := TCP("2001:db8::1", "2001:db8::2", 1234, 80, flagSYN)
	gre4 := IP("10.0.0.1", "10.0.0.2", ProtoGRE)
	const ip4, ip6, tcpAt4 = 14, 14, 34
	okTCP4, _ := expected(tcp4)
	okTCP6, _ := expected(tcp6)

	destOpts := func(f Frame) Frame {
		f.IPv6ExtHeaders = []ExtHeader{{Type: ProtoDestOpts}}
		return f
	}
	nonFirstThenDest := tcp6
	nonFirstThenDest.IPv6ExtHeaders = []ExtHeader{{Type: ProtoFragment}, {Type: ProtoDestOpts}}
	nonFirstThenDest.FragmentOffset = 4
	nonFirstThenDestPkt, _ := expected(nonFirstThenDest)
	nonFirstThenDestPkt.Proto = ProtoDestOpts // the walk stops at the fragment header

	noNext6 := IP("2001:db8::1", "2001:db8::2", ProtoNoNext)
	noNext6Pkt, _ := expected(noNext6)

	withFragField := func(f Frame, field uint16) []byte {
		f.IPv6ExtHeaders = []ExtHeader{{Type: ProtoFragment}}
		return patch(f, func(b []byte) { binary.BigEndian.PutUint16(b[54+2:], field) })
	}

	for _, tc := range []struct {
		name    string
		frame   []byte
		wantRes reference.ParseResult
		wantPkt reference.Packet // only for ParseOK
	}{
		{"empty", nil, reference.ParseError, reference.Packet{}},
		{"13 bytes", make([]byte, 13), reference.ParseError, reference.Packet{}},
		{"14 zero bytes", make([]byte, 14), reference.ParseNonIP, reference.Packet{}},
		{"three tags", withVLANs(tcp4, VLAN{}, VLAN{}, VLAN{}).Bytes(), reference.ParseError, reference.Packet{}},
		{"three tags around arp", withVLANs(NonIP(EtherTypeARP, nil), VLAN{TPID: EtherTypeQinQ}, VLAN{}, VLAN{}).Bytes(), reference.ParseError, reference.Packet{}},
		// 0x9100, the pre-standard QinQ TPID, is not a tag to the C.
		{"0x9100 tag", withVLANs(tcp4, VLAN{TPID: 0x9100}).Bytes(), reference.ParseNonIP, reference.Packet{}},
		{"ipv4 labelled ipv6", func() []byte { f := tcp4; f.EtherType = EtherTypeIPv6; return f.Bytes() }(), reference.ParseError, reference.Packet{}},
		{"ipv6 labelled ipv4", func() []byte { f := tcp6; f.EtherType = EtherTypeIPv4; return f.Bytes() }(), reference.ParseError, reference.Packet{}},
		{"ipv6 labelled arp", func() []byte { f := tcp6; f.EtherType = EtherTypeARP; return f.Bytes() }(), reference.ParseNonIP, reference.Packet{}},
		{"ipv4 version 5", patch(tcp4, func(b []byte) { b[ip4] = 0x55 }), reference.ParseError, reference.Packet{}},
		{"ipv4 ihl 4", patch(tcp4, func(b []byte) { b[ip4] = 0x44 }), reference.ParseError, reference.Packet{}},
		{"ipv4 ihl 0", patch(tcp4, func(b []byte) { b[ip4] = 0x40 }), reference.ParseError, reference.Packet{}},
		{"ipv4 ihl past frame end", patch(tcp4, func(b []byte) { b[ip4] = 0x4F }), reference.ParseError, reference.Packet{}},
		// With no L4 header to read, nothing but the header checks can fail.
		{"gre ihl 4", patch(gre4, func(b []byte) { b[ip4] = 0x44 }), reference.ParseError, reference.Packet{}},
		{"gre ihl past frame end", patch(gre4, func(b []byte) { b[ip4] = 0x46 }), reference.ParseError, reference.Packet{}},
		{"ipv4 total length below header", patch(tcp4, func(b []byte) { binary.BigEndian.PutUint16(b[ip4+2:], 19) }), reference.ParseError, reference.Packet{}},
		// L4 must lie inside the IP packet as its header declares it; a
		// frame shorter than the declared length is read as far as it goes.
		{"ipv4 total length header only", patch(tcp4, func(b []byte) { binary.BigEndian.PutUint16(b[ip4+2:], 20) }), reference.ParseError, reference.Packet{}},
		{"ipv4 total length one byte short of tcp", patch(tcp4, func(b []byte) { binary.BigEndian.PutUint16(b[ip4+2:], 39) }), reference.ParseError, reference.Packet{}},
		{"ipv4 total length past frame end", patch(tcp4, func(b []byte) { binary.BigEndian.PutUint16(b[ip4+2:], 1500) }), reference.ParseOK, okTCP4},
		{"ipv4 DF and reserved bits", patch(tcp4, func(b []byte) { binary.BigEndian.PutUint16(b[ip4+6:], 0xC000) }), reference.ParseOK, okTCP4},
		{"ipv4 bad header checksum", patch(tcp4, func(b []byte) { b[ip4+10] ^= 0xFF }), reference.ParseOK, okTCP4},
		{"tcp doff 4", patch(tcp4, func(b []byte) { b[tcpAt4+12] = 4 << 4 }), reference.ParseError, reference.Packet{}},
		{"tcp doff 0", patch(tcp4, func(b []byte) { b[tcpAt4+12] = 0 }), reference.ParseError, reference.Packet{}},
		{"tcp doff past frame end", patch(tcp4, func(b []byte) { b[tcpAt4+12] = 15 << 4 }), reference.ParseOK, okTCP4},
		{"tcp reserved bits set", patch(tcp4, func(b []byte) { b[tcpAt4+12] = 5<<4 | 0x0F }), reference.ParseOK, okTCP4},
		{"ipv6 version 4", patch(tcp6, func(b []byte) { b[ip6] = 0x40 }), reference.ParseError, reference.Packet{}},
		{"ipv6 payload length 0 (jumbogram) sets no limit", patch(tcp6, func(b []byte) { binary.BigEndian.PutUint16(b[ip6+4:], 0) }), reference.ParseOK, okTCP6},
		{"ipv6 payload length shorter than tcp", patch(tcp6, func(b []byte) { binary.BigEndian.PutUint16(b[ip6+4:], 19) }), reference.ParseError, reference.Packet{}},
		{"ext header overruns before tcp", patch(destOpts(tcp6), func(b []byte) { b[55] = 255 }), reference.ParseError, reference.Packet{}},
		{"ext header overruns, no next header", patch(destOpts(noNext6), func(b []byte) { b[55] = 255 }), reference.ParseOK, noNext6Pkt},
		{"AH overruns before tcp", func() []byte {
			f := tcp6
			f.IPv6ExtHeaders = []ExtHeader{{Type: ProtoAH}}
			return patch(f, func(b []byte) { b[55] = 255 })
		}(), reference.ParseError, reference.Packet{}},
		{"fragment reserved bits only", withFragField(tcp6, 0x0006), reference.ParseOK, okTCP6},
		{"fragment M bit only", withFragField(tcp6, 0x0001), reference.ParseOK, okTCP6},
		{"fragment offset 1", withFragField(tcp6, 0x0008), reference.ParseOK, func() reference.Packet {
			p, _ := expected(tcp6)
			p.Fragment, p.SrcPort, p.DstPort, p.TCPFlags = true, reference.NoValue, reference.NoValue, reference.NoValue
			return p
		}()},
		{"non-first fragment then dest opts", nonFirstThenDest.Bytes(), reference.ParseOK, nonFirstThenDestPkt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt, res := Parse(tc.frame)
			if res != tc.wantRes || pkt != tc.wantPkt {
				t.Errorf("Parse() = %+v, %v\n          want %+v, %v", pkt, res, tc.wantPkt, tc.wantRes)
			}
		})
	}
}

// TestParseExtHeaderLimit probes MAX_IPV6_EXT_HEADERS: eight headers are
// walked, and a ninth that is still an extension header is an error even
// when the eighth would have ended the walk.
func TestParseExtHeaderLimit(t *testing.T) {
	build := func(dest int, fragment bool, offset uint16) Frame {
		f := TCP("2001:db8::1", "2001:db8::2", 1, 2, flagSYN)
		for range dest {
			f.IPv6ExtHeaders = append(f.IPv6ExtHeaders, ExtHeader{Type: ProtoDestOpts})
		}
		if fragment {
			f.IPv6ExtHeaders = append(f.IPv6ExtHeaders, ExtHeader{Type: ProtoFragment})
		}
		f.FragmentOffset = offset
		return f
	}
	for _, tc := range []struct {
		name  string
		frame Frame
		ok    bool
	}{
		{"8 headers", build(8, false, 0), true},
		{"9 headers", build(9, false, 0), false},
		{"7 headers and a first fragment", build(7, true, 0), true},
		{"8 headers and a first fragment", build(8, true, 0), false},
		{"7 headers and a non-first fragment", build(7, true, 5), true},
		{"8 headers and a non-first fragment", build(8, true, 5), false},
		{"non-first fragment then 8 headers", func() Frame {
			f := build(8, false, 5)
			f.IPv6ExtHeaders = append([]ExtHeader{{Type: ProtoFragment}}, f.IPv6ExtHeaders...)
			return f
		}(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt, res := Parse(tc.frame.Bytes())
			if !tc.ok {
				if res != reference.ParseError {
					t.Errorf("Parse() = %+v, %v; want parse-error", pkt, res)
				}
				return
			}
			want, _ := expected(tc.frame)
			if tc.frame.FragmentOffset > 0 && tc.frame.IPv6ExtHeaders[0].Type == ProtoFragment {
				want.Proto = ProtoDestOpts // the walk stops at the fragment header
			}
			if res != reference.ParseOK || pkt != want {
				t.Errorf("Parse() = %+v, %v; want %+v, ok", pkt, res, want)
			}
		})
	}
}

// FuzzParse feeds random bytes to Parse: it must not panic, and what it
// returns must be a packet the data plane could hold.
func FuzzParse(f *testing.F) {
	for _, tc := range wellFormed() {
		f.Add(tc.frame.Bytes())
	}
	f.Add(everyExtHeader().Bytes()[:60])
	f.Fuzz(func(t *testing.T, frame []byte) {
		pkt, res := Parse(frame)
		if res != reference.ParseOK {
			if pkt != (reference.Packet{}) {
				t.Fatalf("%v with packet %+v, want zero", res, pkt)
			}
			return
		}
		checkPacket(t, pkt)
		// Every bounds check that passed still passes on a longer frame
		// and reads the same bytes, so trailing bytes change nothing.
		longer := append(frame[:len(frame):len(frame)], 0xFF, 0xFF, 0xFF, 0xFF)
		if pkt2, res2 := Parse(longer); pkt2 != pkt || res2 != res {
			t.Fatalf("trailing bytes changed %+v, %v into %+v, %v", pkt, res, pkt2, res2)
		}
	})
}

func checkPacket(t *testing.T, pkt reference.Packet) {
	t.Helper()
	if !pkt.Src.IsValid() || !pkt.Dst.IsValid() || pkt.Src.Is4() != pkt.Dst.Is4() {
		t.Fatalf("addresses %v, %v", pkt.Src, pkt.Dst)
	}
	if pkt.Src.Zone() != "" || pkt.Dst.Zone() != "" {
		t.Fatalf("zoned addresses %v, %v", pkt.Src, pkt.Dst)
	}
	inRange := func(v, hi int) bool { return v == reference.NoValue || (v >= 0 && v <= hi) }
	if !inRange(pkt.SrcPort, 0xFFFF) || !inRange(pkt.DstPort, 0xFFFF) || !inRange(pkt.TCPFlags, 0xFF) || !inRange(pkt.ICMPType, 0xFF) {
		t.Fatalf("field out of range: %+v", pkt)
	}
	hasPorts := pkt.Proto == ProtoTCP || pkt.Proto == ProtoUDP
	if pkt.Fragment || !hasPorts {
		if pkt.SrcPort != reference.NoValue || pkt.DstPort != reference.NoValue {
			t.Fatalf("ports on %+v", pkt)
		}
	} else if pkt.SrcPort == reference.NoValue || pkt.DstPort == reference.NoValue {
		t.Fatalf("no ports on %+v", pkt)
	}
	if (pkt.TCPFlags != reference.NoValue) != (pkt.Proto == ProtoTCP && !pkt.Fragment) {
		t.Fatalf("TCP flags on %+v", pkt)
	}
	isICMP := pkt.Proto == ProtoICMP || pkt.Proto == ProtoICMPv6
	if (pkt.ICMPType != reference.NoValue) != (isICMP && !pkt.Fragment) {
		t.Fatalf("ICMP type on %+v", pkt)
	}
}

// Addresses come back as they sit in the header: an IPv4-mapped IPv6
// source stays a 16-byte address, so it cannot match an IPv4 rule.
func TestParseMappedAddressStaysIPv6(t *testing.T) {
	pkt, res := Parse(UDP("::ffff:10.0.0.1", "2001:db8::2", 1, 2).Bytes())
	if res != reference.ParseOK || !pkt.Src.Is4In6() || pkt.Src == netip.MustParseAddr("10.0.0.1") {
		t.Errorf("Parse() = %+v, %v; want the mapped address as is", pkt, res)
	}
}
