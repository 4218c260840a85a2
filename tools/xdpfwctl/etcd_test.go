package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// etcdEnv is a running etcd and the flags that reach it.
type etcdEnv struct {
	endpoints string
	cli       *clientv3.Client
	store     *etcdstore.Store
}

func startEtcd(t *testing.T) *etcdEnv {
	t.Helper()
	srv, cli := etcdtest.StartWithClient(t)
	return &etcdEnv{
		endpoints: strings.Join(srv.Endpoints(), ","),
		cli:       cli,
		store:     etcdstore.New(cli, proto.NewKeys("")),
	}
}

// ctl runs `xdpfwctl etcd ARGS --endpoints ...`.
func (e *etcdEnv) ctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCtl(t, append(append([]string{"etcd"}, args...), "--endpoints", e.endpoints)...)
}

func runCtl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// mustCtl runs a command that must succeed and returns its stdout.
func (e *etcdEnv) mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	code, stdout, stderr := e.ctl(t, args...)
	if code != exitOK {
		t.Fatalf("xdpfwctl etcd %s: exit %d\n%s", strings.Join(args, " "), code, stderr)
	}
	return stdout
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

const rulesYAML = `apiVersion: xdpfw/v1
kind: RuleSet
name: web
priority: 10
mode: deny
sets:
  bad:
    file: feeds/bad.txt
rules:
  - id: no-bad
    action: drop
    src: [set:bad]
  - id: no-ssh
    action: drop
    protocol: tcp
    dstPorts: [22, "1000-2000"]
---
apiVersion: xdpfw/v1
kind: RuleSet
name: api
mode: allow
rules:
  - id: https
    action: pass
    protocol: tcp
    dstPorts: ["443"]
`

// writeRules writes rules.yaml and the feed it names, and returns its path.
func writeRules(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "feeds", "bad.txt"), "# a feed\n192.0.2.0/24\n2001:db8:bad::/48 ; comment\n")
	path := filepath.Join(dir, "rules.yaml")
	writeFile(t, path, rulesYAML)
	return path
}

var putLine = regexp.MustCompile(`^(\S+): version (\d+) \(revision (\d+)\)$`)

func TestEtcdPutGetRoundTrip(t *testing.T) {
	e := startEtcd(t)
	rules := writeRules(t)
	out := e.mustCtl(t, "put", "-f", rules)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("put printed %q, want a line per rule set", out)
	}
	for i, name := range []string{"web", "api"} {
		m := putLine.FindStringSubmatch(lines[i])
		if m == nil || m[1] != name || m[2] != "1" {
			t.Fatalf("put line %q, want %q", lines[i], name+": version 1 (revision R)")
		}
	}

	// The stored document holds the feed's prefixes, not its path.
	want, err := readRuleSets(rules)
	if err != nil {
		t.Fatal(err)
	}
	var got proto.RuleSet
	if err := json.Unmarshal([]byte(e.mustCtl(t, "get", "web", "-o", "json")), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want[0]) {
		t.Fatalf("get web -o json = %+v, want %+v", got, want[0])
	}
	if p := got.Sets["bad"].Prefixes; len(p) != 2 || got.Sets["bad"].File != "" {
		t.Fatalf("stored set bad = %+v, want the feed's two prefixes", got.Sets["bad"])
	}

	// get's YAML goes back in with put: edit, put on top of version 1.
	yml := e.mustCtl(t, "get", "web")
	if !strings.HasPrefix(yml, "# rule set web, version 1\n") {
		t.Fatalf("get web starts %q, want a comment naming the version", yml)
	}
	edited := filepath.Join(t.TempDir(), "web.yaml")
	writeFile(t, edited, strings.Replace(yml, "priority: 10", "priority: 20", 1))
	if out := e.mustCtl(t, "put", "--if-match", "1", "-f", edited); !strings.HasPrefix(out, "web: version 2 (revision ") {
		t.Fatalf("put of the edited document: %q", out)
	}
	if out := e.mustCtl(t, "versions", "web"); out != "1\n2\n" {
		t.Fatalf("versions web = %q, want 1 and 2", out)
	}
	// Flags may follow the name.
	var v1, v2 proto.RuleSet
	if err := json.Unmarshal([]byte(e.mustCtl(t, "get", "web", "--version", "1", "-o", "json")), &v1); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(e.mustCtl(t, "get", "-o", "json", "web")), &v2); err != nil {
		t.Fatal(err)
	}
	if v1.Priority != 10 || v2.Priority != 20 {
		t.Fatalf("priorities %d and %d, want 10 (version 1) and 20 (head)", v1.Priority, v2.Priority)
	}
	v1.Priority = 20
	if !reflect.DeepEqual(v1, v2) {
		t.Fatalf("the YAML round trip changed more than the priority:\n%+v\n%+v", v1, v2)
	}

	// Another prefix is another store.
	if code, _, stderr := e.ctl(t, "get", "web", "--prefix", "/elsewhere/"); code != exitError || !strings.Contains(stderr, "/elsewhere/rulesets/web/head") {
		t.Fatalf("get under another prefix: exit %d: %s", code, stderr)
	}
}

