package bpf

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/xdpfw/xdpfw/proto"
)

// randomKeys4 returns n or fewer distinct masked IPv4 keys in key order.
func randomKeys4(r *rand.Rand, n int) []key4 {
	keys := make([]key4, n)
	for i := range keys {
		bits := 8 + r.IntN(25)
		addr := r.Uint32() &^ (0xffffffff >> bits)
		keys[i] = uint64(addr)<<8 | uint64(bits)
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// randomKeys6 is randomKeys4 for IPv6.
func randomKeys6(r *rand.Rand, n int) []key6 {
	keys := make([]key6, n)
	for i := range keys {
		bits := 16 + r.IntN(113)
		k := key6{hi: r.Uint64(), lo: r.Uint64(), bits: uint8(bits)}
		if bits < 64 {
			k.hi &^= ^uint64(0) >> bits
			k.lo = 0
		} else {
			k.lo &^= ^uint64(0) >> (bits - 64)
		}
		keys[i] = k
	}
	slices.SortFunc(keys, compareKey6)
	return slices.CompactFunc(keys, func(a, b key6) bool { return a == b })
}

func keyStrings(v4 []key4, v6 []key6) []string {
	var out []string
	for _, k := range v4 {
		out = append(out, key4Prefix(k).String())
	}
	for _, k := range v6 {
		out = append(out, k.prefix().String())
	}
	return out
}

// docFixture is a document with an inline small set, a big IPv4 set, a
// big IPv6 set, a mixed-family set, empty sets (one carried by members,
// one inline) and literal prefixes in rules: the encoder's input (the
// carried sets empty), the members, and what decoding must give back.
func docFixture(t testing.TB) (in appliedDoc, members []setMembers, want appliedDoc) {
	t.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	big4, big6 := randomKeys4(r, 100_000), randomKeys6(r, 50_000)
	mixed4, mixed6 := randomKeys4(r, 300), randomKeys6(r, 200)
	build := func(carried bool) appliedDoc {
		set := func(v4 []key4, v6 []key6) proto.PrefixSet {
			if carried {
				return proto.PrefixSet{}
			}
			return proto.PrefixSet{Prefixes: keyStrings(v4, v6)}
		}
		return appliedDoc{
			Interface: "eth0",
			Options:   CompileOptions{BigSetThreshold: 1000},
			RuleSets: []proto.RuleSet{{
				APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "edge", Mode: proto.ModeDeny,
				Sets: map[string]proto.PrefixSet{
					"small": {Prefixes: []string{"10.0.0.1", "192.168.0.0/16", "2001:db8::/32"}},
					"big4":  set(big4, nil),
					"empty": set(nil, nil),
				},
				Rules: []proto.Rule{
					{ID: "literal", Action: proto.ActionDrop, Src: []string{"203.0.113.0/24", "2001:db8::1"}, Protocol: proto.ProtoUDP, DstPorts: []proto.PortSpec{"53"}},
					{ID: "big", Action: proto.ActionDrop, Src: []string{"set:big4", "set:small"}, Dst: []string{"set:empty"}},
				},
			}, {
				APIVersion: proto.APIVersion, Kind: proto.KindRuleSet, Name: "core", Priority: 10, Mode: proto.ModeAllow,
				Selector: map[string]string{"role": "router"},
				Sets: map[string]proto.PrefixSet{
					"big6":   set(nil, big6),
					"mixed":  set(mixed4, mixed6),
					"inline": {},
				},
				Rules: []proto.Rule{{ID: "in", Action: proto.ActionPass, Src: []string{"set:big6", "set:mixed", "set:inline"}}},
			}},
		}
	}
	members = []setMembers{
		{ruleSet: 1, set: "mixed", v4: blocks4(t, mixed4), v6: blocks6(t, mixed6)},
		{ruleSet: 0, set: "big4", v4: blocks4(t, big4)},
		{ruleSet: 1, set: "big6", v6: blocks6(t, big6)},
		{ruleSet: 0, set: "empty"},
	}
	return build(true), members, build(false)
}

func mustEncodeDoc(t testing.TB, d appliedDoc, members []setMembers) []byte {
	t.Helper()
	b, _, err := encodeDoc(d, members)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return b
}

// The round trip gives back the document with the carried sets' prefixes
// as netip.Prefix strings in key order, and inline sets and the rules'
// literals as they were.
func TestDocRoundTrip(t *testing.T) {
	in, members, want := docFixture(t)
	b := mustEncodeDoc(t, in, members)
	got, err := decodeDoc(b)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip differs:\n got %.600v\nwant %.600v", got, want)
	}
	n := 100_000 + 50_000 + 500
	t.Logf("%d bytes for about %d members", len(b), n)
}

// The same input gives the same bytes, whatever the order of the members.
func TestDocEncodingIsDeterministic(t *testing.T) {
	in, members, _ := docFixture(t)
	a := mustEncodeDoc(t, in, members)
	slices.Reverse(members)
	if b := mustEncodeDoc(t, in, members); !bytes.Equal(a, b) {
		t.Fatal("members in another order encode differently")
	}
	in2, members2, _ := docFixture(t)
	if b := mustEncodeDoc(t, in2, members2); !bytes.Equal(a, b) {
		t.Fatal("the same input encodes differently")
	}
}

// rawDoc builds a version-2 document from a header and records as they
// are, with a valid length and checksum, so that damage past those checks
// reaches the decoder.
func rawDoc(t testing.TB, h docHeader, records []byte) []byte {
	t.Helper()
	js, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(js)
	zw.Close()
	out := append([]byte(docMagic), make([]byte, 16)...)
	out = append(append(out, gz.Bytes()...), records...)
	binary.LittleEndian.PutUint64(out[8:], uint64(len(out)))
	binary.LittleEndian.PutUint32(out[16:], uint32(gz.Len()))
	return reseal(out)
}

// reseal recomputes a version-2 document's checksum.
func reseal(b []byte) []byte {
	binary.LittleEndian.PutUint32(b[20:], docChecksum(b))
	return b
}

func rec4(p string) []byte {
	k := prefixKey4(netip.MustParsePrefix(p))
	return []byte{byte(k >> 32), byte(k >> 24), byte(k >> 16), byte(k >> 8), byte(k)}
}

func rec6(p string) []byte {
	k := prefixKey6(netip.MustParsePrefix(p))
	return append(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, k.hi), k.lo), k.bits)
}

