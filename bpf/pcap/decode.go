package pcap

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Header layout constants; the limits are the XDP parser's (MAX_VLAN_TAGS,
// MAX_IPV6_EXT_HEADERS in bpf/firewall.c), so a summary shows what the
// program itself could see.
const (
	etherHeaderLen    = 14
	etherTypeIPv4     = 0x0800
	etherTypeARP      = 0x0806
	etherTypeIPv6     = 0x86dd
	etherTypeVLAN     = 0x8100
	etherTypeQinQ     = 0x88a8
	maxVLANTags       = 2
	maxIPv6ExtHeaders = 8

	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// Summary is what a frame says about itself, as far as the captured bytes go.
// Fields are filled in order of the headers, so everything before the point
// where Truncated or Malformed stopped decoding is still valid.
type Summary struct {
	// Family is 4 or 6 once the EtherType says IP; 0 when not IP.
	Family int `json:"family,omitempty"`
	// EtherType is the one after the VLAN tags.
	EtherType uint16 `json:"etherType"`
	// VLANs are the VLAN ids, outer first (802.1Q 0x8100 and 802.1ad 0x88a8,
	// up to 2 tags, as deep as the XDP parser looks).
	VLANs []uint16 `json:"vlans,omitempty"`
	// Protocol is the IP protocol number (after IPv6 extension headers).
	// It is only known when ProtocolName is not empty: 0 is a protocol too.
	Protocol uint8 `json:"protocol,omitempty"`
	// ProtocolName is "tcp", "udp", "icmp", "icmpv6", else the number as a
	// string; "" when not IP or when the capture ended before the protocol.
	ProtocolName string `json:"protocolName,omitempty"`
	// Src and Dst are the IP addresses; invalid (and left out of JSON) when
	// not IP or not captured.
	Src netip.Addr `json:"src,omitzero"`
	Dst netip.Addr `json:"dst,omitzero"`
	// SrcPort and DstPort are the TCP or UDP ports, only meaningful when
	// HasPorts: port 0 is real (and common in attack traffic), so JSON
	// carries them exactly when HasPorts is set.
	SrcPort uint16 `json:"srcPort"`
	DstPort uint16 `json:"dstPort"`
	// HasPorts tells that SrcPort and DstPort were read.
	HasPorts bool `json:"-"`
	// ICMPType is the ICMP or ICMPv6 type; nil when none was read.
	ICMPType *uint8 `json:"icmpType,omitempty"`
	// TCPFlags names the TCP flags set, e.g. "SYN", "SYN,ACK", or "none"
	// (a null scan); "" when they were not read.
	TCPFlags string `json:"tcpFlags,omitempty"`
	// Fragment marks a non-first fragment: it has no L4 header to read.
	Fragment bool `json:"fragment,omitempty"`
	// Truncated tells that the captured bytes ended before the header that
	// was being read (samples hold 128 bytes at most).
	Truncated bool `json:"truncated,omitempty"`
	// Malformed tells that a header contradicts itself (a bad IP version,
	// IHL < 5, an IP length shorter than its headers, too many IPv6
	// extension headers): decoding stopped there, as the XDP parser does.
	Malformed bool `json:"malformed,omitempty"`
}

// Decode summarises an Ethernet frame, possibly truncated. It never panics
// and reads nothing outside frame, whatever frame holds.
func Decode(frame []byte) Summary {
	var s Summary
	if len(frame) < etherHeaderLen {
		s.Truncated = true
		return s
	}
	et := be16(frame, 12)
	off := etherHeaderLen
	for i := 0; i < maxVLANTags && (et == etherTypeVLAN || et == etherTypeQinQ); i++ {
		if len(frame) < off+4 {
			s.EtherType, s.Truncated = et, true
			return s
		}
		s.VLANs = append(s.VLANs, be16(frame, off)&0x0fff) // TCI: the low 12 bits are the id
		et = be16(frame, off+2)
		off += 4
	}
	s.EtherType = et
	switch et {
	case etherTypeIPv4:
		s.ipv4(frame[off:])
	case etherTypeIPv6:
		s.ipv6(frame[off:])
	}
	return s
}

func (s *Summary) ipv4(b []byte) {
	s.Family = 4
	if len(b) < 20 {
		s.Truncated = true
		return
	}
	if b[0]>>4 != 4 || b[0]&0x0f < 5 {
		s.Malformed = true
		return
	}
	s.Src = netip.AddrFrom4([4]byte(b[12:16]))
	s.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	s.setProtocol(b[9])
	s.Fragment = be16(b, 6)&0x1fff != 0 // offset, without the DF and MF flags
	hdrLen, totLen := int(b[0]&0x0f)*4, int(be16(b, 2))
	if totLen < hdrLen {
		s.Malformed = true
		return
	}
	if len(b) < hdrLen {
		s.Truncated = true // the options were cut off
		return
	}
	s.l4(b, hdrLen, totLen-hdrLen)
}

func (s *Summary) ipv6(b []byte) {
	s.Family = 6
	if len(b) < 40 {
		s.Truncated = true
		return
	}
	if b[0]>>4 != 6 {
		s.Malformed = true
		return
	}
	s.Src = netip.AddrFrom16([16]byte(b[8:24]))
	s.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	next, off := b[6], 40
walk:
	for i := 0; ; i++ {
		switch next {
		case 0, 43, 44, 51, 60: // hop-by-hop, routing, fragment, AH, destination options
		default:
			break walk
		}
		if i == maxIPv6ExtHeaders { // deeper than the XDP parser looks
			s.Malformed = true
			return
		}
		need := 2 // next header and length
		if next == 44 {
			need = 8 // the fragment header has a fixed size
		}
		if len(b) < off+need {
			s.Truncated = true
			return
		}
		hdr := b[off:]
		switch next {
		case 44:
			s.Fragment = be16(hdr, 2)&0xfff8 != 0
			off += 8
		case 51:
			off += (int(hdr[1]) + 2) * 4 // AH counts 4-byte units (RFC 4302)
		default:
			off += (int(hdr[1]) + 1) * 8
		}
		next = hdr[0]
		if s.Fragment {
			break // what follows is the middle of another packet
		}
	}
	s.setProtocol(next)
	avail := -1 // payload length 0: a jumbogram, no limit from the header
	if payload := int(be16(b, 4)); payload != 0 {
		avail = max(payload-(off-40), 0)
	}
	s.l4(b, off, avail)
}

// l4 reads the TCP, UDP or ICMP header at b[off:]. avail is how many bytes
// the IP header says follow (-1: no limit): a header the IP length cuts short
// is malformed, one the capture cuts short is truncated. Whatever of it was
// captured is still read, since ports come first.
func (s *Summary) l4(b []byte, off, avail int) {
	if s.Fragment {
		return
	}
	var need int
	switch s.Protocol {
	case protoTCP:
		need = 20
	case protoUDP:
		need = 8
	case protoICMP, protoICMPv6: // either in either family, as in the XDP parser
		need = 4 // type, code, checksum
	default:
		return
	}
	if avail >= 0 && avail < need {
		s.Malformed = true
		return
	}
	var h []byte
	if off < len(b) {
		h = b[off:]
	}
	if len(h) < need {
		s.Truncated = true
	}
	switch {
	case s.Protocol == protoICMP || s.Protocol == protoICMPv6:
		if len(h) >= 1 {
			t := h[0]
			s.ICMPType = &t
		}
	case len(h) >= 4:
		s.SrcPort, s.DstPort, s.HasPorts = be16(h, 0), be16(h, 2), true
	}
	if s.Protocol == protoTCP && len(h) >= 14 {
		if h[12]>>4 < 5 { // data offset below the minimum header
			s.Malformed = true
			return
		}
		s.TCPFlags = tcpFlags(h[13])
	}
}

func (s *Summary) setProtocol(p uint8) {
	s.Protocol = p
	switch p {
	case protoTCP:
		s.ProtocolName = "tcp"
	case protoUDP:
		s.ProtocolName = "udp"
	case protoICMP:
		s.ProtocolName = "icmp"
	case protoICMPv6:
		s.ProtocolName = "icmpv6"
	default:
		s.ProtocolName = strconv.Itoa(int(p))
	}
}

// tcpFlagNames are byte 13 of the TCP header, lowest bit first, which puts
// them in the order people write them ("SYN,ACK").
var tcpFlagNames = [8]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}

