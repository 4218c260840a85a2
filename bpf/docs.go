package bpf

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"slices"
	"strings"
	"sync"

	"github.com/xdpfw/xdpfw/proto"
)

const pageSize = 4096

// appliedDoc is what the docs map holds for a generation: the rule sets it
// was compiled from and how.
type appliedDoc struct {
	Interface string          `json:"interface"`
	Options   CompileOptions  `json:"options"`
	RuleSets  []proto.RuleSet `json:"ruleSets"`
}

// The docs map's format, version 2 (encodeDoc, decodeDoc). Integers in the
// fixed header are little-endian; member records are big-endian, so that
// their bytes sort as their keys do.
//
//	offset  size  field
//	0       8     magic "xdpfwdc2"
//	8       8     total length T of the document, this header included
//	16      4     length G of the compressed header
//	20      4     CRC-32C (Castagnoli) of bytes 8 to 20 and 24 to T
//	24      G     gzip (BestSpeed) of the JSON of a docHeader: the
//	              appliedDoc, whose member-carried sets are empty, and the
//	              member sections, ordered by rule-set index, then set name
//	24+G    T-24-G  the member records, section after section in the
//	              header's order: the section's IPv4 members (5 bytes
//	              each: the address, then the prefix length), then its
//	              IPv6 members (17 bytes each: the address, then the
//	              length), each family in key order (see members.go)
//
// The same doc and members always give the same bytes (the sections are
// sorted, JSON objects have sorted keys, and a gzip stream depends only on
// its input within one Go release), so a digest of them identifies the
// input.
//
// Version 1, written before, is an 8-byte little-endian length N and N
// bytes of gzip of the JSON appliedDoc, prefixes inline. Read as such a
// length, the magic is about 3.6e18: no docs map is that big, so the two
// cannot be confused.
const (
	docMagic       = "xdpfwdc2"
	docFixedHeader = 24
	docRecord4     = 5
	docRecord6     = 17
	// maxDocJSON bounds what one document's gzip stream may expand to, so
	// that damaged data cannot make the reader allocate without end. It is
	// far above what the compiler's limits let a generation hold.
	maxDocJSON = 1 << 30
)

var docCRCTable = crc32.MakeTable(crc32.Castagnoli)

// docGzip holds gzip writers for encodeDoc: a new one allocates about a
// megabyte of state, which took longer than the rest of a small encoding.
var docGzip = sync.Pool{New: func() any {
	zw, err := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	if err != nil {
		panic(err) // only for an invalid level
	}
	return zw
}}

// docHeader is the JSON header of a version-2 document.
type docHeader struct {
	Doc     appliedDoc      `json:"doc"`
	Members []memberSection `json:"members,omitempty"`
}

// memberSection says whose members the next records are, and how many of
// each family there are.
type memberSection struct {
	RuleSet int    `json:"ruleSet"`
	Set     string `json:"set"`
	V4      int    `json:"v4"`
	V6      int    `json:"v6"`
}

// docParts is an encoded document in pieces: head (the fixed header and
// the compressed JSON), then the records of every block of members, in
// order. The blocks' records are shared with the compiler's blocks, so an
// update re-encodes only what changed; writeDocs writes the pieces one
// after the other.
type docParts struct {
	head []byte
	recs [][]byte
	size int
}

// bytes joins the pieces.
func (p docParts) bytes() []byte {
	out := make([]byte, 0, p.size)
	out = append(out, p.head...)
	for _, r := range p.recs {
		out = append(out, r...)
	}
	return out
}

// encodeDoc is encodeDocParts, joined.
func encodeDoc(d appliedDoc, members []setMembers) ([]byte, [32]byte, error) {
	p, sum, err := encodeDocParts(d, members)
	if err != nil {
		return nil, sum, err
	}
	return p.bytes(), sum, nil
}

