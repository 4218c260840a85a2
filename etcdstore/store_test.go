package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/proto"
)

func newStore(t *testing.T) (*Store, *clientv3.Client) {
	t.Helper()
	_, cli := etcdtest.StartWithClient(t)
	return New(cli, proto.NewKeys("/xdpfw-test/")), cli
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// ruleSet returns a valid rule set whose only rule drops dst port port.
func ruleSet(name string, port int) proto.RuleSet {
	return proto.RuleSet{
		APIVersion: proto.APIVersion,
		Kind:       proto.KindRuleSet,
		Name:       name,
		Mode:       proto.ModeDeny,
		Sets:       map[string]proto.PrefixSet{"bad": {Prefixes: []string{"192.0.2.0/24"}}},
		Rules: []proto.Rule{{
			ID: "r1", Action: proto.ActionDrop, Src: []string{"set:bad"},
			Protocol: proto.ProtoTCP, DstPorts: []proto.PortSpec{proto.PortSpec(fmt.Sprint(port))},
		}},
	}
}

func mustPut(t *testing.T, s *Store, rs proto.RuleSet, ifMatch int64) (int64, int64) {
	t.Helper()
	v, rev, err := s.PutRuleSet(testCtx(t), rs, ifMatch)
	if err != nil {
		t.Fatalf("PutRuleSet(%s, if-match %d): %v", rs.Name, ifMatch, err)
	}
	return v, rev
}

func expectVersions(t *testing.T, s *Store, name string, want []int64) {
	t.Helper()
	got, err := s.Versions(testCtx(t), name)
	if err != nil {
		t.Fatalf("Versions(%s): %v", name, err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Versions(%s) = %v, want %v", name, got, want)
	}
}

func TestPutRuleSetVersionsIncrement(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	var lastRev int64
	for i, ifMatch := range []int64{0, 1, -1} {
		v, rev := mustPut(t, s, ruleSet("web", 1000+i), ifMatch)
		if v != int64(i+1) || rev <= lastRev {
			t.Fatalf("put %d: version %d revision %d, want version %d and a revision above %d", i, v, rev, i+1, lastRev)
		}
		lastRev = rev
	}
	expectVersions(t, s, "web", []int64{1, 2, 3})

	// The keys of docs/architecture.md, "The etcd key layout", written in one transaction.
	resp, err := cli.Get(ctx, "/xdpfw-test/rulesets/web/head")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"version":3}` || resp.Kvs[0].ModRevision != lastRev {
		t.Fatalf("head = %v, want {\"version\":3} at revision %d", resp.Kvs, lastRev)
	}
	resp, err = cli.Get(ctx, "/xdpfw-test/rulesets/web/versions/3")
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].ModRevision != lastRev {
		t.Fatalf("version 3 key: %v %v, want it written at revision %d", resp, err, lastRev)
	}

	for version, port := range map[int64]int{0: 1002, 1: 1000, 2: 1001, 3: 1002} {
		rs, v, err := s.GetRuleSet(ctx, "web", version)
		if err != nil {
			t.Fatalf("GetRuleSet(web, %d): %v", version, err)
		}
		want := ruleSet("web", port)
		wantV := version
		if version == 0 {
			wantV = 3
		}
		if v != wantV || !reflect.DeepEqual(rs, want) {
			t.Fatalf("GetRuleSet(web, %d) = version %d %+v, want version %d %+v", version, v, rs, wantV, want)
		}
	}
	if h, err := s.Head(ctx, "web"); err != nil || h != 3 {
		t.Fatalf("Head(web) = %d, %v; want 3", h, err)
	}
}

func TestPutRuleSetIfMatch(t *testing.T) {
	s, _ := newStore(t)
	mustPut(t, s, ruleSet("web", 1), 0)
	mustPut(t, s, ruleSet("web", 2), 1)

	tests := []struct {
		name    string
		set     string
		ifMatch int64
		current int64
		want    string
	}{
		{"new set that exists", "web", 0, 2, "rule set web already exists at version 2"},
		{"stale version", "web", 1, 2, "rule set web is at version 2, not 1"},
		{"future version", "web", 7, 2, "rule set web is at version 2, not 7"},
		{"version of a missing set", "api", 1, 0, "rule set api does not exist (if-match wants version 1)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := s.PutRuleSet(testCtx(t), ruleSet(tt.set, 3), tt.ifMatch)
			var ce *ConflictError
			if !errors.Is(err, ErrConflict) || !errors.As(err, &ce) {
				t.Fatalf("error %v, want a *ConflictError wrapping ErrConflict", err)
			}
			if ce.Current != tt.current || ce.IfMatch != tt.ifMatch || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q (current %d): want current %d and %q", err, ce.Current, tt.current, tt.want)
			}
		})
	}
	if _, _, err := s.PutRuleSet(testCtx(t), ruleSet("web", 3), -2); err == nil || errors.Is(err, ErrConflict) {
		t.Fatalf("if-match -2: %v, want a plain error", err)
	}
	expectVersions(t, s, "web", []int64{1, 2})
	if _, err := s.Versions(testCtx(t), "api"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused write left rule set api behind: %v", err)
	}
}

// Two writers that read the same version race: exactly one wins each
// round, whatever the interleaving.
func TestConcurrentWritersSameIfMatch(t *testing.T) {
	s, _ := newStore(t)
	mustPut(t, s, ruleSet("web", 1), 0)
	const rounds = 10
	for round := range rounds {
		base := int64(round + 1)
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, 2)
		versions := make([]int64, 2)
		for w := range 2 {
			wg.Go(func() {
				<-start
				versions[w], _, errs[w] = s.PutRuleSet(testCtx(t), ruleSet("web", 100*w+round), base)
			})
		}
		close(start)
		wg.Wait()
		won, lost := 0, 0
		for w, err := range errs {
			switch {
			case err == nil:
				won++
				if versions[w] != base+1 {
					t.Fatalf("round %d: winner got version %d, want %d", round, versions[w], base+1)
				}
			case errors.Is(err, ErrConflict):
				lost++
				if !strings.Contains(err.Error(), fmt.Sprintf("is at version %d, not %d", base+1, base)) {
					t.Fatalf("round %d: loser's error %q does not give the current version", round, err)
				}
			default:
				t.Fatalf("round %d: writer %d: %v", round, w, err)
			}
		}
		if won != 1 || lost != 1 {
			t.Fatalf("round %d: %d won and %d lost, want one each", round, won, lost)
		}
	}
	want := make([]int64, rounds+1)
	for i := range want {
		want[i] = int64(i + 1)
	}
	expectVersions(t, s, "web", want)
}

// Writers that accept any version all succeed, each with its own version.
func TestConcurrentWritersAnyVersion(t *testing.T) {
	s, _ := newStore(t)
	const writers, each = 6, 5
	var mu sync.Mutex
	var got []int64
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				v, _, err := s.PutRuleSet(testCtx(t), ruleSet("web", 100*w+i), -1)
				if err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
				mu.Lock()
				got = append(got, v)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(got)
	want := make([]int64, writers*each)
	for i := range want {
		want[i] = int64(i + 1)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("versions handed out %v, want each of 1..%d once", got, writers*each)
	}
	expectVersions(t, s, "web", want)
}

func TestPutRuleSetRefusesBadDocuments(t *testing.T) {
	s, _ := newStore(t)
	ctx := testCtx(t)

	invalid := ruleSet("web", 1)
	invalid.Mode = "maybe"
	if _, _, err := s.PutRuleSet(ctx, invalid, -1); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Fatalf("invalid mode: %v", err)
	}

	withFile := ruleSet("web", 1)
	withFile.Sets["bad"] = proto.PrefixSet{File: "feeds/bad.txt"}
	if _, _, err := s.PutRuleSet(ctx, withFile, -1); err == nil || !strings.Contains(err.Error(), "feed file not resolved") {
		t.Fatalf("feed file: %v", err)
	}

	// Big sets are stored as chunks, but a document of many sets each
	// under the chunking threshold can still be too large: 40 sets of
	// 4,000 prefixes are about 2.5 MB as JSON.
	big := ruleSet("web", 1)
	for set := range 40 {
		prefixes := make([]string, 4000)
		for i := range prefixes {
			prefixes[i] = fmt.Sprintf("10.%d.%d.%d/32", set, i/256, i%256)
		}
		big.Sets[fmt.Sprintf("s%d", set)] = proto.PrefixSet{Prefixes: prefixes}
	}
	if _, _, err := s.PutRuleSet(ctx, big, -1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("40 sets of 4,000 prefixes: %v, want ErrTooLarge", err)
	}

	if _, err := s.Versions(ctx, "web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refused documents were written: %v", err)
	}
}

func TestGetRuleSetNotFound(t *testing.T) {
	s, _ := newStore(t)
	ctx := testCtx(t)
	mustPut(t, s, ruleSet("web", 1), 0)
	if _, _, err := s.GetRuleSet(ctx, "api", 0); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "/xdpfw-test/rulesets/api/head") {
		t.Fatalf("missing rule set: %v, want ErrNotFound naming the head key", err)
	}
	if _, _, err := s.GetRuleSet(ctx, "web", 2); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "/xdpfw-test/rulesets/web/versions/2") {
		t.Fatalf("missing version: %v, want ErrNotFound naming the key", err)
	}
	for _, name := range []string{"a/b", "Web", ""} {
		if _, _, err := s.GetRuleSet(ctx, name, 1); err == nil || errors.Is(err, ErrNotFound) {
			t.Fatalf("name %q: %v, want a bad-name error", name, err)
		}
	}
	if _, _, err := s.GetRuleSet(ctx, "web", -1); err == nil {
		t.Fatal("version -1 accepted")
	}
	if _, err := s.Versions(ctx, "api"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Versions of a missing rule set: %v", err)
	}
}

func TestSetDesired(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	mustPut(t, s, ruleSet("web", 1), 0)
	mustPut(t, s, ruleSet("web", 2), 1)
	mustPut(t, s, ruleSet("api", 3), 0)

	rev, err := s.SetDesired(ctx, "h1.example", []proto.RuleSetRef{{Name: "web"}, {Name: "api", Version: 1}})
	if err != nil {
		t.Fatal(err)
	}
	d, modRev, err := s.GetDesired(ctx, "h1.example")
	if err != nil {
		t.Fatal(err)
	}
	want := proto.NewHostDesired(proto.RuleSetRef{Name: "web", Version: 2}, proto.RuleSetRef{Name: "api", Version: 1})
	if !reflect.DeepEqual(d, want) || modRev != rev {
		t.Fatalf("desired = %+v at %d, want %+v at %d (the head resolved)", d, modRev, want, rev)
	}

	refused := []struct {
		name string
		host string
		refs []proto.RuleSetRef
		want string
		is   error
	}{
		{"missing version", "h1.example", []proto.RuleSetRef{{Name: "web", Version: 1}, {Name: "web2", Version: 9}}, "", ErrNotFound},
		{"missing version of a set", "h1.example", []proto.RuleSetRef{{Name: "web", Version: 9}}, "rule set web@9 (no /xdpfw-test/rulesets/web/versions/9)", ErrNotFound},
		{"head of a missing set", "h1.example", []proto.RuleSetRef{{Name: "nope"}}, "/xdpfw-test/rulesets/nope/head", ErrNotFound},
		{"bad host", "H1_example", nil, "host name", nil},
		{"duplicate", "h1.example", []proto.RuleSetRef{{Name: "web", Version: 1}, {Name: "web"}}, "already listed", nil},
		{"negative version", "h1.example", []proto.RuleSetRef{{Name: "web", Version: -1}}, "must be 1 or more", nil},
		{"bad name", "h1.example", []proto.RuleSetRef{{Name: "a/b", Version: 1}}, "not a valid rule set name", nil},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.SetDesired(ctx, tt.host, tt.refs)
			if err == nil || !strings.Contains(err.Error(), tt.want) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Fatalf("error %v: want %q (is %v)", err, tt.want, tt.is)
			}
		})
	}
	if d, r, err := s.GetDesired(ctx, "h1.example"); err != nil || r != rev || !reflect.DeepEqual(d, want) {
		t.Fatalf("a refused desired state changed the document: %+v at %d, %v", d, r, err)
	}

	// Enforce nothing: an empty list, not null.
	if _, err := s.SetDesired(ctx, "h2", nil); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/xdpfw-test/hosts/h2/desired")
	if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"ruleSets":[]`) {
		t.Fatalf("empty desired state: %v %v, want \"ruleSets\":[]", resp, err)
	}
	if d, _, err := s.GetDesired(ctx, "h2"); err != nil || len(d.RuleSets) != 0 {
		t.Fatalf("GetDesired(h2) = %+v, %v", d, err)
	}
}