func tcpFlags(b uint8) string {
	if b == 0 {
		return "none"
	}
	var names []string
	for i, n := range tcpFlagNames {
		if b&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return strings.Join(names, ",")
}

func be16(b []byte, off int) uint16 { return binary.BigEndian.Uint16(b[off:]) }

// String renders a Summary as tcpdump-like text: "tcp 192.0.2.1:1234 >
// 198.51.100.7:80 [SYN]", "udp [2001:db8::1]:53 > [2001:db8::2]:9999",
// "icmp 192.0.2.1 > 192.0.2.2 type 8", "ipv4 proto 47 192.0.2.1 > 192.0.2.2",
// "arp" or "ethertype 0x88cc" for non-IP, with "vlan 10,20 " before and
// " (fragment)", " (truncated)", " (malformed)" after as they apply.
func (s Summary) String() string {
	var b strings.Builder
	if len(s.VLANs) > 0 {
		b.WriteString("vlan ")
		for i, id := range s.VLANs {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(int(id)))
		}
		b.WriteByte(' ')
	}
	switch {
	case s.Family == 0 && s.EtherType == etherTypeARP:
		b.WriteString("arp")
	case s.Family == 0 && s.EtherType == 0 && s.Truncated:
		b.WriteString("ethernet") // not even an EtherType was captured
	case s.Family == 0:
		fmt.Fprintf(&b, "ethertype 0x%04x", s.EtherType)
	default:
		s.writeIP(&b)
	}
	for _, f := range []struct {
		on   bool
		text string
	}{{s.Fragment, " (fragment)"}, {s.Truncated, " (truncated)"}, {s.Malformed, " (malformed)"}} {
		if f.on {
			b.WriteString(f.text)
		}
	}
	return b.String()
}

