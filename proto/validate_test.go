package proto

import (
	"fmt"
	"strings"
	"testing"
)

// validRuleSet is a document with no problem; each test case breaks it in
// one way.
func validRuleSet() RuleSet {
	return RuleSet{
		APIVersion: APIVersion,
		Kind:       KindRuleSet,
		Name:       "edge",
		Selector:   map[string]string{"role": "edge", "topology.kubernetes.io/zone": "eu-1a", "empty": ""},
		Interfaces: []string{"eth0", "bond0.100"},
		Mode:       ModeDeny,
		Sets: map[string]PrefixSet{
			"bad-actors": {Prefixes: []string{"203.0.113.0/24", "2001:db8:bad::/48", "203.0.113.0/24"}},
			"unused":     {},
			"v4only":     {Prefixes: []string{"192.0.2.0/24"}},
		},
		Rules: []Rule{
			{ID: "ssh-office", Action: ActionPass, Src: []string{"198.51.100.0/24", "2001:db8:1::/48"}, Protocol: ProtoTCP,
				DstPorts: []PortSpec{"22", "2222-2223"}, TCPFlags: "syn/syn,ack"},
			{ID: "threat-intel", Action: ActionDrop, Src: []string{"set:bad-actors"}},
			{ID: "ping", Action: ActionPass, Protocol: ProtoICMP, ICMPType: ptr(8), Dst: []string{"192.0.2.1"}},
			{ID: "ping6", Action: ActionPass, Protocol: ProtoICMPv6, ICMPType: ptr(128), Src: []string{"set:v4only"}},
			{ID: "dns", Action: ActionPass, Protocol: ProtoUDP, SrcPorts: []PortSpec{"0-65535"}, DstPorts: []PortSpec{"53"}},
			{ID: "Any_thing.1", Action: ActionDrop, Protocol: ProtoAny},
		},
	}
}

func ptr[T any](v T) *T { return &v }

func TestValidateAcceptsValid(t *testing.T) {
	rs := validRuleSet()
	assertProblems(t, rs.Validate(), nil)

	// An allow-mode set with no rules drops everything: valid.
	rs = validRuleSet()
	rs.Mode, rs.Rules, rs.Sets = ModeAllow, nil, nil
	assertProblems(t, rs.Validate(), nil)

	rs = validRuleSet()
	rs.Enforcement = EnforcementDryRun
	assertProblems(t, rs.Validate(), nil)
}

