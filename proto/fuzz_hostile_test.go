package proto

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The documents an agent takes from etcd are fuzzed as a hostile writer
// would send them: a bad one is refused, never a panic, and what is
// accepted survives a round trip.

func FuzzDecodeHostDesired(f *testing.F) {
	valid, _ := json.Marshal(NewHostDesired(RuleSetRef{Name: "edge", Version: 3}, RuleSetRef{Name: "base", Version: 1}))
	f.Add(valid)
	f.Add([]byte(`{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[]}`))
	f.Add([]byte(`{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[{"name":"a","version":-1}]}`))
	f.Add([]byte(`{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":null} {}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := DecodeHostDesired(data)
		if err != nil {
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("decoded but invalid: %v", err)
		}
		out, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		again, err := DecodeHostDesired(out)
		if err != nil || !reflect.DeepEqual(d.RuleSets, again.RuleSets) && len(d.RuleSets)+len(again.RuleSets) > 0 {
			t.Fatalf("round trip: %v\n%s", err, out)
		}
	})
}

func FuzzDecodeHostEnrollment(f *testing.F) {
	valid, _ := json.Marshal(HostEnrollment{APIVersion: APIVersion, Kind: KindHostEnrollment, Host: "web-1",
		User: HostEtcdUser("web-1"), Labels: map[string]string{"role": "web"}, EnrolledAt: time.Unix(0, 0).UTC()})
	f.Add(valid)
	f.Add([]byte(`{"apiVersion":"xdpfw/v1","kind":"HostEnrollment","host":"a","user":"xdpfw-host:b"}`))
	f.Add([]byte(`{"apiVersion":"xdpfw/v1","kind":"HostEnrollment","host":"a","user":"xdpfw-host:a","labels":{"":"x"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeHostEnrollment(data)
		if err != nil {
			return
		}
		if e.User != HostEtcdUser(e.Host) || ValidateHostName(e.Host) != nil || ValidateLabels(e.Labels) != nil {
			t.Fatalf("accepted an enrollment that does not validate: %+v", e)
		}
		out, _ := json.Marshal(e)
		if _, err := DecodeHostEnrollment(out); err != nil {
			t.Fatalf("round trip: %v\n%s", err, out)
		}
	})
}

// FuzzChunk decodes a chunk whose hash matches its bytes (the check a
// forger must pass), and cuts its prefixes again: the chunks made decode to
// the same set.
func FuzzChunk(f *testing.F) {
	f.Add([]byte(chunkMagic + "198.18.0.0/24\n2001:db8::/48\n"))
	f.Add([]byte(chunkMagic))
	f.Add([]byte(chunkMagic + "\n\n198.18.0.1\n"))
	f.Add([]byte("xdpfw-chunk v2\n1.2.3.4/32\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		sum := sha256.Sum256(data)
		hash := hex.EncodeToString(sum[:])
		prefixes, err := DecodeChunk(hash, data)
		if err != nil {
			return
		}
		if CheckChunkPrefixes(hash, prefixes) != nil {
			return
		}
		if _, err := DecodeChunk(hash[:63]+"0", data); err == nil && hash[63] != '0' {
			t.Fatal("a chunk decoded under another hash")
		}
		chunks, err := SplitChunks(prefixes)
		if err != nil {
			t.Fatalf("prefixes that checked do not split: %v", err)
		}
		var back []string
		for _, c := range chunks {
			p, err := DecodeChunk(c.Hash, c.Data)
			if err != nil {
				t.Fatalf("a chunk made by SplitChunks does not decode: %v", err)
			}
			back = append(back, p...)
		}
		want := map[string]bool{}
		for _, s := range prefixes {
			p, _ := ParsePrefix(s)
			want[p.String()] = true
		}
		if len(back) != len(want) {
			t.Fatalf("%d distinct prefixes, %d after splitting", len(want), len(back))
		}
		for _, s := range back {
			if !want[s] {
				t.Fatalf("%s appeared in splitting", s)
			}
		}
	})
}

// FuzzResolveChunks resolves a version document's chunk manifest against
// a store holding one chunk: whatever the count and the list of hashes,
// resolving never holds more prefixes than the document's count (so a
// hostile manifest costs no more than the set it claims), and a resolved
// set holds exactly its count.
func FuzzResolveChunks(f *testing.F) {
	chunk := []byte(chunkMagic + "198.18.0.0/24\n198.18.1.0/24\n")
	sum := sha256.Sum256(chunk)
	hash := hex.EncodeToString(sum[:])
	f.Add(int64(2), 1, []byte(hash))
	f.Add(int64(4), 2, []byte(hash))
	f.Add(int64(1<<62), 20000, []byte(hash))
	f.Add(int64(-1), 1, []byte(hash))
	f.Add(int64(3), 1, []byte("zz"))
	f.Fuzz(func(t *testing.T, count int64, times int, h []byte) {
		if times < 0 || times > 50000 || count > 1<<62 {
			return
		}
		hashes := make([]string, times)
		for i := range hashes {
			hashes[i] = string(h)
		}
		rs := RuleSet{APIVersion: APIVersion, Kind: KindRuleSet, Name: "r", Mode: ModeDeny,
			Sets:  map[string]PrefixSet{"s": {Chunks: hashes, Count: int(count)}},
			Rules: []Rule{{ID: "x", Action: ActionDrop, Src: []string{"set:s"}}}}
		if int64(int(count)) != count {
			return
		}
		if err := rs.ValidateWith(ValidateOptions{AllowChunks: true}); err != nil {
			return // refused before anything is fetched
		}
		fetched := 0
		err := rs.ResolveChunks(func(got string) ([]string, error) {
			fetched++
			return DecodeChunk(got, chunk)
		})
		if fetched > len(hashes) {
			t.Fatalf("%d fetches for %d hashes", fetched, len(hashes))
		}
		if err != nil {
			return
		}
		if got := len(rs.Sets["s"].Prefixes); got != int(count) {
			t.Fatalf("resolved %d prefixes, the document says %d", got, count)
		}
		if count > 0 && !bytes.Equal([]byte(strings.Join(rs.Sets["s"].Prefixes[:2], ",")), []byte("198.18.0.0/24,198.18.1.0/24")) {
			t.Fatalf("resolved %v", rs.Sets["s"].Prefixes)
		}
	})
}