// encodeDocParts encodes d and the members of its prefix sets as a
// version-2 document. Each set that members lists must be empty in d (no
// prefixes, chunks or file): members carry its prefixes. The keys must be
// in key order without duplicates, with the bits past the prefix length
// zero (checked when a block is made; a block without records is encoded
// and checked here).
//
// The digest is sha256 of the JSON and of each block's digest in order,
// not of the gzip'd header (compressed bytes may change with the Go
// release, and a changed digest would rewrite every host's maps) nor of
// the records themselves (a million members would cost 3 ms of hashing a
// change; the blocks are cut where their keys say, so the same members
// always give the same blocks).
func encodeDocParts(d appliedDoc, members []setMembers) (docParts, [32]byte, error) {
	fail := func(format string, a ...any) (docParts, [32]byte, error) {
		return docParts{}, [32]byte{}, fmt.Errorf("encode docs: "+format, a...)
	}
	order := make([]*setMembers, len(members))
	for i := range members {
		order[i] = &members[i]
	}
	slices.SortFunc(order, func(a, b *setMembers) int {
		if c := cmp.Compare(a.ruleSet, b.ruleSet); c != 0 {
			return c
		}
		return strings.Compare(a.set, b.set)
	})
	sections := make([]memberSection, len(order))
	records := 0
	var recs [][]byte
	var sums [][32]byte
	for i, m := range order {
		if m.ruleSet < 0 || m.ruleSet >= len(d.RuleSets) {
			return fail("members of set %s: rule set %d of %d", m.set, m.ruleSet, len(d.RuleSets))
		}
		rs := d.RuleSets[m.ruleSet].Name
		set, ok := d.RuleSets[m.ruleSet].Sets[m.set]
		switch {
		case !ok:
			return fail("members of set %s: rule set %s has no such set", m.set, rs)
		case len(set.Prefixes) > 0 || len(set.Chunks) > 0 || set.File != "" || set.Count != 0:
			return fail("set %s of rule set %s has both members and prefixes, chunks or a file", m.set, rs)
		case i > 0 && order[i-1].ruleSet == m.ruleSet && order[i-1].set == m.set:
			return fail("set %s of rule set %s: members listed twice", m.set, rs)
		}
		n4, err := appendBlocks(codec4, m.v4, &recs, &sums)
		if err != nil {
			return fail("set %s of rule set %s: IPv4 %w", m.set, rs, err)
		}
		n6, err := appendBlocks(codec6, m.v6, &recs, &sums)
		if err != nil {
			return fail("set %s of rule set %s: IPv6 %w", m.set, rs, err)
		}
		sections[i] = memberSection{RuleSet: m.ruleSet, Set: m.set, V4: n4, V6: n6}
		records += docRecord4*n4 + docRecord6*n6
	}
	js, err := json.Marshal(docHeader{Doc: d, Members: sections})
	if err != nil {
		return fail("%w", err)
	}
	var gz bytes.Buffer
	zw := docGzip.Get().(*gzip.Writer)
	defer docGzip.Put(zw)
	zw.Reset(&gz)
	if _, err := zw.Write(js); err != nil {
		return fail("compress header: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fail("compress header: %w", err)
	}
	if uint64(gz.Len()) > math.MaxUint32 {
		return fail("compressed header of %d bytes", gz.Len())
	}

	p := docParts{head: make([]byte, docFixedHeader+gz.Len()), recs: recs}
	p.size = len(p.head) + records
	copy(p.head, docMagic)
	binary.LittleEndian.PutUint64(p.head[8:], uint64(p.size))
	binary.LittleEndian.PutUint32(p.head[16:], uint32(gz.Len()))
	copy(p.head[docFixedHeader:], gz.Bytes())
	crc := crc32.Update(crc32.Checksum(p.head[8:20], docCRCTable), docCRCTable, p.head[docFixedHeader:])
	for _, r := range recs {
		crc = crc32.Update(crc, docCRCTable, r)
	}
	binary.LittleEndian.PutUint32(p.head[20:], crc)

	h := sha256.New()
	h.Write(js)
	for _, s := range sums {
		h.Write(s[:])
	}
	var digest [32]byte
	h.Sum(digest[:0])
	return p, digest, nil
}

// appendBlocks adds a set's blocks' records and digests to recs and sums
// (encoding those that have none) and returns the number of keys; each
// block must start after the one before ends.
func appendBlocks[K any](c keyCodec[K], blocks []memberBlock[K], recs *[][]byte, sums *[][32]byte) (int, error) {
	n := 0
	for j, b := range blocks {
		if b.rec == nil {
			var err error
			if b, err = c.newBlock(b.keys); err != nil {
				return 0, fmt.Errorf("block %d: %w", j, err)
			}
		}
		if len(b.keys) == 0 || len(b.rec) != c.size*len(b.keys) {
			return 0, fmt.Errorf("block %d: %d keys in %d bytes", j, len(b.keys), len(b.rec))
		}
		if j > 0 && c.compare(b.keys[0], blocks[j-1].keys[len(blocks[j-1].keys)-1]) <= 0 {
			return 0, fmt.Errorf("member %d: %w", n, errKeyOrder)
		}
		*recs = append(*recs, b.rec)
		*sums = append(*sums, b.sum)
		n += len(b.keys)
	}
	return n, nil
}

// docChecksum is the checksum of a version-2 document: of all its bytes
// but the magic and the checksum itself.
func docChecksum(b []byte) uint32 {
	return crc32.Update(crc32.Checksum(b[8:20], docCRCTable), docCRCTable, b[docFixedHeader:])
}

var (
	errKeyOrder  = errors.New("not after the member before it (out of order or a duplicate)")
	errKeyBits   = errors.New("prefix length out of range")
	errKeyMasked = errors.New("address bits set past the prefix length")
)

// putKeys4 writes IPv4 records into b (5 bytes a key), checking the keys;
// on error it returns the index of the bad key.
func putKeys4(b []byte, keys []key4) (int, error) {
	var prev key4
	for i, k := range keys {
		addr, bits := uint32(k>>8), k&0xff
		switch {
		case k>>40 != 0 || bits > 32:
			return i, errKeyBits
		case addr&(math.MaxUint32>>bits) != 0:
			return i, errKeyMasked
		case i > 0 && k <= prev:
			return i, errKeyOrder
		}
		prev = k
		r := b[docRecord4*i : docRecord4*i+docRecord4 : docRecord4*i+docRecord4]
		r[0], r[1], r[2], r[3], r[4] = byte(k>>32), byte(k>>24), byte(k>>16), byte(k>>8), byte(k)
	}
	return 0, nil
}

// putKeys6 is putKeys4 for IPv6 (17 bytes a key).
func putKeys6(b []byte, keys []key6) (int, error) {
	for i, k := range keys {
		if err := checkKey6(k); err != nil {
			return i, err
		}
		if i > 0 && !key6After(k, keys[i-1]) {
			return i, errKeyOrder
		}
		r := b[docRecord6*i : docRecord6*i+docRecord6 : docRecord6*i+docRecord6]
		binary.BigEndian.PutUint64(r[0:8], k.hi)
		binary.BigEndian.PutUint64(r[8:16], k.lo)
		r[16] = k.bits
	}
	return 0, nil
}

// key6After is compareKey6(k, p) > 0, in a form that inlines (it
// encoded 1M keys in 2.0 ms where compareKey6 took 3.6).
func key6After(k, p key6) bool {
	return k.hi > p.hi || k.hi == p.hi && (k.lo > p.lo || k.lo == p.lo && k.bits > p.bits)
}

func checkKey6(k key6) error {
	switch {
	case k.bits > 128:
		return errKeyBits
	case k.bits < 64 && (k.hi&(math.MaxUint64>>k.bits) != 0 || k.lo != 0):
		return errKeyMasked
	case k.bits >= 64 && k.lo&(math.MaxUint64>>(k.bits-64)) != 0:
		return errKeyMasked
	}
	return nil
}

// docLength returns the length of the document that starts with head (at
// least its first 16 bytes), of either version.
func docLength(head []byte) (uint64, error) {
	if len(head) < 16 {
		return 0, fmt.Errorf("docs: %d bytes, too short for a header", len(head))
	}
	if string(head[:8]) == docMagic {
		return binary.LittleEndian.Uint64(head[8:]), nil
	}
	n := binary.LittleEndian.Uint64(head)
	if n > math.MaxUint64-8 {
		return 0, fmt.Errorf("docs: version 1 length %d", n)
	}
	return 8 + n, nil
}

// decodeDoc decodes a document of version 2 or 1 (exactly its bytes, as
// long as docLength says). The prefixes of member-carried sets come back
// as netip.Prefix strings in key order; an empty one as nil, as JSON
// decoding gives for an empty list. They share one backing string.
func decodeDoc(data []byte) (appliedDoc, error) {
	if len(data) < 8 {
		return appliedDoc{}, fmt.Errorf("docs: %d bytes, too short for a header", len(data))
	}
	if string(data[:8]) != docMagic {
		return decodeDocV1(data)
	}
	if len(data) < docFixedHeader {
		return appliedDoc{}, fmt.Errorf("docs: %d bytes, too short for a version 2 header", len(data))
	}
	if total := binary.LittleEndian.Uint64(data[8:]); total != uint64(len(data)) {
		return appliedDoc{}, fmt.Errorf("docs: header says %d bytes, have %d", total, len(data))
	}
	if sum, want := docChecksum(data), binary.LittleEndian.Uint32(data[20:]); sum != want {
		return appliedDoc{}, fmt.Errorf("docs: checksum %#08x, header says %#08x (damaged)", sum, want)
	}
	g := uint64(binary.LittleEndian.Uint32(data[16:]))
	if g > uint64(len(data)-docFixedHeader) {
		return appliedDoc{}, fmt.Errorf("docs: compressed header of %d bytes past the end (%d bytes)", g, len(data))
	}
	js, err := gunzipDoc(data[docFixedHeader : docFixedHeader+g])
	if err != nil {
		return appliedDoc{}, err
	}
	var h docHeader
	if err := json.Unmarshal(js, &h); err != nil {
		return appliedDoc{}, fmt.Errorf("docs: decode header: %w", err)
	}
	records := data[docFixedHeader+g:]
	if err := checkSections(&h, len(records)); err != nil {
		return appliedDoc{}, err
	}
	for i, s := range h.Members {
		n := docRecord4*s.V4 + docRecord6*s.V6
		prefixes, err := decodeMembers(records[:docRecord4*s.V4], records[docRecord4*s.V4:n])
		if err != nil {
			return appliedDoc{}, fmt.Errorf("docs: set %s of rule set %s (section %d): %w", s.Set, h.Doc.RuleSets[s.RuleSet].Name, i, err)
		}
		records = records[n:]
		h.Doc.RuleSets[s.RuleSet].Sets[s.Set] = proto.PrefixSet{Prefixes: prefixes}
	}
	return h.Doc, nil
}

// checkSections checks the member sections against the rule sets and the
// records' size, before anything is allocated for them.
func checkSections(h *docHeader, size int) error {
	left := size
	for i, s := range h.Members {
		if s.RuleSet < 0 || s.RuleSet >= len(h.Doc.RuleSets) {
			return fmt.Errorf("docs: section %d (set %s): rule set %d of %d", i, s.Set, s.RuleSet, len(h.Doc.RuleSets))
		}
		rs := h.Doc.RuleSets[s.RuleSet].Name
		set, ok := h.Doc.RuleSets[s.RuleSet].Sets[s.Set]
		switch {
		case !ok:
			return fmt.Errorf("docs: section %d: rule set %s has no set %s", i, rs, s.Set)
		case len(set.Prefixes) > 0 || len(set.Chunks) > 0 || set.File != "" || set.Count != 0:
			return fmt.Errorf("docs: section %d: set %s of rule set %s has both members and prefixes, chunks or a file", i, s.Set, rs)
		case i > 0 && (s.RuleSet < h.Members[i-1].RuleSet || s.RuleSet == h.Members[i-1].RuleSet && s.Set <= h.Members[i-1].Set):
			return fmt.Errorf("docs: section %d (set %s of rule set %s): out of order or a duplicate", i, s.Set, rs)
		case s.V4 < 0 || s.V6 < 0 || s.V4 > left/docRecord4 || s.V6 > (left-docRecord4*s.V4)/docRecord6:
			return fmt.Errorf("docs: section %d (set %s of rule set %s): %d IPv4 and %d IPv6 members past the end (%d bytes left)", i, s.Set, rs, s.V4, s.V6, left)
		}
		left -= docRecord4*s.V4 + docRecord6*s.V6
	}
	if left != 0 {
		return fmt.Errorf("docs: %d bytes after the last member", left)
	}
	return nil
}

// decodeMembers checks and formats one set's records (v4, then v6). The
// strings share one backing string, one allocation rather than one a
// member: Builder.String does not copy, and the strings it returned stay
// valid as it grows. (This was twice as fast as formatting into a byte
// slice and slicing one string made of it.)
func decodeMembers(v4, v6 []byte) ([]string, error) {
	n4, n6 := len(v4)/docRecord4, len(v6)/docRecord6
	if n4+n6 == 0 {
		return nil, nil
	}
	out := make([]string, 0, n4+n6)
	var sb strings.Builder
	sb.Grow(n4*len("255.255.255.255/32") + n6*len("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"))
	var buf [64]byte
	var prev key4
	for i := range n4 {
		r := v4[docRecord4*i : docRecord4*i+docRecord4 : docRecord4*i+docRecord4]
		k := uint64(r[0])<<32 | uint64(r[1])<<24 | uint64(r[2])<<16 | uint64(r[3])<<8 | uint64(r[4])
		addr, bits := uint32(k>>8), k&0xff
		switch {
		case bits > 32:
			return nil, fmt.Errorf("IPv4 member %d: %w (%d)", i, errKeyBits, bits)
		case addr&(math.MaxUint32>>bits) != 0:
			return nil, fmt.Errorf("IPv4 member %d (%s): %w", i, key4Prefix(k), errKeyMasked)
		case i > 0 && k <= prev:
			return nil, fmt.Errorf("IPv4 member %d (%s): %w", i, key4Prefix(k), errKeyOrder)
		}
		prev = k
		start := sb.Len()
		sb.Write(appendKey4(buf[:0], k))
		out = append(out, sb.String()[start:])
	}
	var prev6 key6
	for i := range n6 {
		r := v6[docRecord6*i : docRecord6*i+docRecord6 : docRecord6*i+docRecord6]
		k := key6{binary.BigEndian.Uint64(r[0:8]), binary.BigEndian.Uint64(r[8:16]), r[16]}
		if err := checkKey6(k); err != nil {
			return nil, fmt.Errorf("IPv6 member %d: %w (length %d)", i, err, k.bits)
		}
		if i > 0 && !key6After(k, prev6) {
			return nil, fmt.Errorf("IPv6 member %d (%s): %w", i, k.prefix(), errKeyOrder)
		}
		prev6 = k
		start := sb.Len()
		sb.Write(k.prefix().AppendTo(buf[:0]))
		out = append(out, sb.String()[start:])
	}
	return out, nil
}

// appendKey4 appends the prefix k as netip.Prefix.String writes it.
// (Strconv's appends took half of a decoding's time.)
func appendKey4(b []byte, k key4) []byte {
	for shift := 32; shift >= 0; shift -= 8 {
		v := byte(k >> shift)
		switch {
		case v >= 100:
			b = append(b, '0'+v/100, '0'+v/10%10, '0'+v%10)
		case v >= 10:
			b = append(b, '0'+v/10, '0'+v%10)
		default:
			b = append(b, '0'+v)
		}
		switch shift {
		case 8:
			b = append(b, '/')
		case 0:
		default:
			b = append(b, '.')
		}
	}
	return b
}

// decodeDocV1 decodes a version-1 document: length, then gzip of JSON.
func decodeDocV1(data []byte) (appliedDoc, error) {
	if n := binary.LittleEndian.Uint64(data); n != uint64(len(data)-8) {
		return appliedDoc{}, fmt.Errorf("docs: version 1 length %d, have %d bytes", n, len(data)-8)
	}
	js, err := gunzipDoc(data[8:])
	if err != nil {
		return appliedDoc{}, err
	}
	var d appliedDoc
	if err := json.Unmarshal(js, &d); err != nil {
		return appliedDoc{}, fmt.Errorf("docs: decode version 1: %w", err)
	}
	return d, nil
}

// gunzipDoc decompresses gzip data to its end (so its checksums are
// checked, and trailing garbage is an error), at most maxDocJSON bytes.
func gunzipDoc(gz []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, fmt.Errorf("docs: gunzip: %w", err)
	}
	var out bytes.Buffer
	// The trailer's size (mod 2^32) is a hint only: deflate expands at
	// most about 1032 times, and damage may say anything.
	if len(gz) >= 4 {
		out.Grow(int(min(uint64(binary.LittleEndian.Uint32(gz[len(gz)-4:])), uint64(len(gz))*1032, maxDocJSON)))
	}
	if _, err := out.ReadFrom(io.LimitReader(zr, maxDocJSON+1)); err != nil {
		return nil, fmt.Errorf("docs: gunzip: %w", err)
	}
	if out.Len() > maxDocJSON {
		return nil, fmt.Errorf("docs: gunzip: expands past %d bytes", maxDocJSON)
	}
	return out.Bytes(), nil
}