func TestValidateProblems(t *testing.T) {
	const idRulesMsg = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63 characters"
	tests := []struct {
		name   string
		modify func(rs *RuleSet)
		want   []Problem
	}{
		{"no apiVersion", func(rs *RuleSet) { rs.APIVersion = "" },
			[]Problem{{"apiVersion", `required (want "xdpfw/v1")`}}},
		{"wrong apiVersion", func(rs *RuleSet) { rs.APIVersion = "xdpfw/v2" },
			[]Problem{{"apiVersion", `unsupported version "xdpfw/v2" (want "xdpfw/v1")`}}},
		{"no kind", func(rs *RuleSet) { rs.Kind = "" },
			[]Problem{{"kind", `required (want "RuleSet")`}}},
		{"wrong kind", func(rs *RuleSet) { rs.Kind = "Ruleset" },
			[]Problem{{"kind", `unsupported kind "Ruleset" (want "RuleSet")`}}},
		{"no name", func(rs *RuleSet) { rs.Name = "" },
			[]Problem{{"name", "required"}}},
		{"bad names", func(rs *RuleSet) { rs.Name = "Edge" }, []Problem{{"name", `"Edge" is not a valid name ` +
			`(lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)`}}},
		{"name ends with dash", func(rs *RuleSet) { rs.Name = "edge-" }, []Problem{{"name", `"edge-" is not a valid name ` +
			`(lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)`}}},
		{"name too long", func(rs *RuleSet) { rs.Name = strings.Repeat("a", 64) }, []Problem{{"name", `"` + strings.Repeat("a", 64) +
			`" is not a valid name (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)`}}},
		{"name 63 ok", func(rs *RuleSet) { rs.Name = strings.Repeat("a-", 31) + "0" }, nil},
		{"no mode", func(rs *RuleSet) { rs.Mode = "" },
			[]Problem{{"mode", "required (deny or allow)"}}},
		{"bad mode", func(rs *RuleSet) { rs.Mode = "block" },
			[]Problem{{"mode", `unknown mode "block" (want deny or allow)`}}},
		{"bad enforcement", func(rs *RuleSet) { rs.Enforcement = "dryrun" },
			[]Problem{{"enforcement", `unknown enforcement "dryrun" (want enforce or dry-run)`}}},
		{"bad interfaces", func(rs *RuleSet) {
			rs.Interfaces = []string{"eth0", "eth 1", "a/b", "", "averyveryverylongname", "eth0", "veth:1", "..", "eth\x01"}
		}, []Problem{
			{"interfaces[1]", `"eth 1" is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)`},
			{"interfaces[2]", `"a/b" is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)`},
			{"interfaces[3]", `"" is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)`},
			{"interfaces[4]", `"averyveryverylongname" is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)`},
			{"interfaces[5]", `duplicate interface "eth0" (also interfaces[0])`},
			{"interfaces[6]", `"veth:1" is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)`},
			{"interfaces[7]", `".." is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)`},
			{"interfaces[8]", `"eth\x01" is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)`},
		}},
		{"bad selector", func(rs *RuleSet) {
			rs.Selector = map[string]string{"": "x", "rack": "a b", "ok": "fine", "we ird": "x", "long": strings.Repeat("v", 64)}
		}, []Problem{
			{"selector", `invalid key "" (letters, digits, '.', '_', '/' and '-', at most 63 characters)`},
			{"selector.long", `invalid value "` + strings.Repeat("v", 64) + `" (letters, digits, '.', '_', '/' and '-', at most 63 characters)`},
			{"selector.rack", `invalid value "a b" (letters, digits, '.', '_', '/' and '-', at most 63 characters)`},
			{"selector", `invalid key "we ird" (letters, digits, '.', '_', '/' and '-', at most 63 characters)`},
		}},
		{"bad set members", func(rs *RuleSet) {
			m := make([]string, 9)
			for i := range m {
				m[i] = fmt.Sprintf("203.0.113.%d/32", i)
			}
			m[7] = "203.0.113.1/24"
			m[8] = "nonsense"
			rs.Sets["bad-actors"] = PrefixSet{Prefixes: m}
		}, []Problem{
			{"sets.bad-actors[7]", "203.0.113.1/24 has host bits set (did you mean 203.0.113.0/24?)"},
			{"sets.bad-actors[8]", `"nonsense": not an IP address or prefix: unable to parse IP`},
		}},
		{"bad set name", func(rs *RuleSet) { rs.Sets["-x"] = PrefixSet{}; rs.Sets["a b"] = PrefixSet{} }, []Problem{
			{"sets.-x", `"-x" is not a valid set name (` + idRulesMsg + `)`},
			{`sets["a b"]`, `"a b" is not a valid set name (` + idRulesMsg + `)`},
		}},
		{"unresolved feed", func(rs *RuleSet) { rs.Sets["drop"] = PrefixSet{File: "feeds/drop.txt"} }, []Problem{
			{"sets.drop", "feed file not resolved (documents hold prefixes, not paths)"},
		}},
		{"file and prefixes", func(rs *RuleSet) {
			rs.Sets["drop"] = PrefixSet{File: "feeds/drop.txt", Prefixes: []string{"10.0.0.0/8"}}
		}, []Problem{
			{"sets.drop", "has both a feed file and prefixes"},
		}},
		{"too many sets", func(rs *RuleSet) {
			for i := len(rs.Sets); i <= MaxSetsPerRuleSet; i++ {
				rs.Sets[fmt.Sprintf("s%d", i)] = PrefixSet{}
			}
		}, []Problem{{"sets", "257 sets, limit is 256"}}},
		{"no rule id", func(rs *RuleSet) { rs.Rules[1].ID = "" },
			[]Problem{{"rules[1].id", "required"}}},
		{"bad rule id", func(rs *RuleSet) { rs.Rules[1].ID = "threat intel" },
			[]Problem{{"rules[1].id", `"threat intel" is not a valid id (` + idRulesMsg + `)`}}},
		{"rule id too long", func(rs *RuleSet) { rs.Rules[1].ID = strings.Repeat("x", 64) },
			[]Problem{{"rules[1].id", `"` + strings.Repeat("x", 64) + `" is not a valid id (` + idRulesMsg + `)`}}},
		{"duplicate ids", func(rs *RuleSet) { rs.Rules[4].ID = "ssh-office"; rs.Rules[5].ID = "ssh-office" }, []Problem{
			{"rules[4].id", `duplicate id "ssh-office" (also rules[0])`},
			{"rules[5].id", `duplicate id "ssh-office" (also rules[0])`},
		}},
		{"no action", func(rs *RuleSet) { rs.Rules[0].Action = "" },
			[]Problem{{"rules[0].action", "required (pass, drop or rate-limit)"}}},
		{"bad action", func(rs *RuleSet) { rs.Rules[0].Action = "reject" },
			[]Problem{{"rules[0].action", `unknown action "reject" (want pass, drop or rate-limit)`}}},
		{"rate-limit without rateLimit", func(rs *RuleSet) { rs.Rules[2].Action = ActionRateLimit },
			[]Problem{{"rules[2].rateLimit", "required with action rate-limit"}}},
		{"rate-limit without a rate", func(rs *RuleSet) {
			rs.Rules[2].Action = ActionRateLimit
			rs.Rules[2].RateLimit = &RateLimit{Burst: 5, BurstBytes: 10, Per: "source"}
		}, []Problem{
			{"rules[2].rateLimit", "needs pps, bps or both"},
			{"rules[2].rateLimit.burst", "counts packets: needs pps (burstBytes goes with bps)"},
			{"rules[2].rateLimit.burstBytes", "needs bps"},
		}},
		{"rate-limit out of range", func(rs *RuleSet) {
			rs.Rules[2].Action = ActionRateLimit
			rs.Rules[2].RateLimit = &RateLimit{PPS: MaxPPS + 1, BPS: 100, Burst: MaxBurst + 1, BurstBytes: 1 << 41}
		}, []Problem{
			{"rules[2].rateLimit.pps", "1000000001 is over 1000000000"},
			{"rules[2].rateLimit.bps", "100 is out of range 8000..1000000000000"},
			{"rules[2].rateLimit.burst", "100000001 is over 100000000"},
			{"rules[2].rateLimit.burstBytes", "2199023255552 is over 1099511627776"},
		}},
		{"rate-limit bad per and withinLimit", func(rs *RuleSet) {
			rs.Rules[2].Action = ActionRateLimit
			rs.Rules[2].RateLimit = &RateLimit{PPS: 10, Per: "source/33/64", WithinLimit: "continue"}
		}, []Problem{
			{"rules[2].rateLimit.per", `"source/33/64": IPv4 prefix length 33 is out of range 0..32`},
			{"rules[2].rateLimit.withinLimit", `unknown value "continue" (want pass or next)`},
		}},
		{"rate-limit bad per", func(rs *RuleSet) {
			rs.Rules[2].Action = ActionRateLimit
			rs.Rules[2].RateLimit = &RateLimit{BPS: 1_000_000, Per: "dest"}
		}, []Problem{{"rules[2].rateLimit.per", `"dest": want rule, source, source/N or source/N4/N6`}}},
		{"rateLimit with drop", func(rs *RuleSet) { rs.Rules[1].RateLimit = &RateLimit{PPS: 10} },
			[]Problem{{"rules[1].rateLimit", "only allowed with action rate-limit"}}},
		{"bad addresses", func(rs *RuleSet) {
			rs.Rules[1].Src = []string{"set:bad", "10.0.0.1/8", "set:bad-actors", "300.1.1.1"}
			rs.Rules[1].Dst = []string{"::ffff:10.0.0.1", "set:", "fe80::1%eth0"}
		}, []Problem{
			{"rules[1].src[0]", `unknown set "bad"`},
			{"rules[1].src[1]", "10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"},
			{"rules[1].src[3]", `"300.1.1.1": not an IP address or prefix: IPv4 field has value >255`},
			{"rules[1].dst[0]", `"::ffff:10.0.0.1": IPv4-mapped IPv6 address (write 10.0.0.1/32)`},
			{"rules[1].dst[1]", `"set:": empty set name`},
			{"rules[1].dst[2]", `"fe80::1%eth0": zones are not allowed`},
		}},
		{"too many items", func(rs *RuleSet) {
			rs.Rules[1].Src = make([]string, MaxFieldItemsInRule+1)
			for i := range rs.Rules[1].Src {
				rs.Rules[1].Src[i] = fmt.Sprintf("10.0.%d.%d", i/256, i%256)
			}
			rs.Rules[4].DstPorts = make([]PortSpec, MaxFieldItemsInRule+1)
			for i := range rs.Rules[4].DstPorts {
				rs.Rules[4].DstPorts[i] = PortSpec(fmt.Sprint(i))
			}
		}, []Problem{
			{"rules[1].src", "257 items, limit is 256"},
			{"rules[4].dstPorts", "257 items, limit is 256"},
		}},
		{"bad protocol", func(rs *RuleSet) { rs.Rules[0].Protocol = "sctp" },
			[]Problem{{"rules[0].protocol", `unknown protocol "sctp" (want tcp, udp, icmp, icmpv6 or any)`}}},
		{"ports without protocol", func(rs *RuleSet) { rs.Rules[0].Protocol = ""; rs.Rules[0].TCPFlags = "" },
			[]Problem{{"rules[0].dstPorts", "ports need protocol tcp or udp"}}},
		{"ports with icmp", func(rs *RuleSet) { rs.Rules[2].SrcPorts = []PortSpec{"1"}; rs.Rules[2].DstPorts = []PortSpec{"2"} },
			[]Problem{
				{"rules[2].srcPorts", "ports need protocol tcp or udp"},
				{"rules[2].dstPorts", "ports need protocol tcp or udp"},
			}},
		{"bad ports", func(rs *RuleSet) { rs.Rules[0].DstPorts = []PortSpec{"22", "90-80", "65536", "http"} }, []Problem{
			{"rules[0].dstPorts[1]", "range 90-80 is empty"},
			{"rules[0].dstPorts[2]", "port 65536 is out of range 0..65535"},
			{"rules[0].dstPorts[3]", `"http" is not a port or port range`},
		}},
		{"tcp flags on udp", func(rs *RuleSet) { rs.Rules[4].TCPFlags = "syn" },
			[]Problem{{"rules[4].tcpFlags", "tcp flags need protocol tcp"}}},
		{"bad tcp flags", func(rs *RuleSet) { rs.Rules[0].TCPFlags = "syn,ack/syn" },
			[]Problem{{"rules[0].tcpFlags", `"syn,ack/syn": value flags ack are not in the mask`}}},
		{"icmp type on tcp", func(rs *RuleSet) { rs.Rules[0].ICMPType = ptr(0) },
			[]Problem{{"rules[0].icmpType", "icmp type needs protocol icmp or icmpv6"}}},
		{"icmp type out of range", func(rs *RuleSet) { rs.Rules[2].ICMPType = ptr(256); rs.Rules[3].ICMPType = ptr(-1) },
			[]Problem{
				{"rules[2].icmpType", "256 is out of range 0..255"},
				{"rules[3].icmpType", "-1 is out of range 0..255"},
			}},
		{"icmp type bounds ok", func(rs *RuleSet) { rs.Rules[2].ICMPType = ptr(0); rs.Rules[3].ICMPType = ptr(255) }, nil},
		{"icmpv6 with IPv4 src", func(rs *RuleSet) { rs.Rules[3].Src = []string{"192.0.2.0/24", "198.51.100.7"} },
			[]Problem{{"rules[3].src", "all IPv4, but protocol icmpv6 is IPv6 only: the rule can never match"}}},
		{"icmp with IPv6 dst", func(rs *RuleSet) { rs.Rules[2].Dst = []string{"2001:db8::1"} },
			[]Problem{{"rules[2].dst", "all IPv6, but protocol icmp is IPv4 only: the rule can never match"}}},
		{"icmp with mixed dst", func(rs *RuleSet) { rs.Rules[2].Dst = []string{"2001:db8::1", "192.0.2.1"} }, nil},
		{"icmpv6 with set ref", func(rs *RuleSet) { rs.Rules[3].Src = []string{"192.0.2.0/24", "set:bad-actors"} }, nil},
		{"IPv4 src and IPv6 dst", func(rs *RuleSet) {
			rs.Rules[5].Src = []string{"192.0.2.0/24"}
			rs.Rules[5].Dst = []string{"2001:db8::/32"}
		}, []Problem{{"rules[5].dst", "all IPv6, but src is all IPv4: the rule can never match"}}},
		{"v4 and v6 in one field", func(rs *RuleSet) {
			rs.Rules[5].Src = []string{"192.0.2.0/24", "2001:db8::/32"}
			rs.Rules[5].Dst = []string{"2001:db8::/32"}
		}, nil},
		{"zero-length prefixes", func(rs *RuleSet) { rs.Rules[5].Src = []string{"0.0.0.0/0", "::/0"} }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := validRuleSet()
			tt.modify(&rs)
			assertProblems(t, rs.Validate(), tt.want)
		})
	}
}

