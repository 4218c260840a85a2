package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/proto"
)

// pageSize is how many keys one range request lists.
const pageSize = 1000

// txnOps is how many operations go in one transaction (etcd allows 128
// by default; one is kept for the leadership check).
const txnOps = 100

// snapshotReader reads Snapshots. It lists the keys under hosts/,
// rulesets/ and rollouts/ (keys only) at one revision and reads, at that
// revision, only the values whose mod revision it has not decoded yet:
// a round costs a listing plus what changed, not every document. The
// cache is only a cache: a new reader (a new leader) reads everything.
type snapshotReader struct {
	cli  *clientv3.Client
	keys proto.Keys
	log  *zap.Logger
	// cache holds decoded values by key.
	cache map[string]cached
}

type cached struct {
	modRev int64
	// value is the decoded document (*proto.HostStatus,
	// *proto.HostDesired, proto.RuleSetHead, proto.Release, a selector
	// map for a rule-set version) or nil when it does not decode.
	value any
	// raw is kept for rollout documents, which are decoded as a group.
	raw *mvccpb.KeyValue
}

func newSnapshotReader(cli *clientv3.Client, keys proto.Keys, log *zap.Logger) *snapshotReader {
	return &snapshotReader{cli: cli, keys: keys, log: log, cache: map[string]cached{}}
}

// listed is a key of interest and its mod revision.
type listed struct {
	key    string
	modRev int64
}

