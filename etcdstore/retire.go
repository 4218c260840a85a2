package etcdstore

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/proto"
)

// RetireRuleSet removes a rule set's release, with its audit record, in
// one transaction: the rollout controller then takes the rule set off
// every host that has it outside a rollout, after which it can be deleted.
// It reports whether there was a release to remove.
func (s *Store) RetireRuleSet(ctx context.Context, name string, rec proto.AuditRecord) (retired bool, revision int64, err error) {
	if err := s.checkRuleSetName(name); err != nil {
		return false, 0, err
	}
	key := s.keys.RuleSetReleased(name)
	auditKey, auditPut, err := s.auditOp(rec)
	if err != nil {
		return false, 0, fmt.Errorf("rule set %s: %w", name, err)
	}
	txn, err := s.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(key), ">", 0),
		clientv3.Compare(clientv3.CreateRevision(auditKey), "=", 0),
	).Then(clientv3.OpDelete(key), auditPut).Commit()
	if err != nil {
		return false, 0, fmt.Errorf("rule set %s: retire (delete %s): %w", name, key, err)
	}
	return txn.Succeeded, txn.Header.Revision, nil
}
