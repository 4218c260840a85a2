package store

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/proto"
)

// chunkTxnBytes bounds the chunks written in one transaction, so that
// every request stays under 1 MiB (DESIGN.md section 2).
const chunkTxnBytes = 768 << 10

// encodeVersion validates a rule set and returns the JSON stored as its
// version: sets over proto.ChunkThreshold become chunk references, and
// their chunks are written first (each chunk key once: they are immutable
// and named by their hash, so a chunk already there is the same chunk).
// A chunk nobody references (a write that lost its race) is harmless.
func (s *Store) encodeVersion(ctx context.Context, rs proto.RuleSet) ([]byte, error) {
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
	if err := s.putChunks(ctx, chunks); err != nil {
		return nil, fmt.Errorf("rule set %s: %w", rs.Name, err)
	}
	return doc, nil
}

// putChunks writes the chunks etcd lacks, in transactions under
// chunkTxnBytes.
func (s *Store) putChunks(ctx context.Context, chunks []proto.Chunk) error {
	for len(chunks) > 0 {
		var puts []clientv3.Op
		size := 0
		n := 0
		for n < len(chunks) && n < txnBatch && (n == 0 || size+len(chunks[n].Data) <= chunkTxnBytes) {
			size += len(chunks[n].Data)
			n++
		}
		// Which are missing? One read of the batch's keys.
		gets := make([]clientv3.Op, n)
		for i := range n {
			gets[i] = clientv3.OpGet(s.keys.Chunk(chunks[i].Hash), clientv3.WithKeysOnly())
		}
		resp, err := s.cli.Txn(ctx).Then(gets...).Commit()
		if err != nil {
			return fmt.Errorf("read chunks: %w", err)
		}
		for i := range n {
			if len(resp.Responses[i].GetResponseRange().Kvs) > 0 {
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

// resolveChunks reads the chunks of rs's chunked sets (txnBatch a read)
// and puts their prefixes in place.
func (s *Store) resolveChunks(ctx context.Context, rs *proto.RuleSet) error {
	refs := rs.ChunkRefs()
	if len(refs) == 0 {
		return nil
	}
	got := make(map[string][]string, len(refs))
	for lo := 0; lo < len(refs); lo += txnBatch {
		hi := min(lo+txnBatch, len(refs))
		ops := make([]clientv3.Op, 0, hi-lo)
		for _, h := range refs[lo:hi] {
			ops = append(ops, clientv3.OpGet(s.keys.Chunk(h)))
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("read chunks: %w", err)
		}
		for i, h := range refs[lo:hi] {
			kvs := resp.Responses[i].GetResponseRange().Kvs
			if len(kvs) == 0 {
				return fmt.Errorf("chunk %s: %w", s.keys.Chunk(h), ErrNotFound)
			}
			p, err := proto.DecodeChunk(h, kvs[0].Value)
			if err != nil {
				return err
			}
			got[h] = p
		}
	}
	return rs.ResolveChunks(func(h string) ([]string, error) { return got[h], nil })
}
