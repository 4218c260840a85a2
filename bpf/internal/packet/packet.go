// Package packet crafts Ethernet frames for tests that run the XDP program
// through BPF_PROG_RUN, and parses frames with the same rules as the parser
// in bpf/firewall.c, so a test can state what the data plane must have read
// from a frame without asking the data plane.
//
// Everything here is for tests: the builder panics on a Frame it cannot
// encode, because such a Frame is a bug in the test that wrote it.
package packet

// EtherTypes the builder writes and the parser tells apart.
const (
	EtherTypeIPv4 uint16 = 0x0800
	EtherTypeARP  uint16 = 0x0806
	EtherTypeVLAN uint16 = 0x8100 // 802.1Q tag
	EtherTypeIPv6 uint16 = 0x86DD
	EtherTypeQinQ uint16 = 0x88A8 // 802.1ad service tag
	EtherTypeLLDP uint16 = 0x88CC
)

// IP protocol numbers, which are also the IPv6 next-header values of the
// extension headers the parser walks.
const (
	ProtoHopByHop uint8 = 0
	ProtoICMP     uint8 = 1
	ProtoTCP      uint8 = 6
	ProtoUDP      uint8 = 17
	ProtoRouting  uint8 = 43
	ProtoFragment uint8 = 44
	ProtoGRE      uint8 = 47
	ProtoESP      uint8 = 50
	ProtoAH       uint8 = 51
	ProtoICMPv6   uint8 = 58
	ProtoNoNext   uint8 = 59
	ProtoDestOpts uint8 = 60
)

// Header sizes. The ICMP header is the 8 bytes every ICMP message starts
// with; the parser needs only the first 4 (type, code, checksum).
const (
	EthernetHeaderLen = 14
	VLANTagLen        = 4
	IPv4HeaderLen     = 20 // without options
	IPv6HeaderLen     = 40
	TCPHeaderLen      = 20 // without options
	UDPHeaderLen      = 8
	ICMPHeaderLen     = 8
	// MinFrameLen is the Ethernet minimum frame size without the FCS,
	// which is what a NIC hands to XDP.
	MinFrameLen = 60
)
