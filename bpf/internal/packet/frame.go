package packet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Frame describes an Ethernet frame to craft. The zero values of most fields
// give the common case, so a test sets only what it is about; the
// constructors (TCP, UDP, ICMP, IP, NonIP) fill in the rest.
type Frame struct {
	// VLANs are the 802.1Q/802.1ad tags, outermost first. The parser reads
	// at most two; a third is how tests reach its "too deep" branch.
	VLANs []VLAN
	// EtherType is the innermost EtherType. Zero means: IPv4 or IPv6 as Src
	// says (or 0 on a non-IP frame). A non-zero value is written as is, so
	// a test can also label an IP packet with the wrong EtherType.
	EtherType uint16

	// Src and Dst are the IP addresses; both IPv4 or both IPv6 (an
	// IPv4-mapped IPv6 address counts as IPv6). An invalid Src makes a
	// non-IP frame: the Ethernet header, then Payload.
	Src, Dst netip.Addr
	// Proto is the IP protocol (IPv6: the next header after the extension
	// headers). TCP, UDP, ICMP and ICMPv6 get a header built from the
	// fields below; any other protocol carries Payload only.
	Proto            uint8
	SrcPort, DstPort uint16
	TCPFlags         uint8 // byte 13 of the TCP header
	ICMPType         uint8
	ICMPCode         uint8
	// TTL is the IPv4 TTL or the IPv6 hop limit; zero means 64.
	TTL uint8

	// IPv4Options are appended to the IPv4 header and zero-padded (zero is
	// the end-of-options option) to a multiple of 4 bytes, 40 at most.
	IPv4Options []byte
	// IPv6ExtHeaders are written in order between the IPv6 header and the
	// L4 header, each one's next-header byte naming the one after it.
	IPv6ExtHeaders []ExtHeader

	// FragmentOffset is the fragment offset in 8-byte units (13 bits).
	// Non-zero makes a non-first fragment, which carries Payload only and
	// no L4 header. On IPv4 it goes in the IP header; on IPv6 into every
	// fragment header of IPv6ExtHeaders, and one is appended to the chain
	// if there is none.
	FragmentOffset uint16
	// MoreFragments sets the MF flag (IPv4) or M bit (IPv6 fragment
	// header, which is added as for FragmentOffset).
	MoreFragments bool

	// Payload follows the L4 header (or the last header there is).
	Payload []byte
	// Pad zero-fills the frame to MinFrameLen, as a NIC sees a short
	// frame on the wire. It is off by default because BPF_PROG_RUN takes
	// short frames and truncation tests need exact lengths. The IP length
	// fields do not count the padding.
	Pad bool
}

// VLAN is one VLAN tag.
type VLAN struct {
	// TPID is the tag protocol identifier, EtherTypeVLAN or EtherTypeQinQ;
	// zero means EtherTypeVLAN.
	TPID uint16
	// ID is written as the whole tag control information: the low 12 bits
	// are the VLAN ID, the top 4 the priority and drop-eligible bits.
	ID uint16
}

// ExtHeader is one IPv6 extension header.
type ExtHeader struct {
	// Type is the next-header value that announces this header:
	// ProtoHopByHop, ProtoRouting, ProtoDestOpts, ProtoAH, ProtoFragment,
	// or anything else, which is laid out like the options headers (to
	// craft, say, a Mobility header the parser takes for the L4 protocol).
	Type uint8
	// Data is the header after its next-header and length bytes, zero-
	// padded so the header is a multiple of 8 bytes (at least 8; AH at
	// least 16, room for its SPI and sequence number). Empty Data is a
	// valid header: options headers of padding only, a routing header with
	// no segments left. A fragment header is always 8 bytes: Data is not
	// used, the offset and M bit come from the Frame.
	Data []byte
}

// Fixed values of crafted frames. The MACs are locally administered
// unicast addresses; the XDP program never looks at them.
var (
	dstMAC = [6]byte{0x02, 0, 0, 0, 0, 0x02}
	srcMAC = [6]byte{0x02, 0, 0, 0, 0, 0x01}
)

const (
	defaultTTL    = 64
	ipv4ID        = 0x1234
	ipv6FragID    = 0x12345678
	tcpSeq        = 1
	tcpWindow     = 0xFFFF
	maxIPv4Option = 40
	maxFragOffset = 0x1FFF
)

// TCP returns a TCP segment from src to dst; the address text picks IPv4 or
// IPv6. It panics on an address that does not parse.
func TCP(src, dst string, srcPort, dstPort uint16, flags uint8) Frame {
	return Frame{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: ProtoTCP,
		SrcPort: srcPort, DstPort: dstPort, TCPFlags: flags}
}

