package packet

import (
	"encoding/binary"
	"math"
	"net/netip"

	"github.com/xdpfw/xdpfw/bpf/reference"
)

// Limits of the XDP parser (MAX_VLAN_TAGS, MAX_IPV6_EXT_HEADERS in
// firewall.c): its loops are unrolled, so it looks no deeper.
const (
	maxVLANTags       = 2
	maxIPv6ExtHeaders = 8
)

// Parse reads frame the way parse() in bpf/firewall.c does and returns the
// fields rules match on. It follows the C branch by branch, bounds checks
// included, so a frame the C parser rejects is rejected here too; keep the
// two in step. The Packet is the zero value unless the result is ParseOK.
//
// Like the C, it trusts the frame length, not the IP length fields: L4
// headers are read up to the end of the frame.
func Parse(frame []byte) (reference.Packet, reference.ParseResult) {
	if !fits(frame, 0, EthernetHeaderLen) {
		return reference.Packet{}, reference.ParseError
	}
	etherType := binary.BigEndian.Uint16(frame[12:])
	cur := EthernetHeaderLen
	for range maxVLANTags {
		if etherType != EtherTypeVLAN && etherType != EtherTypeQinQ {
			break
		}
		// A tag is the TCI, then the EtherType of what it encloses.
		if !fits(frame, cur, VLANTagLen) {
			return reference.Packet{}, reference.ParseError
		}
		etherType = binary.BigEndian.Uint16(frame[cur+2:])
		cur += VLANTagLen
	}

	switch etherType {
	case EtherTypeIPv4:
		return parseIPv4(frame, cur)
	case EtherTypeIPv6:
		return parseIPv6(frame, cur)
	case EtherTypeVLAN, EtherTypeQinQ:
		return reference.Packet{}, reference.ParseError // a third tag
	default:
		return reference.Packet{}, reference.ParseNonIP
	}
}

// fits is the C parser's cursor check: [off, off+n) lies inside frame.
// Offsets only grow by header lengths of at most a few KiB, so off+n
// cannot overflow.
func fits(frame []byte, off, n int) bool {
	return off+n <= len(frame)
}

func parseIPv4(frame []byte, l3 int) (reference.Packet, reference.ParseResult) {
	if !fits(frame, l3, IPv4HeaderLen) {
		return reference.Packet{}, reference.ParseError
	}
	version, ihl := frame[l3]>>4, frame[l3]&0x0F
	if version != 4 || ihl < 5 {
		return reference.Packet{}, reference.ParseError
	}
	hdrLen := int(ihl) * 4
	if !fits(frame, l3, hdrLen) {
		return reference.Packet{}, reference.ParseError
	}
	if int(binary.BigEndian.Uint16(frame[l3+2:])) < hdrLen {
		return reference.Packet{}, reference.ParseError
	}
	const ipOffsetMask = 0x1FFF // the MF, DF and reserved bits do not count
	pkt := reference.Packet{
		Src:      netip.AddrFrom4([4]byte(frame[l3+12 : l3+16])),
		Dst:      netip.AddrFrom4([4]byte(frame[l3+16 : l3+20])),
		Proto:    frame[l3+9],
		Fragment: binary.BigEndian.Uint16(frame[l3+6:])&ipOffsetMask != 0,
	}
	totLen := int(binary.BigEndian.Uint16(frame[l3+2:]))
	return parseL4(frame, l3+hdrLen, totLen-hdrLen, pkt)
}

func parseIPv6(frame []byte, l3 int) (reference.Packet, reference.ParseResult) {
	if !fits(frame, l3, IPv6HeaderLen) {
		return reference.Packet{}, reference.ParseError
	}
	if frame[l3]>>4 != 6 {
		return reference.Packet{}, reference.ParseError
	}
	pkt := reference.Packet{
		Src: netip.AddrFrom16([16]byte(frame[l3+8 : l3+24])),
		Dst: netip.AddrFrom16([16]byte(frame[l3+24 : l3+40])),
	}
	proto, l4, fragment, ok := walkIPv6ExtHeaders(frame, frame[l3+6], l3+IPv6HeaderLen)
	if !ok {
		return reference.Packet{}, reference.ParseError
	}
	pkt.Proto, pkt.Fragment = proto, fragment
	// l4 may lie past the end after a header length that overruns the
	// frame; parseL4 checks before it reads, as in the C. A payload
	// length of 0 (a jumbogram) sets no limit.
	avail := math.MaxUint32
	if payload := int(binary.BigEndian.Uint16(frame[l3+4:])); payload != 0 {
		avail = max(payload-(l4-l3-IPv6HeaderLen), 0)
	}
	return parseL4(frame, l4, avail, pkt)
}

