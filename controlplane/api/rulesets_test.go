package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/xdpfw/xdpfw/proto"
)

func TestRuleSetLifecycle(t *testing.T) {
	e := newEnv(t)

	// Create from YAML.
	r := e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80), "Content-Type", "application/yaml")
	var w1 proto.RuleSetWrite
	r.decode(t, &w1)
	if w1.Name != "web" || w1.Version != 1 || w1.Revision == 0 || w1.Diff != nil {
		t.Fatalf("first write: %+v", w1)
	}
	if r.header.Get("ETag") != `"1"` || r.header.Get("Location") != "/v1/rulesets/web" {
		t.Fatalf("first write headers: ETag %q Location %q", r.header.Get("ETag"), r.header.Get("Location"))
	}

	// A new version from JSON, based on version 1: 200 and the diff.
	rs2, err := proto.DecodeRuleSet([]byte(ruleSetYAML("web", 443)))
	if err != nil {
		t.Fatal(err)
	}
	rs2.Rules = append(rs2.Rules, proto.Rule{ID: "icmp", Action: proto.ActionDrop, Protocol: proto.ProtoICMP})
	r = e.must(http.StatusOK, "PUT", "/v1/rulesets/web", operatorToken, rs2, "If-Match", "1", "Content-Type", "application/json")
	var w2 proto.RuleSetWrite
	r.decode(t, &w2)
	if w2.Version != 2 || w2.Revision <= w1.Revision || w2.Diff == nil || w2.Diff.From != 1 || w2.Diff.To != 2 {
		t.Fatalf("second write: %+v", w2)
	}
	if got := changeSummary(w2.Diff.Changes); got != "changed rules[web]; added rules[icmp]" {
		t.Fatalf("diff of the second write: %s", got)
	}
	// If-Match takes the ETag's quoted form too.
	e.must(http.StatusOK, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 8080), "If-Match", `"2"`)

	// The head, with its version as ETag.
	r = e.must(http.StatusOK, "GET", "/v1/rulesets/web", viewerToken, nil)
	var head proto.RuleSetVersion
	r.decode(t, &head)
	if head.Name != "web" || head.Version != 3 || head.RuleSet.Rules[1].DstPorts[0] != "8080" || r.header.Get("ETag") != `"3"` {
		t.Fatalf("head: %+v, ETag %q", head, r.header.Get("ETag"))
	}
	r = e.must(http.StatusOK, "GET", "/v1/rulesets/web/versions/2", viewerToken, nil)
	var v2 proto.RuleSetVersion
	r.decode(t, &v2)
	if v2.Version != 2 || !reflect.DeepEqual(v2.RuleSet, rs2) {
		t.Fatalf("version 2: %+v, want %+v", v2, rs2)
	}

	// History, with authors from the audit trail.
	r = e.must(http.StatusOK, "GET", "/v1/rulesets/web/versions", viewerToken, nil)
	var hist []proto.RuleSetVersionInfo
	r.decode(t, &hist)
	if len(hist) != 3 || hist[0].Version != 1 || hist[0].Revision != w1.Revision || hist[0].Author != "oscar" || hist[0].At.IsZero() ||
		hist[1].Rules != 3 || hist[2].Version != 3 {
		t.Fatalf("history: %+v", hist)
	}

	r = e.must(http.StatusOK, "GET", "/v1/rulesets/web/diff?from=1&to=2", viewerToken, nil)
	var d proto.RuleSetDiff
	r.decode(t, &d)
	if d.Name != "web" || d.From != 1 || d.To != 2 || changeSummary(d.Changes) != "changed rules[web]; added rules[icmp]" {
		t.Fatalf("diff 1..2: %+v", d)
	}
	r = e.must(http.StatusOK, "GET", "/v1/rulesets/web/diff?from=2&to=2", viewerToken, nil)
	if !strings.Contains(string(r.body), `"changes":[]`) {
		t.Fatalf("diff of a version with itself: %s", r.body)
	}

	// Another rule set, and the list.
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/api", operatorToken, ruleSetYAML("api", 80), "If-Match", "0")
	r = e.must(http.StatusOK, "GET", "/v1/rulesets", viewerToken, nil)
	var list []proto.RuleSetSummary
	r.decode(t, &list)
	want := []proto.RuleSetSummary{{Name: "api", Version: 1, Rules: 2}, {Name: "web", Version: 3, Rules: 2}}
	if !reflect.DeepEqual(list, want) {
		t.Fatalf("list: %+v, want %+v", list, want)
	}
}