// UDP returns a UDP datagram from src to dst (IPv4 or IPv6 as TCP).
func UDP(src, dst string, srcPort, dstPort uint16) Frame {
	return Frame{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: ProtoUDP,
		SrcPort: srcPort, DstPort: dstPort}
}

// ICMP returns an ICMP message from src to dst: ICMP over IPv4, ICMPv6 over
// IPv6, as the address text says.
func ICMP(src, dst string, icmpType, icmpCode uint8) Frame {
	f := Frame{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: ProtoICMP,
		ICMPType: icmpType, ICMPCode: icmpCode}
	if f.Src.Is6() {
		f.Proto = ProtoICMPv6
	}
	return f
}

// IP returns an IP packet of any protocol from src to dst, with no L4
// header unless proto is one the builder knows (then see TCP, UDP, ICMP).
func IP(src, dst string, proto uint8) Frame {
	return Frame{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: proto}
}

// NonIP returns a frame of the given EtherType (EtherTypeARP,
// EtherTypeLLDP, ...) carrying payload.
func NonIP(etherType uint16, payload []byte) Frame {
	return Frame{EtherType: etherType, Payload: payload}
}

// Bytes returns the frame: Ethernet header, VLAN tags, IP header with a
// correct header checksum and length, extension headers, the L4 header with
// a correct checksum (TCP, UDP, ICMPv6 over the pseudo-header of the IP
// version; ICMP over the message only), and Payload. On a first fragment
// the checksum covers only the bytes of this fragment.
//
// It panics on a Frame it cannot encode: Src and Dst of different
// versions, more than 40 bytes of IPv4 options, an oversized extension
// header or packet, a fragment offset above 13 bits.
func (f Frame) Bytes() []byte {
	b, _ := f.build()
	return b
}

// Boundaries returns the offset in f.Bytes() at which each header ends, in
// order: Ethernet, each VLAN tag, the IP header (with options), each IPv6
// extension header, then the L4 header. For ICMP that is two offsets: the 4
// bytes of type, code and checksum the parser needs, and the 8 bytes of the
// whole ICMP header. A frame with no L4 header (a non-first fragment, a
// protocol other than TCP, UDP, ICMP, ICMPv6) stops at the IP headers, a
// non-IP frame at the Ethernet header and tags. Payload and padding are not
// headers.
//
// Tests truncate a frame at each boundary and one byte short of it: these
// are the lengths where a parser that checks bounds changes its mind.
func (f Frame) Boundaries() []int {
	_, bounds := f.build()
	return bounds
}

// build is Bytes and Boundaries in one, so the two cannot disagree.
func (f Frame) build() (frame []byte, bounds []int) {
	b := make([]byte, 0, 128)
	b = append(b, dstMAC[:]...)
	b = append(b, srcMAC[:]...)

	// Each tag's TPID sits where the EtherType would be, and the tag ends
	// with the EtherType of what it encloses.
	etherType := f.etherType()
	for i, v := range f.VLANs {
		if i == 0 {
			b = binary.BigEndian.AppendUint16(b, v.tpid())
			bounds = append(bounds, len(b))
		}
		inner := etherType
		if i+1 < len(f.VLANs) {
			inner = f.VLANs[i+1].tpid()
		}
		b = binary.BigEndian.AppendUint16(b, v.ID)
		b = binary.BigEndian.AppendUint16(b, inner)
		bounds = append(bounds, len(b))
	}
	if len(f.VLANs) == 0 {
		b = binary.BigEndian.AppendUint16(b, etherType)
		bounds = append(bounds, len(b))
	}

	switch {
	case !f.Src.IsValid():
		b = append(b, f.Payload...)
	case f.Src.Is4():
		b, bounds = f.appendIPv4(b, bounds)
	default:
		b, bounds = f.appendIPv6(b, bounds)
	}

	if f.Pad && len(b) < MinFrameLen {
		b = append(b, make([]byte, MinFrameLen-len(b))...)
	}
	return b, bounds
}

func (v VLAN) tpid() uint16 {
	if v.TPID == 0 {
		return EtherTypeVLAN
	}
	return v.TPID
}

func (f Frame) etherType() uint16 {
	switch {
	case f.EtherType != 0:
		return f.EtherType
	case !f.Src.IsValid():
		return 0
	case f.Src.Is4():
		return EtherTypeIPv4
	default:
		return EtherTypeIPv6
	}
}

func (f Frame) ttl() uint8 {
	if f.TTL == 0 {
		return defaultTTL
	}
	return f.TTL
}

// checkAddrs panics unless Dst is of the same IP version as Src.
func (f Frame) checkAddrs() {
	if !f.Dst.IsValid() || f.Dst.Is4() != f.Src.Is4() {
		panic(fmt.Sprintf("packet: Src %v and Dst %v are not of one IP version", f.Src, f.Dst))
	}
}

