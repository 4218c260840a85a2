package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/proto"
)

// route is one /v1/ route with a request that would succeed or fail for
// reasons other than authorization.
type route struct {
	method, path string
	body         string
	need         string
}

func v1Routes() []route {
	return []route{
		{"GET", "/v1/rulesets", "", proto.RoleViewer},
		{"PUT", "/v1/rulesets/web", ruleSetYAML("web", 99), proto.RoleOperator},
		{"GET", "/v1/rulesets/web", "", proto.RoleViewer},
		{"DELETE", "/v1/rulesets/web", "", proto.RoleAdmin},
		{"GET", "/v1/rulesets/web/versions", "", proto.RoleViewer},
		{"GET", "/v1/rulesets/web/versions/1", "", proto.RoleViewer},
		{"GET", "/v1/rulesets/web/diff?from=1&to=1", "", proto.RoleViewer},
		{"POST", "/v1/rulesets/web/rollback", `{"to": 1}`, proto.RoleOperator},
		{"POST", "/v1/rollouts", `{"ruleset": "web", "version": 1}`, proto.RoleOperator},
		{"GET", "/v1/rollouts", "", proto.RoleViewer},
		{"GET", "/v1/rollouts/x", "", proto.RoleViewer},
		{"POST", "/v1/rollouts/x/pause", "", proto.RoleOperator},
		{"POST", "/v1/rollouts/x/resume", "", proto.RoleOperator},
		{"POST", "/v1/rollouts/x/abort", "", proto.RoleOperator},
		{"GET", "/v1/hosts", "", proto.RoleViewer},
		{"GET", "/v1/hosts/h1.example", "", proto.RoleViewer},
		{"GET", "/v1/telemetry", "", proto.RoleViewer},
		{"GET", "/v1/audit", "", proto.RoleAdmin},
	}
}

// Every /v1/ route: no token or an unknown one is 401, a role below the
// route's is 403, and neither writes anything but the audit record of the
// refusal. (Every route is tried without a token from one address: the
// failed-authentication limit is off here; TestRefusedRequestsAuditedAndThrottled
// tests it.)
func TestAuthorization(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AuthFailureLimit = -1 })
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80))
	tokens := map[string]string{proto.RoleViewer: viewerToken, proto.RoleOperator: operatorToken, proto.RoleAdmin: adminToken}
	below := map[string][]string{
		proto.RoleViewer:   nil,
		proto.RoleOperator: {proto.RoleViewer},
		proto.RoleAdmin:    {proto.RoleViewer, proto.RoleOperator},
	}
	for _, rt := range v1Routes() {
		t.Run(rt.method+" "+rt.path, func(t *testing.T) {
			check := func(token string, header []string, code int, errCode, message string) {
				t.Helper()
				before := e.revision()
				hdr := header
				if token != "" {
					hdr = append(hdr, "Authorization", "Bearer "+token)
				}
				r := e.do(rt.method, rt.path, "", rt.body, hdr...)
				if r.code != code {
					t.Fatalf("%s: %d, want %d: %s", message, r.code, code, r.body)
				}
				if eb := r.apiError(t); eb.Code != errCode || !strings.Contains(eb.Message, message) {
					t.Fatalf("error %+v, want %s with %q", eb, errCode, message)
				}
				if code == http.StatusUnauthorized && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
					t.Fatalf("401 without WWW-Authenticate: Bearer")
				}
				e.refusedOnly(before, message)
			}
			check("", nil, 401, proto.CodeUnauthorized, "no token")
			check("not-a-token", nil, 401, proto.CodeUnauthorized, "unknown token")
			check(viewerToken+"x", nil, 401, proto.CodeUnauthorized, "unknown token")
			check("", []string{"Authorization", "Basic " + viewerToken}, 401, proto.CodeUnauthorized, "not a bearer token")
			for _, role := range below[rt.need] {
				check(tokens[role], nil, 403, proto.CodeForbidden, "needs role "+rt.need)
			}
			// The route's own role gets past authorization: whatever the
			// answer, it is not 401 or 403.
			r := e.do(rt.method, rt.path, tokens[rt.need], rt.body)
			if r.code == http.StatusUnauthorized || r.code == http.StatusForbidden {
				t.Fatalf("role %s: %d: %s", rt.need, r.code, r.body)
			}
		})
	}
	// Unknown /v1/ paths need a token too; the others do not.
	e.must(http.StatusUnauthorized, "GET", "/v1/nowhere", "", nil)
	e.must(http.StatusNotFound, "GET", "/v1/nowhere", viewerToken, nil)
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		e.must(http.StatusOK, "GET", path, "", nil)
	}
}