func TestValidateReportsEverything(t *testing.T) {
	rs := RuleSet{
		APIVersion: "v1",
		Sets:       map[string]PrefixSet{"bad-actors": {Prefixes: []string{"1.2.3.4/33"}}},
		Rules: []Rule{
			{ID: "a", Action: ActionDrop, Protocol: ProtoUDP, DstPorts: []PortSpec{"53", "90-80"}},
			{ID: "a", Action: ActionRateLimit, Src: []string{"set:bad"}},
			{ID: "c", Action: ActionDrop, DstPorts: []PortSpec{"22"}},
		},
	}
	err := rs.Validate()
	want := strings.Join([]string{
		`apiVersion: unsupported version "v1" (want "xdpfw/v1")`,
		`kind: required (want "RuleSet")`,
		`name: required`,
		`mode: required (deny or allow)`,
		`sets.bad-actors[0]: "1.2.3.4/33": prefix length 33 is out of range 0..32`,
		`rules[0].dstPorts[1]: range 90-80 is empty`,
		`rules[1].id: duplicate id "a" (also rules[0])`,
		`rules[1].rateLimit: required with action rate-limit`,
		`rules[1].src[0]: unknown set "bad"`,
		`rules[2].dstPorts: ports need protocol tcp or udp`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("Validate() =\n%v\nwant\n%s", err, want)
	}
	// Same input, same order: problems must not depend on map order.
	for range 20 {
		if again := rs.Validate(); again.Error() != err.Error() {
			t.Fatalf("Validate is not deterministic:\n%v\nthen\n%v", err, again)
		}
	}
}

func TestValidateAllowFiles(t *testing.T) {
	rs := validRuleSet()
	rs.Sets["drop"] = PrefixSet{File: "feeds/drop.txt"}
	if err := rs.ValidateWith(ValidateOptions{AllowFiles: true}); err != nil {
		t.Fatalf("ValidateWith(AllowFiles): %v", err)
	}
	assertProblems(t, rs.Validate(), []Problem{
		{"sets.drop", "feed file not resolved (documents hold prefixes, not paths)"},
	})
}

func TestValidateLimits(t *testing.T) {
	rs := validRuleSet()
	rs.Rules = make([]Rule, MaxRulesPerHost+1)
	for i := range rs.Rules {
		rs.Rules[i] = Rule{ID: fmt.Sprintf("r%d", i), Action: ActionDrop}
	}
	assertProblems(t, rs.Validate(), []Problem{{"rules", "4097 rules, limit is 4096"}})
	rs.Rules = rs.Rules[:MaxRulesPerHost]
	assertProblems(t, rs.Validate(), nil)

	rs = validRuleSet()
	big := make([]string, MaxPrefixesPerSet+1)
	for i := range big {
		big[i] = fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&0xff, i&0xff)
	}
	rs.Sets["big"] = PrefixSet{Prefixes: big}
	assertProblems(t, rs.Validate(), []Problem{{"sets.big", "1000001 prefixes, limit is 1000000"}})
}

func TestValidateCapsMemberProblems(t *testing.T) {
	rs := validRuleSet()
	bad := make([]string, maxMemberProblems+5)
	for i := range bad {
		bad[i] = "x"
	}
	rs.Sets["junk"] = PrefixSet{Prefixes: bad}
	err := rs.Validate()
	ve, ok := err.(*ValidationError)
	if !ok {
		t.Fatalf("Validate = %v", err)
	}
	if n := len(ve.Problems); n != maxMemberProblems+1 {
		t.Fatalf("%d problems, want %d", n, maxMemberProblems+1)
	}
	if last := ve.Problems[maxMemberProblems]; last != (Problem{"sets.junk", "5 more invalid prefixes not listed"}) {
		t.Fatalf("last problem = %v", last)
	}
}

func TestValidationErrorFormat(t *testing.T) {
	e := &ValidationError{Problems: []Problem{{"rules[3].dstPorts[1]", "range 90-80 is empty"}, {"", "whole document"}}}
	if got, want := e.Error(), "rules[3].dstPorts[1]: range 90-80 is empty\nwhole document"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
}
