package proto

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Problem is one thing wrong with a rule document, at a path such as
// "rules[3].dstPorts[1]" or "sets.bad-actors[7]".
type Problem struct {
	Path    string `json:"path,omitempty"`
	Message string `json:"message"`
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// ValidationError lists every problem found in a rule document, in
// document order, so that an author fixes them all in one round.
type ValidationError struct {
	Problems []Problem
}

// Error lists the problems one per line as "PATH: MESSAGE".
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// ValidateOptions adjusts Validate for documents that are not stored yet.
type ValidateOptions struct {
	// AllowFiles accepts sets that still name a feed file, so that a loader
	// can check a rules file before reading its feeds (ResolveFiles).
	AllowFiles bool
	// AllowChunks accepts sets that still hold chunk references (see
	// ChunkSets) in place of their prefixes, and checks only their count:
	// for a reader that checks each chunk's prefixes once, when it fetches
	// the chunk (CheckChunkPrefixes), rather than a million prefixes again
	// on every change.
	AllowChunks bool
}

// maxMemberProblems caps the problems listed for one set: a feed of a
// million bad lines should produce a readable error, not a million lines.
// The rest are counted in one more problem.
const maxMemberProblems = 100

// Validate checks a rule document as it is stored and sent to hosts. It
// returns nil or a *ValidationError listing every problem.
func (rs *RuleSet) Validate() error {
	return rs.ValidateWith(ValidateOptions{})
}

// ValidateWith is Validate with options.
func (rs *RuleSet) ValidateWith(opts ValidateOptions) error {
	v := &validator{rs: rs, opts: opts}
	v.header()
	v.selector()
	v.interfaces()
	v.modes()
	v.sets()
	v.rules()
	if len(v.problems) == 0 {
		return nil
	}
	return &ValidationError{Problems: v.problems}
}

type validator struct {
	rs       *RuleSet
	opts     ValidateOptions
	problems []Problem
}

func (v *validator) add(path, format string, args ...any) {
	v.problems = append(v.problems, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (v *validator) header() {
	rs := v.rs
	switch rs.APIVersion {
	case APIVersion:
	case "":
		v.add("apiVersion", "required (want %q)", APIVersion)
	default:
		v.add("apiVersion", "unsupported version %q (want %q)", rs.APIVersion, APIVersion)
	}
	switch rs.Kind {
	case KindRuleSet:
	case "":
		v.add("kind", "required (want %q)", KindRuleSet)
	default:
		v.add("kind", "unsupported kind %q (want %q)", rs.Kind, KindRuleSet)
	}
	switch {
	case rs.Name == "":
		v.add("name", "required")
	case !validDNSLabel(rs.Name):
		v.add("name", "%q is not a valid name (lowercase letters, digits and '-', "+
			"starting and ending with a letter or digit, at most %d characters)", rs.Name, MaxNameLength)
	}
}

func (v *validator) selector() {
	for _, k := range sortedKeys(v.rs.Selector) {
		if k == "" || !validLabel(k) {
			v.add("selector", "invalid key %q (%s)", k, labelRules)
			continue
		}
		if val := v.rs.Selector[k]; val != "" && !validLabel(val) {
			v.add(mapPath("selector", k), "invalid value %q (%s)", val, labelRules)
		}
	}
}

const labelRules = "letters, digits, '.', '_', '/' and '-', at most 63 characters"

func (v *validator) interfaces() {
	first := make(map[string]int)
	for i, name := range v.rs.Interfaces {
		path := fmt.Sprintf("interfaces[%d]", i)
		if !validInterfaceName(name) {
			v.add(path, "%q is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)", name)
			continue
		}
		if j, dup := first[name]; dup {
			v.add(path, "duplicate interface %q (also interfaces[%d])", name, j)
			continue
		}
		first[name] = i
	}
}

func (v *validator) modes() {
	switch v.rs.Mode {
	case ModeDeny, ModeAllow:
	case "":
		v.add("mode", "required (deny or allow)")
	default:
		v.add("mode", "unknown mode %q (want deny or allow)", v.rs.Mode)
	}
	switch v.rs.Enforcement {
	case "", EnforcementEnforce, EnforcementDryRun:
	default:
		v.add("enforcement", "unknown enforcement %q (want enforce or dry-run)", v.rs.Enforcement)
	}
}

func (v *validator) sets() {
	if n := len(v.rs.Sets); n > MaxSetsPerRuleSet {
		v.add("sets", "%d sets, limit is %d", n, MaxSetsPerRuleSet)
	}
	for _, name := range sortedKeys(v.rs.Sets) {
		set := v.rs.Sets[name]
		path := mapPath("sets", name)
		if !validID(name) {
			v.add(path, "%q is not a valid set name (%s)", name, idRules)
		}
		if set.File != "" {
			if len(set.Prefixes) > 0 {
				v.add(path, "has both a feed file and prefixes")
			} else if !v.opts.AllowFiles {
				v.add(path, "feed file not resolved (documents hold prefixes, not paths)")
			}
		}
		n := len(set.Prefixes)
		if len(set.Chunks) == 0 && set.Count != 0 {
			// A count belongs to chunk references; on a set that holds its
			// prefixes (or nothing) it can only be a forgery or a bug.
			v.add(path, "count %d without chunks", set.Count)
		}
		if len(set.Chunks) > 0 {
			if !v.opts.AllowChunks {
				v.add(path, "%v (resolve them before use)", ErrUnresolvedChunks)
			} else if len(set.Prefixes) > 0 {
				v.add(path, "has both chunks and prefixes")
			}
			n = set.Count
			// A chunk holds at least one prefix, and no two chunks of a
			// set the same ones: a hostile list (one chunk named
			// thousands of times) is refused before anything resolves it.
			if len(set.Chunks) > set.Count {
				v.add(path, "%d chunks for %d prefixes (a chunk holds at least one)", len(set.Chunks), set.Count)
			}
			seen := make(map[string]bool, len(set.Chunks))
			for i, h := range set.Chunks {
				if seen[h] {
					v.add(fmt.Sprintf("%s.chunks[%d]", path, i), "chunk %s named twice", shortHash(h))
					break
				}
				seen[h] = true
			}
		}
		if n > MaxPrefixesPerSet {
			v.add(path, "%d prefixes, limit is %d", n, MaxPrefixesPerSet)
		}
		bad := 0
		for i, s := range set.Prefixes {
			if _, err := ParsePrefix(s); err != nil {
				if bad++; bad <= maxMemberProblems {
					v.add(fmt.Sprintf("%s[%d]", path, i), "%v", err)
				}
			}
		}
		if bad > maxMemberProblems {
			v.add(path, "%d more invalid prefixes not listed", bad-maxMemberProblems)
		}
	}
}

// family is a set of address families: what a src or dst field can match.
type family uint8

const (
	famV4 family = 1 << iota
	famV6
	famBoth = famV4 | famV6
)

func (f family) String() string {
	switch f {
	case famV4:
		return "IPv4"
	case famV6:
		return "IPv6"
	}
	return "IPv4 and IPv6"
}

func (v *validator) rules() {
	if n := len(v.rs.Rules); n > MaxRulesPerHost {
		v.add("rules", "%d rules, limit is %d", n, MaxRulesPerHost)
	}
	firstID := make(map[string]int)
	for i := range v.rs.Rules {
		v.rule(i, &v.rs.Rules[i], firstID)
	}
}

func (v *validator) rateLimit(path string, rl *RateLimit) {
	at := func(field string) string { return path + "." + field }
	if rl.PPS == 0 && rl.BPS == 0 {
		v.add(path, "needs pps, bps or both")
	}
	if rl.PPS > MaxPPS {
		v.add(at("pps"), "%d is over %d", rl.PPS, MaxPPS)
	}
	if rl.BPS != 0 && (rl.BPS < MinBPS || rl.BPS > MaxBPS) {
		v.add(at("bps"), "%d is out of range %d..%d", rl.BPS, MinBPS, MaxBPS)
	}
	if rl.Burst > MaxBurst {
		v.add(at("burst"), "%d is over %d", rl.Burst, MaxBurst)
	}
	if rl.Burst != 0 && rl.PPS == 0 {
		v.add(at("burst"), "counts packets: needs pps (burstBytes goes with bps)")
	}
	if rl.BurstBytes > MaxBurstBytes {
		v.add(at("burstBytes"), "%d is over %d", rl.BurstBytes, uint64(MaxBurstBytes))
	}
	if rl.BurstBytes != 0 && rl.BPS == 0 {
		v.add(at("burstBytes"), "needs bps")
	}
	if _, err := ParseLimitScope(rl.Per); err != nil {
		v.add(at("per"), "%v", err)
	}
	switch rl.WithinLimit {
	case "", WithinPass, WithinNext:
	default:
		v.add(at("withinLimit"), "unknown value %q (want pass or next)", rl.WithinLimit)
	}
}

func (v *validator) rule(i int, r *Rule, firstID map[string]int) {
	path := fmt.Sprintf("rules[%d]", i)
	at := func(field string) string { return path + "." + field }

	switch {
	case r.ID == "":
		v.add(at("id"), "required")
	case !validID(r.ID):
		v.add(at("id"), "%q is not a valid id (%s)", r.ID, idRules)
	default:
		if j, dup := firstID[r.ID]; dup {
			v.add(at("id"), "duplicate id %q (also rules[%d])", r.ID, j)
		} else {
			firstID[r.ID] = i
		}
	}

	switch r.Action {
	case ActionPass, ActionDrop:
	case ActionRateLimit:
		if r.RateLimit == nil {
			v.add(at("rateLimit"), "required with action rate-limit")
		}
	case "":
		v.add(at("action"), "required (pass, drop or rate-limit)")
	default:
		v.add(at("action"), "unknown action %q (want pass, drop or rate-limit)", r.Action)
	}

	srcFam := v.addrs(at("src"), r.Src)
	dstFam := v.addrs(at("dst"), r.Dst)

	knownProto := true
	switch r.Protocol {
	case "", ProtoAny, ProtoTCP, ProtoUDP, ProtoICMP, ProtoICMPv6:
	default:
		knownProto = false
		v.add(at("protocol"), "unknown protocol %q (want tcp, udp, icmp, icmpv6 or any)", r.Protocol)
	}
	// With an unknown protocol, "ports need tcp" would only repeat the
	// protocol problem; the items themselves are still checked.
	hasPorts := r.Protocol == ProtoTCP || r.Protocol == ProtoUDP
	v.ports(at("srcPorts"), r.SrcPorts, hasPorts || !knownProto)
	v.ports(at("dstPorts"), r.DstPorts, hasPorts || !knownProto)

	if r.TCPFlags != "" {
		if knownProto && r.Protocol != ProtoTCP {
			v.add(at("tcpFlags"), "tcp flags need protocol tcp")
		}
		if _, _, err := ParseTCPFlags(r.TCPFlags); err != nil {
			v.add(at("tcpFlags"), "%v", err)
		}
	}
	if r.ICMPType != nil {
		if knownProto && r.Protocol != ProtoICMP && r.Protocol != ProtoICMPv6 {
			v.add(at("icmpType"), "icmp type needs protocol icmp or icmpv6")
		}
		if t := *r.ICMPType; t < 0 || t > 255 {
			v.add(at("icmpType"), "%d is out of range 0..255", t)
		}
	}
	if r.RateLimit != nil {
		if r.Action != ActionRateLimit {
			v.add(at("rateLimit"), "only allowed with action rate-limit")
		}
		v.rateLimit(at("rateLimit"), r.RateLimit)
	}

	// A packet is either IPv4 or IPv6: a rule whose fields each admit only
	// one family, and not the same one, can never match. Only literals
	// count: a set's content may change with its feed, and a rule should
	// not become invalid because a feed did.
	protoFam := famBoth
	switch r.Protocol {
	case ProtoICMP:
		protoFam = famV4
	case ProtoICMPv6:
		protoFam = famV6
	}
	srcOK, dstOK := true, true
	if srcFam&protoFam == 0 {
		srcOK = false
		v.add(at("src"), "all %s, but protocol %s is %s only: the rule can never match", srcFam, r.Protocol, protoFam)
	}
	if dstFam&protoFam == 0 {
		dstOK = false
		v.add(at("dst"), "all %s, but protocol %s is %s only: the rule can never match", dstFam, r.Protocol, protoFam)
	}
	if srcOK && dstOK && srcFam&dstFam == 0 {
		v.add(at("dst"), "all %s, but src is all %s: the rule can never match", dstFam, srcFam)
	}
}

// addrs checks a src or dst field and returns the families its literals
// admit: famBoth when the field is empty, refers to a set, or has no valid
// literal, since none of those narrows what the rule can match.
func (v *validator) addrs(path string, items []string) family {
	if n := len(items); n > MaxFieldItemsInRule {
		v.add(path, "%d items, limit is %d", n, MaxFieldItemsInRule)
	}
	var fam family
	ref := false
	for i, s := range items {
		itemPath := fmt.Sprintf("%s[%d]", path, i)
		m, err := ParseAddrMatch(s)
		switch {
		case err != nil:
			v.add(itemPath, "%v", err)
		case m.IsSet():
			ref = true
			if _, ok := v.rs.Sets[m.Set]; !ok {
				v.add(itemPath, "unknown set %q", m.Set)
			}
		case m.Prefix.Addr().Is4():
			fam |= famV4
		default:
			fam |= famV6
		}
	}
	if ref || fam == 0 {
		return famBoth
	}
	return fam
}

func (v *validator) ports(path string, ports []PortSpec, allowed bool) {
	if len(ports) == 0 {
		return
	}
	if !allowed {
		v.add(path, "ports need protocol tcp or udp")
	}
	if n := len(ports); n > MaxFieldItemsInRule {
		v.add(path, "%d items, limit is %d", n, MaxFieldItemsInRule)
	}
	for i, p := range ports {
		if _, _, err := ParsePortSpec(p); err != nil {
			v.add(fmt.Sprintf("%s[%d]", path, i), "%v", err)
		}
	}
}

const idRules = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63 characters"

const badSetNameMsg = "not a valid set name (" + idRules + ")"

// validID matches ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$, the form of rule ids
// and set names (they appear in metrics labels and map names).
func validID(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLength || !isAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// validDNSLabel checks an RFC 1123 label: a rule set's name is part of its
// etcd keys (rulesets/<name>/...).
func validDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		lowerAlnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !lowerAlnum && (c != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

func validLabel(s string) bool {
	if len(s) > MaxNameLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && !strings.ContainsRune("._/-", rune(c)) {
			return false
		}
	}
	return true
}

// validInterfaceName follows the kernel's dev_valid_name (IFNAMSIZ 16
// including the NUL, no '/', ':' or whitespace, not "." or ".."), and also
// refuses invalid UTF-8 and control characters, which no sane name holds
// and which would not survive a JSON round trip.
func validInterfaceName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s == "." || s == ".." || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r == '/' || r == ':' || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