// A version deleted between SetDesired's reads and its write fails the
// transaction: the check and the write are one.
func TestSetDesiredRacesADelete(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	mustPut(t, s, ruleSet("web", 1), 0)
	s.beforeDesiredTxn = func() {
		if _, err := cli.Delete(ctx, s.keys.RuleSetVersion("web", 1)); err != nil {
			t.Errorf("delete: %v", err)
		}
	}
	_, err := s.SetDesired(ctx, "h1", []proto.RuleSetRef{{Name: "web"}})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "web@1") {
		t.Fatalf("SetDesired after the version was deleted: %v, want ErrNotFound naming web@1", err)
	}
	if _, _, err := s.GetDesired(ctx, "h1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("desired state written anyway: %v", err)
	}
}

func TestPutRawDesired(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	raw := []byte(`{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[{"name":"web","version":0}],"extra":1`)
	rev, err := s.PutRawDesired(ctx, "h1", raw)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/xdpfw-test/hosts/h1/desired")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != string(raw) || resp.Kvs[0].ModRevision != rev {
		t.Fatalf("raw desired: %v %v, want the bytes as given at revision %d", resp, err, rev)
	}
	if _, _, err := s.GetDesired(ctx, "h1"); err == nil || !strings.Contains(err.Error(), "/xdpfw-test/hosts/h1/desired") {
		t.Fatalf("GetDesired of a bad document: %v, want a decode error naming the key", err)
	}
	if _, err := s.PutRawDesired(ctx, "../h1", raw); err == nil {
		t.Fatal("a host name that is not a name was accepted")
	}
}

