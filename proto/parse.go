package proto

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// TCP flag bits as they sit in byte 13 of the TCP header, so the compiler
// can copy a parsed value and mask straight into a map key.
const (
	TCPFlagFIN uint8 = 0x01
	TCPFlagSYN uint8 = 0x02
	TCPFlagRST uint8 = 0x04
	TCPFlagPSH uint8 = 0x08
	TCPFlagACK uint8 = 0x10
	TCPFlagURG uint8 = 0x20
	TCPFlagECE uint8 = 0x40
	TCPFlagCWR uint8 = 0x80
)

// tcpFlagNames is in bit order, which is also the order flags are listed
// in messages.
var tcpFlagNames = [8]string{"fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"}

// SetRefPrefix introduces a reference to a named prefix set in a src or dst
// item ("set:bad-actors").
const SetRefPrefix = "set:"

// AddrMatch is one parsed src or dst item: either a prefix literal (Prefix
// valid, Set empty) or a reference to a named set (Set non-empty, Prefix
// the zero value).
type AddrMatch struct {
	Prefix netip.Prefix
	Set    string
}

// IsSet reports whether m refers to a named set rather than a literal.
func (m AddrMatch) IsSet() bool { return m.Set != "" }

// String returns the document form of m.
func (m AddrMatch) String() string {
	if m.IsSet() {
		return SetRefPrefix + m.Set
	}
	return m.Prefix.String()
}

// ParseAddrMatch parses a src or dst item: "set:NAME", a CIDR, or a bare
// address (meaning /32 or /128). It applies the rules of ParsePrefix.
func ParseAddrMatch(s string) (AddrMatch, error) {
	if name, ok := strings.CutPrefix(s, SetRefPrefix); ok {
		if name == "" {
			return AddrMatch{}, fmt.Errorf("%q: empty set name", s)
		}
		if !validID(name) {
			return AddrMatch{}, fmt.Errorf("%q: %s", s, badSetNameMsg)
		}
		return AddrMatch{Set: name}, nil
	}
	p, err := ParsePrefix(s)
	if err != nil {
		return AddrMatch{}, err
	}
	return AddrMatch{Prefix: p}, nil
}

// ParsePrefix parses a prefix ("198.51.100.0/24", "2001:db8::/32") or a bare
// address ("192.0.2.1" meaning 192.0.2.1/32). It is stricter than
// netip.ParsePrefix on purpose, because a typo in a firewall rule silently
// matches the wrong traffic:
//   - host bits set ("198.51.100.1/24") is an error, with the masked prefix
//     suggested: the author meant either the network or the host;
//   - IPv4-mapped IPv6 ("::ffff:192.0.2.1") is an error: the data plane sees
//     IPv4 packets as IPv4, so such a rule would never match;
//   - zones ("fe80::1%eth0") are an error: they have no meaning in a packet.
//
// The result is always masked (canonical).
func ParsePrefix(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errors.New("empty address or prefix")
	}
	addrPart, bitsPart, hasBits := strings.Cut(s, "/")
	if strings.Contains(addrPart, "%") {
		return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed", s)
	}
	ip, err := netip.ParseAddr(addrPart)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q: %s", s, addrErrorText(addrPart, err))
	}
	bits := ip.BitLen()
	if hasBits {
		bits, err = parseBits(bitsPart, ip.BitLen())
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q: %w", s, err)
		}
	}
	if ip.Is4In6() {
		if bits >= 96 {
			return netip.Prefix{}, fmt.Errorf("%q: IPv4-mapped IPv6 address (write %s)",
				s, netip.PrefixFrom(ip.Unmap(), bits-96).Masked())
		}
		return netip.Prefix{}, fmt.Errorf("%q: IPv4-mapped IPv6 address (use IPv4 notation)", s)
	}
	p := netip.PrefixFrom(ip, bits)
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set (did you mean %s?)", s, m)
	}
	return p, nil
}

// parseBits parses a prefix length. Like netip it refuses signs and leading
// zeros, which would otherwise hide typos such as "/024".
func parseBits(s string, maxBits int) (int, error) {
	if s == "" {
		return 0, errors.New("missing prefix length after '/'")
	}
	if (len(s) > 1 && s[0] == '0') || strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return 0, fmt.Errorf("bad prefix length %q", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > maxBits {
		return 0, fmt.Errorf("prefix length %s is out of range 0..%d", s, maxBits)
	}
	return n, nil
}

// addrErrorText strips netip's `ParseAddr("...")` preamble: our messages
// already quote the whole item once.
func addrErrorText(in string, err error) string {
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "ParseAddr("+strconv.Quote(in)+"): "); ok {
		msg = rest
	}
	return "not an IP address or prefix: " + msg
}

