package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/proto"
)

// Reads for the control plane's API: rule-set summaries, hosts with what
// they should and do enforce, and every host's telemetry.

// ListRuleSets returns a summary of every rule set with a head, by name.
func (s *Store) ListRuleSets(ctx context.Context) ([]proto.RuleSetSummary, error) {
	prefix := s.keys.RuleSets()
	var names []string
	err := s.rangeKeys(ctx, prefix, func(key string) {
		if name, leaf, ok := cutName(key, prefix); ok && leaf == "head" {
			names = append(names, name)
		}
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	out := make([]proto.RuleSetSummary, 0, len(names))
	// Two reads per rule set (head and release) per transaction, then
	// the head versions, for their rule counts.
	const per = txnBatch / 2
	for start := 0; start < len(names); start += per {
		batch := names[start:min(start+per, len(names))]
		ops := make([]clientv3.Op, 0, 2*len(batch))
		for _, name := range batch {
			ops = append(ops, clientv3.OpGet(s.keys.RuleSetHead(name)), clientv3.OpGet(s.keys.RuleSetReleased(name)))
		}
		txn, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read %s...: %w", s.keys.RuleSetHead(batch[0]), err)
		}
		sums := make([]proto.RuleSetSummary, 0, len(batch))
		for i, name := range batch {
			headKey := s.keys.RuleSetHead(name)
			v, _, err := decodeHead(headKey, txn.Responses[2*i].GetResponseRange().Kvs)
			if err != nil {
				return nil, err
			}
			if v == 0 {
				continue // deleted since it was listed
			}
			sum := proto.RuleSetSummary{Name: name, Version: v}
			if kvs := txn.Responses[2*i+1].GetResponseRange().Kvs; len(kvs) > 0 {
				var rel proto.Release
				if err := json.Unmarshal(kvs[0].Value, &rel); err != nil {
					return nil, fmt.Errorf("decode %s: %w", kvs[0].Key, err)
				}
				sum.Released = rel.Version
			}
			sums = append(sums, sum)
		}
		vops := make([]clientv3.Op, len(sums))
		for i, sum := range sums {
			vops[i] = clientv3.OpGet(s.keys.RuleSetVersion(sum.Name, sum.Version))
		}
		vtxn, err := s.cli.Txn(ctx).Then(vops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read %s...: %w", s.keys.RuleSetVersions(batch[0]), err)
		}
		for i, r := range vtxn.Responses {
			kvs := r.GetResponseRange().Kvs
			if len(kvs) == 0 {
				continue // deleted since its head was read
			}
			// Only the rule count is needed: no full validation.
			var rs struct {
				Rules []json.RawMessage `json:"rules"`
			}
			if err := json.Unmarshal(kvs[0].Value, &rs); err != nil {
				return nil, fmt.Errorf("decode %s: %w", kvs[0].Key, err)
			}
			sums[i].Rules = len(rs.Rules)
			out = append(out, sums[i])
		}
	}
	return out, nil
}

// cutName splits "<prefix><name>/<leaf...>".
func cutName(key, prefix string) (name, leaf string, ok bool) {
	if len(key) <= len(prefix) || key[:len(prefix)] != prefix {
		return "", "", false
	}
	rest := key[len(prefix):]
	for i := 0; i < len(rest); i++ {
		if rest[i] == '/' {
			return rest[:i], rest[i+1:], i > 0
		}
	}
	return "", "", false
}

// GetRelease returns the version of a rule set that hosts get outside
// rollouts; ok is false when none was released yet.
func (s *Store) GetRelease(ctx context.Context, name string) (rel proto.Release, ok bool, err error) {
	if err := s.checkRuleSetName(name); err != nil {
		return proto.Release{}, false, err
	}
	key := s.keys.RuleSetReleased(name)
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return proto.Release{}, false, fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return proto.Release{}, false, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &rel); err != nil {
		return proto.Release{}, false, fmt.Errorf("decode %s: %w", key, err)
	}
	return rel, true, nil
}

