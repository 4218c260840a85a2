package pcap

import (
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// Frame builders: each returns the header it is named for followed by its
// payload, with the length fields filled in, so a test composes a frame
// inside out and can cut it anywhere.

type vlanTag struct{ tpid, id uint16 }

func ether(etherType uint16, tags []vlanTag, payload []byte) []byte {
	b := []byte{0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1} // dst, src MAC
	for _, t := range tags {
		b = binary.BigEndian.AppendUint16(b, t.tpid)
		b = binary.BigEndian.AppendUint16(b, t.id)
	}
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, payload...)
}

// ipv4 builds an IPv4 header; fragOff is in 8-byte units, options must be a
// multiple of 4 bytes.
func ipv4(src, dst string, proto uint8, options []byte, fragOff uint16, payload []byte) []byte {
	hdrLen := 20 + len(options)
	b := make([]byte, 20, hdrLen+len(payload))
	b[0] = 0x40 | byte(hdrLen/4)
	binary.BigEndian.PutUint16(b[2:], uint16(hdrLen+len(payload)))
	binary.BigEndian.PutUint16(b[6:], fragOff)
	b[8], b[9] = 64, proto
	copy(b[12:], netip.MustParseAddr(src).AsSlice())
	copy(b[16:], netip.MustParseAddr(dst).AsSlice())
	b = append(b, options...)
	return append(b, payload...)
}

// ipv6 builds an IPv6 header; payload starts with any extension headers.
func ipv6(src, dst string, next uint8, payload []byte) []byte {
	b := make([]byte, 40, 40+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	b[6], b[7] = next, 64
	copy(b[8:], netip.MustParseAddr(src).AsSlice())
	copy(b[24:], netip.MustParseAddr(dst).AsSlice())
	return append(b, payload...)
}

// hopByHop is an 8-byte hop-by-hop options header (PadN only).
func hopByHop(next uint8, payload []byte) []byte {
	return append([]byte{next, 0, 1, 4, 0, 0, 0, 0}, payload...)
}

// fragHdr is an IPv6 fragment header; fragOff is in 8-byte units.
func fragHdr(next uint8, fragOff uint16, more bool, payload []byte) []byte {
	b := []byte{next, 0, 0, 0, 0, 0, 0, 42}
	off := fragOff << 3
	if more {
		off |= 1
	}
	binary.BigEndian.PutUint16(b[2:], off)
	return append(b, payload...)
}

func tcp(sport, dport uint16, flags uint8, payload []byte) []byte {
	b := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12], b[13] = 5<<4, flags
	binary.BigEndian.PutUint16(b[14:], 65535)
	return append(b, payload...)
}