// list returns the keys under prefix at revision rev (0: now, and the
// revision read is returned).
func (r *snapshotReader) list(ctx context.Context, prefix string, rev int64, keep func(key string) bool) ([]listed, int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	var out []listed
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(pageSize)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := r.cli.Get(ctx, from, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("list %s at revision %d: %w", prefix, rev, err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			if k := string(kv.Key); keep(k) {
				out = append(out, listed{key: k, modRev: kv.ModRevision})
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// fetch reads, at rev, the values of the listed keys that the cache does
// not hold at their mod revision, and decodes them.
func (r *snapshotReader) fetch(ctx context.Context, rev int64, keys []listed) error {
	var stale []string
	for _, l := range keys {
		if c, ok := r.cache[l.key]; !ok || c.modRev != l.modRev {
			stale = append(stale, l.key)
		}
	}
	for start := 0; start < len(stale); start += txnOps {
		batch := stale[start:min(start+txnOps, len(stale))]
		ops := make([]clientv3.Op, len(batch))
		for i, k := range batch {
			ops[i] = clientv3.OpGet(k, clientv3.WithRev(rev))
		}
		resp, err := r.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("read %s (and %d more) at revision %d: %w", batch[0], len(batch)-1, rev, err)
		}
		for _, op := range resp.Responses {
			for _, kv := range op.GetResponseRange().Kvs {
				r.cache[string(kv.Key)] = r.decode(kv)
			}
		}
	}
	return nil
}

// decode turns a value into what the snapshot needs of it. A document
// that does not decode is logged and cached as nil, so that it is logged
// once per write.
func (r *snapshotReader) decode(kv *mvccpb.KeyValue) cached {
	key := string(kv.Key)
	c := cached{modRev: kv.ModRevision}
	var err error
	switch {
	case strings.HasPrefix(key, r.keys.Rollouts()):
		c.raw = kv
		return c
	case strings.HasPrefix(key, r.keys.Hosts()):
		_, leaf, _ := r.keys.ParseHostKey(key)
		switch leaf {
		case "status":
			var st proto.HostStatus
			if err = json.Unmarshal(kv.Value, &st); err == nil && st.Kind != proto.KindHostStatus {
				err = fmt.Errorf("kind %q, want %q", st.Kind, proto.KindHostStatus)
			}
			if err == nil {
				c.value = &st
			}
		case "desired":
			var d proto.HostDesired
			if d, err = proto.DecodeHostDesired(kv.Value); err == nil {
				c.value = &d
			}
		}
	default:
		if _, _, ok := r.keys.ParseRuleSetVersion(key); ok {
			var rs proto.RuleSet
			if rs, err = proto.DecodeRuleSet(kv.Value); err == nil {
				c.value = rs.Selector
				if c.value == nil {
					c.value = map[string]string{}
				}
			}
			break
		}
		switch {
		case strings.HasSuffix(key, "/head"):
			var h proto.RuleSetHead
			if err = json.Unmarshal(kv.Value, &h); err == nil {
				c.value = h
			}
		case strings.HasSuffix(key, "/released"):
			var rel proto.Release
			if err = json.Unmarshal(kv.Value, &rel); err == nil {
				c.value = rel
			}
		}
	}
	if err != nil {
		r.log.Warn("document does not decode: ignored", zap.String("key", key), zap.Int64("modRevision", kv.ModRevision), zap.Error(err))
	}
	return c
}

// ruleSetLeaf splits rulesets/<name>/head and rulesets/<name>/released.
func (r *snapshotReader) ruleSetLeaf(key string) (name, leaf string, ok bool) {
	rest, found := strings.CutPrefix(key, r.keys.RuleSets())
	if !found {
		return "", "", false
	}
	name, leaf, found = strings.Cut(rest, "/")
	if !found || (leaf != "head" && leaf != "released") || !validRuleSetName(name) {
		return "", "", false
	}
	return name, leaf, true
}

// read returns a snapshot of hosts, rule sets and rollouts at one
// revision.
func (r *snapshotReader) read(ctx context.Context) (*Snapshot, error) {
	hostKeys, rev, err := r.list(ctx, r.keys.Hosts(), 0, func(k string) bool {
		host, leaf, ok := r.keys.ParseHostKey(k)
		return ok && (leaf == "status" || leaf == "desired") && proto.ValidateHostName(host) == nil
	})
	if err != nil {
		return nil, err
	}
	// Rule-set versions are listed (keys only) but read only when a head
	// names them.
	var setKeys []listed
	versionRevs := map[string]int64{}
	setList, _, err := r.list(ctx, r.keys.RuleSets(), rev, func(string) bool { return true })
	if err != nil {
		return nil, err
	}
	for _, l := range setList {
		if _, _, ok := r.keys.ParseRuleSetVersion(l.key); ok {
			versionRevs[l.key] = l.modRev
		} else if _, _, ok := r.ruleSetLeaf(l.key); ok {
			setKeys = append(setKeys, l)
		}
	}
	rolloutKeys, _, err := r.list(ctx, r.keys.Rollouts(), rev, func(k string) bool {
		_, _, ok := parseRolloutKey(r.keys, k)
		return ok
	})
	if err != nil {
		return nil, err
	}

	all := append(append(append([]listed(nil), hostKeys...), setKeys...), rolloutKeys...)
	if err := r.fetch(ctx, rev, all); err != nil {
		return nil, err
	}

	snap := &Snapshot{Revision: rev, Hosts: map[string]HostView{}, RuleSets: map[string]RuleSetView{}}
	for _, l := range hostKeys {
		host, leaf, _ := r.keys.ParseHostKey(l.key)
		hv := snap.Hosts[host]
		switch v := r.cache[l.key].value.(type) {
		case *proto.HostStatus:
			hv.Status = v
		case *proto.HostDesired:
			hv.Desired = v
		}
		if leaf == "desired" {
			hv.DesiredRevision = l.modRev
		}
		snap.Hosts[host] = hv
	}

	var heads []listed
	for _, l := range setKeys {
		name, _, _ := r.ruleSetLeaf(l.key)
		rs := snap.RuleSets[name]
		switch v := r.cache[l.key].value.(type) {
		case proto.RuleSetHead:
			rs.Head = v.Version
			vk := r.keys.RuleSetVersion(name, v.Version)
			if modRev, ok := versionRevs[vk]; ok {
				heads = append(heads, listed{key: vk, modRev: modRev})
			}
		case proto.Release:
			rs.Released = v.Version
		}
		snap.RuleSets[name] = rs
	}
	if err := r.fetch(ctx, rev, heads); err != nil {
		return nil, err
	}
	for name, rs := range snap.RuleSets {
		if rs.Head == 0 {
			continue
		}
		sel, ok := r.cache[r.keys.RuleSetVersion(name, rs.Head)].value.(map[string]string)
		if !ok {
			// The head names a version that is missing or does not
			// decode: the rule set is treated as having no head.
			rs.Head = 0
		}
		rs.Selector = sel
		snap.RuleSets[name] = rs
	}

	var kvs []*mvccpb.KeyValue
	for _, l := range rolloutKeys {
		if c := r.cache[l.key]; c.raw != nil {
			kvs = append(kvs, c.raw)
		}
	}
	ids, byID := groupRollouts(r.keys, kvs)
	for _, id := range ids {
		v, _, err := decodeRollout(r.keys, id, byID[id])
		if err != nil {
			r.log.Warn("rollout does not decode: ignored", zap.String("rollout", id), zap.Error(err))
			continue
		}
		snap.Rollouts = append(snap.Rollouts, v)
	}

	// Forget what is gone.
	live := make(map[string]bool, len(all)+len(heads))
	for _, l := range all {
		live[l.key] = true
	}
	for _, l := range heads {
		live[l.key] = true
	}
	for k := range r.cache {
		if !live[k] {
			delete(r.cache, k)
		}
	}
	return snap, nil
}