func changeSummary(cs []proto.DiffChange) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, c.Kind+" "+c.Path)
	}
	return strings.Join(parts, "; ")
}

func TestRuleSetListEmpty(t *testing.T) {
	e := newEnv(t)
	r := e.must(http.StatusOK, "GET", "/v1/rulesets", viewerToken, nil)
	if string(r.body) != "[]\n" {
		t.Fatalf("empty list: %q", r.body)
	}
}

// Every refused write answers the right error and leaves etcd as it was.
func TestRuleSetWritesRefused(t *testing.T) {
	const bodyCap = 2 << 20 // small, to test the cap without sending 64 MiB
	e := newEnv(t, func(c *Config) { c.MaxBodyBytes = bodyCap })
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80))
	e.must(http.StatusOK, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 81))

	invalid := strings.NewReplacer("mode: deny", "mode: maybe", "203.0.113.0/24", "203.0.113.1/24", "dstPorts: [80]", "dstPorts: [70000]").
		Replace(ruleSetYAML("web", 80))
	big := ruleSetYAML("web", 80) + "# " + strings.Repeat("x", bodyCap) + "\n"
	// Under the body cap, over the store's 1 MiB document limit: big sets
	// are stored as chunks, but sets of 4,000 prefixes (each under the
	// chunking threshold) stay in the document: 20 sets of 4,000 are 1.4 MB.
	var sets []string
	for s := range 20 {
		var prefixes []string
		for i := range 4000 {
			prefixes = append(prefixes, fmt.Sprintf(`"10.%d.%d.%d/32"`, s, i/256, i%256))
		}
		sets = append(sets, fmt.Sprintf("  s%d: [%s]\n", s, strings.Join(prefixes, ",")))
	}
	huge := strings.Replace(ruleSetYAML("web", 80), "sets:\n", "sets:\n"+strings.Join(sets, ""), 1)

	tests := []struct {
		name     string
		method   string
		path     string
		token    string
		body     string
		header   []string
		code     int
		errCode  string
		message  string
		problems []string // "PATH: MESSAGE" prefixes, in order
	}{
		{"every problem with its path", "PUT", "/v1/rulesets/web", operatorToken, invalid, nil, 400, proto.CodeInvalid, "3 problem(s)",
			[]string{"mode: unknown mode", "sets.bad-actors[0]: ", "rules[1].dstPorts[0]: "}},
		{"name mismatch", "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("api", 80), nil, 400, proto.CodeInvalid, "",
			[]string{`name: the document names rule set "api" but the URL names "web"`}},
		{"name mismatch and a bad document", "PUT", "/v1/rulesets/web", operatorToken, strings.Replace(ruleSetYAML("api", 80), "mode: deny", "mode: x", 1), nil, 400, proto.CodeInvalid, "",
			[]string{"name: ", "mode: "}},
		{"unknown field", "PUT", "/v1/rulesets/web", operatorToken, strings.Replace(ruleSetYAML("web", 80), "dstPorts", "dstport", 1), nil, 400, proto.CodeInvalid, "not a rule set document",
			[]string{`rules[1]: unknown field "dstport"`}},
		{"not YAML", "PUT", "/v1/rulesets/web", operatorToken, "rules: [", nil, 400, proto.CodeInvalid, "yaml", nil},
		{"empty body", "PUT", "/v1/rulesets/web", operatorToken, "", nil, 400, proto.CodeInvalid, "no rule set", nil},
		{"two documents", "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 1) + "---\n" + ruleSetYAML("web", 2), nil, 400, proto.CodeInvalid, "want exactly one", nil},
		{"feed file", "PUT", "/v1/rulesets/web", operatorToken, strings.Replace(ruleSetYAML("web", 80), `[203.0.113.0/24, "2001:db8:bad::/48"]`, "{file: bad.txt}", 1), nil, 400, proto.CodeInvalid, "",
			[]string{"sets.bad-actors: "}},
		{"bad name in the URL", "PUT", "/v1/rulesets/Web_1", operatorToken, ruleSetYAML("web", 80), nil, 400, proto.CodeInvalid, "not valid", []string{"name: "}},
		{"bad If-Match", "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80), []string{"If-Match", "latest"}, 400, proto.CodeInvalid, "If-Match", nil},
		{"negative If-Match", "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80), []string{"If-Match", "-1"}, 400, proto.CodeInvalid, "If-Match", nil},
		{"stale If-Match", "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 82), []string{"If-Match", "1"}, 409, proto.CodeConflict, "is at version 2, not 1", nil},
		{"future If-Match", "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 82), []string{"If-Match", "9"}, 409, proto.CodeConflict, "is at version 2, not 9", nil},
		{"create only, exists", "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 82), []string{"If-Match", "0"}, 409, proto.CodeConflict, "already exists", nil},
		{"If-Match on a missing rule set", "PUT", "/v1/rulesets/api", operatorToken, ruleSetYAML("api", 82), []string{"If-Match", "1"}, 409, proto.CodeConflict, "does not exist", nil},
		{"body over the cap", "PUT", "/v1/rulesets/web", operatorToken, big, nil, 413, proto.CodeTooLarge, "over 2097152 bytes", nil},
		{"document over the store's limit", "PUT", "/v1/rulesets/web", operatorToken, huge, nil, 413, proto.CodeTooLarge, "document too large", nil},
		{"rollback to a missing version", "POST", "/v1/rulesets/web/rollback", operatorToken, `{"to": 7}`, nil, 404, proto.CodeNotFound, "web version 7", nil},
		{"rollback of a missing rule set", "POST", "/v1/rulesets/api/rollback", operatorToken, `{"to": 1}`, nil, 404, proto.CodeNotFound, "rule set api", nil},
		{"rollback without to", "POST", "/v1/rulesets/web/rollback", operatorToken, `{}`, nil, 400, proto.CodeInvalid, "", []string{"to: 0: want a version number"}},
		{"rollback with an unknown field", "POST", "/v1/rulesets/web/rollback", operatorToken, `{"to": 1, "force": true}`, nil, 400, proto.CodeInvalid, `unknown field "force"`, nil},
		{"rollback, stale If-Match", "POST", "/v1/rulesets/web/rollback", operatorToken, `{"to": 1}`, []string{"If-Match", "1"}, 409, proto.CodeConflict, "is at version 2, not 1", nil},
		{"rollback body over the cap", "POST", "/v1/rulesets/web/rollback", operatorToken, `{"to": 1}` + strings.Repeat(" ", bodyCap), nil, 413, proto.CodeTooLarge, "", nil},
		{"delete of a missing rule set", "DELETE", "/v1/rulesets/api", adminToken, "", nil, 404, proto.CodeNotFound, "rule set api", nil},
		{"delete, stale If-Match", "DELETE", "/v1/rulesets/web", adminToken, "", []string{"If-Match", "1"}, 409, proto.CodeConflict, "is at version 2, not 1", nil},
		{"delete, If-Match 0", "DELETE", "/v1/rulesets/web", adminToken, "", []string{"If-Match", "0"}, 400, proto.CodeInvalid, "If-Match", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.revision()
			r := e.do(tt.method, tt.path, tt.token, tt.body, tt.header...)
			if r.code != tt.code {
				t.Fatalf("%d, want %d: %s", r.code, tt.code, r.body)
			}
			eb := r.apiError(t)
			if eb.Code != tt.errCode || !strings.Contains(eb.Message, tt.message) {
				t.Fatalf("error %+v, want code %s and a message with %q", eb, tt.errCode, tt.message)
			}
			if tt.problems != nil {
				if len(eb.Problems) != len(tt.problems) {
					t.Fatalf("problems %v, want %d: %q", eb.Problems, len(tt.problems), tt.problems)
				}
				for i, p := range eb.Problems {
					if !strings.HasPrefix(p.String(), tt.problems[i]) {
						t.Errorf("problem %d: %q, want it to start with %q", i, p.String(), tt.problems[i])
					}
				}
			}
			if after := e.revision(); after != before {
				t.Fatalf("etcd moved from revision %d to %d", before, after)
			}
		})
	}
	// The problems are JSON with their paths.
	r := e.must(400, "PUT", "/v1/rulesets/web", operatorToken, invalid)
	if !strings.Contains(string(r.body), `{"path":"mode","message":"unknown mode \"maybe\" (want deny or allow)"}`) {
		t.Fatalf("problems without paths: %s", r.body)
	}
}

func TestReadsNotFoundAndInvalid(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80))
	tests := []struct {
		path    string
		code    int
		message string
	}{
		{"/v1/rulesets/nope", 404, "rule set nope"},
		{"/v1/rulesets/nope/versions", 404, "rule set nope"},
		{"/v1/rulesets/web/versions/2", 404, "rule set web version 2"},
		{"/v1/rulesets/web/versions/0", 400, `version "0"`},
		{"/v1/rulesets/web/versions/x", 400, `version "x"`},
		{"/v1/rulesets/BAD/versions", 400, "not valid"},
		{"/v1/rulesets/web/diff?from=1", 400, "from=VERSION&to=VERSION"},
		{"/v1/rulesets/web/diff?from=a&to=0", 400, "from=VERSION&to=VERSION"},
		{"/v1/rulesets/web/diff?from=1&to=2", 404, "rule set web version 2"},
		{"/v1/rulesets/nope/diff?from=1&to=2", 404, "rule set nope"},
		{"/v1/hosts/nope.example", 404, "host nope.example"},
		{"/v1/hosts/Bad_Host", 400, "host name"},
		{"/v1/telemetry?host=nope.example", 404, "host nope.example has no telemetry"},
		{"/v1/telemetry?host=Bad_Host&ruleset=Bad/x&perHost=maybe", 400, "bad query"},
		{"/v1/nothing-here", 404, "no route GET /v1/nothing-here"},
		{"/nothing-here", 404, "no route"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			r := e.do("GET", tt.path, viewerToken, nil)
			if r.code != tt.code {
				t.Fatalf("%d, want %d: %s", r.code, tt.code, r.body)
			}
			if eb := r.apiError(t); !strings.Contains(eb.Message, tt.message) {
				t.Fatalf("message %q, want %q", eb.Message, tt.message)
			}
		})
	}
	r := e.must(http.StatusMethodNotAllowed, "PATCH", "/v1/rulesets/web", viewerToken, nil)
	if eb := r.apiError(t); eb.Code != proto.CodeInvalid || !strings.Contains(r.header.Get("Allow"), "PUT") {
		t.Fatalf("PATCH: %+v, Allow %q", eb, r.header.Get("Allow"))
	}
	r = e.must(http.StatusBadRequest, "GET", "/v1/telemetry?host=Bad_Host&ruleset=Bad/x&perHost=maybe", viewerToken, nil)
	var paths []string
	for _, p := range r.apiError(t).Problems {
		paths = append(paths, p.Path)
	}
	if strings.Join(paths, ",") != "host,ruleset,perHost" {
		t.Fatalf("telemetry problems at %v, want host, ruleset, perHost", paths)
	}
}

func TestRollback(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80))
	e.must(http.StatusOK, "PUT", "/v1/rulesets/web", operatorToken, strings.Replace(ruleSetYAML("web", 443), "mode: deny", "mode: allow", 1))
	r := e.must(http.StatusOK, "POST", "/v1/rulesets/web/rollback", operatorToken, map[string]int64{"to": 1}, "If-Match", "2")
	var w proto.RuleSetWrite
	r.decode(t, &w)
	if w.Version != 3 || w.Diff == nil || w.Diff.From != 2 || w.Diff.To != 3 || changeSummary(w.Diff.Changes) != "changed mode; changed rules[web]" {
		t.Fatalf("rollback: %+v", w)
	}
	var v1, v3 proto.RuleSetVersion
	e.must(200, "GET", "/v1/rulesets/web/versions/1", viewerToken, nil).decode(t, &v1)
	e.must(200, "GET", "/v1/rulesets/web", viewerToken, nil).decode(t, &v3)
	if v3.Version != 3 || !reflect.DeepEqual(v1.RuleSet, v3.RuleSet) {
		t.Fatalf("version 3 %+v, want it equal to version 1 %+v", v3, v1)
	}
	r = e.must(200, "GET", "/v1/rulesets/web/diff?from=1&to=3", viewerToken, nil)
	if !strings.Contains(string(r.body), `"changes":[]`) {
		t.Fatalf("diff 1..3 after the rollback: %s", r.body)
	}
	var recs []proto.AuditRecord
	e.must(200, "GET", "/v1/audit?limit=1", adminToken, nil).decode(t, &recs)
	if len(recs) != 1 || recs[0].Action != "POST /v1/rulesets/web/rollback" || recs[0].Result != "version 3 (rollback to version 1)" ||
		recs[0].Who != "oscar" || recs[0].Revision != w.Revision {
		t.Fatalf("audit record of the rollback: %+v", recs)
	}
}

