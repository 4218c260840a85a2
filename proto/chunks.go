package proto

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strings"
)

// Big prefix sets are stored as immutable chunks (docs/architecture.md, "Chunks"): a
// rule-set version holds, in place of a set's prefixes, the hashes of the
// chunks that list them, and each chunk is its own etcd key
// (chunks/<sha256>). A change rewrites only the chunks it touches, and an
// agent fetches only the chunks it lacks.

// ChunkThreshold is the size above which a set is stored as chunks.
const ChunkThreshold = 4096

// Chunk boundaries are content-defined: a prefix ends its chunk when a hash
// of it is 0 modulo chunkAverage (or the chunk reaches chunkMax), so adding
// or removing one prefix changes one chunk, not every chunk after it.
const (
	chunkAverage = 2048
	chunkMax     = 8192
)

// chunkMagic starts every chunk: a version for the encoding.
const chunkMagic = "xdpfw-chunk v1\n"

// Chunk is one chunk of a set: its content (chunkMagic, then one prefix a
// line, in the set's canonical order) and its key's hash.
type Chunk struct {
	Hash string
	Data []byte
}

// SplitChunks sorts a set's prefixes canonically (duplicates dropped) and
// cuts them into chunks. Every prefix must parse (validate first).
func SplitChunks(prefixes []string) ([]Chunk, error) {
	parsed := make([]netip.Prefix, 0, len(prefixes))
	for i, s := range prefixes {
		p, err := ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("prefix %d: %w", i, err)
		}
		parsed = append(parsed, p)
	}
	parsed = sortPrefixes(parsed)
	var chunks []Chunk
	var buf bytes.Buffer
	n := 0
	flush := func() {
		if n == 0 {
			return
		}
		data := append([]byte(chunkMagic), buf.Bytes()...)
		sum := sha256.Sum256(data)
		chunks = append(chunks, Chunk{Hash: hex.EncodeToString(sum[:]), Data: data})
		buf.Reset()
		n = 0
	}
	for _, p := range parsed {
		line := p.String()
		buf.WriteString(line)
		buf.WriteByte('\n')
		n++
		h := fnv.New32a()
		h.Write([]byte(line))
		if h.Sum32()%chunkAverage == 0 || n == chunkMax {
			flush()
		}
	}
	flush()
	return chunks, nil
}

// DecodeChunk checks a chunk against its hash and returns its prefixes.
func DecodeChunk(hash string, data []byte) ([]string, error) {
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != hash {
		return nil, fmt.Errorf("chunk %s: content does not match its hash", shortHash(hash))
	}
	rest, ok := bytes.CutPrefix(data, []byte(chunkMagic))
	if !ok {
		return nil, fmt.Errorf("chunk %s: not an xdpfw chunk (v1)", shortHash(hash))
	}
	text := strings.TrimSuffix(string(rest), "\n")
	if text == "" {
		return nil, nil
	}
	return strings.Split(text, "\n"), nil
}

// CheckChunkPrefixes checks that every prefix of a decoded chunk parses,
// as Validate checks a set's prefixes: a reader that checks each chunk once
// may then validate the documents that name it with AllowChunks.
func CheckChunkPrefixes(hash string, prefixes []string) error {
	for i, s := range prefixes {
		if _, err := ParsePrefix(s); err != nil {
			return fmt.Errorf("chunk %s: prefix %d: %w", shortHash(hash), i, err)
		}
	}
	return nil
}

// ValidChunkHash reports whether s is a lowercase hex sha256.
func ValidChunkHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// ErrUnresolvedChunks is returned for a set that still names chunks where
// its prefixes are needed.
var ErrUnresolvedChunks = errors.New("set holds chunk references, not prefixes")

// ChunkRefs lists the chunk hashes of every chunked set of rs.
func (rs *RuleSet) ChunkRefs() []string {
	var out []string
	for _, name := range sortedKeys(rs.Sets) {
		out = append(out, rs.Sets[name].Chunks...)
	}
	return out
}

// ResolveChunks replaces each chunked set's references with its prefixes,
// taken from get (which returns a chunk's prefixes by hash).
func (rs *RuleSet) ResolveChunks(get func(hash string) ([]string, error)) error {
	for name, set := range rs.Sets {
		if len(set.Chunks) == 0 {
			continue
		}
		if set.Count < 0 || set.Count > MaxPrefixesPerSet {
			return fmt.Errorf("set %s: count %d, limit is %d", name, set.Count, MaxPrefixesPerSet)
		}
		prefixes := make([]string, 0, set.Count)
		for _, h := range set.Chunks {
			p, err := get(h)
			if err != nil {
				return fmt.Errorf("set %s: %w", name, err)
			}
			// Stop at the count: chunks that hold more (a chunk named
			// again and again) are refused without growing past it.
			if len(prefixes)+len(p) > set.Count {
				return fmt.Errorf("set %s: its chunks hold more than the %d prefixes the document says", name, set.Count)
			}
			prefixes = append(prefixes, p...)
		}
		if set.Count != len(prefixes) {
			return fmt.Errorf("set %s: its chunks hold %d prefixes, the document says %d", name, len(prefixes), set.Count)
		}
		rs.Sets[name] = PrefixSet{Prefixes: prefixes}
	}
	return nil
}

// ChunkSets cuts every set of rs over ChunkThreshold into chunks: it
// returns the document with those sets replaced by their chunk hashes, and
// every chunk (to store before the document). rs itself is not changed.
func (rs RuleSet) ChunkSets() (RuleSet, []Chunk, error) {
	var all []Chunk
	sets := make(map[string]PrefixSet, len(rs.Sets))
	for _, name := range sortedKeys(rs.Sets) {
		set := rs.Sets[name]
		if len(set.Prefixes) <= ChunkThreshold {
			sets[name] = set
			continue
		}
		chunks, err := SplitChunks(set.Prefixes)
		if err != nil {
			return RuleSet{}, nil, fmt.Errorf("set %s: %w", name, err)
		}
		ref := PrefixSet{Count: 0}
		for _, c := range chunks {
			ref.Chunks = append(ref.Chunks, c.Hash)
			lines := bytes.Count(c.Data, []byte("\n")) - 1
			ref.Count += lines
		}
		sets[name] = ref
		all = append(all, chunks...)
	}
	if rs.Sets != nil {
		rs.Sets = sets
	}
	return rs, all, nil
}