// walkIPv6ExtHeaders skips the extension headers starting at cur, next
// being the type of the first. It returns the protocol after them, where
// its header starts, whether the packet is a non-first fragment, and false
// where the C returns PARSE_ERROR. Each return true is the C's "goto done".
//
// Only the bytes read (next header and length; the whole 8-byte fragment
// header) are bounds-checked; a body is skipped by its length unchecked.
func walkIPv6ExtHeaders(frame []byte, next uint8, cur int) (proto uint8, l4 int, fragment, ok bool) {
	for range maxIPv6ExtHeaders {
		switch next {
		case ProtoHopByHop, ProtoRouting, ProtoDestOpts:
			if !fits(frame, cur, 2) {
				return 0, 0, false, false
			}
			next = frame[cur]
			cur += (int(frame[cur+1]) + 1) * 8
		case ProtoAH:
			if !fits(frame, cur, 2) {
				return 0, 0, false, false
			}
			next = frame[cur]
			cur += (int(frame[cur+1]) + 2) * 4
		case ProtoFragment:
			if !fits(frame, cur, 8) {
				return 0, 0, false, false
			}
			next = frame[cur]
			// The offset is the top 13 bits; the low 3 are 2 reserved
			// bits and M.
			fragment = binary.BigEndian.Uint16(frame[cur+2:])&0xFFF8 != 0
			cur += 8
		default:
			return next, cur, false, true
		}
		// A non-first fragment has no headers of the upper layer to find.
		if fragment {
			return next, cur, true, true
		}
	}
	// More extension headers than the C walks: it refuses to guess the
	// protocol.
	switch next {
	case ProtoHopByHop, ProtoRouting, ProtoDestOpts, ProtoAH, ProtoFragment:
		return 0, 0, false, false
	}
	return next, cur, false, true
}

// parseL4 is parse_l4: it fills the ports, TCP flags and ICMP type of pkt
// from the header at l4. ICMP and ICMPv6 are both read whatever the IP
// version, as in the C.
//
// avail is how many bytes the IP header says follow l4: an L4 header must
// lie inside the IP packet, not in Ethernet padding after it.
func parseL4(frame []byte, l4, avail int, pkt reference.Packet) (reference.Packet, reference.ParseResult) {
	pkt.SrcPort, pkt.DstPort = reference.NoValue, reference.NoValue
	pkt.TCPFlags, pkt.ICMPType = reference.NoValue, reference.NoValue
	if pkt.Fragment {
		return pkt, reference.ParseOK
	}
	switch pkt.Proto {
	case ProtoTCP:
		if !fits(frame, l4, TCPHeaderLen) || avail < TCPHeaderLen {
			return reference.Packet{}, reference.ParseError
		}
		// Data offset, the top 4 bits of byte 12, counts 32-bit words. A
		// larger offset than the frame holds is not checked: the options
		// are never read.
		if frame[l4+12]>>4 < 5 {
			return reference.Packet{}, reference.ParseError
		}
		pkt.SrcPort = int(binary.BigEndian.Uint16(frame[l4:]))
		pkt.DstPort = int(binary.BigEndian.Uint16(frame[l4+2:]))
		pkt.TCPFlags = int(frame[l4+13])
	case ProtoUDP:
		if !fits(frame, l4, UDPHeaderLen) || avail < UDPHeaderLen {
			return reference.Packet{}, reference.ParseError
		}
		pkt.SrcPort = int(binary.BigEndian.Uint16(frame[l4:]))
		pkt.DstPort = int(binary.BigEndian.Uint16(frame[l4+2:]))
	case ProtoICMP, ProtoICMPv6:
		// Type, code, checksum: a shorter ICMP header is malformed.
		if !fits(frame, l4, 4) || avail < 4 {
			return reference.Packet{}, reference.ParseError
		}
		pkt.ICMPType = int(frame[l4])
	}
	return pkt, reference.ParseOK
}