// Damaged or hostile documents are refused with an error: no panic, and
// no allocation sized by a count that the data does not hold.
func TestDocRefusesDamage(t *testing.T) {
	in, members, _ := docFixture(t)
	good := mustEncodeDoc(t, in, members)
	small := appliedDoc{Interface: "lo", RuleSets: []proto.RuleSet{{Name: "rs", Sets: map[string]proto.PrefixSet{
		"a": {}, "b": {}, "lit": {Prefixes: []string{"10.0.0.0/8"}}}}}}
	hdr := func(ms ...memberSection) docHeader { return docHeader{Doc: small, Members: ms} }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	withTotal := func(b []byte, n uint64) []byte {
		b = slices.Clone(b)
		binary.LittleEndian.PutUint64(b[8:], n)
		return b
	}

	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"cut inside the magic", good[:5], "too short"},
		{"cut inside the header", good[:20], "too short"},
		{"cut in the records", good[:len(good)-3], "header says"},
		{"cut, length fixed", reseal(withTotal(good[:len(good)-3], uint64(len(good)-3))), "past the end"},
		{"length past the end", withTotal(good, uint64(len(good))+1), "header says"},
		{"length huge", withTotal(good, 1<<62), "header says"},
		{"a flipped record byte", func() []byte { b := slices.Clone(good); b[len(b)-7] ^= 1; return b }(), "checksum"},
		{"compressed header past the end", func() []byte {
			b := slices.Clone(good)
			binary.LittleEndian.PutUint32(b[16:], uint32(len(b)))
			return reseal(b)
		}(), "past the end"},
		{"garbage for the compressed header", func() []byte {
			b := slices.Clone(good)
			copy(b[docFixedHeader:], "not gzip at all")
			return reseal(b)
		}(), "gunzip"},
		{"IPv4 count past the end", rawDoc(t, hdr(memberSection{Set: "a", V4: 1 << 60}), rec4("10.0.0.0/8")), "past the end"},
		{"IPv6 count past the end", rawDoc(t, hdr(memberSection{Set: "a", V4: 1, V6: 1 << 58}), rec4("10.0.0.0/8")), "past the end"},
		{"negative count", rawDoc(t, hdr(memberSection{Set: "a", V4: -1}), nil), "past the end"},
		{"bytes after the members", rawDoc(t, hdr(memberSection{Set: "a", V4: 1}), cat(rec4("10.0.0.0/8"), []byte{0})), "after the last member"},
		{"unknown rule set", rawDoc(t, hdr(memberSection{RuleSet: 1, Set: "a", V4: 1}), rec4("10.0.0.0/8")), "rule set 1 of 1"},
		{"negative rule set", rawDoc(t, hdr(memberSection{RuleSet: -1, Set: "a"}), nil), "rule set -1"},
		{"set not in the rule set", rawDoc(t, hdr(memberSection{Set: "nope", V4: 1}), rec4("10.0.0.0/8")), "no set nope"},
		{"set with inline prefixes too", rawDoc(t, hdr(memberSection{Set: "lit", V4: 1}), rec4("10.0.0.0/8")), "both members and prefixes"},
		{"duplicate section", rawDoc(t, hdr(memberSection{Set: "a"}, memberSection{Set: "a"}), nil), "duplicate"},
		{"sections out of order", rawDoc(t, hdr(memberSection{Set: "b"}, memberSection{Set: "a"}), nil), "out of order"},
		{"IPv4 length 33", rawDoc(t, hdr(memberSection{Set: "a", V4: 1}), []byte{10, 0, 0, 0, 33}), "prefix length out of range"},
		{"IPv4 length 255", rawDoc(t, hdr(memberSection{Set: "a", V4: 1}), []byte{10, 0, 0, 0, 255}), "prefix length out of range"},
		{"IPv6 length 129", rawDoc(t, hdr(memberSection{Set: "a", V6: 1}), append(rec6("2001:db8::/32")[:16], 129)), "prefix length out of range"},
		{"IPv4 unmasked", rawDoc(t, hdr(memberSection{Set: "a", V4: 1}), []byte{10, 0, 0, 1, 24}), "past the prefix length"},
		{"IPv6 unmasked (high half)", rawDoc(t, hdr(memberSection{Set: "a", V6: 1}), append(rec6("2001:db8::/128")[:16], 16)), "past the prefix length"},
		{"IPv6 unmasked (low half)", rawDoc(t, hdr(memberSection{Set: "a", V6: 1}), append(rec6("2001:db8::1/128")[:16], 96)), "past the prefix length"},
		{"IPv4 unsorted", rawDoc(t, hdr(memberSection{Set: "a", V4: 2}), cat(rec4("10.0.1.0/24"), rec4("10.0.0.0/24"))), "out of order"},
		{"IPv4 shorter after longer", rawDoc(t, hdr(memberSection{Set: "a", V4: 2}), cat(rec4("10.0.0.0/24"), rec4("10.0.0.0/8"))), "out of order"},
		{"IPv4 duplicate", rawDoc(t, hdr(memberSection{Set: "a", V4: 2}), cat(rec4("10.0.0.0/24"), rec4("10.0.0.0/24"))), "duplicate"},
		{"IPv6 unsorted", rawDoc(t, hdr(memberSection{Set: "a", V6: 2}), cat(rec6("2001:db8:1::/48"), rec6("2001:db8::/48"))), "out of order"},
		{"IPv6 duplicate", rawDoc(t, hdr(memberSection{Set: "a", V6: 2}), cat(rec6("2001:db8::/48"), rec6("2001:db8::/48"))), "duplicate"},
		{"version 1 length past the end", binary.LittleEndian.AppendUint64(nil, 100), "version 1 length"},
		{"version 1 garbage", append(binary.LittleEndian.AppendUint64(nil, 4), "junk"...), "gunzip"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := decodeDoc(c.data)
			if err == nil {
				t.Fatalf("decoded: %.200v", d)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
		})
	}

	// Whatever one byte flips or wherever the data ends, an error.
	b := rawDoc(t, hdr(memberSection{Set: "a", V4: 1, V6: 1}, memberSection{Set: "b", V4: 1}),
		cat(rec4("10.0.0.0/8"), rec6("2001:db8::/32"), rec4("192.0.2.0/24")))
	if _, err := decodeDoc(b); err != nil {
		t.Fatalf("the undamaged small document: %v", err)
	}
	for i := range b {
		c := slices.Clone(b)
		c[i] ^= 0x40
		if _, err := decodeDoc(c); err == nil {
			t.Fatalf("byte %d flipped: decoded", i)
		}
		if _, err := decodeDoc(b[:i]); err == nil {
			t.Fatalf("cut at %d: decoded", i)
		}
	}
}