func TestAudit(t *testing.T) {
	e := newEnv(t)
	var writes []proto.RuleSetWrite
	for i, tok := range []string{operatorToken, adminToken, operatorToken} {
		var w proto.RuleSetWrite
		e.must(http.StatusOK+map[bool]int{true: 1, false: 0}[i == 0], "PUT", "/v1/rulesets/web", tok, ruleSetYAML("web", 80+i)).decode(t, &w)
		writes = append(writes, w)
	}
	var recs []proto.AuditRecord
	e.must(http.StatusOK, "GET", "/v1/audit", adminToken, nil).decode(t, &recs)
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3: %+v", len(recs), recs)
	}
	for i, rec := range recs { // newest first
		w := writes[len(writes)-1-i]
		who, role := "oscar", proto.RoleOperator
		if w.Version == 2 {
			who, role = "alice", proto.RoleAdmin
		}
		if rec.Who != who || rec.Role != role || rec.Action != "PUT /v1/rulesets/web" || rec.Target != "ruleset web" ||
			rec.Result != fmt.Sprintf("version %d", w.Version) || rec.Revision != w.Revision || time.Since(rec.At) > time.Minute {
			t.Errorf("record %d: %+v, want %s (%s) writing version %d at revision %d", i, rec, who, role, w.Version, w.Revision)
		}
	}
	e.must(http.StatusOK, "GET", "/v1/audit?limit=2", adminToken, nil).decode(t, &recs)
	if len(recs) != 2 || recs[0].Revision != writes[2].Revision {
		t.Fatalf("limit=2: %+v", recs)
	}
	for _, bad := range []string{"0", "-1", "x", "10001"} {
		r := e.must(http.StatusBadRequest, "GET", "/v1/audit?limit="+bad, adminToken, nil)
		if eb := r.apiError(t); !strings.Contains(eb.Message, "want a number from 1 to 10000") {
			t.Fatalf("limit=%s: %+v", bad, eb)
		}
	}
}

