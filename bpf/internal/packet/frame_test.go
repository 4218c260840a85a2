package packet

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// TCP flag bits (byte 13 of the TCP header), for readable test tables.
const (
	flagFIN uint8 = 0x01
	flagSYN uint8 = 0x02
	flagPSH uint8 = 0x08
	flagACK uint8 = 0x10
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGolden pins whole frames, written out by hand with checksums worked
// out apart from this package, so the builder is checked against something
// other than the parser that shares its assumptions.
func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame Frame
		want  string
	}{
		{"tcp4 syn", TCP("10.0.0.1", "10.0.0.2", 1234, 80, flagSYN), `
			020000000002 020000000001 0800
			4500 0028 1234 0000 4006 549a 0a000001 0a000002
			04d2 0050 00000001 00000000 5002 ffff 96bd 0000`},
		{"udp6 payload", func() Frame {
			f := UDP("2001:db8::1", "2001:db8::2", 5353, 53)
			f.Payload = []byte("hi")
			return f
		}(), `
			020000000002 020000000001 86dd
			60000000 000a 11 40
			20010db8000000000000000000000001
			20010db8000000000000000000000002
			14e9 0035 000a 26de 6869`},
		{"arp padded", func() Frame {
			f := NonIP(EtherTypeARP, []byte{0, 1})
			f.Pad = true
			return f
		}(), `020000000002 020000000001 0806 0001` + strings.Repeat("00", 60-16)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := unhex(t, tc.want)
			if got := tc.frame.Bytes(); !bytes.Equal(got, want) {
				t.Errorf("Bytes():\n got %x\nwant %x", got, want)
			}
		})
	}
}

// TestChecksumKnownAnswer checks the checksum routine on the IPv4 header
// example of the Wikipedia article on it (checksum b861).
func TestChecksumKnownAnswer(t *testing.T) {
	h := unhex(t, "4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7")
	if got := checksum(h); got != 0xb861 {
		t.Errorf("checksum = %#04x, want 0xb861", got)
	}
	// An odd length pads with a zero byte: 0x0102 + 0x0300, complemented.
	if got := checksum([]byte{1, 2, 3}); got != ^uint16(0x0402) {
		t.Errorf("odd checksum = %#04x, want %#04x", got, ^uint16(0x0402))
	}
}

// onesSum is the verifier's side of the Internet checksum, written apart
// from checksum: a correct checksum field makes the ones' complement sum of
// everything it covers come out as 0xFFFF.
func onesSum(parts ...[]byte) uint16 {
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	var sum uint64
	for i, c := range all {
		if i%2 == 0 {
			sum += uint64(c) << 8
		} else {
			sum += uint64(c)
		}
	}
	for sum>>16 != 0 {
		sum = sum>>16 + sum&0xFFFF
	}
	return uint16(sum)
}

// l4HeaderLen is the size of the L4 header the builder writes for f.
func l4HeaderLen(f Frame) int {
	if f.FragmentOffset > 0 {
		return 0
	}
	switch f.Proto {
	case ProtoTCP:
		return 20
	case ProtoUDP:
		return 8
	case ProtoICMP, ProtoICMPv6:
		return 8
	}
	return 0
}

// TestChecksumsAndLengths verifies every checksum and IP length field of
// each well-formed frame. Offsets come from the Frame description, not
// from Boundaries, which is tested on its own.
func TestChecksumsAndLengths(t *testing.T) {
	for _, tc := range wellFormed() {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.frame
			b := f.Bytes()
			if f.Pad {
				// The IP lengths and checksums leave out the padding.
				unpadded := f
				unpadded.Pad = false
				n := len(unpadded.Bytes())
				if len(b) != max(n, MinFrameLen) || !bytes.Equal(b[:n], unpadded.Bytes()) {
					t.Fatalf("padding %d bytes to %d changed the frame", n, len(b))
				}
				b = b[:n]
			}
			if !f.Src.IsValid() {
				return
			}
			l3 := 14 + 4*len(f.VLANs)
			l4 := len(b) - len(f.Payload) - l4HeaderLen(f)
			seg := b[l4:]
			var pseudo []byte
			if f.Src.Is4() {
				ihl := int(b[l3]&0x0F) * 4
				if got := onesSum(b[l3 : l3+ihl]); got != 0xFFFF {
					t.Errorf("IPv4 header checksum does not verify (sum %#04x)", got)
				}
				if got, want := int(binary.BigEndian.Uint16(b[l3+2:])), len(b)-l3; got != want {
					t.Errorf("IPv4 total length %d, want %d", got, want)
				}
				pseudo = append(pseudo, b[l3+12:l3+20]...)
				pseudo = append(pseudo, 0, f.Proto, byte(len(seg)>>8), byte(len(seg)))
			} else {
				if got, want := int(binary.BigEndian.Uint16(b[l3+4:])), len(b)-l3-40; got != want {
					t.Errorf("IPv6 payload length %d, want %d", got, want)
				}
				pseudo = append(pseudo, b[l3+8:l3+40]...)
				pseudo = append(pseudo, 0, 0, byte(len(seg)>>8), byte(len(seg)), 0, 0, 0, f.Proto)
			}
			if l4HeaderLen(f) == 0 {
				return
			}
			var sum uint16
			switch f.Proto {
			case ProtoICMP:
				sum = onesSum(seg)
			default:
				sum = onesSum(pseudo, seg)
			}
			if sum != 0xFFFF {
				t.Errorf("L4 checksum does not verify (sum %#04x)", sum)
			}
			if f.Proto == ProtoUDP {
				if got := int(binary.BigEndian.Uint16(seg[4:])); got != len(seg) {
					t.Errorf("UDP length %d, want %d", got, len(seg))
				}
			}
		})
	}
}

