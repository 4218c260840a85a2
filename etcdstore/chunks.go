package etcdstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/proto"
)

// chunkTxnBytes bounds the chunks written in one transaction, so that
// every request stays under 1 MiB (docs/architecture.md, "Chunks").
const chunkTxnBytes = 768 << 10

// encodeVersion validates a rule set and returns the JSON stored as its
// version: sets over proto.ChunkThreshold become chunk references, and
// their chunks are written first (each chunk key once: they are immutable
// and named by their hash, so a chunk already there is the same chunk).
// A chunk nobody references (a write that lost its race) is harmless.
func (s *Store) encodeVersion(ctx context.Context, rs proto.RuleSet) (*encodedVersion, error) {
	// Validate refuses sets that still name a feed file: stored documents
	// go to hosts that cannot read the author's files.
	if err := rs.Validate(); err != nil {
		return nil, fmt.Errorf("rule set %q: %w", rs.Name, err)
	}
	stored, chunks, err := rs.ChunkSets()
	if err != nil {
		return nil, fmt.Errorf("rule set %s: %w", rs.Name, err)
	}
	doc, err := json.Marshal(stored)
	if err != nil {
		return nil, fmt.Errorf("rule set %s: encode: %w", rs.Name, err)
	}
	if len(doc) > MaxDocumentBytes {
		return nil, fmt.Errorf("rule set %s: %w: %d bytes as JSON with its big sets as chunks, the limit is %d",
			rs.Name, ErrTooLarge, len(doc), MaxDocumentBytes)
	}
	ev := &encodedVersion{name: rs.Name, doc: doc, chunks: chunks}
	if err := s.storeChunks(ctx, ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// encodedVersion is a version ready to write: its document, the chunks
// it names (stored), and the chunk epoch read before they were.
type encodedVersion struct {
	name   string
	doc    []byte
	chunks []proto.Chunk
	epoch  int64
}

// storeChunks reads the chunk epoch, then writes the chunks etcd lacks.
// The version's transaction guards on the epoch (guard): if the collector
// deleted chunks in between, one of ours may be gone, and the write
// stores them again (storeChunks) before it retries.
func (s *Store) storeChunks(ctx context.Context, ev *encodedVersion) error {
	if len(ev.chunks) == 0 {
		return nil
	}
	resp, err := s.cli.Get(ctx, s.keys.ChunkEpoch())
	if err != nil {
		return fmt.Errorf("rule set %s: read %s: %w", ev.name, s.keys.ChunkEpoch(), err)
	}
	ev.epoch = 0
	if len(resp.Kvs) > 0 {
		ev.epoch = resp.Kvs[0].ModRevision
	}
	if err := s.putChunks(ctx, ev.chunks); err != nil {
		return fmt.Errorf("rule set %s: %w", ev.name, err)
	}
	if s.afterChunksStored != nil {
		s.afterChunksStored()
	}
	return nil
}

// guard is the compare of the version's transaction on the chunk epoch
// (none for a version with no chunks).
func (s *Store) epochGuard(ev *encodedVersion) []clientv3.Cmp {
	if len(ev.chunks) == 0 {
		return nil
	}
	return []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.keys.ChunkEpoch()), "=", ev.epoch)}
}

// epochMoved says whether the chunk epoch moved since ev's chunks were
// stored; if so it stores them again, for the next attempt.
func (s *Store) epochMoved(ctx context.Context, ev *encodedVersion) (bool, error) {
	if len(ev.chunks) == 0 {
		return false, nil
	}
	before := ev.epoch
	if err := s.storeChunks(ctx, ev); err != nil {
		return false, err
	}
	return ev.epoch != before, nil
}

// ChunkEpochWrite is the write the storage collector adds to each
// transaction that deletes chunks.
func (s *Store) ChunkEpochWrite() Write {
	return Put(s.keys.ChunkEpoch(), []byte(time.Now().UTC().Format(time.RFC3339Nano)))
}

// putChunks writes the chunks etcd lacks or holds corrupt (bytes other
// than the chunk's: a chunk's key is its content's hash, so any other value
// is damage), in transactions under chunkTxnBytes. Reading the values back
// costs the set's size once per write; it is what lets a write repair what
// it names.
func (s *Store) putChunks(ctx context.Context, chunks []proto.Chunk) error {
	for len(chunks) > 0 {
		var puts []clientv3.Op
		size := 0
		n := 0
		for n < len(chunks) && n < txnBatch && (n == 0 || size+len(chunks[n].Data) <= chunkTxnBytes) {
			size += len(chunks[n].Data)
			n++
		}
		// Which are missing or damaged? One read of the batch.
		gets := make([]clientv3.Op, n)
		for i := range n {
			gets[i] = clientv3.OpGet(s.keys.Chunk(chunks[i].Hash))
		}
		resp, err := s.cli.Txn(ctx).Then(gets...).Commit()
		if err != nil {
			return fmt.Errorf("read chunks: %w", err)
		}
		for i := range n {
			if kvs := resp.Responses[i].GetResponseRange().Kvs; len(kvs) > 0 && bytes.Equal(kvs[0].Value, chunks[i].Data) {
				continue
			}
			puts = append(puts, clientv3.OpPut(s.keys.Chunk(chunks[i].Hash), string(chunks[i].Data)))
		}
		if len(puts) > 0 {
			// If another writer put one of them meanwhile, it holds the
			// same bytes: nothing to do then but write the rest.
			if _, err := s.cli.Txn(ctx).Then(puts...).Commit(); err != nil {
				return fmt.Errorf("write %d chunks: %w", len(puts), err)
			}
		}
		chunks = chunks[n:]
	}
	return nil
}