func TestHosts(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80))
	desired, _ := json.Marshal(proto.NewHostDesired(proto.RuleSetRef{Name: "web", Version: 1}))
	status := proto.HostStatus{APIVersion: proto.APIVersion, Kind: proto.KindHostStatus, Host: "h1.example",
		AgentVersion: "test", Applied: []proto.RuleSetRef{{Name: "web", Version: 1}}, InSync: true,
		Interfaces: []proto.InterfaceStatus{{Name: "eth0", AttachMode: "native", Attached: true}}}
	statusDoc, _ := json.Marshal(status)
	e.put(e.keys.HostDesired("h1.example"), string(desired))
	e.put(e.keys.HostStatus("h1.example"), string(statusDoc))
	e.put(e.keys.HostDesired("h2.example"), string(desired)) // its agent is gone: Lost
	e.put(e.keys.HostTelemetry("h3.example"), `{"kind":"HostTelemetry"}`)
	// h4's agent runs, but its XDP program did not load.
	broken := status
	broken.Host, broken.Applied, broken.InSync = "h4.example", []proto.RuleSetRef{}, false
	broken.Interfaces = []proto.InterfaceStatus{{Name: "eth0", Attached: true, Error: "the kernel's verifier refused the program after 1000001 instructions: BPF program is too large. Processed 1000001 insn"}}
	broken.DataPlaneError = &proto.DataPlaneError{Interface: "eth0", Attempts: 3,
		Message: "load XDP program and maps for eth0: the kernel's verifier refused the program after 1000001 instructions: BPF program is too large. Processed 1000001 insn"}
	brokenDoc, _ := json.Marshal(broken)
	e.put(e.keys.HostDesired("h4.example"), string(desired))
	e.put(e.keys.HostStatus("h4.example"), string(brokenDoc))

	var hosts []proto.HostInfo
	e.must(http.StatusOK, "GET", "/v1/hosts", viewerToken, nil).decode(t, &hosts)
	if len(hosts) != 3 {
		t.Fatalf("hosts: %+v, want h1, h2 and h4 (h3 has telemetry only)", hosts)
	}
	want1 := proto.HostInfo{Host: "h1.example", Desired: []proto.RuleSetRef{{Name: "web", Version: 1}}, Status: &status, State: proto.HostStateInSync}
	if !reflect.DeepEqual(hosts[0], want1) {
		t.Fatalf("h1: %+v, want %+v", hosts[0], want1)
	}
	if hosts[1].Host != "h2.example" || !hosts[1].Lost || hosts[1].Status != nil || len(hosts[1].Desired) != 1 || hosts[1].State != proto.HostStateLost {
		t.Fatalf("h2: %+v, want lost with its desired state", hosts[1])
	}
	wantReason := "data plane: load XDP program and maps for eth0: the kernel's verifier refused the program after 1000001 instructions: BPF program is too large. Processed 1000001 insn"
	if h := hosts[2]; h.Host != "h4.example" || h.State != proto.HostStateFailed || h.Reason != wantReason || h.Status == nil || h.Status.DataPlaneError == nil {
		t.Fatalf("h4: %+v, want failed, with the reason\n%s", h, wantReason)
	}
	var one proto.HostInfo
	e.must(http.StatusOK, "GET", "/v1/hosts/h2.example", viewerToken, nil).decode(t, &one)
	if one.Host != "h2.example" || !one.Lost {
		t.Fatalf("h2: %+v", one)
	}
	e.must(http.StatusNotFound, "GET", "/v1/hosts/h3.example", viewerToken, nil)
}

func telemetryDoc(host string, pass, drop uint64, rules ...proto.RuleTelemetry) string {
	doc, _ := json.Marshal(proto.HostTelemetry{
		APIVersion: proto.APIVersion, Kind: proto.KindHostTelemetry, Host: host, IntervalSeconds: 10,
		Interfaces: []proto.InterfaceTelemetry{
			{Name: "eth0", Actions: map[string]proto.Rate{
				"pass-default": {Packets: pass, Bytes: 100 * pass, PPS: float64(pass) / 10},
				"drop-rule":    {Packets: drop, Bytes: 60 * drop, PPS: float64(drop) / 10},
			}, Rules: rules},
			{Name: "eth1", Actions: map[string]proto.Rate{"pass-default": {Packets: 1, Bytes: 100}}},
		},
	})
	return string(doc)
}

func ruleRate(set, id string, pkts uint64, pps float64) proto.RuleTelemetry {
	return proto.RuleTelemetry{RuleSet: set, ID: id, Action: "drop", Rate: proto.Rate{Packets: pkts, Bytes: 60 * pkts, PPS: pps, BPS: 60 * pps}}
}

