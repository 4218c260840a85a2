package etcdstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/proto"
)

func auditAs(who, action string) AuditFunc {
	return func(v int64) proto.AuditRecord {
		return proto.AuditRecord{Who: who, Role: proto.RoleOperator, Action: action, Target: "ruleset web", Result: fmt.Sprintf("version %d", v)}
	}
}

// revisionOf returns the etcd revision the cluster is at.
func revisionOf(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(testCtx(t), "/", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func TestPutRuleSetAudited(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	res, err := s.PutRuleSetAudited(ctx, ruleSet("web", 1), 0, auditAs("alice", "PUT /v1/rulesets/web"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 1 || res.PreviousVersion != 0 || res.Previous != nil {
		t.Fatalf("first write: %+v", res)
	}
	res2, err := s.PutRuleSetAudited(ctx, ruleSet("web", 2), 1, auditAs("bob", "PUT /v1/rulesets/web"))
	if err != nil {
		t.Fatal(err)
	}
	if res2.Version != 2 || res2.PreviousVersion != 1 || res2.Previous == nil || !reflect.DeepEqual(*res2.Previous, ruleSet("web", 1)) {
		t.Fatalf("second write: %+v", res2)
	}

	// The version, the head and the audit record: one transaction.
	for _, key := range []string{"/xdpfw-test/rulesets/web/versions/2", "/xdpfw-test/rulesets/web/head", res2.AuditKey} {
		resp, err := cli.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].ModRevision != res2.Revision {
			t.Fatalf("%s: %v %v, want it written at revision %d", key, resp, err, res2.Revision)
		}
	}
	if !strings.HasPrefix(res2.AuditKey, "/xdpfw-test/audit/") {
		t.Fatalf("audit key %s", res2.AuditKey)
	}

	recs, err := s.AuditRecords(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Who != "bob" || recs[0].Result != "version 2" || recs[0].Revision != res2.Revision ||
		recs[1].Who != "alice" || recs[1].Revision != res.Revision || recs[0].At.IsZero() || recs[0].At.Before(recs[1].At) {
		t.Fatalf("audit records (newest first): %+v", recs)
	}
	if recs, err := s.AuditRecords(ctx, 1); err != nil || len(recs) != 1 || recs[0].Who != "bob" {
		t.Fatalf("AuditRecords(1) = %+v, %v", recs, err)
	}

	// A stale write writes nothing, audit record included.
	before := revisionOf(t, cli)
	_, err = s.PutRuleSetAudited(ctx, ruleSet("web", 3), 1, auditAs("carol", "PUT"))
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Current != 2 {
		t.Fatalf("stale write: %v", err)
	}
	invalid := ruleSet("web", 3)
	invalid.Mode = "maybe"
	if _, err := s.PutRuleSetAudited(ctx, invalid, -1, auditAs("carol", "PUT")); err == nil {
		t.Fatal("invalid rule set written")
	}
	if after := revisionOf(t, cli); after != before {
		t.Fatalf("refused writes moved the revision from %d to %d", before, after)
	}
}

// Audit keys sort by time even when the nanoseconds end in zeros.
func TestAuditKeysSortByTime(t *testing.T) {
	s := New(nil, proto.NewKeys("/p/"))
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var keys []string
	for _, ns := range []int{0, 1, 10, 100_000_000, 120_000_000, 999_999_999} {
		k, err := s.NewAuditKey(base.Add(time.Duration(ns)))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if !sort.StringsAreSorted(keys) {
		t.Fatalf("keys out of time order: %q", keys)
	}
	if want := "/p/audit/2026-01-02T03:04:05.000000000Z-"; !strings.HasPrefix(keys[0], want) || len(keys[0]) != len(want)+16 {
		t.Fatalf("key %q, want %q and 16 hex digits", keys[0], want)
	}
}

func TestDeleteRuleSetAudited(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	mustPut(t, s, ruleSet("web", 1), 0)
	mustPut(t, s, ruleSet("web", 2), 1)
	mustPut(t, s, ruleSet("web2", 1), 0) // a name with web as prefix stays
	if _, err := cli.Put(ctx, "/xdpfw-test/rulesets/web/released", `{"version":1,"at":"2026-01-01T00:00:00Z"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetDesired(ctx, "h1", []proto.RuleSetRef{{Name: "web", Version: 1}, {Name: "web2"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetDesired(ctx, "h2", []proto.RuleSetRef{{Name: "web2"}}); err != nil {
		t.Fatal(err)
	}
	rollout := func(id, set, state string) {
		t.Helper()
		spec, _ := json.Marshal(proto.RolloutSpec{RuleSet: set, Version: 2})
		if _, err := cli.Put(ctx, "/xdpfw-test/rollouts/"+id+"/spec", string(spec)); err != nil {
			t.Fatal(err)
		}
		if state != "" {
			st, _ := json.Marshal(proto.RolloutState{State: state})
			if _, err := cli.Put(ctx, "/xdpfw-test/rollouts/"+id+"/state", string(st)); err != nil {
				t.Fatal(err)
			}
		}
	}
	rollout("r-done", "web", proto.RolloutSucceeded)
	rollout("r-aborted", "web", proto.RolloutAborted)
	rollout("r-new", "web", "") // no state yet: the controller has not seen it
	rollout("r-paused", "web", proto.RolloutPaused)
	rollout("r-other", "web2", proto.RolloutRunning)

	del := func(ifMatch int64) (DeleteResult, error) {
		return s.DeleteRuleSetAudited(ctx, "web", ifMatch, auditAs("alice", "DELETE /v1/rulesets/web"))
	}
	before := revisionOf(t, cli)
	_, err := del(-1)
	var inUse *InUseError
	if !errors.As(err, &inUse) || !errors.Is(err, ErrInUse) {
		t.Fatalf("delete while in use: %v, want an *InUseError", err)
	}
	if !reflect.DeepEqual(inUse.Hosts, []string{"h1"}) || !reflect.DeepEqual(inUse.Rollouts, []string{"r-new", "r-paused"}) {
		t.Fatalf("in use by hosts %v rollouts %v, want [h1] and [r-new r-paused]", inUse.Hosts, inUse.Rollouts)
	}
	for _, want := range []string{"rule set web is in use", "h1", "r-new, r-paused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if after := revisionOf(t, cli); after != before {
		t.Fatalf("a refused delete moved the revision from %d to %d", before, after)
	}

	if _, err := s.SetDesired(ctx, "h1", []proto.RuleSetRef{{Name: "web2"}}); err != nil {
		t.Fatal(err)
	}
	rollout("r-new", "web", proto.RolloutAborted)
	rollout("r-paused", "web", proto.RolloutAborted)

	if _, err := del(1); !errors.Is(err, ErrConflict) {
		t.Fatalf("delete if-match 1 of version 2: %v, want a conflict", err)
	}
	res, err := del(2)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 2 || res.Keys != 4 {
		t.Fatalf("delete: %+v, want version 2 and 4 keys (2 versions, head, release)", res)
	}
	resp, err := cli.Get(ctx, "/xdpfw-test/rulesets/web/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("keys of web left: %v %v", resp, err)
	}
	if _, err := s.Versions(ctx, "web2"); err != nil {
		t.Fatalf("web2 went with web: %v", err)
	}
	recs, err := s.AuditRecords(ctx, 1)
	if err != nil || len(recs) != 1 || recs[0].Action != "DELETE /v1/rulesets/web" || recs[0].Revision != res.Revision {
		t.Fatalf("audit record of the delete: %+v %v", recs, err)
	}
	if _, err := del(-1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete of a deleted rule set: %v, want ErrNotFound", err)
	}
	if _, err := s.DeleteRuleSetAudited(ctx, "Bad/Name", -1, auditAs("a", "b")); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("bad name: %v", err)
	}
}

func TestFleetReads(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	mustPut(t, s, ruleSet("web", 1), 0)
	mustPut(t, s, ruleSet("web", 2), 1)
	mustPut(t, s, ruleSet("api", 1), 0)
	if _, err := cli.Put(ctx, "/xdpfw-test/rulesets/web/released", `{"version":1,"at":"2026-01-01T00:00:00Z"}`); err != nil {
		t.Fatal(err)
	}
	sums, err := s.ListRuleSets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []proto.RuleSetSummary{{Name: "api", Version: 1, Rules: 1}, {Name: "web", Version: 2, Released: 1, Rules: 1}}
	if !reflect.DeepEqual(sums, want) {
		t.Fatalf("ListRuleSets = %+v, want %+v", sums, want)
	}
	if rel, ok, err := s.GetRelease(ctx, "web"); err != nil || !ok || rel.Version != 1 {
		t.Fatalf("GetRelease(web) = %+v %v %v", rel, ok, err)
	}
	if _, ok, err := s.GetRelease(ctx, "api"); err != nil || ok {
		t.Fatalf("GetRelease(api) = %v %v, want none", ok, err)
	}

	if _, err := s.SetDesired(ctx, "lost.example", []proto.RuleSetRef{{Name: "web"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetDesired(ctx, "up.example", []proto.RuleSetRef{{Name: "api"}}); err != nil {
		t.Fatal(err)
	}
	st, _ := json.Marshal(proto.HostStatus{APIVersion: proto.APIVersion, Kind: proto.KindHostStatus, Host: "up.example", InSync: true})
	tel := func(host string, pkts uint64) string {
		doc, _ := json.Marshal(proto.HostTelemetry{APIVersion: proto.APIVersion, Kind: proto.KindHostTelemetry, Host: host,
			Interfaces: []proto.InterfaceTelemetry{{Name: "eth0", Actions: map[string]proto.Rate{"drop-rule": {Packets: pkts}}}}})
		return string(doc)
	}
	for key, value := range map[string]string{
		"/xdpfw-test/hosts/up.example/status":           string(st),
		"/xdpfw-test/hosts/up.example/telemetry":        tel("up.example", 5),
		"/xdpfw-test/hosts/status-only/status":          strings.Replace(string(st), "up.example", "status-only", 1),
		"/xdpfw-test/hosts/tele-only/telemetry":         tel("tele-only", 7),
		"/xdpfw-test/hosts/bad-telemetry/telemetry":     "{",
		"/xdpfw-test/hosts/bad-desired.example/desired": `{"kind":"HostDesired","ruleSets":[{"name":"web","version":0}]}`,
	} {
		if _, err := cli.Put(ctx, key, value); err != nil {
			t.Fatal(err)
		}
	}
	infos, err := s.HostInfos(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, in := range infos {
		got = append(got, fmt.Sprintf("%s lost=%v desired=%v status=%v", in.Host, in.Lost, in.Desired, in.Status != nil))
	}
	wantInfos := []string{
		"bad-desired.example lost=true desired=[web@0] status=false",
		"lost.example lost=true desired=[web@2] status=false",
		"status-only lost=false desired=[] status=true",
		"up.example lost=false desired=[api@1] status=true",
	}
	if !reflect.DeepEqual(got, wantInfos) {
		t.Fatalf("HostInfos:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantInfos, "\n"))
	}
	if infos, err := s.HostInfos(ctx, []string{"tele-only", "up.example"}); err != nil || len(infos) != 1 || infos[0].Host != "up.example" {
		t.Fatalf("HostInfos(tele-only, up.example) = %+v %v", infos, err)
	}

	docs, bad, err := s.Telemetry(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 || bad != 1 || docs[0].Host != "tele-only" || docs[1].Host != "up.example" {
		t.Fatalf("Telemetry = %+v, %d bad", docs, bad)
	}
	if docs, _, err := s.Telemetry(ctx, "up.example"); err != nil || len(docs) != 1 || docs[0].Interfaces[0].Actions["drop-rule"].Packets != 5 {
		t.Fatalf("Telemetry(up.example) = %+v %v", docs, err)
	}
}

func TestVersionInfos(t *testing.T) {
	s, _ := newStore(t)
	ctx := testCtx(t)
	mustPut(t, s, ruleSet("web", 1), 0) // no audit record: written around the API
	var revs []int64
	for i := 2; i <= 11; i++ {
		rs := ruleSet("web", i)
		for j := 1; j < i%3; j++ {
			rs.Rules = append(rs.Rules, proto.Rule{ID: fmt.Sprintf("x%d", j), Action: proto.ActionDrop})
		}
		res, err := s.PutRuleSetAudited(ctx, rs, -1, auditAs(fmt.Sprintf("user%d", i), "PUT"))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, res.Revision)
	}
	mustPut(t, s, ruleSet("other", 1), 0)
	infos, err := s.VersionInfos(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 11 {
		t.Fatalf("%d versions, want 11: %+v", len(infos), infos)
	}
	if infos[0].Version != 1 || infos[0].Author != "" || !infos[0].At.IsZero() || infos[0].Rules != 1 {
		t.Fatalf("version 1 (no audit record): %+v", infos[0])
	}
	for i, vi := range infos[1:] {
		n := i + 2
		wantRules := max(1, n%3)
		if vi.Version != int64(n) || vi.Revision != revs[i] || vi.Author != fmt.Sprintf("user%d", n) || vi.At.IsZero() || vi.Rules != wantRules {
			t.Fatalf("entry %d: %+v, want version %d revision %d user%d and %d rules", i+1, vi, n, revs[i], n, wantRules)
		}
	}
	if _, err := s.VersionInfos(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("VersionInfos(nope): %v", err)
	}
}
