package proto

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
)

func bigSet(n, skip int) []string {
	var out []string
	for i := range n {
		if i == skip {
			continue
		}
		out = append(out, fmt.Sprintf("10.%d.%d.0/24", i>>8, i&255))
	}
	return out
}

func TestChunkSetsRoundTrip(t *testing.T) {
	rs := RuleSet{APIVersion: APIVersion, Kind: KindRuleSet, Name: "edge", Mode: ModeDeny,
		Sets:  map[string]PrefixSet{"big": {Prefixes: bigSet(20000, -1)}, "small": {Prefixes: []string{"192.0.2.0/24"}}},
		Rules: []Rule{{ID: "r", Action: ActionDrop, Src: []string{"set:big", "set:small"}}}}
	stored, chunks, err := rs.ChunkSets()
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Sets["big"].Prefixes) != 20000 {
		t.Fatal("ChunkSets changed its input")
	}
	big := stored.Sets["big"]
	if len(big.Prefixes) != 0 || big.Count != 20000 || len(big.Chunks) != len(chunks) || len(chunks) < 3 {
		t.Fatalf("stored big set: %d prefixes, count %d, %d chunks (%d made)", len(big.Prefixes), big.Count, len(big.Chunks), len(chunks))
	}
	if len(stored.Sets["small"].Prefixes) != 1 {
		t.Fatal("a small set was chunked")
	}
	for _, c := range chunks {
		if len(c.Data) > 200<<10 {
			t.Errorf("chunk %s is %d bytes", c.Hash, len(c.Data))
		}
	}
	// The stored document decodes strictly, is refused by Validate until
	// resolved, and resolves to the same prefixes.
	data, err := json.Marshal(stored)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 10<<10 {
		t.Fatalf("stored document is %d bytes", len(data))
	}
	back, err := DecodeRuleSet(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := back.Validate(); err == nil || !strings.Contains(err.Error(), "chunk references") {
		t.Fatalf("Validate of an unresolved document: %v", err)
	}
	byHash := map[string][]byte{}
	for _, c := range chunks {
		byHash[c.Hash] = c.Data
	}
	if err := back.ResolveChunks(func(h string) ([]string, error) { return DecodeChunk(h, byHash[h]) }); err != nil {
		t.Fatal(err)
	}
	if err := back.Validate(); err != nil {
		t.Fatal(err)
	}
	want, _ := rs.SetPrefixes("big")
	got, _ := back.SetPrefixes("big")
	if !slices.Equal(want, got) {
		t.Fatalf("resolved set differs: %d vs %d prefixes", len(got), len(want))
	}
}