// Writers that all based their change on the same version: exactly one
// wins each version, the others get 409 and write nothing.
func TestConcurrentWritersSameIfMatch(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 1))
	const writers, rounds = 4, 5
	for round := range rounds {
		base := round + 1
		codes := make([]int, writers)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for w := range writers {
			wg.Go(func() {
				<-start
				r := e.do("PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 1000*w+round), "If-Match", fmt.Sprint(base))
				codes[w] = r.code
			})
		}
		close(start)
		wg.Wait()
		won, lost := 0, 0
		for _, c := range codes {
			switch c {
			case http.StatusOK:
				won++
			case http.StatusConflict:
				lost++
			default:
				t.Fatalf("round %d: answers %v", round, codes)
			}
		}
		if won != 1 || lost != writers-1 {
			t.Fatalf("round %d: answers %v, want one 200 and %d 409", round, codes, writers-1)
		}
	}
	var hist []proto.RuleSetVersionInfo
	e.must(200, "GET", "/v1/rulesets/web/versions", viewerToken, nil).decode(t, &hist)
	if len(hist) != rounds+1 {
		t.Fatalf("%d versions, want %d", len(hist), rounds+1)
	}
	var recs []proto.AuditRecord
	e.must(200, "GET", "/v1/audit?limit=100", adminToken, nil).decode(t, &recs)
	if len(recs) != rounds+1 {
		t.Fatalf("%d audit records, want one per version (%d)", len(recs), rounds+1)
	}
}

