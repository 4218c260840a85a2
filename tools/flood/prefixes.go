package flood

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"slices"
)

// RandomPrefixes makes n distinct random prefixes of one family, the
// benchmark's mix (the same as bpf's pool benchmark for IPv4):
//
//   - IPv4: anywhere, /16 to /32, a quarter of them /32;
//   - IPv6: inside 2001:db8::/32, where the flood's sources are (2001:db8:
//     and random bits): a quarter /64, most /56 to /63, 1 in 256 /48 to
//     /55 and 1 in 65,536 /40 to /47. Few short prefixes, so that even a
//     million cover a small share of the /32 (at most 4%; see
//     TestIPv6MixIsSparse) and an nftables interval set keeps nearly an
//     interval a prefix (958,198 of a million): a mix with /33s covered the
//     whole /32, nftables merged it into one interval, and its row measured
//     nothing.
//
// The same seed gives the same list, so every configuration of a run, and
// every run, holds the same prefixes.
func RandomPrefixes(f Family, n int, seed uint64) []netip.Prefix {
	r := rand.New(rand.NewPCG(seed, uint64(f)))
	seen := make(map[netip.Prefix]bool, n)
	out := make([]netip.Prefix, 0, n)
	for len(out) < n {
		var p netip.Prefix
		if f == IPv4 {
			bits := 32
			if r.IntN(4) != 0 {
				bits = 16 + r.IntN(16)
			}
			var a [4]byte
			binary.BigEndian.PutUint32(a[:], r.Uint32())
			p, _ = netip.AddrFrom4(a).Prefix(bits)
		} else {
			var bits int
			switch x := r.IntN(1 << 16); {
			case x == 0:
				bits = 40 + r.IntN(8) // /40–/47: 1 in 65,536
			case x <= 1<<8:
				bits = 48 + r.IntN(8) // /48–/55: 1 in 256
			case x <= 1<<8+1<<14:
				bits = 64 // a quarter
			default:
				bits = 56 + r.IntN(8)
			}
			var a [16]byte
			binary.BigEndian.PutUint32(a[:4], 0x2001_0db8)
			binary.BigEndian.PutUint64(a[4:12], r.Uint64())
			p, _ = netip.AddrFrom16(a).Prefix(bits)
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// SampleFrame is one frame of the flood's kind (the fixed source given),
// for checking with BPF_PROG_RUN that a program drops it.
func SampleFrame(f Family, src netip.Addr) []byte {
	frame := make([]byte, 0, 62)
	frame = append(frame, receiverMAC...)
	frame = append(frame, senderMAC...)
	if f == IPv4 {
		ip := []byte{0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0}
		ip = append(ip, src.AsSlice()...)
		ip = append(ip, 198, 18, 0, 2)
		binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
		frame = append(frame, 0x08, 0x00)
		frame = append(frame, ip...)
		frame = append(frame, 0x03, 0xe8, 0, 53, 0, 26, 0, 0) // UDP 1000 -> 53
		return append(frame, make([]byte, 18)...)
	}
	frame = append(frame, 0x86, 0xdd, 0x60, 0, 0, 0, 0, 8, 17, 64)
	frame = append(frame, src.AsSlice()...)
	dst := netip.MustParseAddr("2001:db8::2").As16()
	frame = append(frame, dst[:]...)
	return append(frame, 0x03, 0xe8, 0, 53, 0, 8, 0, 0)
}

// ipChecksum is the IPv4 header checksum (the checksum field zero).
func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// MergedIntervals is how many address ranges the prefixes cover once
// overlapping and adjacent ones are merged: what an nftables interval set
// with auto-merge holds. (For membership alone, a prefix inside another is
// redundant; a longest-prefix-match table keeps it.)
func MergedIntervals(prefixes []netip.Prefix) int {
	type span struct{ first, last netip.Addr }
	spans := make([]span, len(prefixes))
	for i, p := range prefixes {
		p = p.Masked()
		a := p.Addr().AsSlice()
		for bit := p.Bits(); bit < len(a)*8; bit++ {
			a[bit/8] |= 0x80 >> (bit % 8)
		}
		last, _ := netip.AddrFromSlice(a)
		spans[i] = span{p.Addr(), last}
	}
	slices.SortFunc(spans, func(x, y span) int { return x.first.Compare(y.first) })
	n := 0
	var cur span
	for i, s := range spans {
		// Overlapping, or adjacent: the next range starts right after.
		if i > 0 && (s.first.Compare(cur.last) <= 0 || (cur.last.Next().IsValid() && s.first == cur.last.Next())) {
			if s.last.Compare(cur.last) > 0 {
				cur.last = s.last
			}
			continue
		}
		n++
		cur = s
	}
	return n
}
