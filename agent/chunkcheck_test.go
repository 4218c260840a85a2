package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/xdpfw/xdpfw/proto"
)

// A chunk that matches its hash but holds a bad prefix (written straight
// into etcd: the control plane checks what it stores) is refused when it
// is fetched, and so is the version that names it: the last good rules
// stay, and the status names the chunk and the prefix.
func TestAgentRefusesAChunkWithABadPrefix(t *testing.T) {
	f := newFixture(t)
	f.putRuleSet("edge", 1, 22)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	f.start()
	f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))

	rs := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "edge", Mode: proto.ModeDeny,
		Sets:  map[string]proto.PrefixSet{"big": {Prefixes: prefixes4(proto.ChunkThreshold+1, 0)}},
		Rules: []proto.Rule{{ID: "ssh", Action: proto.ActionDrop, Src: []string{"set:big"}}}}
	stored, chunks, err := rs.ChunkSets()
	if err != nil {
		t.Fatal(err)
	}
	// ChunkSets parses every prefix: the bad one goes into the last
	// chunk by hand, which then gets the hash of its new content.
	last := chunks[len(chunks)-1]
	data := append(last.Data, "198.18.0.1/24\n"...)
	sum := sha256.Sum256(data)
	hash := hex.EncodeToString(sum[:])
	set := stored.Sets["big"]
	set.Chunks = append(set.Chunks[:len(set.Chunks)-1:len(set.Chunks)-1], hash)
	set.Count++
	stored.Sets["big"] = set
	for _, c := range chunks[:len(chunks)-1] {
		f.put(f.keys.Chunk(c.Hash), string(c.Data))
	}
	f.put(f.keys.Chunk(hash), string(data))
	doc, _ := json.Marshal(stored)
	f.put(f.keys.RuleSetVersion("edge", 2), string(doc))
	rev := f.desire(proto.RuleSetRef{Name: "edge", Version: 2})
	got := f.waitStatus("edge@2 refused", func(st proto.HostStatus) bool { return st.Revision >= rev && st.LastError != nil })
	if msg := got.LastError.Message; !strings.Contains(msg, f.keys.Chunk(hash)) || !strings.Contains(msg, "host bits") ||
		got.Applied[0].Version != 1 {
		t.Fatalf("status %+v, error %+v", got, got.LastError)
	}
}

// prefixes4 is n /32s from 100.64.0.0 + offset.
func prefixes4(n, offset int) []string {
	out := make([]string, n)
	for i := range n {
		j := i + offset
		out[i] = fmt.Sprintf("100.%d.%d.%d/32", 64+j>>16, (j>>8)&255, j&255)
	}
	return out
}

// Hostile documents written straight into etcd (a host or a person with
// etcd access, not the control plane) are refused one by one: the agent
// stays up, names each in its status, keeps its last good rules, and does
// not allocate what they claim: a manifest whose count is the largest
// int64, one chunk named 20,000 times, and a 1 MiB value of garbage.
func TestAgentRefusesHostileDocuments(t *testing.T) {
	f := newFixture(t)
	f.putRuleSet("edge", 1, 22)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	f.start()
	f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))

	rs := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "edge", Mode: proto.ModeDeny,
		Sets:  map[string]proto.PrefixSet{"big": {Prefixes: prefixes4(proto.ChunkThreshold+1, 0)}},
		Rules: []proto.Rule{{ID: "ssh", Action: proto.ActionDrop, Src: []string{"set:big"}}}}
	stored, chunks, err := rs.ChunkSets()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		f.put(f.keys.Chunk(c.Hash), string(c.Data))
	}
	hostile := func(mutate func(*proto.PrefixSet)) string {
		doc := stored
		set := doc.Sets["big"]
		mutate(&set)
		doc.Sets = map[string]proto.PrefixSet{"big": set}
		b, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	garbage := make([]byte, 1<<20)
	for i := range garbage {
		garbage[i] = byte('!' + i*7919%90)
	}
	cases := []struct{ name, value, want string }{
		{"the largest count", hostile(func(s *proto.PrefixSet) { s.Count = math.MaxInt64 }), "limit is"},
		{"one chunk 20,000 times", hostile(func(s *proto.PrefixSet) {
			s.Chunks = slices.Repeat(s.Chunks[:1], 20000)
			s.Count = proto.MaxPrefixesPerSet
		}), "named twice"},
		{"1 MiB of garbage", string(garbage), "yaml"},
	}
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for i, c := range cases {
		v := int64(i + 2)
		f.put(f.keys.RuleSetVersion("edge", v), c.value)
		rev := f.desire(proto.RuleSetRef{Name: "edge", Version: v})
		got := f.waitStatus(c.name+" refused", func(st proto.HostStatus) bool { return st.Revision >= rev && st.LastError != nil })
		if got.LastError.Document != f.keys.RuleSetVersion("edge", v) || !strings.Contains(got.LastError.Message, c.want) ||
			len(got.Applied) != 1 || got.Applied[0].Version != 1 {
			t.Errorf("%s: status applied %v, error %+v; want edge@1 kept and the document refused (%q)", c.name, got.Applied, got.LastError, c.want)
		}
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	// Each refusal costs the document's size a few times over (etcd, the
	// watch, the decoder); growing a set to what the documents claim
	// would cost gigabytes.
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 256<<20 {
		t.Errorf("refusing %d hostile documents allocated %d MiB (bound: 256 MiB)", len(cases), grown>>20)
	}
	// The agent still applies a good version after them.
	f.putRuleSet("edge", 9, 2222)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 9})
	f.waitStatus("edge@9 applied", applied(proto.RuleSetRef{Name: "edge", Version: 9}))
}

// A chunk damaged in etcd refuses the version that names it; once it is
// repaired (the next write that names it rewrites it), the agent picks it
// up by itself, although chunks/ is not watched, without a restart.
func TestAgentPicksUpARepairedChunk(t *testing.T) {
	f := newFixture(t)
	f.putRuleSet("edge", 1, 22)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	f.start()
	f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))

	rs := proto.RuleSet{APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "edge", Mode: proto.ModeDeny,
		Sets:  map[string]proto.PrefixSet{"big": {Prefixes: prefixes4(proto.ChunkThreshold+1, 0)}},
		Rules: []proto.Rule{{ID: "ssh", Action: proto.ActionDrop, Src: []string{"set:big"}}}}
	stored, chunks, err := rs.ChunkSets()
	if err != nil {
		t.Fatal(err)
	}
	damaged := chunks[0]
	for _, c := range chunks {
		f.put(f.keys.Chunk(c.Hash), string(c.Data))
	}
	f.put(f.keys.Chunk(damaged.Hash), "xdpfw-chunk v1\n198.18.0.0/15\n")
	doc, _ := json.Marshal(stored)
	f.put(f.keys.RuleSetVersion("edge", 2), string(doc))
	rev := f.desire(proto.RuleSetRef{Name: "edge", Version: 2})
	got := f.waitStatus("edge@2 refused", func(st proto.HostStatus) bool { return st.Revision >= rev && st.LastError != nil })
	if !strings.Contains(got.LastError.Message, f.keys.Chunk(damaged.Hash)) || got.Applied[0].Version != 1 {
		t.Fatalf("status %+v, error %+v; want edge@1 kept and the damaged chunk named", got.Applied, got.LastError)
	}

	// Repaired: no event the agent watches changes.
	f.put(f.keys.Chunk(damaged.Hash), string(damaged.Data))
	f.waitStatus("edge@2 applied after the repair", applied(proto.RuleSetRef{Name: "edge", Version: 2}))
}