func TestEtcdPutConflict(t *testing.T) {
	e := startEtcd(t)
	rules := writeRules(t)
	e.mustCtl(t, "put", "-f", rules, "--if-match", "0")
	tests := []struct {
		ifMatch string
		want    string
	}{
		{"0", "xdpfwctl: version conflict: rule set web already exists at version 1"},
		{"5", "xdpfwctl: version conflict: rule set web is at version 1, not 5"},
	}
	for _, tt := range tests {
		code, stdout, stderr := e.ctl(t, "put", "-f", rules, "--if-match", tt.ifMatch)
		if code != exitError || !strings.Contains(stderr, tt.want) || stdout != "" {
			t.Fatalf("--if-match %s: exit %d, stdout %q, stderr %q; want exit 1 and %q", tt.ifMatch, code, stdout, stderr, tt.want)
		}
	}
	if out := e.mustCtl(t, "versions", "web"); out != "1\n" {
		t.Fatalf("versions after conflicts = %q, want 1 only", out)
	}
}

func TestEtcdPutRefusesBadFiles(t *testing.T) {
	e := startEtcd(t)
	withFeed := t.TempDir()
	writeFile(t, filepath.Join(withFeed, "feeds", "bad.txt"), "192.0.2.0/24\n")
	invalid := filepath.Join(withFeed, "invalid.yaml")
	writeFile(t, invalid, strings.Replace(rulesYAML, "mode: allow", "mode: maybe", 1))
	twice := filepath.Join(withFeed, "twice.yaml")
	writeFile(t, twice, strings.Replace(rulesYAML, "name: api", "name: web", 1))
	noFeed := filepath.Join(t.TempDir(), "rules.yaml") // feeds/bad.txt is not beside it
	writeFile(t, noFeed, rulesYAML)

	for _, tt := range []struct{ path, want string }{
		{invalid, `rule set "api": mode`},
		{twice, "rule set web appears more than once"},
		{noFeed, "feeds/bad.txt"},
	} {
		code, stdout, stderr := e.ctl(t, "put", "-f", tt.path)
		if code != exitError || !strings.Contains(stderr, tt.want) || stdout != "" {
			t.Fatalf("put -f %s: exit %d, stdout %q, stderr %q; want exit 1 saying %q", tt.path, code, stdout, stderr, tt.want)
		}
	}
	// The first document of each file was valid: nothing at all was written.
	resp, err := e.cli.Get(context.Background(), proto.DefaultKeyPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("refused files wrote keys: %v %v", resp, err)
	}
}

func TestEtcdDesire(t *testing.T) {
	e := startEtcd(t)
	e.mustCtl(t, "put", "-f", writeRules(t))
	e.mustCtl(t, "put", "-f", writeRules(t)) // web@2, api@2

	out := e.mustCtl(t, "desire", "--host", "h1", "web", "api@1")
	if !regexp.MustCompile(`^h1: web@2, api@1 \(revision \d+\)\n$`).MatchString(out) {
		t.Fatalf("desire printed %q", out)
	}
	d, _, err := e.store.GetDesired(context.Background(), "h1")
	if err != nil {
		t.Fatal(err)
	}
	if want := proto.NewHostDesired(proto.RuleSetRef{Name: "web", Version: 2}, proto.RuleSetRef{Name: "api", Version: 1}); !reflect.DeepEqual(d, want) {
		t.Fatalf("desired = %+v, want %+v", d, want)
	}

	code, stdout, stderr := e.ctl(t, "desire", "--host", "h1", "web@7")
	if code != exitError || stdout != "" || !strings.Contains(stderr, "web@7") || !strings.Contains(stderr, "not found") {
		t.Fatalf("desire of a missing version: exit %d, %q %q", code, stdout, stderr)
	}
	code, _, stderr = e.ctl(t, "desire", "--host", "h1", "nope")
	if code != exitError || !strings.Contains(stderr, "rule set nope") {
		t.Fatalf("desire of a missing rule set: exit %d, %q", code, stderr)
	}
	if d2, _, _ := e.store.GetDesired(context.Background(), "h1"); !reflect.DeepEqual(d2, d) {
		t.Fatalf("a refused desire changed the document: %+v", d2)
	}

	out = e.mustCtl(t, "desire", "--none", "--host", "h1")
	if !regexp.MustCompile(`^h1: none \(revision \d+\)\n$`).MatchString(out) {
		t.Fatalf("desire --none printed %q", out)
	}
	if d, _, err := e.store.GetDesired(context.Background(), "h1"); err != nil || len(d.RuleSets) != 0 {
		t.Fatalf("after --none: %+v, %v", d, err)
	}
}