func TestDeleteRuleSet(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80))
	e.must(http.StatusOK, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 81))
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/web2", operatorToken, ruleSetYAML("web2", 80))
	e.put(e.keys.RuleSetReleased("web"), `{"version":1,"at":"2026-01-01T00:00:00Z"}`)
	desired := func(host string, refs ...proto.RuleSetRef) {
		doc, _ := json.Marshal(proto.NewHostDesired(refs...))
		e.put(e.keys.HostDesired(host), string(doc))
	}
	desired("h1.example", proto.RuleSetRef{Name: "web", Version: 2})
	spec, _ := json.Marshal(proto.RolloutSpec{RuleSet: "web", Version: 2})
	e.put(e.keys.RolloutSpec("r1"), string(spec))
	state, _ := json.Marshal(proto.RolloutState{State: proto.RolloutPaused})
	e.put(e.keys.RolloutState("r1"), string(state))

	refused := func(want ...string) {
		t.Helper()
		before := e.revision()
		r := e.must(http.StatusConflict, "DELETE", "/v1/rulesets/web", adminToken, nil)
		eb := r.apiError(t)
		for _, w := range want {
			if eb.Code != proto.CodeConflict || !strings.Contains(eb.Message, w) {
				t.Fatalf("error %+v, want a conflict naming %q", eb, w)
			}
		}
		if after := e.revision(); after != before {
			t.Fatalf("a refused delete moved etcd from revision %d to %d", before, after)
		}
	}
	refused("h1.example", "r1")
	desired("h1.example", proto.RuleSetRef{Name: "web2", Version: 1})
	refused("active rollout(s) (r1)")
	state, _ = json.Marshal(proto.RolloutState{State: proto.RolloutSucceeded})
	e.put(e.keys.RolloutState("r1"), string(state))

	// Operators may not delete.
	before := e.revision()
	e.must(http.StatusForbidden, "DELETE", "/v1/rulesets/web", operatorToken, nil)
	e.refusedOnly(before, "a forbidden delete")

	r := e.must(http.StatusNoContent, "DELETE", "/v1/rulesets/web", adminToken, nil, "If-Match", "2")
	if len(r.body) != 0 {
		t.Fatalf("204 with a body: %s", r.body)
	}
	e.must(http.StatusNotFound, "GET", "/v1/rulesets/web", viewerToken, nil)
	e.must(http.StatusNotFound, "GET", "/v1/rulesets/web/versions/1", viewerToken, nil)
	var list []proto.RuleSetSummary
	e.must(http.StatusOK, "GET", "/v1/rulesets", viewerToken, nil).decode(t, &list)
	if len(list) != 1 || list[0].Name != "web2" {
		t.Fatalf("list after the delete: %+v", list)
	}
	var recs []proto.AuditRecord
	e.must(http.StatusOK, "GET", "/v1/audit?limit=1", adminToken, nil).decode(t, &recs)
	if len(recs) != 1 || recs[0].Action != "DELETE /v1/rulesets/web" || recs[0].Who != "alice" || recs[0].Role != proto.RoleAdmin ||
		recs[0].Result != "deleted (head was version 2)" {
		t.Fatalf("audit record of the delete: %+v", recs)
	}
	// The name can be used again, from version 1.
	r = e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80), "If-Match", "0")
	var w proto.RuleSetWrite
	r.decode(t, &w)
	if w.Version != 1 || w.Diff != nil {
		t.Fatalf("recreated: %+v", w)
	}
}

