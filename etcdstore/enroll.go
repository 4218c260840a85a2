package etcdstore

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/proto"
)

// etcd's authentication and the identities of enrolled hosts
// (docs/architecture.md, "Trust model"). With client-certificate
// authentication, etcd takes a client certificate's common name as the
// user; these users have no password.

// ErrAuthDisabled is returned by enrollment while etcd's authentication
// is off: a host's role would restrict nothing.
var ErrAuthDisabled = errors.New("etcd's authentication is off: a host's etcd role would restrict nothing (start the control plane's etcd without --insecure-etcd, or enable auth on your cluster)")

// ErrNotEnrolled is returned when revoking a host that is not enrolled.
var ErrNotEnrolled = errors.New("host is not enrolled")

// AuthEnabled reports whether etcd's authentication is on.
func (s *Store) AuthEnabled(ctx context.Context) (bool, error) {
	st, err := s.cli.AuthStatus(ctx)
	if err != nil {
		return false, fmt.Errorf("etcd auth status: %w", err)
	}
	return st.Enabled, nil
}

// hostPermission is one permission of an enrolled host's role.
type hostPermission struct {
	key    string
	prefix bool
	perm   clientv3.PermissionType
}

// hostPermissions are exactly what an agent needs: read the rule sets,
// the chunks, its own desired state and the prefix key (the agent's and
// the API's health read); read and write its own status and telemetry
// (under leases, which any authenticated user may grant).
func (s *Store) hostPermissions(host string) []hostPermission {
	return []hostPermission{
		{key: s.keys.RuleSets(), prefix: true, perm: clientv3.PermissionType(clientv3.PermRead)},
		{key: s.keys.Chunks(), prefix: true, perm: clientv3.PermissionType(clientv3.PermRead)},
		{key: s.keys.HostDesired(host), perm: clientv3.PermissionType(clientv3.PermRead)},
		{key: s.keys.Prefix, perm: clientv3.PermissionType(clientv3.PermRead)},
		{key: s.keys.HostStatus(host), perm: clientv3.PermissionType(clientv3.PermReadWrite)},
		{key: s.keys.HostTelemetry(host), perm: clientv3.PermissionType(clientv3.PermReadWrite)},
	}
}

// EnrollHost gives a host its etcd identity: a user and a role of the
// same name (proto.HostEtcdUser) allowing exactly hostPermissions, and
// the enrollment document, written with its audit record. Enrolling an
// enrolled host again replaces its labels and keeps its user. The
// certificate whose common name is the user is the caller's to issue.
func (s *Store) EnrollHost(ctx context.Context, e proto.HostEnrollment, audit proto.AuditRecord) (int64, error) {
	if err := e.Validate(); err != nil {
		return 0, fmt.Errorf("enrollment of %s: %w", e.Host, err)
	}
	on, err := s.AuthEnabled(ctx)
	if err != nil {
		return 0, err
	}
	if !on {
		return 0, ErrAuthDisabled
	}
	name := e.User
	if _, err := s.cli.RoleAdd(ctx, name); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return 0, fmt.Errorf("etcd: add role %s: %w", name, err)
	}
	for _, p := range s.hostPermissions(e.Host) {
		end := ""
		if p.prefix {
			end = clientv3.GetPrefixRangeEnd(p.key)
		}
		if _, err := s.cli.RoleGrantPermission(ctx, name, p.key, end, p.perm); err != nil {
			return 0, fmt.Errorf("etcd: grant role %s access to %s: %w", name, p.key, err)
		}
	}
	if _, err := s.cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return 0, fmt.Errorf("etcd: add user %s: %w", name, err)
	}
	if _, err := s.cli.UserGrantRole(ctx, name, name); err != nil {
		return 0, fmt.Errorf("etcd: grant role %s to user %s: %w", name, name, err)
	}
	doc, err := PutJSON(s.keys.HostEnrollment(e.Host), e)
	if err != nil {
		return 0, err
	}
	aw, err := s.AuditWrite(audit)
	if err != nil {
		return 0, err
	}
	_, rev, err := s.CommitIf(ctx, nil, []Write{doc, aw})
	if err != nil {
		return 0, fmt.Errorf("write enrollment of %s: %w", e.Host, err)
	}
	return rev, nil
}

// RevokeHost takes a host's etcd identity away: its user and role are
// deleted, so every request made with its certificate is refused from
// then on, and its enrollment document is deleted with the audit record.
// Its status and telemetry go when their lease does.
func (s *Store) RevokeHost(ctx context.Context, host string, audit proto.AuditRecord) (int64, error) {
	name := proto.HostEtcdUser(host)
	kv, _, err := s.GetAt(ctx, s.keys.HostEnrollment(host), 0)
	if err != nil {
		return 0, fmt.Errorf("read enrollment of %s: %w", host, err)
	}
	userGone := false
	if _, err := s.cli.UserDelete(ctx, name); err != nil {
		if !errors.Is(err, rpctypes.ErrUserNotFound) {
			return 0, fmt.Errorf("etcd: delete user %s: %w", name, err)
		}
		userGone = true
	}
	if _, err := s.cli.RoleDelete(ctx, name); err != nil && !errors.Is(err, rpctypes.ErrRoleNotFound) {
		return 0, fmt.Errorf("etcd: delete role %s: %w", name, err)
	}
	if kv == nil && userGone {
		return 0, fmt.Errorf("%s: %w", host, ErrNotEnrolled)
	}
	aw, err := s.AuditWrite(audit)
	if err != nil {
		return 0, err
	}
	_, rev, err := s.CommitIf(ctx, nil, []Write{{clientv3.OpDelete(s.keys.HostEnrollment(host))}, aw})
	if err != nil {
		return 0, fmt.Errorf("delete enrollment of %s: %w", host, err)
	}
	return rev, nil
}

// GetEnrollment reads a host's enrollment (nil when it is not enrolled).
func (s *Store) GetEnrollment(ctx context.Context, host string) (*proto.HostEnrollment, error) {
	kv, _, err := s.GetAt(ctx, s.keys.HostEnrollment(host), 0)
	if err != nil || kv == nil {
		return nil, err
	}
	e, err := proto.DecodeHostEnrollment(kv.Value)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kv.Key, err)
	}
	return &e, nil
}

// Enrollments reads every host's enrollment at revision rev (0: the
// newest), by host; one that does not decode is reported in bad and left
// out.
func (s *Store) Enrollments(ctx context.Context, rev int64) (byHost map[string]proto.HostEnrollment, bad map[string]error, err error) {
	listed, rev, err := s.ListKeys(ctx, s.keys.Hosts(), rev, func(k string) bool {
		_, leaf, ok := s.keys.ParseHostKey(k)
		return ok && leaf == "enrollment"
	})
	if err != nil {
		return nil, nil, err
	}
	keys := make([]string, len(listed))
	for i, l := range listed {
		keys[i] = l.Key
	}
	byHost, bad = map[string]proto.HostEnrollment{}, map[string]error{}
	err = s.GetManyAt(ctx, rev, keys, func(kv KeyValue) {
		host, _, _ := s.keys.ParseHostKey(kv.Key)
		e, err := proto.DecodeHostEnrollment(kv.Value)
		if err == nil && e.Host != host {
			err = fmt.Errorf("names host %q", e.Host)
		}
		if err != nil {
			bad[host] = err
			return
		}
		byHost[host] = e
	})
	if err != nil {
		return nil, nil, err
	}
	return byHost, bad, nil
}