// TestUDPZeroChecksum crafts a datagram whose checksum computes to zero,
// which UDP must send as 0xFFFF since zero means "none".
func TestUDPZeroChecksum(t *testing.T) {
	f := UDP("10.0.0.1", "10.0.0.2", 1, 2)
	f.Payload = []byte{0, 0}
	c := binary.BigEndian.Uint16(f.Bytes()[14+20+6:])
	// Adding the complement of the current sum makes the sum 0xFFFF, whose
	// checksum is 0; the length, and so the rest of the sum, is unchanged.
	f.Payload = []byte{byte(c >> 8), byte(c)}
	b := f.Bytes()
	if got := binary.BigEndian.Uint16(b[14+20+6:]); got != 0xFFFF {
		t.Errorf("checksum field %#04x, want 0xffff", got)
	}
}

func TestBoundaries(t *testing.T) {
	tcp6Ext := everyExtHeader()
	for _, tc := range []struct {
		name  string
		frame Frame
		want  []int
	}{
		{"tcp4", TCP("10.0.0.1", "10.0.0.2", 1, 2, flagSYN), []int{14, 34, 54}},
		{"udp4 in a vlan", withVLANs(UDP("10.0.0.1", "10.0.0.2", 1, 2), VLAN{ID: 7}), []int{14, 18, 38, 46}},
		{"icmp4", ICMP("10.0.0.1", "10.0.0.2", 8, 0), []int{14, 34, 38, 42}},
		{"icmp6", ICMP("2001:db8::1", "2001:db8::2", 128, 0), []int{14, 54, 58, 62}},
		{"tcp4 5 option bytes", func() Frame {
			f := TCP("10.0.0.1", "10.0.0.2", 1, 2, flagSYN)
			f.IPv4Options = []byte{1, 1, 1, 1, 1}
			return f
		}(), []int{14, 42, 62}},
		{"tcp4 non-first fragment", func() Frame {
			f := TCP("10.0.0.1", "10.0.0.2", 1, 2, flagSYN)
			f.FragmentOffset = 3
			f.Payload = make([]byte, 24)
			return f
		}(), []int{14, 34}},
		{"gre4", IP("10.0.0.1", "10.0.0.2", ProtoGRE), []int{14, 34}},
		{"tcp6 every ext header", tcp6Ext, []int{14, 54, 62, 78, 86, 110, 118, 138}},
		{"udp6 non-first fragment", func() Frame {
			f := UDP("2001:db8::1", "2001:db8::2", 1, 2)
			f.FragmentOffset = 1
			return f
		}(), []int{14, 54, 62}},
		{"arp", NonIP(EtherTypeARP, make([]byte, 28)), []int{14}},
		{"lldp in two tags", withVLANs(NonIP(EtherTypeLLDP, nil), VLAN{TPID: EtherTypeQinQ, ID: 1}, VLAN{ID: 2}), []int{14, 18, 22}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.frame.Boundaries(); !slices.Equal(got, tc.want) {
				t.Errorf("Boundaries() = %v, want %v", got, tc.want)
			}
			// Padding is not a header: the boundaries stay put.
			tc.frame.Pad = true
			if got := tc.frame.Boundaries(); !slices.Equal(got, tc.want) {
				t.Errorf("padded: Boundaries() = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestExtHeaderLayout checks each extension header's length byte and
// next-header chain in the frame with all of them.
func TestExtHeaderLayout(t *testing.T) {
	f := everyExtHeader()
	b := f.Bytes()
	type hdr struct {
		off, next, lenByte int
	}
	// hop 8 bytes (len 0), dest 16 (len 1), routing 8 (len 0), AH 24
	// (len 24/4-2 = 4), fragment 8 (reserved byte 0).
	want := []hdr{{54, 60, 0}, {62, 43, 1}, {78, 51, 0}, {86, 44, 4}, {110, 6, 0}}
	if got := b[14+6]; got != ProtoHopByHop {
		t.Errorf("IPv6 next header %d, want 0", got)
	}
	for _, h := range want {
		if int(b[h.off]) != h.next || int(b[h.off+1]) != h.lenByte {
			t.Errorf("header at %d: next %d len %d, want next %d len %d", h.off, b[h.off], b[h.off+1], h.next, h.lenByte)
		}
	}
	if got := binary.BigEndian.Uint16(b[110+2:]); got != 1 {
		t.Errorf("fragment offset field %#04x, want M bit only", got)
	}
	// The dest opts Data lands right after its two fixed bytes.
	if !bytes.Equal(b[64:74], f.IPv6ExtHeaders[1].Data) {
		t.Errorf("dest opts body %x, want %x", b[64:74], f.IPv6ExtHeaders[1].Data)
	}
}

func TestFragmentFields(t *testing.T) {
	f := UDP("10.0.0.1", "10.0.0.2", 1, 2)
	f.FragmentOffset, f.MoreFragments = 0x1FFF, true
	if got := binary.BigEndian.Uint16(f.Bytes()[14+6:]); got != 0x3FFF {
		t.Errorf("IPv4 flags/offset %#04x, want 0x3fff", got)
	}
	// A fragment header the test placed gets the Frame's offset; none is
	// added next to it.
	f = UDP("2001:db8::1", "2001:db8::2", 1, 2)
	f.IPv6ExtHeaders = []ExtHeader{{Type: ProtoFragment}, {Type: ProtoDestOpts}}
	f.FragmentOffset = 2
	b := f.Bytes()
	if got := binary.BigEndian.Uint16(b[54+2:]); got != 2<<3 {
		t.Errorf("IPv6 fragment field %#04x, want %#04x", got, 2<<3)
	}
	if got := f.Boundaries(); !slices.Equal(got, []int{14, 54, 62, 70}) {
		t.Errorf("Boundaries() = %v: want the two headers and no UDP header", got)
	}
}

func TestDefaults(t *testing.T) {
	b := TCP("10.0.0.1", "10.0.0.2", 1, 2, 0).Bytes()
	if b[14+8] != 64 {
		t.Errorf("default TTL %d, want 64", b[14+8])
	}
	f := UDP("2001:db8::1", "2001:db8::2", 1, 2)
	f.TTL = 1
	if b := f.Bytes(); b[14+7] != 1 {
		t.Errorf("hop limit %d, want 1", b[14+7])
	}
	// A wrong EtherType is written as asked.
	f.EtherType = EtherTypeIPv4
	if got := binary.BigEndian.Uint16(f.Bytes()[12:]); got != EtherTypeIPv4 {
		t.Errorf("EtherType %#04x, want the override", got)
	}
	if got := len(UDP("10.0.0.1", "10.0.0.2", 1, 2).Bytes()); got != 42 {
		t.Errorf("unpadded UDP frame of %d bytes, want 42", got)
	}
	long := TCP("10.0.0.1", "10.0.0.2", 1, 2, 0)
	long.Payload, long.Pad = make([]byte, 100), true
	if got := len(long.Bytes()); got != 154 {
		t.Errorf("padding changed a long frame to %d bytes", got)
	}
}

func TestBuilderPanics(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame Frame
	}{
		{"mixed versions", Frame{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("::1")}},
		{"no dst", Frame{Src: netip.MustParseAddr("10.0.0.1")}},
		{"41 option bytes", Frame{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), IPv4Options: make([]byte, 41)}},
		{"14-bit fragment offset", Frame{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), FragmentOffset: 0x2000}},
		{"ext header too long", Frame{Src: netip.MustParseAddr("::1"), Dst: netip.MustParseAddr("::2"), IPv6ExtHeaders: []ExtHeader{{Type: ProtoDestOpts, Data: make([]byte, 2047)}}}},
		{"ipv4 too long", Frame{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Payload: make([]byte, 0xFFFF)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("Bytes() did not panic")
				}
			}()
			tc.frame.Bytes()
		})
	}
}

func withVLANs(f Frame, tags ...VLAN) Frame {
	f.VLANs = tags
	return f
}

// everyExtHeader is a TCP/IPv6 first fragment behind each extension
// header the parser walks: hop-by-hop 8 bytes, destination options 16,
// routing 8, AH 24, fragment 8; 64 in all, L4 at 14+40+64 = 118.
func everyExtHeader() Frame {
	f := TCP("2001:db8::1", "2001:db8::2", 443, 50000, flagACK|flagPSH)
	f.IPv6ExtHeaders = []ExtHeader{
		{Type: ProtoHopByHop},
		{Type: ProtoDestOpts, Data: []byte{1, 8, 0, 0, 0, 0, 0, 0, 0, 0}}, // PadN of 10
		{Type: ProtoRouting},
		{Type: ProtoAH, Data: make([]byte, 22)}, // SPI, sequence number, 12-byte ICV
		{Type: ProtoFragment},
	}
	f.MoreFragments = true
	return f
}