func (f Frame) checkFragmentOffset() {
	if f.FragmentOffset > maxFragOffset {
		panic(fmt.Sprintf("packet: fragment offset %d does not fit in 13 bits", f.FragmentOffset))
	}
}

// fragmentField is the 16-bit offset-and-flags word of an IPv4 header or
// IPv6 fragment header, without the IPv4 DF/reserved bits.
func (f Frame) fragmentField(mfBit uint16, offsetShift uint) uint16 {
	v := f.FragmentOffset << offsetShift
	if f.MoreFragments {
		v |= mfBit
	}
	return v
}

func (f Frame) appendIPv4(b []byte, bounds []int) ([]byte, []int) {
	f.checkAddrs()
	f.checkFragmentOffset()
	if len(f.IPv4Options) > maxIPv4Option {
		panic(fmt.Sprintf("packet: %d bytes of IPv4 options, at most %d fit", len(f.IPv4Options), maxIPv4Option))
	}
	options := padTo(f.IPv4Options, 4, 0)
	hdrLen := IPv4HeaderLen + len(options)
	l4, l4Bounds := f.transport(f.FragmentOffset > 0)
	totalLen := hdrLen + len(l4)
	if totalLen > 0xFFFF {
		panic(fmt.Sprintf("packet: IPv4 packet of %d bytes", totalLen))
	}

	l3 := len(b)
	b = append(b, 0x40|byte(hdrLen/4), 0)
	b = binary.BigEndian.AppendUint16(b, uint16(totalLen))
	b = binary.BigEndian.AppendUint16(b, ipv4ID)
	b = binary.BigEndian.AppendUint16(b, f.fragmentField(0x2000, 0))
	b = append(b, f.ttl(), f.Proto, 0, 0)
	b = append(b, f.Src.AsSlice()...)
	b = append(b, f.Dst.AsSlice()...)
	b = append(b, options...)
	binary.BigEndian.PutUint16(b[l3+10:], checksum(b[l3:]))
	bounds = append(bounds, len(b))

	f.fillL4Checksum(l4, pseudoHeader(f.Src, f.Dst, f.Proto, len(l4)))
	return appendL4(b, bounds, l4, l4Bounds)
}

func (f Frame) appendIPv6(b []byte, bounds []int) ([]byte, []int) {
	f.checkAddrs()
	f.checkFragmentOffset()
	exts := f.IPv6ExtHeaders
	if (f.FragmentOffset > 0 || f.MoreFragments) && !hasFragmentHeader(exts) {
		exts = append(exts[:len(exts):len(exts)], ExtHeader{Type: ProtoFragment})
	}
	var extBytes []byte
	var extEnds []int // offsets into extBytes
	for i, h := range exts {
		next := f.Proto
		if i+1 < len(exts) {
			next = exts[i+1].Type
		}
		extBytes = f.appendExtHeader(extBytes, h, next)
		extEnds = append(extEnds, len(extBytes))
	}
	l4, l4Bounds := f.transport(f.FragmentOffset > 0)
	payloadLen := len(extBytes) + len(l4)
	if payloadLen > 0xFFFF {
		panic(fmt.Sprintf("packet: IPv6 payload of %d bytes needs a jumbogram", payloadLen))
	}

	first := f.Proto
	if len(exts) > 0 {
		first = exts[0].Type
	}
	b = binary.BigEndian.AppendUint32(b, 6<<28) // version; traffic class and flow label 0
	b = binary.BigEndian.AppendUint16(b, uint16(payloadLen))
	b = append(b, first, f.ttl())
	b = append(b, f.Src.AsSlice()...)
	b = append(b, f.Dst.AsSlice()...)
	bounds = append(bounds, len(b))
	extStart := len(b)
	b = append(b, extBytes...)
	for _, end := range extEnds {
		bounds = append(bounds, extStart+end)
	}

	// RFC 8200 section 8.1 wants the final destination in the pseudo-
	// header; the routing headers built here have no segments left unless
	// a test writes some into Data, so Dst is it.
	f.fillL4Checksum(l4, pseudoHeader(f.Src, f.Dst, f.Proto, len(l4)))
	return appendL4(b, bounds, l4, l4Bounds)
}

func hasFragmentHeader(exts []ExtHeader) bool {
	for _, h := range exts {
		if h.Type == ProtoFragment {
			return true
		}
	}
	return false
}

