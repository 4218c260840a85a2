// Package proto is the wire contract shared by every part of xdpfw: rule
// documents, their validation, and (later) status, telemetry and the etcd key
// layout. It imports neither etcd nor BPF code.
package proto

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

// RuleSet is one versioned rule document (DESIGN.md section 3).
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

// RateLimit configures action rate-limit.
type RateLimit struct {
	PPS   uint64 `json:"pps,omitempty"`
	BPS   uint64 `json:"bps,omitempty"`
	Burst uint64 `json:"burst,omitempty"`
	// Per is "rule", "source", or "source/N" to aggregate sources by prefix.
	Per string `json:"per,omitempty"`
}