func TestEtcdStatusTelemetryHosts(t *testing.T) {
	e := startEtcd(t)
	ctx := context.Background()
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	status := proto.HostStatus{
		APIVersion: proto.APIVersion, Kind: proto.KindHostStatus, Host: "h1", AgentVersion: "v-test",
		StartedAt: at, UpdatedAt: at.Add(time.Minute), Applied: []proto.RuleSetRef{{Name: "web", Version: 2}},
		Revision: 42, InSync: true,
		Interfaces: []proto.InterfaceStatus{{Name: "eth0", AttachMode: "native", Attached: true, Digest: "d1g3st", Rules: 7, AppliedAt: at, Writes: 3}},
	}
	failing := status
	failing.Host, failing.InSync, failing.Revision = "h3", false, 50
	failing.LastError = &proto.StatusError{Document: "/xdpfw/v1/hosts/h3/desired", Revision: 50, Message: "kind: must be \"HostDesired\"", At: at}
	telemetry := proto.HostTelemetry{
		APIVersion: proto.APIVersion, Kind: proto.KindHostTelemetry, Host: "h1", At: at, IntervalSeconds: 10,
		Interfaces: []proto.InterfaceTelemetry{{
			Name:         "eth0",
			Actions:      map[string]proto.Rate{"drop-rule": {Packets: 1234, Bytes: 74040, PPS: 12.5}, "pass-default": {Packets: 99, Bytes: 9900, PPS: 1}},
			Rules:        []proto.RuleTelemetry{{RuleSet: "web", ID: "no-ssh", Action: "drop", Rate: proto.Rate{Packets: 1234, Bytes: 74040, PPS: 12.5}}},
			RulesOmitted: 3,
		}},
	}
	put := func(key string, v any) {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.cli.Put(ctx, key, string(data)); err != nil {
			t.Fatal(err)
		}
	}
	keys := proto.NewKeys("")
	put(keys.HostStatus("h1"), status)
	put(keys.HostStatus("h3"), failing)
	put(keys.HostTelemetry("h1"), telemetry)
	if _, err := e.store.PutRawDesired(ctx, "h2", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}

	out := e.mustCtl(t, "status", "--host", "h1")
	for _, want := range []string{"host:        h1", "in sync:     yes", "revision:    42", "applied:     web@2", "last error:  none",
		"INTERFACE  MODE    ATTACHED  DIGEST  RULES  APPLIED", "eth0       native  yes       d1g3st  7"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status table lacks %q:\n%s", want, out)
		}
	}
	var gotStatus proto.HostStatus
	if err := json.Unmarshal([]byte(e.mustCtl(t, "status", "--host", "h1", "-o", "json")), &gotStatus); err != nil || !reflect.DeepEqual(gotStatus, status) {
		t.Fatalf("status -o json = %+v (%v), want %+v", gotStatus, err, status)
	}
	out = e.mustCtl(t, "status", "--host", "h3")
	if !strings.Contains(out, "in sync:     no") || !strings.Contains(out, `last error:  /xdpfw/v1/hosts/h3/desired: kind: must be "HostDesired" (revision 50`) {
		t.Fatalf("status of a host refusing its desired state:\n%s", out)
	}
	code, _, stderr := e.ctl(t, "status", "--host", "h2")
	if code != exitError || !strings.Contains(stderr, "host h2 has no status") {
		t.Fatalf("status of a host without one: exit %d, %q", code, stderr)
	}

	out = e.mustCtl(t, "telemetry", "--host", "h1")
	for _, want := range []string{"host h1 at 2026-05-01T12:00:00Z, rates over 10s", "eth0       drop-rule     1234     74040  12.5",
		"eth0       web      no-ssh  drop    1234     74040  12.5", "(3 quieter rules left out"} {
		if !strings.Contains(out, want) {
			t.Fatalf("telemetry table lacks %q:\n%s", want, out)
		}
	}
	var gotTel proto.HostTelemetry
	if err := json.Unmarshal([]byte(e.mustCtl(t, "telemetry", "-o", "json", "--host", "h1")), &gotTel); err != nil || !reflect.DeepEqual(gotTel, telemetry) {
		t.Fatalf("telemetry -o json = %+v (%v), want %+v", gotTel, err, telemetry)
	}

	out = e.mustCtl(t, "hosts")
	wantLines := []string{
		"HOST  APPLIED  IN SYNC    REVISION  UPDATED",
		"h1    web@2    yes        42        2026-05-01T12:01:00Z",
		"h2    -        no status  -         -",
		"h3    web@2    no         50        2026-05-01T12:01:00Z",
	}
	if got := strings.Split(strings.TrimRight(out, "\n"), "\n"); !reflect.DeepEqual(got, wantLines) {
		t.Fatalf("hosts printed\n%s\nwant\n%s", out, strings.Join(wantLines, "\n"))
	}
	var summaries []hostSummary
	if err := json.Unmarshal([]byte(e.mustCtl(t, "hosts", "-o", "json")), &summaries); err != nil {
		t.Fatal(err)
	}
	if len(summaries) != 3 || summaries[1].Host != "h2" || summaries[1].Status != nil || summaries[0].Status == nil || summaries[0].Status.Revision != 42 {
		t.Fatalf("hosts -o json = %+v", summaries)
	}
}

