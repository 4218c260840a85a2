package packet

import (
	"encoding/binary"
	"net/netip"
)

// checksum is the Internet checksum (RFC 1071) of the concatenated parts:
// the ones' complement of the ones' complement sum of 16-bit big-endian
// words, an odd final byte padded with zero. Only the last part may have an
// odd length, which holds for every caller (pseudo-header, then segment).
func checksum(parts ...[]byte) uint16 {
	var sum uint32
	for _, p := range parts {
		for len(p) >= 2 {
			sum += uint32(binary.BigEndian.Uint16(p))
			p = p[2:]
		}
		if len(p) == 1 {
			sum += uint32(p[0]) << 8
		}
	}
	for sum > 0xFFFF {
		sum = sum&0xFFFF + sum>>16
	}
	return ^uint16(sum)
}

// pseudoHeader is what the TCP, UDP and ICMPv6 checksums cover besides the
// segment: for IPv4 (RFC 793) source, destination, zero, protocol and
// 16-bit length; for IPv6 (RFC 8200 section 8.1) source, destination,
// 32-bit length, three zero bytes and next header.
func pseudoHeader(src, dst netip.Addr, proto uint8, length int) []byte {
	var b []byte
	b = append(b, src.AsSlice()...)
	b = append(b, dst.AsSlice()...)
	if src.Is4() {
		b = append(b, 0, proto)
		return binary.BigEndian.AppendUint16(b, uint16(length))
	}
	b = binary.BigEndian.AppendUint32(b, uint32(length))
	return append(b, 0, 0, 0, proto)
}