func udp(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

// icmp builds an echo-style ICMP or ICMPv6 header.
func icmp(typ uint8, payload []byte) []byte {
	return append([]byte{typ, 0, 0, 0, 0, 1, 0, 1}, payload...)
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }
func u8(v uint8) *uint8        { return &v }

const (
	synFlag = 0x02
	ackFlag = 0x10
)

type decodeCase struct {
	name  string
	frame []byte
	want  Summary
	str   string
}

func decodeCases() []decodeCase {
	synTCP := ipv4("192.0.2.1", "198.51.100.7", protoTCP, nil, 0, tcp(1234, 80, synFlag, nil))
	arp := make([]byte, 28)
	return []decodeCase{
		{
			name:  "ipv4 tcp syn",
			frame: ether(etherTypeIPv4, nil, synTCP),
			want: Summary{Family: 4, EtherType: etherTypeIPv4, Protocol: protoTCP, ProtocolName: "tcp",
				Src: addr("192.0.2.1"), Dst: addr("198.51.100.7"), SrcPort: 1234, DstPort: 80, HasPorts: true, TCPFlags: "SYN"},
			str: "tcp 192.0.2.1:1234 > 198.51.100.7:80 [SYN]",
		},
		{
			name: "ipv4 options udp",
			frame: ether(etherTypeIPv4, nil, ipv4("192.0.2.1", "192.0.2.2", protoUDP,
				[]byte{0x94, 4, 0, 0, 1, 1, 1, 0}, 0, udp(5000, 53, []byte("q")))), // router alert, NOPs, EOL
			want: Summary{Family: 4, EtherType: etherTypeIPv4, Protocol: protoUDP, ProtocolName: "udp",
				Src: addr("192.0.2.1"), Dst: addr("192.0.2.2"), SrcPort: 5000, DstPort: 53, HasPorts: true},
			str: "udp 192.0.2.1:5000 > 192.0.2.2:53",
		},
		{
			name:  "ipv4 non-first fragment",
			frame: ether(etherTypeIPv4, nil, ipv4("192.0.2.1", "192.0.2.2", protoUDP, nil, 185, make([]byte, 32))),
			want: Summary{Family: 4, EtherType: etherTypeIPv4, Protocol: protoUDP, ProtocolName: "udp",
				Src: addr("192.0.2.1"), Dst: addr("192.0.2.2"), Fragment: true},
			str: "udp 192.0.2.1 > 192.0.2.2 (fragment)",
		},
		{
			name: "ipv6 udp behind hop-by-hop and first fragment",
			frame: ether(etherTypeIPv6, nil, ipv6("2001:db8::1", "2001:db8::2", 0,
				hopByHop(44, fragHdr(protoUDP, 0, true, udp(53, 9999, make([]byte, 16)))))),
			want: Summary{Family: 6, EtherType: etherTypeIPv6, Protocol: protoUDP, ProtocolName: "udp",
				Src: addr("2001:db8::1"), Dst: addr("2001:db8::2"), SrcPort: 53, DstPort: 9999, HasPorts: true},
			str: "udp [2001:db8::1]:53 > [2001:db8::2]:9999",
		},
		{
			name: "ipv6 non-first fragment",
			frame: ether(etherTypeIPv6, nil, ipv6("2001:db8::1", "2001:db8::2", 44,
				fragHdr(protoTCP, 100, false, make([]byte, 16)))),
			want: Summary{Family: 6, EtherType: etherTypeIPv6, Protocol: protoTCP, ProtocolName: "tcp",
				Src: addr("2001:db8::1"), Dst: addr("2001:db8::2"), Fragment: true},
			str: "tcp 2001:db8::1 > 2001:db8::2 (fragment)",
		},
		{
			name:  "ipv6 icmpv6",
			frame: ether(etherTypeIPv6, nil, ipv6("2001:db8::1", "2001:db8::2", protoICMPv6, icmp(128, nil))),
			want: Summary{Family: 6, EtherType: etherTypeIPv6, Protocol: protoICMPv6, ProtocolName: "icmpv6",
				Src: addr("2001:db8::1"), Dst: addr("2001:db8::2"), ICMPType: u8(128)},
			str: "icmpv6 2001:db8::1 > 2001:db8::2 type 128",
		},
		{
			name:  "ipv4 icmp",
			frame: ether(etherTypeIPv4, nil, ipv4("192.0.2.1", "192.0.2.2", protoICMP, nil, 0, icmp(8, nil))),
			want: Summary{Family: 4, EtherType: etherTypeIPv4, Protocol: protoICMP, ProtocolName: "icmp",
				Src: addr("192.0.2.1"), Dst: addr("192.0.2.2"), ICMPType: u8(8)},
			str: "icmp 192.0.2.1 > 192.0.2.2 type 8",
		},
		{
			name:  "ipv4 gre",
			frame: ether(etherTypeIPv4, nil, ipv4("192.0.2.1", "192.0.2.2", 47, nil, 0, make([]byte, 4))),
			want: Summary{Family: 4, EtherType: etherTypeIPv4, Protocol: 47, ProtocolName: "47",
				Src: addr("192.0.2.1"), Dst: addr("192.0.2.2")},
			str: "ipv4 proto 47 192.0.2.1 > 192.0.2.2",
		},
		{
			name: "one vlan tag",
			frame: ether(etherTypeIPv4, []vlanTag{{etherTypeVLAN, 0x2000 | 100}}, // priority bits are not the id
				ipv4("192.0.2.1", "198.51.100.7", protoTCP, nil, 0, tcp(1234, 80, synFlag|ackFlag, nil))),
			want: Summary{Family: 4, EtherType: etherTypeIPv4, VLANs: []uint16{100}, Protocol: protoTCP, ProtocolName: "tcp",
				Src: addr("192.0.2.1"), Dst: addr("198.51.100.7"), SrcPort: 1234, DstPort: 80, HasPorts: true, TCPFlags: "SYN,ACK"},
			str: "vlan 100 tcp 192.0.2.1:1234 > 198.51.100.7:80 [SYN,ACK]",
		},
		{
			name:  "two vlan tags",
			frame: ether(etherTypeIPv4, []vlanTag{{etherTypeQinQ, 10}, {etherTypeVLAN, 20}}, synTCP),
			want: Summary{Family: 4, EtherType: etherTypeIPv4, VLANs: []uint16{10, 20}, Protocol: protoTCP, ProtocolName: "tcp",
				Src: addr("192.0.2.1"), Dst: addr("198.51.100.7"), SrcPort: 1234, DstPort: 80, HasPorts: true, TCPFlags: "SYN"},
			str: "vlan 10,20 tcp 192.0.2.1:1234 > 198.51.100.7:80 [SYN]",
		},
		{
			name:  "arp",
			frame: ether(etherTypeARP, nil, arp),
			want:  Summary{EtherType: etherTypeARP},
			str:   "arp",
		},
		{
			name:  "lldp",
			frame: ether(0x88cc, nil, make([]byte, 20)),
			want:  Summary{EtherType: 0x88cc},
			str:   "ethertype 0x88cc",
		},
		{
			name:  "truncated mid tcp header",
			frame: ether(etherTypeIPv4, nil, synTCP)[:14+20+10],
			want: Summary{Family: 4, EtherType: etherTypeIPv4, Protocol: protoTCP, ProtocolName: "tcp",
				Src: addr("192.0.2.1"), Dst: addr("198.51.100.7"), SrcPort: 1234, DstPort: 80, HasPorts: true, Truncated: true},
			str: "tcp 192.0.2.1:1234 > 198.51.100.7:80 (truncated)",
		},
		{
			name:  "truncated in ipv6 header",
			frame: ether(etherTypeIPv6, nil, ipv6("2001:db8::1", "2001:db8::2", protoUDP, udp(1, 2, nil)))[:14+30],
			want:  Summary{Family: 6, EtherType: etherTypeIPv6, Truncated: true},
			str:   "ipv6 (truncated)",
		},
		{
			name:  "ihl below 5",
			frame: ether(etherTypeIPv4, nil, append([]byte{0x44}, synTCP[1:]...)),
			want:  Summary{Family: 4, EtherType: etherTypeIPv4, Malformed: true},
			str:   "ipv4 (malformed)",
		},
		{
			name:  "empty",
			frame: nil,
			want:  Summary{Truncated: true},
			str:   "ethernet (truncated)",
		},
	}
}

func TestDecode(t *testing.T) {
	for _, tc := range decodeCases() {
		t.Run(tc.name, func(t *testing.T) {
			got := Decode(tc.frame)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Decode =\n%+v\nwant\n%+v", got, tc.want)
			}
			if s := got.String(); s != tc.str {
				t.Errorf("String = %q, want %q", s, tc.str)
			}
		})
	}
}

