package etcdstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// What the leader's storage collector needs of etcd (docs/architecture.md,
// "Storage retention"), and etcd's alarms.

// AuditBefore returns, oldest first, up to limit audit records written
// before t (by the time in their keys), raw, with the revision read.
func (s *Store) AuditBefore(ctx context.Context, t time.Time, limit int) ([]KeyValue, int64, error) {
	prefix := s.keys.Audit()
	end := prefix + t.UTC().Format(AuditTimeFormat)
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithRange(end),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, 0, fmt.Errorf("list %s before %s: %w", prefix, t.UTC().Format(time.RFC3339), err)
	}
	out := make([]KeyValue, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, KeyValue{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision})
	}
	return out, resp.Header.Revision, nil
}

// Delete is the write that deletes one key.
func Delete(key string) Write { return Write{clientv3.OpDelete(key)} }

// Revision returns etcd's current revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	resp, err := s.cli.Get(ctx, s.keys.Prefix, clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("etcd read: %w", err)
	}
	return resp.Header.Revision, nil
}

// Alarms lists etcd's raised alarms, such as "NOSPACE on member 8e9e05c52164694d":
// with NOSPACE raised (the database reached its quota) etcd refuses every
// write until space is freed and the alarm disarmed.
func (s *Store) Alarms(ctx context.Context) ([]string, error) {
	resp, err := s.cli.AlarmList(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcd alarms: %w", err)
	}
	var out []string
	for _, a := range resp.Alarms {
		if a.Alarm == etcdserverpb.AlarmType_NONE {
			continue
		}
		out = append(out, fmt.Sprintf("%s on member %x", a.Alarm, a.MemberID))
	}
	return out, nil
}

// AlarmsMessage says what raised alarms mean for xdpfw, or "" for none.
func AlarmsMessage(alarms []string) string {
	if len(alarms) == 0 {
		return ""
	}
	msg := "etcd raised " + strings.Join(alarms, ", ")
	if strings.Contains(msg, "NOSPACE") {
		msg += ": its database reached its quota and every write is refused (no rule set, rollout or host status is written) until space is freed (compact, defragment) and the alarm disarmed (etcdctl alarm disarm)"
	}
	return msg
}