// writeDocs stores the encoded document c.doc with generation gen,
// reusing the generation's docs map when it is big enough.
func (fw *Firewall) writeDocs(gen uint32, c *Compiled, rep *ApplyReport) error {
	p := c.doc
	if len(p.head) < docFixedHeader || string(p.head[:8]) != docMagic || binary.LittleEndian.Uint64(p.head[8:]) != uint64(p.size) {
		return fmt.Errorf("docs of generation %d: %d bytes that are not a version 2 document", gen, p.size)
	}
	pages := uint32((p.size + pageSize - 1) / pageSize)

	m, err := innerMap(fw.objs.Docs, gen)
	if err != nil {
		return err
	}
	if m != nil && m.MaxEntries() < pages {
		m.Close()
		m = nil
	}
	if m == nil {
		if m, err = fw.newInner(fw.objs.Docs, gen, fw.spec.Maps["docs"].InnerMap, pages+pages/4+1); err != nil {
			return err
		}
	}
	defer m.Close()
	mem, err := fw.memoryOf(fw.objs.Docs, gen, m)
	if err != nil {
		return fmt.Errorf("map docs: %w", err)
	}
	off := int64(0)
	for _, piece := range append([][]byte{p.head}, p.recs...) {
		if _, err := mem.WriteAt(piece, off); err != nil {
			return fmt.Errorf("write docs: %w", err)
		}
		off += int64(len(piece))
	}
	if off != int64(p.size) {
		return fmt.Errorf("docs of generation %d: %d bytes written, the header says %d", gen, off, p.size)
	}
	rep.DocBytes = p.size
	return nil
}