// A rule set that hosts enforce through its release is retired by DELETE
// (202: the controller takes it off them), and deleted by a DELETE once
// no host's desired state names it.
func TestDeleteRetiresARuleSetHostsEnforce(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80))
	e.put(e.keys.RuleSetReleased("web"), `{"version":1,"at":"2026-01-01T00:00:00Z"}`)
	doc, _ := json.Marshal(proto.NewHostDesired(proto.RuleSetRef{Name: "web", Version: 1}))
	e.put(e.keys.HostDesired("h1"), string(doc))

	var ans RetireAnswer
	e.must(http.StatusAccepted, "DELETE", "/v1/rulesets/web", adminToken, nil).decode(t, &ans)
	if ans.Name != "web" || len(ans.Hosts) != 1 || ans.Hosts[0] != "h1" || !strings.Contains(ans.Message, "DELETE it again") {
		t.Fatalf("retire answer %+v", ans)
	}
	if resp, err := e.cli.Get(context.Background(), e.keys.RuleSetReleased("web")); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("the release is still there: %v %v", resp, err)
	}
	var recs []proto.AuditRecord
	e.must(http.StatusOK, "GET", "/v1/audit?limit=1", adminToken, nil).decode(t, &recs)
	if len(recs) != 1 || !strings.HasPrefix(recs[0].Result, "retired") {
		t.Fatalf("audit of the retirement: %+v", recs)
	}
	// Still referenced: 202 again, nothing deleted.
	e.must(http.StatusAccepted, "DELETE", "/v1/rulesets/web", adminToken, nil)
	e.must(http.StatusOK, "GET", "/v1/rulesets/web", viewerToken, nil)

	// The controller took it off h1: now DELETE deletes.
	e.put(e.keys.HostDesired("h1"), `{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[]}`)
	e.must(http.StatusNoContent, "DELETE", "/v1/rulesets/web", adminToken, nil)
	e.must(http.StatusNotFound, "GET", "/v1/rulesets/web", viewerToken, nil)
}