// decodeVersion decodes a stored version and fills in its chunked sets.
func (s *Store) decodeVersion(ctx context.Context, key string, value []byte) (proto.RuleSet, error) {
	rs, err := proto.DecodeRuleSet(value)
	if err != nil {
		return proto.RuleSet{}, fmt.Errorf("decode %s: %w", key, err)
	}
	if err := s.resolveChunks(ctx, &rs); err != nil {
		return proto.RuleSet{}, fmt.Errorf("%s: %w", key, err)
	}
	return rs, nil
}

// resolveChunks reads the chunks of rs's chunked sets and puts their
// prefixes in place; a chunk missing or not matching its hash is an error.
func (s *Store) resolveChunks(ctx context.Context, rs *proto.RuleSet) error {
	refs := rs.ChunkRefs()
	if len(refs) == 0 {
		return nil
	}
	raw, err := s.GetChunks(ctx, refs)
	if err != nil {
		return err
	}
	got := make(map[string][]string, len(refs))
	for _, h := range refs {
		data, ok := raw[h]
		if !ok {
			return fmt.Errorf("chunk %s: %w", s.keys.Chunk(h), ErrNotFound)
		}
		p, err := proto.DecodeChunk(h, data)
		if err != nil {
			return err
		}
		got[h] = p
	}
	return rs.ResolveChunks(func(h string) ([]string, error) { return got[h], nil })
}

// GetChunks reads the chunks named by their hashes, txnBatch to a
// transaction, and returns each one's stored bytes by hash; a chunk etcd
// does not hold is absent from the result. The bytes are not checked:
// proto.DecodeChunk does that.
func (s *Store) GetChunks(ctx context.Context, hashes []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(hashes))
	for lo := 0; lo < len(hashes); lo += txnBatch {
		batch := hashes[lo:min(lo+txnBatch, len(hashes))]
		ops := make([]clientv3.Op, len(batch))
		for i, h := range batch {
			ops[i] = clientv3.OpGet(s.keys.Chunk(h))
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read %d chunks: %w", len(batch), err)
		}
		for i, h := range batch {
			if kvs := resp.Responses[i].GetResponseRange().Kvs; len(kvs) > 0 {
				out[h] = kvs[0].Value
			}
		}
	}
	return out, nil
}

// ChunkCache holds the prefixes of chunks read from etcd, each checked
// once against its hash and for bad prefixes: a chunk is immutable (its
// key is its content's hash), so what was read stays true. Its owner
// decides what to keep (Retain). Not safe for concurrent use.
type ChunkCache struct {
	s        *Store
	prefixes map[string][]string
	// errs says why a chunk of the last Fetch is not in prefixes: it did
	// not decode, match its hash or hold valid prefixes.
	errs map[string]error
}

// NewChunkCache returns an empty cache reading through s.
func (s *Store) NewChunkCache() *ChunkCache {
	return &ChunkCache{s: s, prefixes: map[string][]string{}, errs: map[string]error{}}
}

// ChunkFetch is what one ChunkCache.Fetch did: the chunks it read, the
// time spent reading them from etcd and decoding and checking them, and the
// chunks it refused, by hash, with the reason.
type ChunkFetch struct {
	Read          int
	Fetch, Decode time.Duration
	Bad           map[string]error
}

// Fetch reads the chunks of need that the cache lacks and keeps the ones
// that decode and check. A chunk etcd does not hold, or a bad one, is left
// out (Err says why a bad one was refused): the document that needs it is
// then refused by its user, not by the cache.
func (c *ChunkCache) Fetch(ctx context.Context, need []string) (ChunkFetch, error) {
	var f ChunkFetch
	c.errs = map[string]error{}
	var missing []string
	seen := make(map[string]bool, len(need))
	for _, h := range need {
		if seen[h] {
			continue
		}
		seen[h] = true
		if _, ok := c.prefixes[h]; !ok {
			missing = append(missing, h)
		}
	}
	if len(missing) == 0 {
		return f, nil
	}
	start := time.Now()
	raw, err := c.s.GetChunks(ctx, missing)
	f.Fetch = time.Since(start)
	if err != nil {
		return f, err
	}
	start = time.Now()
	for _, h := range missing {
		data, ok := raw[h]
		if !ok {
			continue
		}
		p, err := proto.DecodeChunk(h, data)
		if err == nil {
			err = proto.CheckChunkPrefixes(h, p)
		}
		if err != nil {
			c.errs[h] = err
			if f.Bad == nil {
				f.Bad = map[string]error{}
			}
			f.Bad[h] = err
			continue
		}
		c.prefixes[h] = p
		f.Read++
	}
	f.Decode = time.Since(start)
	return f, nil
}

// Prefixes returns a cached chunk's prefixes.
func (c *ChunkCache) Prefixes(hash string) ([]string, bool) {
	p, ok := c.prefixes[hash]
	return p, ok
}

// Err says why the last Fetch refused a chunk (nil: it did not).
func (c *ChunkCache) Err(hash string) error { return c.errs[hash] }

// Put adds a chunk's prefixes, already checked, to the cache.
func (c *ChunkCache) Put(hash string, prefixes []string) { c.prefixes[hash] = prefixes }

// Retain drops every cached chunk keep says no to.
func (c *ChunkCache) Retain(keep func(hash string) bool) {
	for h := range c.prefixes {
		if !keep(h) {
			delete(c.prefixes, h)
		}
	}
}

// Len is the number of chunks cached.
func (c *ChunkCache) Len() int { return len(c.prefixes) }