// The encoder refuses members that are not canonical or do not fit the
// document, rather than store something the decoder would refuse.
func TestEncodeDocRefusesBadMembers(t *testing.T) {
	d := appliedDoc{RuleSets: []proto.RuleSet{{Name: "rs", Sets: map[string]proto.PrefixSet{
		"a": {}, "lit": {Prefixes: []string{"10.0.0.0/8"}}}}}}
	k4 := func(p string) key4 { return prefixKey4(netip.MustParsePrefix(p)) }
	k6 := func(p string) key6 { return prefixKey6(netip.MustParsePrefix(p)) }
	cases := []struct {
		name string
		m    []setMembers
		want string
	}{
		{"unknown rule set", []setMembers{{ruleSet: 1, set: "a"}}, "rule set 1 of 1"},
		{"unknown set", []setMembers{{set: "nope"}}, "no such set"},
		{"set with prefixes", []setMembers{{set: "lit", v4: []memberBlock[key4]{{keys: []key4{k4("10.0.0.0/8")}}}}}, "both members"},
		{"listed twice", []setMembers{{set: "a"}, {set: "a"}}, "listed twice"},
		{"IPv4 unsorted", []setMembers{{set: "a", v4: []memberBlock[key4]{{keys: []key4{k4("10.0.1.0/24"), k4("10.0.0.0/24")}}}}}, "out of order"},
		{"IPv4 duplicate", []setMembers{{set: "a", v4: []memberBlock[key4]{{keys: []key4{k4("10.0.0.0/24"), k4("10.0.0.0/24")}}}}}, "duplicate"},
		{"IPv4 unmasked", []setMembers{{set: "a", v4: []memberBlock[key4]{{keys: []key4{0x0a000001<<8 | 24}}}}}, "past the prefix length"},
		{"IPv4 length 33", []setMembers{{set: "a", v4: []memberBlock[key4]{{keys: []key4{0x0a000000<<8 | 33}}}}}, "out of range"},
		{"IPv4 key past 40 bits", []setMembers{{set: "a", v4: []memberBlock[key4]{{keys: []key4{1<<40 | 8}}}}}, "out of range"},
		{"IPv6 unsorted", []setMembers{{set: "a", v6: []memberBlock[key6]{{keys: []key6{k6("2001:db8:1::/48"), k6("2001:db8::/48")}}}}}, "out of order"},
		{"IPv6 unmasked", []setMembers{{set: "a", v6: []memberBlock[key6]{{keys: []key6{{hi: 1, bits: 48}}}}}}, "past the prefix length"},
		{"IPv6 length 129", []setMembers{{set: "a", v6: []memberBlock[key6]{{keys: []key6{{bits: 129}}}}}}, "out of range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, _, err := encodeDoc(d, c.m); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one saying %q", err, c.want)
			}
		})
	}
}

