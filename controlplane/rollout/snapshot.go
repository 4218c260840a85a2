package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// txnOps is how many operations go in one transaction (etcd allows 128
// by default; one is kept for the leadership check).
const txnOps = 100

// snapshotReader reads Snapshots. It lists the keys under hosts/,
// rulesets/ and rollouts/ (keys only) at one revision and reads, at that
// revision, only the values whose mod revision it has not decoded yet:
// a round costs a listing plus what changed, not every document. The
// cache is only a cache: a new reader (a new leader) reads everything.
type snapshotReader struct {
	st   *etcdstore.Store
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
	raw *etcdstore.KeyValue
}

func newSnapshotReader(st *etcdstore.Store, log *zap.Logger) *snapshotReader {
	return &snapshotReader{st: st, keys: st.Keys(), log: log, cache: map[string]cached{}}
}

// fetch reads, at rev, the values of the listed keys that the cache does
// not hold at their mod revision, and decodes them.
func (r *snapshotReader) fetch(ctx context.Context, rev int64, keys []etcdstore.KeyRevision) error {
	var stale []string
	for _, l := range keys {
		if c, ok := r.cache[l.Key]; !ok || c.modRev != l.ModRevision {
			stale = append(stale, l.Key)
		}
	}
	return r.st.GetManyAt(ctx, rev, stale, func(kv etcdstore.KeyValue) { r.cache[kv.Key] = r.decode(kv) })
}

// decode turns a value into what the snapshot needs of it. A document
// that does not decode is logged and cached as nil, so that it is logged
// once per write.
func (r *snapshotReader) decode(kv etcdstore.KeyValue) cached {
	key := kv.Key
	c := cached{modRev: kv.ModRevision}
	var err error
	switch {
	case strings.HasPrefix(key, r.keys.Rollouts()):
		c.raw = &kv
		if _, leaf, _ := parseRolloutKey(r.keys, key); leaf == leafSpec {
			c.value = parseSpec(&kv) // immutable: parsed once
		}
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
		case "enrollment":
			var e proto.HostEnrollment
			if e, err = proto.DecodeHostEnrollment(kv.Value); err == nil {
				c.value = &e
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
	hostKeys, rev, err := r.st.ListKeys(ctx, r.keys.Hosts(), 0, func(k string) bool {
		host, leaf, ok := r.keys.ParseHostKey(k)
		return ok && (leaf == "status" || leaf == "desired" || leaf == "enrollment") && proto.ValidateHostName(host) == nil
	})
	if err != nil {
		return nil, err
	}
	// Rule-set versions are listed (keys only) but read only when a head
	// names them.
	var setKeys []etcdstore.KeyRevision
	versionRevs := map[string]int64{}
	setList, _, err := r.st.ListKeys(ctx, r.keys.RuleSets(), rev, nil)
	if err != nil {
		return nil, err
	}
	for _, l := range setList {
		if _, _, ok := r.keys.ParseRuleSetVersion(l.Key); ok {
			versionRevs[l.Key] = l.ModRevision
		} else if _, _, ok := r.ruleSetLeaf(l.Key); ok {
			setKeys = append(setKeys, l)
		}
	}
	rolloutKeys, _, err := r.st.ListKeys(ctx, r.keys.Rollouts(), rev, func(k string) bool {
		_, _, ok := parseRolloutKey(r.keys, k)
		return ok
	})
	if err != nil {
		return nil, err
	}

	all := append(append(append([]etcdstore.KeyRevision(nil), hostKeys...), setKeys...), rolloutKeys...)
	if err := r.fetch(ctx, rev, all); err != nil {
		return nil, err
	}

	snap := &Snapshot{Revision: rev, Hosts: map[string]HostView{}, RuleSets: map[string]RuleSetView{}}
	for _, l := range hostKeys {
		host, leaf, _ := r.keys.ParseHostKey(l.Key)
		hv := snap.Hosts[host]
		switch v := r.cache[l.Key].value.(type) {
		case *proto.HostStatus:
			hv.Status = v
		case *proto.HostDesired:
			hv.Desired = v
		case *proto.HostEnrollment:
			if v.Host == host {
				hv.Enrollment = v
			}
		}
		if leaf == "desired" {
			hv.DesiredRevision = l.ModRevision
		}
		snap.Hosts[host] = hv
	}

	var heads []etcdstore.KeyRevision
	for _, l := range setKeys {
		name, _, _ := r.ruleSetLeaf(l.Key)
		rs := snap.RuleSets[name]
		switch v := r.cache[l.Key].value.(type) {
		case proto.RuleSetHead:
			rs.Head = v.Version
			vk := r.keys.RuleSetVersion(name, v.Version)
			if modRev, ok := versionRevs[vk]; ok {
				heads = append(heads, etcdstore.KeyRevision{Key: vk, ModRevision: modRev})
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

	var kvs []etcdstore.KeyValue
	for _, l := range rolloutKeys {
		if c := r.cache[l.Key]; c.raw != nil {
			kvs = append(kvs, *c.raw)
		}
	}
	ids, byID := groupRollouts(r.keys, kvs)
	for _, id := range ids {
		if ps, ok := r.cache[r.keys.RolloutSpec(id)].value.(*parsedSpec); ok {
			byID[id].parsed = ps
		}
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
		live[l.Key] = true
	}
	for _, l := range heads {
		live[l.Key] = true
	}
	for k := range r.cache {
		if !live[k] {
			delete(r.cache, k)
		}
	}
	return snap, nil
}