// ParsePortSpec parses a port ("22") or an inclusive range ("1000-2000").
// A single port p returns lo == hi == p.
func ParsePortSpec(ps PortSpec) (lo, hi uint16, err error) {
	s := string(ps)
	if s == "" {
		return 0, 0, errors.New("empty port")
	}
	loStr, hiStr, isRange := strings.Cut(s, "-")
	lo, err = parsePort(loStr, s)
	if err != nil {
		return 0, 0, err
	}
	if !isRange {
		return lo, lo, nil
	}
	hi, err = parsePort(hiStr, s)
	if err != nil {
		return 0, 0, err
	}
	if hi < lo {
		return 0, 0, fmt.Errorf("range %s is empty", s)
	}
	return lo, hi, nil
}

func parsePort(s, whole string) (uint16, error) {
	if s == "" || strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
		return 0, fmt.Errorf("%q is not a port or port range", whole)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %s is out of range 0..65535", s)
	}
	return uint16(n), nil
}

// ParseTCPFlags parses "VALUE/MASK" (iptables style: the flags under MASK
// must equal VALUE) or a bare list "syn,ack" meaning VALUE=MASK. Each part
// is a comma-separated list of fin, syn, rst, psh, ack, urg, ece, cwr in any
// case; VALUE may be empty or "none" for "no flag under MASK set". A packet
// matches when flags&mask == value.
func ParseTCPFlags(s string) (value, mask uint8, err error) {
	valueStr, maskStr, hasMask := strings.Cut(s, "/")
	if !hasMask {
		maskStr = valueStr
	}
	if strings.Contains(maskStr, "/") {
		return 0, 0, fmt.Errorf("%q: more than one '/'", s)
	}
	mask, err = parseFlagList(maskStr, false)
	if err != nil {
		return 0, 0, fmt.Errorf("%q: mask: %w", s, err)
	}
	if !hasMask {
		return mask, mask, nil
	}
	value, err = parseFlagList(valueStr, true)
	if err != nil {
		return 0, 0, fmt.Errorf("%q: value: %w", s, err)
	}
	if extra := value &^ mask; extra != 0 {
		// Such a rule could never match: the flag is not even looked at.
		return 0, 0, fmt.Errorf("%q: value flags %s are not in the mask", s, flagNames(extra))
	}
	return value, mask, nil
}

func parseFlagList(s string, allowNone bool) (uint8, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		if allowNone {
			return 0, nil
		}
		return 0, errors.New("empty flag list")
	}
	if strings.EqualFold(s, "none") {
		if allowNone {
			return 0, nil
		}
		return 0, errors.New(`"none" is only allowed as the value`)
	}
	var bits uint8
	for name := range strings.SplitSeq(s, ",") {
		name = strings.ToLower(strings.TrimSpace(name))
		i := slices.Index(tcpFlagNames[:], name)
		if i < 0 {
			return 0, fmt.Errorf("unknown tcp flag %q (want %s)", name, strings.Join(tcpFlagNames[:], ", "))
		}
		bits |= 1 << i
	}
	return bits, nil
}

func flagNames(bits uint8) string {
	var names []string
	for i, n := range tcpFlagNames {
		if bits&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return strings.Join(names, ",")
}

// ProtocolNumber returns the IP protocol number of p, or any=true when p
// matches every protocol ("" or "any"). For a name Validate rejects it
// returns (0, false); call it only on validated rule sets.
func ProtocolNumber(p Protocol) (num uint8, any bool) {
	switch p {
	case "", ProtoAny:
		return 0, true
	case ProtoTCP:
		return 6, false
	case ProtoUDP:
		return 17, false
	case ProtoICMP:
		return 1, false
	case ProtoICMPv6:
		return 58, false
	}
	return 0, false
}

// SetPrefixes returns the prefixes of the inline set name, parsed,
// deduplicated and sorted (IPv4 before IPv6, then by address, then by
// length). A set still naming a feed file is an error: call ResolveFiles
// first.
func (rs *RuleSet) SetPrefixes(name string) ([]netip.Prefix, error) {
	set, ok := rs.Sets[name]
	if !ok {
		return nil, fmt.Errorf("unknown set %q", name)
	}
	if set.File != "" {
		return nil, fmt.Errorf("set %q: feed file %s not resolved", name, set.File)
	}
	out := make([]netip.Prefix, 0, len(set.Prefixes))
	for i, s := range set.Prefixes {
		p, err := ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", mapPath("sets", name), i, err)
		}
		out = append(out, p)
	}
	return sortPrefixes(out), nil
}

