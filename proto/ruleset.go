// Package proto is the wire contract shared by every part of xdpfw: rule
// documents, their validation, and (later) status, telemetry and the etcd key
// layout. It imports neither etcd nor BPF code.
package proto

// ImplicitDropRuleID is the rule id of the "drop the rest" that ends every
// allow-mode rule set (its counters and telemetry go by it).
const ImplicitDropRuleID = "(implicit-drop)"

// RuleIdentity names a rule across rule sets, "ruleset/rule-id": its
// counters, telemetry and drop samples go by it.
func RuleIdentity(ruleSet, ruleID string) string { return ruleSet + "/" + ruleID }

// APIVersion and KindRuleSet identify a v1 rule document.
const (
	APIVersion  = "xdpfw/v1"
	KindRuleSet = "RuleSet"
)

// Mode says what happens to traffic that no rule of a set decides.
type Mode string

const (
	// ModeDeny passes unmatched traffic on to the next set (a blacklist).
	ModeDeny Mode = "deny"
	// ModeAllow drops whatever none of the set's rules passed (a whitelist).
	ModeAllow Mode = "allow"
)

// Enforcement says whether a set's drops are real.
type Enforcement string

const (
	// EnforcementEnforce applies the set's verdicts. It is the default.
	EnforcementEnforce Enforcement = "enforce"
	// EnforcementDryRun counts would-drops and changes no verdict.
	EnforcementDryRun Enforcement = "dry-run"
)

// Action is what a matching rule does with a packet.
type Action string

const (
	ActionPass      Action = "pass"
	ActionDrop      Action = "drop"
	ActionRateLimit Action = "rate-limit"
)

// Protocol names the L4 protocol a rule matches. Empty means any.
type Protocol string

const (
	ProtoAny    Protocol = "any"
	ProtoTCP    Protocol = "tcp"
	ProtoUDP    Protocol = "udp"
	ProtoICMP   Protocol = "icmp"
	ProtoICMPv6 Protocol = "icmpv6"
)

// Limits of one rule set and of everything one host enforces.
const (
	MaxRulesPerHost     = 4096
	MaxPrefixesPerSet   = 1_000_000
	MaxNameLength       = 63
	MaxSetsPerRuleSet   = 256
	MaxRuleSetsPerHost  = 64
	MaxFieldItemsInRule = 256
)

// RuleSet is one versioned rule document (docs/architecture.md, "Rule semantics").
type RuleSet struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	// Priority orders the sets of one host: lower first, then by name.
	Priority int `json:"priority,omitempty"`
	// Selector picks hosts by label; empty selects every host.
	Selector map[string]string `json:"selector,omitempty"`
	// Interfaces limits the set to these interfaces; empty means all managed ones.
	Interfaces  []string             `json:"interfaces,omitempty"`
	Mode        Mode                 `json:"mode"`
	Enforcement Enforcement          `json:"enforcement,omitempty"`
	Sets        map[string]PrefixSet `json:"sets,omitempty"`
	Rules       []Rule               `json:"rules"`
}

// PrefixSet is a named set of prefixes: inline in the document, or read
// from a feed file when a rules file is loaded. Stored and transmitted
// documents always hold the prefixes themselves (File is empty).
type PrefixSet struct {
	Prefixes []string
	// File is a feed file path, relative to the rules file.
	File string
	// Chunks are the hashes of the chunks holding the prefixes of a big
	// set as stored in etcd, and Count how many prefixes they hold (see
	// ChunkSets); readers resolve them (ResolveChunks) before use.
	Chunks []string
	Count  int
}

// Rule is one ordered rule. Empty match fields match anything.
type Rule struct {
	ID     string `json:"id"`
	Action Action `json:"action"`
	// Src and Dst hold CIDRs, bare addresses, or "set:NAME" references.
	Src      []string `json:"src,omitempty"`
	Dst      []string `json:"dst,omitempty"`
	Protocol Protocol `json:"protocol,omitempty"`
	// SrcPorts and DstPorts hold ports ("22") and ranges ("1000-2000").
	SrcPorts []PortSpec `json:"srcPorts,omitempty"`
	DstPorts []PortSpec `json:"dstPorts,omitempty"`
	// TCPFlags is "VALUE/MASK" as in iptables, e.g. "syn/syn,ack": the flags
	// under MASK must be exactly VALUE. A bare "syn,ack" means VALUE=MASK.
	TCPFlags string `json:"tcpFlags,omitempty"`
	// ICMPType matches the ICMP or ICMPv6 type.
	ICMPType  *int       `json:"icmpType,omitempty"`
	RateLimit *RateLimit `json:"rateLimit,omitempty"`
}

// PortSpec is a port or an inclusive port range. In documents it is a
// string ("22", "1000-2000"); YAML and JSON numbers are accepted too.
type PortSpec string

// RateLimit configures action rate-limit: a token bucket for packets (PPS)
// and one for bytes (BPS), at least one of them. Packets within the limit
// pass (or go on to the next rule, WithinLimit "next"); the rest drop.
type RateLimit struct {
	// PPS is the packet rate, per second.
	PPS uint64 `json:"pps,omitempty"`
	// BPS is the bit rate (of whole frames), per second.
	BPS uint64 `json:"bps,omitempty"`
	// Burst is how many packets may pass back to back above PPS; default
	// a tenth of a second at PPS, at least 1.
	Burst uint64 `json:"burst,omitempty"`
	// BurstBytes is the same for BPS, in bytes; default a tenth of a
	// second at BPS.
	BurstBytes uint64 `json:"burstBytes,omitempty"`
	// Per is "rule" (one bucket, the default), "source" (one per source
	// address), "source/N" (per source prefix of N bits, IPv4 sources to
	// at most /32) or "source/N4/N6" (IPv4 and IPv6 prefixes apart).
	Per string `json:"per,omitempty"`
	// WithinLimit is what packets within the limit do: "pass" (default) or
	// "next" (evaluation goes on at the next rule).
	WithinLimit string `json:"withinLimit,omitempty"`
}

// Rate-limit bounds.
const (
	MaxPPS        = 1_000_000_000
	MinBPS        = 8_000 // 1 kB/s
	MaxBPS        = 1_000_000_000_000
	MaxBurst      = 100_000_000
	MaxBurstBytes = 1 << 40
)

// Values of RateLimit.Per and WithinLimit.
const (
	PerRule     = "rule"
	PerSource   = "source"
	WithinPass  = "pass"
	WithinNext  = "next"
	perSourceAt = "source/"
)

// EffectiveBurst is Burst, or a tenth of a second at PPS (at least 1).
func (r RateLimit) EffectiveBurst() uint64 {
	if r.Burst > 0 {
		return r.Burst
	}
	return max(1, r.PPS/10)
}

// EffectiveBurstBytes is BurstBytes, or a tenth of a second at BPS.
func (r RateLimit) EffectiveBurstBytes() uint64 {
	if r.BurstBytes > 0 {
		return r.BurstBytes
	}
	return r.BPS / 80
}
