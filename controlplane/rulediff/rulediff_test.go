package rulediff

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	"github.com/xdpfw/xdpfw/proto"
)

func base() proto.RuleSet {
	return proto.RuleSet{
		APIVersion: proto.APIVersion,
		Kind:       proto.KindRuleSet,
		Name:       "edge",
		Priority:   100,
		Selector:   map[string]string{"role": "edge"},
		Mode:       proto.ModeDeny,
		Sets: map[string]proto.PrefixSet{
			"bad-actors": {Prefixes: []string{"203.0.113.0/24", "2001:db8:bad::/48"}},
			"office":     {Prefixes: []string{"198.51.100.0/24"}},
		},
		Rules: []proto.Rule{
			{ID: "ssh", Action: proto.ActionPass, Src: []string{"set:office"}, Protocol: proto.ProtoTCP, DstPorts: []proto.PortSpec{"22"}},
			{ID: "intel", Action: proto.ActionDrop, Src: []string{"set:bad-actors"}},
			{ID: "dns", Action: proto.ActionRateLimit, Protocol: proto.ProtoUDP, DstPorts: []proto.PortSpec{"53"},
				RateLimit: &proto.RateLimit{PPS: 10000, Burst: 20000, Per: "source"}},
			{ID: "web", Action: proto.ActionPass, Protocol: proto.ProtoTCP, DstPorts: []proto.PortSpec{"80", "443"}},
		},
	}
}

// edit returns a copy of base changed by fn (maps and slices copied, so
// that fn never changes base).
func edit(fn func(rs *proto.RuleSet)) proto.RuleSet {
	rs := base()
	data, err := json.Marshal(rs)
	if err != nil {
		panic(err)
	}
	var cp proto.RuleSet
	if err := json.Unmarshal(data, &cp); err != nil {
		panic(err)
	}
	fn(&cp)
	return cp
}

func rule(rs proto.RuleSet, id string) proto.Rule {
	for _, r := range rs.Rules {
		if r.ID == id {
			return r
		}
	}
	panic("no rule " + id)
}

func reorder(rs *proto.RuleSet, ids ...string) {
	var out []proto.Rule
	for _, id := range ids {
		out = append(out, rule(*rs, id))
	}
	rs.Rules = out
}