// TestDecodeLimits checks the XDP parser's limits: a third VLAN tag and a
// ninth IPv6 extension header are not looked through.
func TestDecodeLimits(t *testing.T) {
	three := ether(etherTypeIPv4, []vlanTag{{etherTypeQinQ, 1}, {etherTypeVLAN, 2}, {etherTypeVLAN, 3}}, nil)
	if s := Decode(three); s.EtherType != etherTypeVLAN || s.Family != 0 || len(s.VLANs) != 2 {
		t.Errorf("three tags: %+v", s)
	}
	l4 := udp(1, 2, nil)
	for n := 8; n <= 9; n++ {
		payload := l4
		for i := 0; i < n; i++ {
			next := uint8(protoUDP)
			if i > 0 {
				next = 60
			}
			payload = hopByHop(next, payload)
		}
		s := Decode(ether(etherTypeIPv6, nil, ipv6("2001:db8::1", "2001:db8::2", 60, payload)))
		if wantOK := n == 8; s.HasPorts != wantOK || s.Malformed == wantOK {
			t.Errorf("%d extension headers: %+v", n, s)
		}
	}
}

// TestSummaryJSON checks that ports appear exactly when HasPorts is set,
// port 0 included, and that the JSON reads back.
func TestSummaryJSON(t *testing.T) {
	for _, s := range []Summary{
		Decode(ether(etherTypeIPv4, nil, ipv4("192.0.2.1", "192.0.2.2", protoUDP, nil, 0, udp(0, 53, nil)))),
		Decode(ether(etherTypeIPv4, nil, ipv4("192.0.2.1", "192.0.2.2", protoICMP, nil, 0, icmp(0, nil)))),
		Decode(ether(etherTypeARP, nil, nil)),
	} {
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		_, hasSrc := m["srcPort"]
		_, hasAddr := m["src"]
		if hasSrc != s.HasPorts || hasAddr != s.Src.IsValid() {
			t.Errorf("%s: %s", s, b)
		}
		var back Summary
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, s) {
			t.Errorf("round trip of %s: got %+v, want %+v", b, back, s)
		}
	}
	b, _ := json.Marshal(Decode(ether(etherTypeIPv4, nil, ipv4("192.0.2.1", "192.0.2.2", protoICMP, nil, 0, icmp(0, nil)))))
	if want := `"icmpType":0`; !strings.Contains(string(b), want) {
		t.Errorf("icmp type 0: %s lacks %s", b, want)
	}
}

// FuzzDecode checks that no input makes Decode or String panic; every prefix
// of the seeds is tried too, since samples are cut at any length.
func FuzzDecode(f *testing.F) {
	for _, tc := range decodeCases() {
		f.Add(tc.frame)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		for n := range len(frame) + 1 {
			if Decode(frame[:n]).String() == "" {
				t.Fatalf("empty String for % x", frame[:n])
			}
		}
	})
}