func TestEtcdUsage(t *testing.T) {
	// Nothing listens here: usage errors must come before any connection.
	dead := strings.TrimPrefix(etcdtest.FreeURLs(t, 1)[0], "http://")
	tests := [][]string{
		{"etcd"},
		{"etcd", "nope"},
		{"etcd", "put"},
		{"etcd", "put", "-f", "x.yaml", "extra"},
		{"etcd", "put", "-f", "x.yaml", "--if-match", "-2"},
		{"etcd", "put", "--bogus"},
		{"etcd", "get"},
		{"etcd", "get", "a", "b"},
		{"etcd", "get", "web", "-o", "xml"},
		{"etcd", "get", "web", "--version", "-1"},
		{"etcd", "versions"},
		{"etcd", "desire", "web"},
		{"etcd", "desire", "--host", "h1"},
		{"etcd", "desire", "--host", "h1", "--none", "web"},
		{"etcd", "desire", "--host", "h1", "web@0"},
		{"etcd", "desire", "--host", "h1", "web@x"},
		{"etcd", "status"},
		{"etcd", "status", "--host", "h1", "-o", "yaml"},
		{"etcd", "telemetry", "--host", "h1", "extra"},
		{"etcd", "hosts", "extra"},
		{"etcd", "hosts", "--endpoints", ""},
		{"etcd", "hosts", "--timeout", "0s"},
	}
	for _, args := range tests {
		if !slices.Contains(args, "--endpoints") {
			args = append(args, "--endpoints", dead)
		}
		start := time.Now()
		code, stdout, stderr := runCtl(t, args...)
		if code != exitUsage || stdout != "" || stderr == "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and a message", args, code, stdout, stderr)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%v: took %v, as if it waited for etcd", args, d)
		}
	}
}

func TestEtcdUnreachable(t *testing.T) {
	dead := strings.TrimPrefix(etcdtest.FreeURLs(t, 1)[0], "http://")
	start := time.Now()
	code, _, stderr := runCtl(t, "etcd", "versions", "web", "--endpoints", dead, "--timeout", "1s")
	if code != exitError || !strings.Contains(stderr, "etcd at "+dead+" did not answer within 1s") {
		t.Fatalf("exit %d, stderr %q; want exit 1 naming %s", code, stderr, dead)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("gave up after %v, want about 1s", d)
	}

	// The default endpoints come from the environment.
	t.Setenv(EnvEtcdEndpoints, dead+", "+dead)
	code, _, stderr = runCtl(t, "etcd", "hosts", "--timeout", "1s")
	if code != exitError || !strings.Contains(stderr, "etcd at "+dead+","+dead+" did not answer") {
		t.Fatalf("with $%s: exit %d, stderr %q", EnvEtcdEndpoints, code, stderr)
	}
}