func TestChanges(t *testing.T) {
	b := base()
	newRule := proto.Rule{ID: "icmp", Action: proto.ActionDrop, Protocol: proto.ProtoICMP}
	sshWide := rule(b, "ssh")
	sshWide.DstPorts = []proto.PortSpec{"22", "2222"}

	tests := []struct {
		name string
		b    proto.RuleSet
		want []proto.DiffChange
	}{
		{"identical", base(), []proto.DiffChange{}},
		{"round trip through JSON", edit(func(*proto.RuleSet) {}), []proto.DiffChange{}},
		{"explicit enforce is the default", edit(func(rs *proto.RuleSet) { rs.Enforcement = proto.EnforcementEnforce }), []proto.DiffChange{}},
		{"empty lists are absent lists", edit(func(rs *proto.RuleSet) {
			rs.Rules[1].Dst = []string{}
			rs.Interfaces = []string{}
		}), []proto.DiffChange{}},
		{"prefix order, duplicates and spelling", edit(func(rs *proto.RuleSet) {
			rs.Sets["bad-actors"] = proto.PrefixSet{Prefixes: []string{"2001:db8:bad::/48", "203.0.113.0/24", "203.0.113.0/24"}}
		}), []proto.DiffChange{}},
		{"header fields", edit(func(rs *proto.RuleSet) {
			rs.Priority = 0
			rs.Mode = proto.ModeAllow
			rs.Enforcement = proto.EnforcementDryRun
			rs.Interfaces = []string{"eth0"}
		}), []proto.DiffChange{
			{Kind: proto.DiffRemoved, Path: "priority", From: 100},
			{Kind: proto.DiffAdded, Path: "interfaces", To: []string{"eth0"}},
			{Kind: proto.DiffChanged, Path: "mode", From: "deny", To: "allow"},
			{Kind: proto.DiffChanged, Path: "enforcement", From: "enforce", To: "dry-run"},
		}},
		{"selector keys", edit(func(rs *proto.RuleSet) {
			rs.Selector = map[string]string{"role": "core", "zone": "eu", "a b": "x"}
		}), []proto.DiffChange{
			{Kind: proto.DiffAdded, Path: `selector["a b"]`, To: "x"},
			{Kind: proto.DiffChanged, Path: "selector.role", From: "edge", To: "core"},
			{Kind: proto.DiffAdded, Path: "selector.zone", To: "eu"},
		}},
		{"selector dropped", edit(func(rs *proto.RuleSet) { rs.Selector = nil }), []proto.DiffChange{
			{Kind: proto.DiffRemoved, Path: "selector.role", From: "edge"},
		}},
		{"sets added, removed, changed", edit(func(rs *proto.RuleSet) {
			delete(rs.Sets, "office")
			rs.Sets["scanners"] = proto.PrefixSet{Prefixes: []string{"192.0.2.0/24", "192.0.2.7", "2001:db8::/32"}}
			rs.Sets["bad-actors"] = proto.PrefixSet{Prefixes: []string{"203.0.113.0/24", "198.18.0.0/15", "198.18.0.1/32"}}
			rs.Rules[0].Src = nil
		}), []proto.DiffChange{
			{Kind: proto.DiffChanged, Path: "sets.bad-actors", Added: 2, Removed: 1},
			{Kind: proto.DiffRemoved, Path: "sets.office", Removed: 1},
			{Kind: proto.DiffAdded, Path: "sets.scanners", Added: 3},
			{Kind: proto.DiffChanged, Path: "rules[ssh]", From: rule(b, "ssh"), To: edit(func(rs *proto.RuleSet) { rs.Rules[0].Src = nil }).Rules[0]},
		}},
		{"rule changed in place", edit(func(rs *proto.RuleSet) { rs.Rules[0] = sshWide }), []proto.DiffChange{
			{Kind: proto.DiffChanged, Path: "rules[ssh]", From: rule(b, "ssh"), To: sshWide},
		}},
		{"rule added at the top moves nothing", edit(func(rs *proto.RuleSet) {
			rs.Rules = append([]proto.Rule{newRule}, rs.Rules...)
		}), []proto.DiffChange{
			{Kind: proto.DiffAdded, Path: "rules[icmp]", To: newRule},
		}},
		{"rule removed from the middle moves nothing", edit(func(rs *proto.RuleSet) { reorder(rs, "ssh", "dns", "web") }), []proto.DiffChange{
			{Kind: proto.DiffRemoved, Path: "rules[intel]", From: rule(b, "intel")},
		}},
		{"one rule moved to the end", edit(func(rs *proto.RuleSet) { reorder(rs, "intel", "dns", "web", "ssh") }), []proto.DiffChange{
			{Kind: proto.DiffMoved, Path: "rules[ssh]", From: 0, To: 3},
		}},
		{"one rule moved to the top", edit(func(rs *proto.RuleSet) { reorder(rs, "web", "ssh", "intel", "dns") }), []proto.DiffChange{
			{Kind: proto.DiffMoved, Path: "rules[web]", From: 3, To: 0},
		}},
		{"two rules swapped", edit(func(rs *proto.RuleSet) { reorder(rs, "ssh", "dns", "intel", "web") }), []proto.DiffChange{
			{Kind: proto.DiffMoved, Path: "rules[dns]", From: 2, To: 1},
		}},
		{"reversed", edit(func(rs *proto.RuleSet) { reorder(rs, "web", "dns", "intel", "ssh") }), []proto.DiffChange{
			{Kind: proto.DiffMoved, Path: "rules[web]", From: 3, To: 0},
			{Kind: proto.DiffMoved, Path: "rules[dns]", From: 2, To: 1},
			{Kind: proto.DiffMoved, Path: "rules[intel]", From: 1, To: 2},
		}},
		{"changed and moved", edit(func(rs *proto.RuleSet) {
			rs.Rules[0] = sshWide
			reorder(rs, "intel", "dns", "web", "ssh")
		}), []proto.DiffChange{
			{Kind: proto.DiffChanged, Path: "rules[ssh]", From: rule(b, "ssh"), To: sshWide},
			{Kind: proto.DiffMoved, Path: "rules[ssh]", From: 0, To: 3},
		}},
		{"renamed rule is a removal and an addition", edit(func(rs *proto.RuleSet) { rs.Rules[3].ID = "www" }), []proto.DiffChange{
			{Kind: proto.DiffAdded, Path: "rules[www]", To: edit(func(rs *proto.RuleSet) { rs.Rules[3].ID = "www" }).Rules[3]},
			{Kind: proto.DiffRemoved, Path: "rules[web]", From: rule(b, "web")},
		}},
		{"everything", edit(func(rs *proto.RuleSet) {
			rs.Priority = 50
			delete(rs.Sets, "bad-actors")
			rs.Rules = []proto.Rule{rule(*rs, "dns"), newRule, rule(*rs, "ssh")}
		}), []proto.DiffChange{
			{Kind: proto.DiffChanged, Path: "priority", From: 100, To: 50},
			{Kind: proto.DiffRemoved, Path: "sets.bad-actors", Removed: 2},
			{Kind: proto.DiffMoved, Path: "rules[dns]", From: 2, To: 0},
			{Kind: proto.DiffAdded, Path: "rules[icmp]", To: newRule},
			{Kind: proto.DiffRemoved, Path: "rules[intel]", From: rule(b, "intel")},
			{Kind: proto.DiffRemoved, Path: "rules[web]", From: rule(b, "web")},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Changes(base(), tt.b)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Changes:\n got  %s\n want %s", show(got), show(tt.want))
			}
		})
	}
}