// sortPrefixes sorts masked prefixes and drops duplicates, in place. Feeds
// are often sorted already, and checking is much cheaper than sorting a
// million entries.
func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	if !slices.IsSortedFunc(ps, comparePrefix) {
		sortByKey(ps)
	}
	return slices.Compact(ps)
}

// sortByKey sorts ps in the order of comparePrefix. A feed can hold a
// million prefixes: sorting them with netip's general Compare takes half a
// second, so each prefix is reduced to integers that compare in one or
// two instructions (IPv4 as one uint64 of address and length), sorted, and
// rebuilt. IPv4 sorts before IPv6, as in netip.
func sortByKey(ps []netip.Prefix) {
	v4 := make([]uint64, 0, len(ps))
	var v6 []prefixKey6
	for _, p := range ps {
		if p.Addr().Is4() {
			a := p.Addr().As4()
			v4 = append(v4, uint64(binary.BigEndian.Uint32(a[:]))<<8|uint64(p.Bits()))
			continue
		}
		a := p.Addr().As16()
		v6 = append(v6, prefixKey6{binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:]), uint8(p.Bits())})
	}
	slices.Sort(v4)
	slices.SortFunc(v6, comparePrefixKey6)
	for i, k := range v4 {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], uint32(k>>8))
		ps[i] = netip.PrefixFrom(netip.AddrFrom4(a), int(k&0xff))
	}
	for i, k := range v6 {
		var a [16]byte
		binary.BigEndian.PutUint64(a[:8], k.hi)
		binary.BigEndian.PutUint64(a[8:], k.lo)
		ps[len(v4)+i] = netip.PrefixFrom(netip.AddrFrom16(a), int(k.bits))
	}
}

// prefixKey6 is an IPv6 prefix as integers, in sort order.
type prefixKey6 struct {
	hi, lo uint64
	bits   uint8
}

func comparePrefixKey6(a, b prefixKey6) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(a.lo, b.lo); c != 0 {
		return c
	}
	return cmp.Compare(a.bits, b.bits)
}

// comparePrefix orders masked prefixes like netip.Prefix.Compare: IPv4
// before IPv6, then by address, then by length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// LimitScope is a parsed RateLimit.Per: whose packets share a bucket.
type LimitScope struct {
	// PerSource is false for one bucket per rule.
	PerSource bool
	// Bits4 and Bits6 are the source prefix lengths buckets are kept per
	// (32 and 128 for "source").
	Bits4, Bits6 int
}

// ParseLimitScope parses RateLimit.Per ("" is "rule").
func ParseLimitScope(per string) (LimitScope, error) {
	switch per {
	case "", PerRule:
		return LimitScope{}, nil
	case PerSource:
		return LimitScope{PerSource: true, Bits4: 32, Bits6: 128}, nil
	}
	rest, ok := strings.CutPrefix(per, perSourceAt)
	if !ok {
		return LimitScope{}, fmt.Errorf("%q: want rule, source, source/N or source/N4/N6", per)
	}
	n4s, n6s, two := strings.Cut(rest, "/")
	if !two {
		n, err := parseBits(n4s, 128)
		if err != nil {
			return LimitScope{}, fmt.Errorf("%q: %w", per, err)
		}
		return LimitScope{PerSource: true, Bits4: min(n, 32), Bits6: n}, nil
	}
	n4, err := parseBits(n4s, 32)
	if err != nil {
		return LimitScope{}, fmt.Errorf("%q: IPv4 %w", per, err)
	}
	n6, err := parseBits(n6s, 128)
	if err != nil {
		return LimitScope{}, fmt.Errorf("%q: IPv6 %w", per, err)
	}
	return LimitScope{PerSource: true, Bits4: n4, Bits6: n6}, nil
}