func TestHostDocuments(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	status := proto.HostStatus{
		APIVersion: proto.APIVersion, Kind: proto.KindHostStatus, Host: "h1",
		AgentVersion: "test", StartedAt: at, UpdatedAt: at,
		Applied: []proto.RuleSetRef{{Name: "web", Version: 2}}, Revision: 42, InSync: true,
		Interfaces: []proto.InterfaceStatus{{Name: "eth0", AttachMode: "native", Attached: true, Digest: "abc", Rules: 3, AppliedAt: at, Writes: 5}},
	}
	telemetry := proto.HostTelemetry{
		APIVersion: proto.APIVersion, Kind: proto.KindHostTelemetry, Host: "h2", At: at, IntervalSeconds: 10,
		Interfaces: []proto.InterfaceTelemetry{{
			Name:    "eth0",
			Actions: map[string]proto.Rate{"drop-rule": {Packets: 10, Bytes: 600, PPS: 1, BPS: 60}},
			Rules:   []proto.RuleTelemetry{{RuleSet: "web", ID: "r1", Action: "drop", Rate: proto.Rate{Packets: 10, Bytes: 600, PPS: 1}}},
		}},
	}
	put := func(key string, v any) {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, key, string(data)); err != nil {
			t.Fatal(err)
		}
	}
	put(s.keys.HostStatus("h1"), status)
	put(s.keys.HostTelemetry("h2"), telemetry)
	mustPut(t, s, ruleSet("web", 1), 0)
	if _, err := s.SetDesired(ctx, "h3", []proto.RuleSetRef{{Name: "web"}}); err != nil {
		t.Fatal(err)
	}
	put("/xdpfw-test/hosts/h4/notes", "not a host document")
	put("/xdpfw-test/hostsx/h5/status", status)
	put("/other/hosts/h6/status", status)

	hosts, err := s.ListHosts(ctx)
	if err != nil || !slices.Equal(hosts, []string{"h1", "h2", "h3"}) {
		t.Fatalf("ListHosts = %v, %v; want [h1 h2 h3]", hosts, err)
	}
	if got, err := s.GetStatus(ctx, "h1"); err != nil || !reflect.DeepEqual(got, status) {
		t.Fatalf("GetStatus(h1) = %+v, %v; want %+v", got, err, status)
	}
	if _, err := s.GetStatus(ctx, "h2"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "/xdpfw-test/hosts/h2/status") {
		t.Fatalf("GetStatus(h2): %v, want ErrNotFound naming the key", err)
	}
	if got, err := s.GetTelemetry(ctx, "h2"); err != nil || !reflect.DeepEqual(got, telemetry) {
		t.Fatalf("GetTelemetry(h2) = %+v, %v; want %+v", got, err, telemetry)
	}
	if _, err := s.GetTelemetry(ctx, "h1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetTelemetry(h1): %v, want ErrNotFound", err)
	}
	statuses, err := s.GetStatuses(ctx, hosts)
	if err != nil || len(statuses) != 1 || !reflect.DeepEqual(statuses["h1"], status) {
		t.Fatalf("GetStatuses = %v, %v; want h1's only", statuses, err)
	}

	// A document of the wrong kind is not taken for a status.
	wrong := status
	wrong.Kind = proto.KindHostDesired
	put(s.keys.HostStatus("h2"), wrong)
	if _, err := s.GetStatus(ctx, "h2"); err == nil || !strings.Contains(err.Error(), `kind "HostDesired"`) {
		t.Fatalf("GetStatus of a document of another kind: %v", err)
	}
}