func TestChangesFromNothing(t *testing.T) {
	got := Changes(proto.RuleSet{}, base())
	var paths []string
	for _, c := range got {
		if c.Kind != proto.DiffAdded {
			t.Errorf("%s: kind %s, want added", c.Path, c.Kind)
		}
		paths = append(paths, c.Path)
	}
	want := []string{"apiVersion", "kind", "name", "priority", "selector.role", "mode", "sets.bad-actors", "sets.office",
		"rules[ssh]", "rules[intel]", "rules[dns]", "rules[web]"}
	if !reflect.DeepEqual(paths, want) {
		t.Fatalf("paths %q, want %q", paths, want)
	}
}

func TestDiffHeader(t *testing.T) {
	d := Diff("edge", 3, 5, base(), base())
	if d.Name != "edge" || d.From != 3 || d.To != 5 || d.Changes == nil || len(d.Changes) != 0 {
		t.Fatalf("Diff = %+v", d)
	}
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"name":"edge","from":3,"to":5,"changes":[]}`; string(data) != want {
		t.Fatalf("JSON %s, want %s", data, want)
	}
}

// Moves are found in O(n log n): a big reversed rule set reports every
// rule but one as moved, and a rotated one only the rule that went round.
func TestChangesManyRules(t *testing.T) {
	const n = 4096
	a := proto.RuleSet{Name: "big"}
	for i := range n {
		a.Rules = append(a.Rules, proto.Rule{ID: fmt.Sprintf("r%d", i), Action: proto.ActionDrop})
	}
	rev := a
	rev.Rules = make([]proto.Rule, n)
	for i, r := range a.Rules {
		rev.Rules[n-1-i] = r
	}
	if got := len(Changes(a, rev)); got != n-1 {
		t.Fatalf("reversed: %d changes, want %d moves", got, n-1)
	}
	rot := a
	rot.Rules = append(append([]proto.Rule{}, a.Rules[1:]...), a.Rules[0])
	got := Changes(a, rot)
	want := []proto.DiffChange{{Kind: proto.DiffMoved, Path: "rules[r0]", From: 0, To: n - 1}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("rotated: %s, want %s", show(got), show(want))
	}
}

func show(cs []proto.DiffChange) string {
	data, err := json.MarshalIndent(cs, "  ", "  ")
	if err != nil {
		return fmt.Sprint(cs)
	}
	return string(data)
}