// appendExtHeader appends h with next as its next-header byte. The length
// byte counts in 8-byte units not including the first 8 (RFC 8200), but in
// 4-byte units not including the first 8 for AH (RFC 4302).
func (f Frame) appendExtHeader(b []byte, h ExtHeader, next uint8) []byte {
	switch h.Type {
	case ProtoFragment:
		b = append(b, next, 0)
		b = binary.BigEndian.AppendUint16(b, f.fragmentField(1, 3))
		return binary.BigEndian.AppendUint32(b, ipv6FragID)
	case ProtoAH:
		body := padTo(h.Data, 8, 2)
		if len(body) < 14 {
			body = append(body, make([]byte, 14-len(body))...)
		}
		units := (2+len(body))/4 - 2
		if units > 0xFF {
			panic(fmt.Sprintf("packet: AH of %d bytes", 2+len(body)))
		}
		return append(append(b, next, byte(units)), body...)
	default:
		body := padTo(h.Data, 8, 2) // at least 6: empty Data pads to 8 bytes
		units := (2+len(body))/8 - 1
		if units > 0xFF {
			panic(fmt.Sprintf("packet: extension header %d of %d bytes", h.Type, 2+len(body)))
		}
		return append(append(b, next, byte(units)), body...)
	}
}

// transport returns the L4 header (checksum still zero) and Payload, and
// the offsets in it where header parts end. A non-first fragment has no L4
// header.
func (f Frame) transport(nonFirstFragment bool) (seg []byte, bounds []int) {
	if nonFirstFragment {
		return append([]byte(nil), f.Payload...), nil
	}
	var h []byte
	switch f.Proto {
	case ProtoTCP:
		h = binary.BigEndian.AppendUint16(h, f.SrcPort)
		h = binary.BigEndian.AppendUint16(h, f.DstPort)
		h = binary.BigEndian.AppendUint32(h, tcpSeq)
		var ack uint32
		if f.TCPFlags&0x10 != 0 { // ACK: a zero acknowledgement number looks odd in captures
			ack = 1
		}
		h = binary.BigEndian.AppendUint32(h, ack)
		h = append(h, (TCPHeaderLen/4)<<4, f.TCPFlags)
		h = binary.BigEndian.AppendUint16(h, tcpWindow)
		h = append(h, 0, 0, 0, 0) // checksum, urgent pointer
		bounds = []int{TCPHeaderLen}
	case ProtoUDP:
		if UDPHeaderLen+len(f.Payload) > 0xFFFF {
			panic(fmt.Sprintf("packet: UDP payload of %d bytes", len(f.Payload)))
		}
		h = binary.BigEndian.AppendUint16(h, f.SrcPort)
		h = binary.BigEndian.AppendUint16(h, f.DstPort)
		h = binary.BigEndian.AppendUint16(h, uint16(UDPHeaderLen+len(f.Payload)))
		h = append(h, 0, 0) // checksum
		bounds = []int{UDPHeaderLen}
	case ProtoICMP, ProtoICMPv6:
		// Type, code, checksum, then 4 bytes whose meaning depends on the
		// type (echo identifier and sequence number, ...): zero.
		h = append(h, f.ICMPType, f.ICMPCode, 0, 0, 0, 0, 0, 0)
		bounds = []int{4, ICMPHeaderLen}
	}
	return append(h, f.Payload...), bounds
}

// fillL4Checksum writes the checksum of the L4 segment seg, which starts
// with the header transport built. ICMP for IPv4 has no pseudo-header; TCP,
// UDP and ICMPv6 do (RFC 793, 768, 4443), whichever IP version carries them.
func (f Frame) fillL4Checksum(seg []byte, pseudo []byte) {
	if f.FragmentOffset > 0 {
		return
	}
	switch f.Proto {
	case ProtoTCP:
		binary.BigEndian.PutUint16(seg[16:], checksum(pseudo, seg))
	case ProtoUDP:
		c := checksum(pseudo, seg)
		if c == 0 {
			c = 0xFFFF // zero means "no checksum" in UDP (RFC 768)
		}
		binary.BigEndian.PutUint16(seg[6:], c)
	case ProtoICMPv6:
		binary.BigEndian.PutUint16(seg[2:], checksum(pseudo, seg))
	case ProtoICMP:
		binary.BigEndian.PutUint16(seg[2:], checksum(seg))
	}
}

func appendL4(b []byte, bounds []int, seg []byte, segBounds []int) ([]byte, []int) {
	for _, end := range segBounds {
		bounds = append(bounds, len(b)+end)
	}
	return append(b, seg...), bounds
}

// padTo returns a copy of data zero-padded so that len+extra is a multiple
// of n: extra counts bytes written before data in the same header.
func padTo(data []byte, n, extra int) []byte {
	out := append([]byte(nil), data...)
	for (len(out)+extra)%n != 0 {
		out = append(out, 0)
	}
	return out
}