func TestTelemetry(t *testing.T) {
	e := newEnv(t)
	e.put(e.keys.HostTelemetry("h1.example"), telemetryDoc("h1.example", 1000, 50,
		ruleRate("web", "intel", 40, 4), ruleRate("api", "flood", 10, 1)))
	e.put(e.keys.HostTelemetry("h2.example"), telemetryDoc("h2.example", 3000, 70,
		ruleRate("web", "intel", 60, 6), ruleRate("web", "scan", 10, 9)))
	e.put(e.keys.HostTelemetry("h3.example"), "not json")
	status, _ := json.Marshal(proto.HostStatus{APIVersion: proto.APIVersion, Kind: proto.KindHostStatus, Host: "h4.example"})
	e.put(e.keys.HostStatus("h4.example"), string(status))

	var rep proto.TelemetryReport
	e.must(http.StatusOK, "GET", "/v1/telemetry", viewerToken, nil).decode(t, &rep)
	if rep.Hosts != 2 || rep.PerHost != nil || time.Since(rep.At) > time.Minute {
		t.Fatalf("report: %+v", rep)
	}
	wantActions := map[string]proto.Rate{
		"pass-default": {Packets: 4002, Bytes: 400200, PPS: 400},
		"drop-rule":    {Packets: 120, Bytes: 7200, PPS: 12},
	}
	if !reflect.DeepEqual(rep.Actions, wantActions) {
		t.Fatalf("actions %+v, want %+v", rep.Actions, wantActions)
	}
	wantRules := []proto.RuleTelemetry{ // by rate, busiest first
		ruleRate("web", "intel", 100, 10),
		ruleRate("web", "scan", 10, 9),
		ruleRate("api", "flood", 10, 1),
	}
	if !reflect.DeepEqual(rep.Rules, wantRules) {
		t.Fatalf("rules %+v, want %+v", rep.Rules, wantRules)
	}

	e.must(http.StatusOK, "GET", "/v1/telemetry?ruleset=web&perHost=1", viewerToken, nil).decode(t, &rep)
	if len(rep.Rules) != 2 || rep.Rules[0].ID != "intel" || rep.Rules[1].ID != "scan" || len(rep.PerHost) != 2 ||
		len(rep.PerHost[0].Interfaces[0].Rules) != 1 || rep.PerHost[0].Host != "h1.example" {
		t.Fatalf("ruleset=web&perHost=1: %+v", rep)
	}

	rep = proto.TelemetryReport{}
	e.must(http.StatusOK, "GET", "/v1/telemetry?host=h2.example", viewerToken, nil).decode(t, &rep)
	if rep.Hosts != 1 || rep.Actions["drop-rule"].Packets != 70 || len(rep.PerHost) != 1 || rep.PerHost[0].Host != "h2.example" {
		t.Fatalf("host=h2.example: %+v", rep)
	}
	e.must(http.StatusNotFound, "GET", "/v1/telemetry?host=h4.example", viewerToken, nil)

	// No telemetry at all: an empty report, not an error.
	e2 := newEnv(t)
	r := e2.must(http.StatusOK, "GET", "/v1/telemetry", viewerToken, nil)
	if !strings.Contains(string(r.body), `"hosts":0,"actions":{},"rules":[]`) {
		t.Fatalf("empty report: %s", r.body)
	}
}

// A rate-limit rule's over-limit rates add up across hosts, and its
// dropped sources merge: the same source's packets summed, most first.
func TestAggregateLimitsAndDroppedSources(t *testing.T) {
	host := func(name string, limited float64, srcs ...proto.SourceCount) proto.HostTelemetry {
		rt := proto.RuleTelemetry{RuleSet: "edge", ID: "dns", Action: "rate-limit",
			Rate: proto.Rate{Packets: 100, PPS: 10}, Limited: &proto.Rate{Packets: 60, PPS: limited}, TopSources: srcs}
		return proto.HostTelemetry{Host: name, Interfaces: []proto.InterfaceTelemetry{{Name: "eth0", Rules: []proto.RuleTelemetry{rt}}}}
	}
	src := func(a string, n uint64) proto.SourceCount { return proto.SourceCount{Src: a, Packets: n} }
	docs := []proto.HostTelemetry{
		host("h1", 6, src("192.0.2.1", 30), src("192.0.2.2", 20), src("192.0.2.3", 10)),
		host("h2", 4, src("192.0.2.2", 25), src("2001:db8::1", 15), src("192.0.2.4", 5)),
		host("h3", 1, src("192.0.2.5", 4), src("192.0.2.6", 1)),
	}
	rep := Aggregate(docs, "", false, time.Now())
	if len(rep.Rules) != 1 {
		t.Fatalf("rules %+v", rep.Rules)
	}
	r := rep.Rules[0]
	if r.Limited == nil || r.Limited.PPS != 11 || r.Limited.Packets != 180 || r.PPS != 30 {
		t.Fatalf("dns: %+v over the limit %+v; want 30 pps, 11 over the limit (180 packets)", r.Rate, r.Limited)
	}
	want := []proto.SourceCount{src("192.0.2.2", 45), src("192.0.2.1", 30), src("2001:db8::1", 15), src("192.0.2.3", 10), src("192.0.2.4", 5)}
	if !reflect.DeepEqual(r.TopSources, want) {
		t.Fatalf("top sources %v, want %v", r.TopSources, want)
	}
}