// One prefix more or less changes one or two chunks, not every chunk after it.
func TestChunkBoundariesFollowContent(t *testing.T) {
	a, err := SplitChunks(bigSet(50000, -1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := SplitChunks(bigSet(50000, 25000))
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, c := range a {
		have[c.Hash] = true
	}
	changed := 0
	for _, c := range b {
		if !have[c.Hash] {
			changed++
		}
	}
	if changed > 2 || len(a) < 10 {
		t.Fatalf("removing one of 50,000 prefixes changed %d of %d chunks", changed, len(b))
	}
}

func TestDecodeChunkChecksItsHash(t *testing.T) {
	chunks, _ := SplitChunks([]string{"192.0.2.0/24"})
	c := chunks[0]
	if p, err := DecodeChunk(c.Hash, c.Data); err != nil || len(p) != 1 || p[0] != "192.0.2.0/24" {
		t.Fatalf("DecodeChunk = %v, %v", p, err)
	}
	bad := append([]byte(nil), c.Data...)
	bad[len(bad)-2] = '5'
	if _, err := DecodeChunk(c.Hash, bad); err == nil || !strings.Contains(err.Error(), "does not match its hash") {
		t.Fatalf("a changed chunk: %v", err)
	}
	for _, doc := range []string{
		`{"chunks":["zz"],"count":1}`, `{"chunks":[],"count":-1}`, `{"chunks":[]}`, `{"file":"x","count":1,"chunks":[]}`,
	} {
		var ps PrefixSet
		if err := json.Unmarshal([]byte(doc), &ps); err == nil {
			t.Errorf("set %s accepted", doc)
		}
	}
}

// A reader that checks each chunk's prefixes when it fetches the chunk
// validates the documents naming it with AllowChunks, which checks the
// rest of the document and the set's count, not its prefixes.
func TestValidateAllowChunks(t *testing.T) {
	rs := RuleSet{APIVersion: APIVersion, Kind: KindRuleSet, Name: "edge", Mode: ModeDeny,
		Sets:  map[string]PrefixSet{"big": {Prefixes: bigSet(20000, -1)}},
		Rules: []Rule{{ID: "r", Action: ActionDrop, Src: []string{"set:big"}}}}
	stored, chunks, err := rs.ChunkSets()
	if err != nil {
		t.Fatal(err)
	}
	if err := stored.ValidateWith(ValidateOptions{AllowChunks: true}); err != nil {
		t.Fatalf("ValidateWith(AllowChunks) of a stored document: %v", err)
	}
	for _, c := range chunks {
		p, err := DecodeChunk(c.Hash, c.Data)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckChunkPrefixes(c.Hash, p); err != nil {
			t.Fatalf("CheckChunkPrefixes of a good chunk: %v", err)
		}
	}
	if err := CheckChunkPrefixes(chunks[0].Hash, []string{"192.0.2.0/24", "192.0.2.1/24"}); err == nil ||
		!strings.Contains(err.Error(), "prefix 1") || !strings.Contains(err.Error(), "host bits") {
		t.Fatalf("CheckChunkPrefixes of a bad prefix: %v", err)
	}

	for name, mutate := range map[string]func(*RuleSet){
		"a count over the limit": func(rs *RuleSet) {
			s := rs.Sets["big"]
			s.Count = MaxPrefixesPerSet + 1
			rs.Sets["big"] = s
		},
		"chunks and prefixes": func(rs *RuleSet) {
			s := rs.Sets["big"]
			s.Prefixes = []string{"192.0.2.0/24"}
			rs.Sets["big"] = s
		},
		"a bad rule": func(rs *RuleSet) { rs.Rules[0].Src = []string{"set:nope"} },
		"a chunk named twice": func(rs *RuleSet) {
			s := rs.Sets["big"]
			s.Chunks = append(slices.Clone(s.Chunks), s.Chunks[0])
			rs.Sets["big"] = s
		},
		"more chunks than prefixes": func(rs *RuleSet) {
			s := rs.Sets["big"]
			s.Count = len(s.Chunks) - 1
			rs.Sets["big"] = s
		},
		"the largest count": func(rs *RuleSet) {
			s := rs.Sets["big"]
			s.Count = math.MaxInt64
			rs.Sets["big"] = s
		},
	} {
		bad := stored
		bad.Sets = map[string]PrefixSet{"big": stored.Sets["big"]}
		bad.Rules = slices.Clone(stored.Rules)
		mutate(&bad)
		if err := bad.ValidateWith(ValidateOptions{AllowChunks: true}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// ResolveChunks stops at the document's count: chunks that hold more (one
// chunk named again and again) are refused without growing past it, and a
// count over the limit is refused before anything is allocated for it.
func TestResolveChunksStopsAtTheCount(t *testing.T) {
	chunk := make([]string, 1000)
	for i := range chunk {
		chunk[i] = fmt.Sprintf("198.18.%d.%d/32", i/256, i%256)
	}
	grown := 0
	for name, set := range map[string]PrefixSet{
		"one chunk 20,000 times": {Chunks: slices.Repeat([]string{"h"}, 20000), Count: 5000},
		"the largest count":      {Chunks: []string{"h"}, Count: math.MaxInt64},
	} {
		grown = 0
		rs := RuleSet{Sets: map[string]PrefixSet{"big": set}}
		err := rs.ResolveChunks(func(string) ([]string, error) { grown++; return chunk, nil })
		if err == nil {
			t.Errorf("%s: resolved", name)
		}
		if grown > 6 {
			t.Errorf("%s: read %d chunks before refusing, want at most the count's worth", name, grown)
		}
	}
}