func (s Summary) writeIP(b *strings.Builder) {
	switch s.ProtocolName {
	case "tcp", "udp", "icmp", "icmpv6":
		b.WriteString(s.ProtocolName)
	case "":
		b.WriteString("ipv" + strconv.Itoa(s.Family))
	default:
		b.WriteString("ipv" + strconv.Itoa(s.Family) + " proto " + s.ProtocolName)
	}
	if !s.Src.IsValid() {
		return
	}
	if s.HasPorts {
		b.WriteString(" " + netip.AddrPortFrom(s.Src, s.SrcPort).String() + " > " + netip.AddrPortFrom(s.Dst, s.DstPort).String())
	} else {
		b.WriteString(" " + s.Src.String() + " > " + s.Dst.String())
	}
	if s.ICMPType != nil {
		b.WriteString(" type " + strconv.Itoa(int(*s.ICMPType)))
	}
	if s.TCPFlags != "" {
		b.WriteString(" [" + s.TCPFlags + "]")
	}
}

// summaryFields is Summary without its methods, so that the JSON methods can
// reuse the struct tags without calling themselves.
type summaryFields Summary

// MarshalJSON writes srcPort and dstPort exactly when HasPorts is set, so
// that port 0 shows and a packet without ports shows none.
func (s Summary) MarshalJSON() ([]byte, error) {
	v := struct {
		summaryFields
		SrcPort *uint16 `json:"srcPort,omitempty"` // shallower: hides the embedded field
		DstPort *uint16 `json:"dstPort,omitempty"`
	}{summaryFields: summaryFields(s)}
	if s.HasPorts {
		v.SrcPort, v.DstPort = &s.SrcPort, &s.DstPort
	}
	return json.Marshal(v)
}

// UnmarshalJSON reads what MarshalJSON writes, setting HasPorts when the
// ports are present.
func (s *Summary) UnmarshalJSON(data []byte) error {
	*s = Summary{}
	v := struct {
		*summaryFields
		SrcPort *uint16 `json:"srcPort"`
		DstPort *uint16 `json:"dstPort"`
	}{summaryFields: (*summaryFields)(s)}
	if err := json.Unmarshal(data, &v); err != nil {
		return fmt.Errorf("pcap: decode summary: %w", err)
	}
	if v.SrcPort != nil && v.DstPort != nil {
		s.SrcPort, s.DstPort, s.HasPorts = *v.SrcPort, *v.DstPort, true
	}
	return nil
}
