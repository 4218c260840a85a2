package etcdstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/proto"
)

func enrollment(host string, labels map[string]string) proto.HostEnrollment {
	return proto.HostEnrollment{APIVersion: proto.APIVersion, Kind: proto.KindHostEnrollment, Host: host,
		Labels: labels, User: proto.HostEtcdUser(host), EnrolledAt: time.Now().UTC(), By: "test"}
}

func openAs(t *testing.T, sec *etcdtest.Secure, certFile, keyFile string) *Store {
	t.Helper()
	st, err := Open(ClientConfig{Endpoints: sec.Endpoints(), CertFile: certFile, KeyFile: keyFile, CAFile: sec.Files.CAFile}, proto.NewKeys(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// An enrolled host's identity reads and writes exactly its own keys: the
// writes that would subvert another host, the rules or the audit trail are
// refused by etcd, and a revoked host is locked out.
func TestEnrolledHostsAreIsolated(t *testing.T) {
	sec := etcdtest.StartSecure(t)
	ctx := testCtx(t)
	root := openAs(t, sec, sec.Files.RootCertFile, sec.Files.RootKeyFile)
	keys := root.Keys()
	if on, err := root.AuthEnabled(ctx); err != nil || !on {
		t.Fatalf("auth enabled %v, %v: a secure member must have etcd's authentication on", on, err)
	}
	for _, h := range []string{"web-1", "web-2"} {
		if _, err := root.EnrollHost(ctx, enrollment(h, map[string]string{"role": "web"}), proto.AuditRecord{Who: "test", Action: "enroll " + h}); err != nil {
			t.Fatal(err)
		}
		if _, err := root.SetDesired(ctx, h, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := root.CommitIf(ctx, nil, []Write{Put(keys.RuleSetVersion("edge", 1), []byte("{}")), Put(keys.Chunk("abc"), []byte("x"))}); err != nil {
		t.Fatal(err)
	}

	cert, key := sec.Issue(t, proto.HostEtcdUser("web-1"))
	a := openAs(t, sec, cert, key)

	// What an agent does works.
	if kv, _, err := a.GetAt(ctx, keys.HostDesired("web-1"), 0); err != nil || kv == nil {
		t.Fatalf("web-1 reads its desired state: %v, %v", kv, err)
	}
	if kv, _, err := a.GetAt(ctx, keys.RuleSetVersion("edge", 1), 0); err != nil || kv == nil {
		t.Fatalf("web-1 reads a rule-set version: %v, %v", kv, err)
	}
	if kv, _, err := a.GetAt(ctx, keys.Chunk("abc"), 0); err != nil || kv == nil {
		t.Fatalf("web-1 reads a chunk: %v, %v", kv, err)
	}
	if err := a.Ping(ctx); err != nil {
		t.Fatalf("web-1's health read: %v", err)
	}
	lease, err := a.GrantLease(ctx, 10*time.Second)
	if err != nil {
		t.Fatalf("web-1 grants a lease: %v", err)
	}
	for _, k := range []string{keys.HostStatus("web-1"), keys.HostTelemetry("web-1")} {
		if err := a.PutLeased(ctx, k, []byte("{}"), lease.ID); err != nil {
			t.Fatalf("web-1 writes %s: %v", k, err)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	iw := a.WatchHostInputs(wctx, "web-1", 1)
	iw.Follow("edge", 1)
	batches := iw.Batches()
	select {
	case b := <-batches:
		if b.Err != nil {
			t.Fatalf("web-1 watches its inputs: %v", b.Err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("web-1's watch of its inputs sent nothing")
	}
	cancel()

	// What would subvert the fleet is refused.
	for _, k := range []string{
		keys.HostDesired("web-2"), keys.HostStatus("web-2"), keys.HostTelemetry("web-2"),
		keys.HostDesired("web-1"), keys.HostEnrollment("web-1"), keys.HostEnrollment("web-2"),
		keys.RuleSetVersion("edge", 2), keys.RuleSetHead("edge"), keys.RuleSetReleased("edge"), keys.Chunk("abc"),
		keys.Audit() + "forged", keys.RolloutState("r1"), keys.Prefix + "anything",
	} {
		_, _, err := a.CommitIf(ctx, nil, []Write{Put(k, []byte("{}"))})
		if !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("web-1 writes %s: %v, want permission denied", k, err)
		}
	}
	if _, _, err := a.CommitIf(ctx, nil, []Write{DeletePrefix(keys.Audit())}); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("web-1 deletes the audit trail: %v, want permission denied", err)
	}
	for _, k := range []string{keys.HostStatus("web-2"), keys.HostDesired("web-2"), keys.HostEnrollment("web-1"), keys.Audit()} {
		if _, _, err := a.GetAt(ctx, k, 0); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("web-1 reads %s: %v, want permission denied", k, err)
		}
	}
	// A lease of web-1's cannot carry a key outside its own.
	if err := a.PutLeased(ctx, keys.HostStatus("web-2"), []byte("{}"), lease.ID); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("web-1 writes web-2's status under its lease: %v, want permission denied", err)
	}

	// The enrollment holds the labels; revoking it locks the host out.
	e, err := root.GetEnrollment(ctx, "web-1")
	if err != nil || e == nil || e.Labels["role"] != "web" {
		t.Fatalf("enrollment of web-1: %+v, %v", e, err)
	}
	if _, err := root.RevokeHost(ctx, "web-1", proto.AuditRecord{Who: "test", Action: "revoke web-1"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.GetAt(ctx, keys.HostDesired("web-1"), 0); err == nil {
		t.Error("a revoked host still reads its desired state")
	}
	if err := a.PutLeased(ctx, keys.HostStatus("web-1"), []byte("{}"), lease.ID); err == nil {
		t.Error("a revoked host still writes its status")
	}
	if _, err := root.RevokeHost(ctx, "web-1", proto.AuditRecord{Who: "test"}); !errors.Is(err, ErrNotEnrolled) {
		t.Errorf("revoking a revoked host: %v, want ErrNotEnrolled", err)
	}
	byHost, bad, err := root.Enrollments(ctx, 0)
	if err != nil || len(bad) != 0 || len(byHost) != 1 || byHost["web-2"].User != proto.HostEtcdUser("web-2") {
		t.Fatalf("enrollments after revoking web-1: %v, bad %v, %v", byHost, bad, err)
	}
}

// Only clients with a certificate of the fleet's CA get in at all.
func TestSecureMemberRefusesStrangers(t *testing.T) {
	sec := etcdtest.StartSecure(t)
	ctx, cancel := context.WithTimeout(testCtx(t), 3*time.Second)
	defer cancel()
	// TLS but no client certificate: the handshake fails.
	noCert := openAs(t, sec, "", "")
	if err := noCert.Ping(ctx); err == nil {
		t.Error("a client with no certificate reads")
	}
	// A certificate of another CA.
	other := etcdtest.StartSecure(t)
	cert, key := other.Issue(t, "root")
	stranger := openAs(t, sec, cert, key)
	if err := stranger.Ping(ctx); err == nil {
		t.Error("a client with another CA's certificate named root reads")
	}
	// A certificate of the CA whose user etcd does not know.
	cert, key = sec.Issue(t, proto.HostEtcdUser("never-enrolled"))
	unknown := openAs(t, sec, cert, key)
	if err := unknown.Ping(ctx); err == nil {
		t.Error("a certificate of no etcd user reads")
	}
}
