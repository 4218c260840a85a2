package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/proto"
)

var update = flag.Bool("update", false, "rewrite the golden files of the API commands")

// These tests check what the API commands send and print, against an
// HTTP server that answers with fixed documents (the API itself is tested
// in controlplane/api, and both together by the integration tests).

var t0 = time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)

// request is what the fake API saw.
type request struct {
	method, path, query, auth, ifMatch, body string
}

// fakeAPI answers method+path with a status and a JSON body.
type fakeAPI struct {
	t       *testing.T
	answers map[string]answer
	seen    []request
}

type answer struct {
	status int
	body   any
}

func newFakeAPI(t *testing.T, answers map[string]answer) (*fakeAPI, string) {
	f := &fakeAPI{t: t, answers: answers}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.seen = append(f.seen, request{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization"), r.Header.Get("If-Match"), string(body)})
		a, ok := f.answers[r.Method+" "+r.URL.Path]
		if !ok {
			a = answer{404, proto.APIError{Error: proto.APIErrorBody{Code: proto.CodeNotFound, Message: "no route " + r.URL.Path}}}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		json.NewEncoder(w).Encode(a.body)
	}))
	t.Cleanup(srv.Close)
	return f, srv.URL
}

// ctl runs xdpfwctl with the API flags of srv.
func ctl(srv string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	full := append(args, "--server", srv, "--token", "tok-123")
	code = run(full, &out, &errb)
	return code, out.String(), errb.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s: output differs from %s:\n--- got\n%s--- want\n%s", name, path, got, want)
	}
}