// encodeDocV1 writes a document as the version before 2 did: the length,
// then gzip of the JSON.
func encodeDocV1(t testing.TB, d appliedDoc) []byte {
	t.Helper()
	js, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.Write(make([]byte, 8))
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	zw.Write(js)
	zw.Close()
	b := buf.Bytes()
	binary.LittleEndian.PutUint64(b, uint64(len(b)-8))
	return b
}

// Generations written by the version before still read back.
func TestDocReadsVersion1(t *testing.T) {
	_, _, want := docFixture(t)
	got, err := decodeDoc(encodeDocV1(t, want))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatal("version 1 document decodes differently")
	}
}

// AppliedRuleSets reads back an encoded document written into the active
// generation (one bigger than its docs map, which is replaced), and a
// version-1 document written there by the previous version.
func TestAppliedRuleSetsReadsTheStoredDocument(t *testing.T) {
	fw := openTestFirewall(t)
	mustApply(t, fw, mustDecode(t, swapA))
	gen, err := fw.ActiveGeneration()
	if err != nil {
		t.Fatal(err)
	}
	in, members, want := docFixture(t)
	b := mustEncodeDoc(t, in, members)
	rep := &ApplyReport{}
	if err := fw.writeDocs(gen, &Compiled{doc: docParts{head: b, size: len(b)}}, rep); err != nil {
		t.Fatalf("write docs: %v", err)
	}
	if rep.DocBytes != len(b) {
		t.Fatalf("DocBytes %d, want %d", rep.DocBytes, len(b))
	}
	sets, opts, err := fw.AppliedRuleSets()
	if err != nil {
		t.Fatalf("applied rule sets: %v", err)
	}
	if !reflect.DeepEqual(sets, want.RuleSets) || opts != want.Options {
		t.Fatalf("applied rule sets differ from the stored document")
	}

	m, err := innerMap(fw.objs.Docs, gen)
	if err != nil || m == nil {
		t.Fatalf("docs map of generation %d: %v", gen, err)
	}
	defer m.Close()
	mem, err := m.Memory()
	if err != nil {
		t.Fatal(err)
	}
	old := appliedDoc{Interface: "lo", RuleSets: mustDecode(t, swapA)}
	if _, err := mem.WriteAt(encodeDocV1(t, old), 0); err != nil {
		t.Fatal(err)
	}
	if sets, _, err = fw.AppliedRuleSets(); err != nil || !reflect.DeepEqual(sets, old.RuleSets) {
		t.Fatalf("version 1 document: %+v, %v", sets, err)
	}
}

// key6After, the encoder's and decoder's order check, agrees with
// compareKey6, the order members.go defines.
func TestKey6AfterIsCompareKey6(t *testing.T) {
	vals := []key6{{}, {bits: 1}, {lo: 1}, {lo: 1, bits: 128}, {hi: 1}, {hi: 1, lo: ^uint64(0)}, {hi: ^uint64(0), bits: 64}}
	for _, a := range vals {
		for _, b := range vals {
			if got, want := key6After(a, b), compareKey6(a, b) > 0; got != want {
				t.Errorf("key6After(%+v, %+v) = %v, want %v", a, b, got, want)
			}
		}
	}
}

func blocks4(t testing.TB, keys []key4) []memberBlock[key4] {
	t.Helper()
	b, err := codec4.blocks(keys)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func blocks6(t testing.TB, keys []key6) []memberBlock[key6] {
	t.Helper()
	b, err := codec6.blocks(keys)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
