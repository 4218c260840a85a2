// Package reference is the plain, linear first-match classifier that the
// compiled data plane is checked against: it reads rule sets as written and
// walks them rule by rule, exactly as docs/architecture.md, "Rule semantics" describes. It is
// slow on purpose and has no tables, so it can be trusted by reading it.
package reference

import "net/netip"

// NoValue marks a packet field the packet does not carry (no ports on ICMP
// or on a non-first fragment, no TCP flags on UDP, ...).
const NoValue = -1

// Packet holds the fields of a parsed IP packet that rules match on, as the
// XDP parser extracts them.
type Packet struct {
	Src, Dst netip.Addr
	Proto    uint8
	// Fragment is set on non-first fragments: they carry no L4 header.
	Fragment bool
	// SrcPort, DstPort, TCPFlags and ICMPType hold NoValue when absent.
	SrcPort, DstPort int
	TCPFlags         int
	ICMPType         int
}

// ParseResult says whether a frame was IP and readable.
type ParseResult int

const (
	ParseOK ParseResult = iota
	// ParseNonIP is a frame that is not IPv4 or IPv6 (ARP, LLDP, ...).
	ParseNonIP
	// ParseError is a truncated or malformed frame.
	ParseError
)

func (r ParseResult) String() string {
	switch r {
	case ParseOK:
		return "ok"
	case ParseNonIP:
		return "non-ip"
	default:
		return "parse-error"
	}
}
