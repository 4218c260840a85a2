package reference

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/xdpfw/xdpfw/proto"
)

// ImplicitDropID is the rule id of the "drop the rest" that ends every
// allow-mode rule set.
const ImplicitDropID = proto.ImplicitDropRuleID

// Identity names a rule across rule sets: "ruleset/rule-id".
func Identity(ruleSet, ruleID string) string { return proto.RuleIdentity(ruleSet, ruleID) }

// Result is what the rule sets decide about one packet.
type Result struct {
	Drop bool
	// Rule is the identity of the rule that decided, "" when none did and
	// the packet passed by default.
	Rule string
	// DryRun lists the decisions of dry-run sets, in evaluation order.
	DryRun []DryRunDecision
}

// DryRunDecision is what a dry-run set would have done.
type DryRunDecision struct {
	Rule string
	Drop bool
}

// Classifier evaluates rule sets linearly. Build one with New.
type Classifier struct {
	sets []set
}

type set struct {
	name   string
	allow  bool
	dryRun bool
	rules  []rule
}

type rule struct {
	id   string
	drop bool
	// next: a rate-limit rule whose packets within the limit go on to
	// the next rule. The reference has no clock: it takes every packet as
	// within its limit, so such a rule never decides.
	next           bool
	src, dst       []netip.Prefix
	anySrc, anyDst bool
	proto          int // -1: any
	sports, dports [][2]uint16
	flagValue      uint8
	flagMask       uint8
	hasFlags       bool
	icmpType       int // -1: any
}

// New prepares rule sets for evaluation on interface iface (sets whose
// interfaces list names another interface are left out; an empty iface keeps
// every set). The sets must be valid.
func New(sets []proto.RuleSet, iface string) (*Classifier, error) {
	ordered := make([]proto.RuleSet, 0, len(sets))
	for _, rs := range sets {
		if appliesTo(rs, iface) {
			ordered = append(ordered, rs)
		}
	}
	sort.SliceStable(ordered, func(i, j int) bool {
		if ordered[i].Priority != ordered[j].Priority {
			return ordered[i].Priority < ordered[j].Priority
		}
		return ordered[i].Name < ordered[j].Name
	})

	c := &Classifier{}
	for _, rs := range ordered {
		s := set{
			name:   rs.Name,
			allow:  rs.Mode == proto.ModeAllow,
			dryRun: rs.EffectiveEnforcement() == proto.EnforcementDryRun,
		}
		for i, r := range rs.Rules {
			cr, err := prepare(&rs, r)
			if err != nil {
				return nil, fmt.Errorf("rule set %s: rules[%d]: %w", rs.Name, i, err)
			}
			s.rules = append(s.rules, cr)
		}
		c.sets = append(c.sets, s)
	}
	return c, nil
}

func appliesTo(rs proto.RuleSet, iface string) bool {
	if iface == "" || len(rs.Interfaces) == 0 {
		return true
	}
	for _, name := range rs.Interfaces {
		if name == iface {
			return true
		}
	}
	return false
}

func prepare(rs *proto.RuleSet, r proto.Rule) (rule, error) {
	out := rule{id: r.ID, drop: r.Action == proto.ActionDrop, proto: -1, icmpType: -1}
	out.next = r.RateLimit != nil && r.RateLimit.WithinLimit == proto.WithinNext
	var err error
	if out.src, err = addrs(rs, r.Src); err != nil {
		return out, err
	}
	if out.dst, err = addrs(rs, r.Dst); err != nil {
		return out, err
	}
	out.anySrc, out.anyDst = len(r.Src) == 0, len(r.Dst) == 0
	if num, any := proto.ProtocolNumber(r.Protocol); !any {
		out.proto = int(num)
	}
	if out.sports, err = ports(r.SrcPorts); err != nil {
		return out, err
	}
	if out.dports, err = ports(r.DstPorts); err != nil {
		return out, err
	}
	if r.TCPFlags != "" {
		out.hasFlags = true
		if out.flagValue, out.flagMask, err = proto.ParseTCPFlags(r.TCPFlags); err != nil {
			return out, err
		}
	}
	if r.ICMPType != nil {
		out.icmpType = *r.ICMPType
	}
	return out, nil
}

func addrs(rs *proto.RuleSet, items []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range items {
		m, err := proto.ParseAddrMatch(item)
		if err != nil {
			return nil, err
		}
		if m.Set == "" {
			out = append(out, m.Prefix)
			continue
		}
		members, err := rs.SetPrefixes(m.Set)
		if err != nil {
			return nil, err
		}
		out = append(out, members...)
	}
	return out, nil
}

func ports(specs []proto.PortSpec) ([][2]uint16, error) {
	var out [][2]uint16
	for _, s := range specs {
		lo, hi, err := proto.ParsePortSpec(s)
		if err != nil {
			return nil, err
		}
		out = append(out, [2]uint16{lo, hi})
	}
	return out, nil
}

// Classify evaluates the sets in order, first match wins within a set. A
// rate-limit rule decides as if the packet were within its limit.
func (c *Classifier) Classify(p Packet) Result {
	var res Result
	for _, s := range c.sets {
		decided, drop := "", false
		for _, r := range s.rules {
			if !r.next && r.matches(p) {
				decided, drop = r.id, r.drop
				break
			}
		}
		if decided == "" && s.allow {
			decided, drop = ImplicitDropID, true
		}
		if decided == "" {
			continue // deny mode: on to the next set
		}
		if s.dryRun {
			res.DryRun = append(res.DryRun, DryRunDecision{Rule: Identity(s.name, decided), Drop: drop})
			continue
		}
		res.Rule, res.Drop = Identity(s.name, decided), drop
		return res
	}
	return res
}

func (r rule) matches(p Packet) bool {
	if !r.anySrc && !containedIn(r.src, p.Src) {
		return false
	}
	if !r.anyDst && !containedIn(r.dst, p.Dst) {
		return false
	}
	if r.proto >= 0 && int(p.Proto) != r.proto {
		return false
	}
	if len(r.sports) > 0 && !inRanges(r.sports, p.SrcPort) {
		return false
	}
	if len(r.dports) > 0 && !inRanges(r.dports, p.DstPort) {
		return false
	}
	if r.hasFlags && (p.TCPFlags == NoValue || uint8(p.TCPFlags)&r.flagMask != r.flagValue) {
		return false
	}
	if r.icmpType >= 0 && p.ICMPType != r.icmpType {
		return false
	}
	return true
}

func containedIn(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func inRanges(ranges [][2]uint16, port int) bool {
	if port == NoValue {
		return false
	}
	for _, r := range ranges {
		if port >= int(r[0]) && port <= int(r[1]) {
			return true
		}
	}
	return false
}