// HostInfos returns every host with a desired state or a status, by
// name (all hosts when hosts is nil; else those of hosts that have
// either). A host with a desired state and no status is Lost: its agent
// never reported or its lease expired. State and Reason say what each host
// is doing (a host whose data plane did not load is failed, with why). A desired state that does not
// validate is read leniently, as the agent's refusal in its status
// explains it.
func (s *Store) HostInfos(ctx context.Context, hosts []string) ([]proto.HostInfo, error) {
	if hosts == nil {
		var err error
		hosts, err = s.ListHosts(ctx)
		if err != nil {
			return nil, err
		}
	}
	out := make([]proto.HostInfo, 0, len(hosts))
	// Three reads per host (desired, status, enrollment) per transaction.
	const per = txnBatch / 3
	for start := 0; start < len(hosts); start += per {
		batch := hosts[start:min(start+per, len(hosts))]
		ops := make([]clientv3.Op, 0, 3*len(batch))
		for _, h := range batch {
			if err := proto.ValidateHostName(h); err != nil {
				return nil, err
			}
			ops = append(ops, clientv3.OpGet(s.keys.HostDesired(h)), clientv3.OpGet(s.keys.HostStatus(h)), clientv3.OpGet(s.keys.HostEnrollment(h)))
		}
		txn, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read %s...: %w", s.keys.Host(batch[0]), err)
		}
		for i, h := range batch {
			desired := txn.Responses[3*i].GetResponseRange().Kvs
			status := txn.Responses[3*i+1].GetResponseRange().Kvs
			enrollment := txn.Responses[3*i+2].GetResponseRange().Kvs
			if len(desired) == 0 && len(status) == 0 && len(enrollment) == 0 {
				continue // telemetry only, or gone since it was listed
			}
			info := proto.HostInfo{Host: h, Desired: []proto.RuleSetRef{}}
			if len(enrollment) > 0 {
				if e, err := proto.DecodeHostEnrollment(enrollment[0].Value); err == nil && e.Host == h {
					info.Enrollment = &e
				}
			}
			if len(desired) > 0 {
				var d proto.HostDesired
				if err := json.Unmarshal(desired[0].Value, &d); err == nil && d.RuleSets != nil {
					info.Desired = d.RuleSets
				}
			}
			if len(status) > 0 {
				st, err := decodeStatus(string(status[0].Key), status[0].Value)
				if err != nil {
					// Reported in place: one bad record does not hide
					// the fleet.
					info.State, info.Reason = proto.HostStateBadStatus, err.Error()
					out = append(out, info)
					continue
				}
				info.Status = &st
			} else if len(desired) > 0 {
				info.Lost = true // an enrolled host that never reported is not lost
			}
			info.State, info.Reason = proto.HostStateOf(info)
			out = append(out, info)
		}
	}
	return out, nil
}

// Telemetry returns the telemetry document of every host that has one
// (the one host when host is not empty), read at one revision, by host.
// A document that does not decode is skipped and counted in bad.
func (s *Store) Telemetry(ctx context.Context, host string) (docs []proto.HostTelemetry, bad int, err error) {
	prefix := s.keys.Hosts()
	if host != "" {
		if err := proto.ValidateHostName(host); err != nil {
			return nil, 0, err
		}
		prefix = s.keys.Host(host)
	}
	first, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", prefix, err)
	}
	rev := first.Header.Revision
	// Status and telemetry documents are a few KB each: read in pages.
	err = s.rangeValuesAt(ctx, prefix, rev, func(key string, value []byte) {
		h, leaf, ok := s.keys.ParseHostKey(key)
		if !ok || leaf != "telemetry" {
			return
		}
		t, err := decodeTelemetry(key, value)
		if err != nil {
			bad++
			return
		}
		t.Host = h
		docs = append(docs, t)
	})
	if err != nil {
		return nil, 0, err
	}
	return docs, bad, nil
}

// versionPage is how many versions a history listing reads per request:
// a version can be close to MaxDocumentBytes.
const versionPage = 32

// VersionInfos returns the history of a rule set, oldest first: each
// version with the revision that wrote it, its rule count, and who wrote
// it and when, from the audit record written in the same transaction
// (none for versions written without one, as by xdpfwctl etcd put).
func (s *Store) VersionInfos(ctx context.Context, name string) ([]proto.RuleSetVersionInfo, error) {
	if err := s.checkRuleSetName(name); err != nil {
		return nil, err
	}
	prefix := s.keys.RuleSetVersions(name)
	end := clientv3.GetPrefixRangeEnd(prefix)
	var out []proto.RuleSetVersionInfo
	from := prefix
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(versionPage)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, from, opts...)
		if err != nil {
			return nil, fmt.Errorf("rule set %s: list %s: %w", name, prefix, err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			n, v, ok := s.keys.ParseRuleSetVersion(string(kv.Key))
			if !ok || n != name {
				continue
			}
			var rs struct {
				Rules []json.RawMessage `json:"rules"`
			}
			if err := json.Unmarshal(kv.Value, &rs); err != nil {
				return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
			}
			out = append(out, proto.RuleSetVersionInfo{Version: v, Revision: kv.ModRevision, Rules: len(rs.Rules)})
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("rule set %s: %w (nothing under %s)", name, ErrNotFound, prefix)
	}
	// Keys sort as strings ("10" before "9").
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })

	// The audit records written between the first and the last version:
	// one request, filtered by etcd.
	minRev, maxRev := out[0].Revision, out[0].Revision
	for _, vi := range out {
		minRev, maxRev = min(minRev, vi.Revision), max(maxRev, vi.Revision)
	}
	auditPrefix := s.keys.Audit()
	resp, err := s.cli.Get(ctx, auditPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev),
		clientv3.WithMinModRev(minRev), clientv3.WithMaxModRev(maxRev))
	if err != nil {
		return nil, fmt.Errorf("rule set %s: list %s: %w", name, auditPrefix, err)
	}
	byRev := make(map[int64]proto.AuditRecord, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var rec proto.AuditRecord
		if json.Unmarshal(kv.Value, &rec) == nil {
			byRev[kv.ModRevision] = rec
		}
	}
	for i := range out {
		if rec, ok := byRev[out[i].Revision]; ok {
			out[i].Author, out[i].At = rec.Who, rec.At
		}
	}
	return out, nil
}