func fleetAnswers() map[string]answer {
	status := &proto.HostStatus{Host: "web-1", Labels: map[string]string{"role": "edge", "dc": "1"}, AgentVersion: "v0.3.0",
		StartedAt: t0.Add(-time.Hour), UpdatedAt: t0, Applied: []proto.RuleSetRef{{Name: "edge", Version: 4}}, Revision: 77, InSync: true,
		Interfaces: []proto.InterfaceStatus{{Name: "eth0", AttachMode: "native", Attached: true, Digest: "0123456789abcdef0123", Rules: 12}}}
	failed := &proto.HostStatus{Host: "web-2", UpdatedAt: t0, Applied: []proto.RuleSetRef{{Name: "edge", Version: 3}}, Revision: 78,
		LastError: &proto.StatusError{Document: "/xdpfw/v1/rulesets/edge/versions/4", Version: 4, Message: "compile for eth0: too many rules"}}
	refusal := "load XDP program and maps for eth0: the kernel's verifier refused the program after 1000001 instructions: BPF program is too large. Processed 1000001 insn"
	broken := &proto.HostStatus{Host: "web-3", UpdatedAt: t0, StartedAt: t0.Add(-time.Minute), AgentVersion: "v0.3.0", Applied: []proto.RuleSetRef{},
		Interfaces:     []proto.InterfaceStatus{{Name: "eth0", Attached: true, Error: refusal}},
		DataPlaneError: &proto.DataPlaneError{Interface: "eth0", Message: refusal, Since: t0.Add(-time.Minute), Attempts: 4, NextAttemptAt: t0.Add(40 * time.Second)}}
	rollout := proto.Rollout{
		ID: "r-20261202T030000Z-ab12", CreatedBy: "alice", CreatedAt: t0,
		Spec:    proto.RolloutSpec{RuleSet: "edge", Version: 4, Waves: []string{"1", "50%", "100%"}, Pause: "30s"},
		Control: proto.RolloutControl{Want: proto.RolloutWantRun, By: "alice", At: t0},
		Status: proto.RolloutState{State: proto.RolloutHalted, Wave: 1, Message: "web-2 refused edge@4",
			Hosts: map[string]proto.RolloutHost{
				"web-1": {Wave: 0, Previous: 3, State: proto.HostApplied, UpdatedAt: t0},
				"web-2": {Wave: 1, Previous: 3, State: proto.HostFailed, Error: "compile for eth0: too many rules", UpdatedAt: t0},
				"web-3": {Wave: 1, State: proto.HostApplying, UpdatedAt: t0},
			}},
	}
	return map[string]answer{
		"PUT /v1/rulesets/edge": {200, proto.RuleSetWrite{Name: "edge", Version: 4, Revision: 90, Diff: &proto.RuleSetDiff{Name: "edge", From: 3, To: 4,
			Changes: []proto.DiffChange{
				{Kind: proto.DiffChanged, Path: "rules[ssh]", From: map[string]any{"dstPorts": []string{"22"}}, To: map[string]any{"dstPorts": []string{"2222"}}},
				{Kind: proto.DiffAdded, Path: "rules[web]"},
				{Kind: proto.DiffChanged, Path: "sets.bad-actors", Added: 2, Removed: 1},
			}}}},
		"GET /v1/rulesets": {200, []proto.RuleSetSummary{{Name: "edge", Version: 4, Released: 3, Rules: 12}, {Name: "lab", Version: 1, Rules: 2}}},
		"GET /v1/rulesets/edge/versions": {200, []proto.RuleSetVersionInfo{
			{Version: 1, Revision: 10, Rules: 10, Author: "alice", At: t0.Add(-48 * time.Hour)},
			{Version: 2, Revision: 20, Rules: 11},
		}},
		"GET /v1/rulesets/edge/diff": {200, proto.RuleSetDiff{Name: "edge", From: 1, To: 2, Changes: []proto.DiffChange{
			{Kind: proto.DiffRemoved, Path: "rules[old]"}, {Kind: proto.DiffMoved, Path: "rules[ssh]", From: 3, To: 1}}}},
		"POST /v1/rulesets/edge/rollback": {201, proto.RuleSetWrite{Name: "edge", Version: 5, Revision: 95}},
		"GET /v1/hosts": {200, []proto.HostInfo{
			{Host: "web-1", Desired: []proto.RuleSetRef{{Name: "edge", Version: 4}}, Status: status},
			{Host: "web-2", Desired: []proto.RuleSetRef{{Name: "edge", Version: 4}}, Status: failed},
			{Host: "web-3", Desired: []proto.RuleSetRef{{Name: "edge", Version: 4}}, Status: broken},
			{Host: "web-9", Lost: true, Desired: []proto.RuleSetRef{{Name: "edge", Version: 3}}},
		}},
		"GET /v1/hosts/web-3": {200, proto.HostInfo{Host: "web-3", Desired: []proto.RuleSetRef{{Name: "edge", Version: 4}}, Status: broken,
			State: proto.HostStateFailed, Reason: "data plane: " + refusal}},
		"GET /v1/hosts/web-1":            {200, proto.HostInfo{Host: "web-1", Desired: []proto.RuleSetRef{{Name: "edge", Version: 4}}, Status: status}},
		"GET /v1/rollouts":               {200, []proto.Rollout{rollout}},
		"GET /v1/rollouts/" + rollout.ID: {200, rollout},
		"POST /v1/rollouts":              {201, rollout},
		"POST /v1/rollouts/" + rollout.ID + "/abort": {200, func() proto.Rollout {
			r := rollout
			r.Control.Want, r.Status.State = proto.RolloutWantAbort, proto.RolloutAborting
			return r
		}()},
		"GET /v1/telemetry": {200, proto.TelemetryReport{At: t0, Hosts: 2,
			Actions: map[string]proto.Rate{"drop-rule": {Packets: 9000, Bytes: 540000, PPS: 150, BPS: 9000}, "pass-default": {Packets: 100000, Bytes: 9e7, PPS: 1000.5, BPS: 9e5}},
			Rules: []proto.RuleTelemetry{
				{RuleSet: "edge", ID: "ssh", Action: "drop", Rate: proto.Rate{Packets: 1000, Bytes: 60000, PPS: 10}},
				{RuleSet: "edge", ID: "threat-intel", Action: "drop", Rate: proto.Rate{Packets: 8000, Bytes: 480000, PPS: 140}},
				{RuleSet: "lab", ID: "lockdown", Action: "drop", DryRun: true, Rate: proto.Rate{Packets: 5}},
				{RuleSet: "edge", ID: "dns-flood", Action: "rate-limit", Rate: proto.Rate{Packets: 900, Bytes: 54000, PPS: 9},
					Limited:    &proto.Rate{Packets: 400, Bytes: 24000, PPS: 4},
					TopSources: []proto.SourceCount{{Src: "198.51.100.7", Packets: 300}, {Src: "2001:db8::9", Packets: 100}}},
			}}},
	}
}