// Listing reads pages: more hosts than one page holds are all listed.
func TestListHostsPages(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	const n = pageSize*2 + 17
	var want []string
	var ops []clientv3.Op
	for i := range n {
		h := fmt.Sprintf("host-%05d", i)
		want = append(want, h)
		ops = append(ops, clientv3.OpPut(s.keys.HostDesired(h), "{}"), clientv3.OpPut(s.keys.HostStatus(h), "{}"))
		if len(ops) >= 100 || i == n-1 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = nil
		}
	}
	got, err := s.ListHosts(ctx)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("ListHosts returned %d hosts (%v), want %d", len(got), err, n)
	}
}

func TestConnect(t *testing.T) {
	srv := etcdtest.Start(t)
	cli, err := Connect(ClientConfig{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := New(cli, proto.Keys{}).Versions(testCtx(t), "web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Versions over Connect: %v", err)
	}

	if _, err := Connect(ClientConfig{}); err == nil {
		t.Fatal("no endpoints accepted")
	}
	if _, err := Connect(ClientConfig{Endpoints: []string{"127.0.0.1:1"}, CertFile: "c.pem"}); err == nil || !strings.Contains(err.Error(), "key file") {
		t.Fatalf("a cert without a key: %v", err)
	}
	missingCA := filepath.Join(t.TempDir(), "ca.pem")
	if _, err := Connect(ClientConfig{Endpoints: []string{"127.0.0.1:1"}, CAFile: missingCA}); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("a missing CA file: %v", err)
	}
	if _, err := os.Stat(missingCA); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the CA file appeared")
	}

	// Nothing listens: a request fails when its context ends.
	dead := etcdtest.FreeURLs(t, 1)
	cli2, err := Connect(ClientConfig{Endpoints: dead, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	if _, err := New(cli2, proto.Keys{}).Versions(ctx, "web"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request to nothing: %v, want a deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("request to nothing took %v", d)
	}
}

// A set of 95,536 prefixes (about 1.6 MB as JSON) is stored as chunks: the
// version document stays small, every request under 1 MiB, and the set
// reads back whole. A second version that adds one prefix writes one or
// two new chunks, not all of them again.
func TestBigSetStoredAsChunks(t *testing.T) {
	s, cli := newStore(t)
	ctx := testCtx(t)
	big := ruleSet("web", 1)
	var prefixes []string
	for i := range 65536 {
		prefixes = append(prefixes, fmt.Sprintf("10.%d.%d.0/24", i/256, i%256))
	}
	for i := range 30000 {
		prefixes = append(prefixes, fmt.Sprintf("2001:db8:%x::/48", i))
	}
	big.Sets["bad"] = proto.PrefixSet{Prefixes: prefixes}
	mustPut(t, s, big, 0)

	raw, err := cli.Get(ctx, s.Keys().RuleSetVersion("web", 1))
	if err != nil || len(raw.Kvs) != 1 {
		t.Fatal(err)
	}
	if n := len(raw.Kvs[0].Value); n > 64<<10 {
		t.Fatalf("stored version is %d bytes", n)
	}
	chunks, err := cli.Get(ctx, s.Keys().Chunks(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(chunks.Kvs) < 10 {
		t.Fatalf("%d chunks stored", len(chunks.Kvs))
	}
	for _, kv := range chunks.Kvs {
		if len(kv.Value) > 512<<10 {
			t.Errorf("chunk %s is %d bytes", kv.Key, len(kv.Value))
		}
	}
	got, _, err := s.GetRuleSet(ctx, "web", 1)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := big.SetPrefixes("bad")
	have, err := got.SetPrefixes("bad")
	if err != nil || !slices.Equal(want, have) {
		t.Fatalf("read back %d prefixes (%v), want %d", len(have), err, len(want))
	}

	next := ruleSet("web", 1)
	next.Sets["bad"] = proto.PrefixSet{Prefixes: append(slices.Clone(prefixes), "192.0.2.0/24")}
	rev := chunks.Header.Revision
	mustPut(t, s, next, 1)
	after, err := cli.Get(ctx, s.Keys().Chunks(), clientv3.WithPrefix(), clientv3.WithMinCreateRev(rev+1))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(after.Kvs); n == 0 || n > 2 {
		t.Fatalf("adding one prefix wrote %d new chunks, want 1 or 2", n)
	}
}