// AppliedRuleSets returns the rule sets the active generation was compiled
// from, with the interface and options they were compiled for.
func (fw *Firewall) AppliedRuleSets() ([]proto.RuleSet, CompileOptions, error) {
	gen, err := fw.ActiveGeneration()
	if err != nil {
		return nil, CompileOptions{}, err
	}
	m, err := innerMap(fw.objs.Docs, gen)
	if err != nil {
		return nil, CompileOptions{}, err
	}
	if m == nil {
		return nil, CompileOptions{}, fmt.Errorf("generation %d of %s: %w", gen, fw.iface, errNoDocs)
	}
	defer m.Close()
	mem, err := m.Memory()
	if err != nil {
		return nil, CompileOptions{}, fmt.Errorf("map docs: %w", err)
	}
	var head [16]byte
	if _, err := mem.ReadAt(head[:], 0); err != nil {
		return nil, CompileOptions{}, fmt.Errorf("read docs of generation %d: %w", gen, err)
	}
	size, err := docLength(head[:])
	if err != nil {
		return nil, CompileOptions{}, fmt.Errorf("docs of generation %d: %w", gen, err)
	}
	if size > uint64(mem.Size()) {
		return nil, CompileOptions{}, fmt.Errorf("docs of generation %d: length %d past the map (%d bytes)", gen, size, mem.Size())
	}
	data := make([]byte, size)
	if _, err := mem.ReadAt(data, 0); err != nil {
		return nil, CompileOptions{}, fmt.Errorf("read docs of generation %d: %w", gen, err)
	}
	doc, err := decodeDoc(data)
	if err != nil {
		return nil, CompileOptions{}, fmt.Errorf("docs of generation %d: %w", gen, err)
	}
	return doc.RuleSets, doc.Options, nil
}

var errNoDocs = errors.New("no applied rule sets stored (applied by an older version?)")