func TestAPICommandsGolden(t *testing.T) {
	api, srv := newFakeAPI(t, fleetAnswers())
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	os.WriteFile(rules, []byte("apiVersion: xdpfw/v1\nkind: RuleSet\nname: edge\nmode: deny\nrules:\n  - id: ssh\n    action: drop\n    protocol: tcp\n    dstPorts: [\"2222\"]\n"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"apply", []string{"apply", "-f", rules, "--if-match", "3"}},
		{"apply-json", []string{"apply", "-f", rules, "-o", "json"}},
		{"get-rulesets", []string{"get", "rulesets"}},
		{"get-rulesets-json", []string{"get", "rulesets", "-o", "json"}},
		{"get-hosts", []string{"get", "hosts"}},
		{"get-host", []string{"get", "host", "web-1"}},
		{"get-host-failed", []string{"get", "host", "web-3"}},
		{"get-rollouts", []string{"get", "rollouts"}},
		{"rollout-status", []string{"rollout", "status", "r-20261202T030000Z-ab12"}},
		{"rollout-start", []string{"rollout", "start", "edge", "--version", "4", "--waves", "1,50%,100%", "--pause", "30s"}},
		{"rollout-abort", []string{"rollout", "abort", "r-20261202T030000Z-ab12"}},
		{"history", []string{"history", "edge"}},
		{"diff", []string{"diff", "edge", "1", "2"}},
		{"rollback", []string{"rollback", "edge", "--to", "3"}},
		{"stats", []string{"stats"}},
		{"stats-yaml", []string{"stats", "--host", "web-1", "-o", "yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := ctl(srv, tc.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			golden(t, tc.name, out)
		})
	}

	// What went over the wire.
	want := map[string]func(r request) string{
		"PUT /v1/rulesets/edge": func(r request) string {
			if !strings.Contains(r.body, `"dstPorts":["2222"]`) {
				return "body " + r.body
			}
			return ""
		},
		"POST /v1/rollouts": func(r request) string {
			var spec proto.RolloutSpec
			json.Unmarshal([]byte(r.body), &spec)
			if spec.RuleSet != "edge" || spec.Version != 4 || strings.Join(spec.Waves, ",") != "1,50%,100%" || spec.Pause != "30s" {
				return "spec " + r.body
			}
			return ""
		},
		"POST /v1/rulesets/edge/rollback": func(r request) string {
			if r.body != `{"to":3}` {
				return "body " + r.body
			}
			return ""
		},
		"GET /v1/rulesets/edge/diff": func(r request) string {
			if r.query != "from=1&to=2" {
				return "query " + r.query
			}
			return ""
		},
		"GET /v1/telemetry": func(r request) string { return "" },
	}
	ifMatch := ""
	for _, r := range api.seen {
		if r.auth != "Bearer tok-123" {
			t.Errorf("%s %s without the token: %q", r.method, r.path, r.auth)
		}
		if r.method == "PUT" && ifMatch == "" {
			ifMatch = r.ifMatch
		}
		if check, ok := want[r.method+" "+r.path]; ok {
			if problem := check(r); problem != "" {
				t.Errorf("%s %s: %s", r.method, r.path, problem)
			}
		}
	}
	if ifMatch != "3" {
		t.Errorf("apply --if-match 3 sent If-Match %q", ifMatch)
	}
}

func TestAPICommandErrors(t *testing.T) {
	_, srv := newFakeAPI(t, map[string]answer{
		"PUT /v1/rulesets/edge": {409, proto.APIError{Error: proto.APIErrorBody{Code: proto.CodeConflict,
			Message: "version conflict: rule set edge is at version 5, not 3 (if-match): read it again and reapply the change"}}},
		"GET /v1/rulesets": {401, proto.APIError{Error: proto.APIErrorBody{Code: proto.CodeUnauthorized, Message: "unknown token"}}},
		"GET /v1/hosts":    {403, proto.APIError{Error: proto.APIErrorBody{Code: proto.CodeForbidden, Message: "role viewer may not do this"}}},
		"POST /v1/rollouts": {400, proto.APIError{Error: proto.APIErrorBody{Code: proto.CodeInvalid, Message: "invalid rollout",
			Problems: []proto.Problem{{Path: "waves[1]", Message: `"150%" is not a count or a percentage of 1-100%`}}}}},
		"GET /v1/telemetry": {503, proto.APIError{Error: proto.APIErrorBody{Code: proto.CodeUnavailable, Message: "etcd did not answer"}}},
	})
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	os.WriteFile(rules, []byte("apiVersion: xdpfw/v1\nkind: RuleSet\nname: edge\nmode: deny\nrules: []\n"), 0o644)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: xdpfw/v1\nkind: RuleSet\nname: edge\nmode: deny\nrules:\n  - id: x\n    action: drop\n    dstPorts: [\"90-80\"]\n"), 0o644)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"apply", "-f", rules, "--if-match", "3"}, exitConflict, "is at version 5, not 3"},
		{[]string{"get", "rulesets"}, exitUnauthorized, "unknown token (give a token with --token"},
		{[]string{"get", "hosts"}, exitUnauthorized, "ask for a token with a role"},
		{[]string{"rollout", "start", "edge", "--version", "4", "--waves", "1,150%"}, exitError, `waves[1]: "150%" is not a count`},
		{[]string{"stats"}, exitUnavailable, "etcd did not answer"},
		{[]string{"get", "rollouts", "nosuch"}, exitNotFound, "no route"},
		{[]string{"apply", "-f", bad}, exitError, "range 90-80 is empty"},
		{[]string{"get", "things"}, exitUsage, `get "things"`},
		{[]string{"rollout", "start", "edge"}, exitUsage, "--version N"},
		{[]string{"diff", "edge", "1", "x"}, exitUsage, "want numbers"},
		{[]string{"stats", "-o", "xml"}, exitUsage, `-o "xml"`},
	} {
		code, _, errOut := ctl(srv, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("xdpfwctl %s: exit %d, stderr %q; want exit %d and %q", strings.Join(tc.args, " "), code, errOut, tc.code, tc.want)
		}
	}
	// Nothing listens: the API did not answer.
	code, _, errOut := ctl("http://127.0.0.1:1", "get", "rulesets")
	if code != exitUnavailable || !strings.Contains(errOut, "did not answer") {
		t.Errorf("unreachable API: exit %d, %q", code, errOut)
	}
}

func TestTopRefreshes(t *testing.T) {
	api, srv := newFakeAPI(t, fleetAnswers())
	code, out, errOut := ctl(srv, "top", "--count", "3", "--interval", "1ms", "--limit", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if n := strings.Count(out, clearScreen); n != 3 {
		t.Errorf("%d refreshes, want 3", n)
	}
	if len(api.seen) != 3 {
		t.Errorf("%d requests, want 3", len(api.seen))
	}
	// --limit 2: the two busiest rules, busiest first.
	last := out[strings.LastIndex(out, clearScreen):]
	if i, j := strings.Index(last, "threat-intel"), strings.Index(last, "ssh"); i < 0 || j < 0 || i > j || strings.Contains(last, "lockdown") {
		t.Errorf("top's rules, want threat-intel then ssh and nothing else:\n%s", last)
	}
	fmt.Fprint(io.Discard, out)
}

// A token from the environment never shows in any output: not in the
// usage text a bad flag prints, nor in an error.
func TestTokenNeverPrinted(t *testing.T) {
	const secret = "env-token-never-printed-0123456789"
	t.Setenv(EnvToken, secret)
	for _, args := range [][]string{
		{"get", "hosts", "--bogus"},
		{"get", "hosts", "--help"},
		{"get", "hosts", "--server", "http://127.0.0.1:1", "--timeout", "200ms"},
	} {
		_, stdout, stderr := runCtl(t, args...)
		if strings.Contains(stdout+stderr, secret) {
			t.Errorf("xdpfwctl %s printed the token:\n%s%s", strings.Join(args, " "), stdout, stderr)
		}
	}
}
