package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/xdpfw/xdpfw/proto"
)

func TestRollouts(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusCreated, "PUT", "/v1/rulesets/web", operatorToken, ruleSetYAML("web", 80))

	refused := []struct {
		name, body string
		code       int
		errCode    string
		problems   []string
	}{
		{"missing rule set", `{"ruleset": "nope", "version": 1}`, 400, proto.CodeInvalid, []string{"ruleset: "}},
		{"missing version", `{"ruleset": "web", "version": 9}`, 400, proto.CodeInvalid, []string{"version: rule set web has no version 9"}},
		{"bad waves", `{"ruleset": "web", "version": 1, "waves": ["1", "150%"]}`, 400, proto.CodeInvalid, []string{"waves[1]: "}},
		{"unknown field", `{"ruleset": "web", "version": 1, "wave": ["1"]}`, 400, proto.CodeInvalid, nil},
		{"not JSON", `ruleset: web`, 400, proto.CodeInvalid, nil},
		// Valid, but no agent reports a status yet: nothing to roll out to.
		{"no live host", `{"ruleset": "web", "version": 1}`, 400, proto.CodeInvalid, []string{"selector: no live host: no agent reports a status"}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			before := e.revision()
			r := e.must(tt.code, "POST", "/v1/rollouts", operatorToken, tt.body)
			eb := r.apiError(t)
			if eb.Code != tt.errCode || len(eb.Problems) != len(tt.problems) {
				t.Fatalf("error %+v, want %s with problems %q", eb, tt.errCode, tt.problems)
			}
			for i, p := range eb.Problems {
				if !strings.HasPrefix(p.String(), tt.problems[i]) {
					t.Errorf("problem %q, want %q", p, tt.problems[i])
				}
			}
			if e.revision() != before {
				t.Fatal("a refused rollout wrote")
			}
		})
	}

	status, _ := json.Marshal(proto.HostStatus{APIVersion: proto.APIVersion, Kind: proto.KindHostStatus, Host: "h1.example", Applied: []proto.RuleSetRef{}})
	e.put(e.keys.HostStatus("h1.example"), string(status))
	// Selected by neither the rollout's selector: refused with why.
	r := e.must(http.StatusBadRequest, "POST", "/v1/rollouts", operatorToken, `{"ruleset": "web", "version": 1, "selector": {"dc": "9"}}`)
	if eb := r.apiError(t); len(eb.Problems) != 1 || !strings.Contains(eb.Problems[0].Message, "no live host matches the rule set's selector {} (every host) and the rollout's selector {dc=9}: 1 hosts report a status") {
		t.Fatalf("rollout of no host: %+v", eb)
	}
	r = e.must(http.StatusCreated, "POST", "/v1/rollouts", operatorToken, proto.RolloutSpec{RuleSet: "web", Version: 1, Waves: []string{"1", "100%"}})
	var ro proto.Rollout
	r.decode(t, &ro)
	if ro.ID == "" || ro.Spec.RuleSet != "web" || ro.CreatedBy != "oscar" || ro.Control.Want != proto.RolloutWantRun ||
		r.header.Get("Location") != "/v1/rollouts/"+ro.ID {
		t.Fatalf("created: %+v, Location %q", ro, r.header.Get("Location"))
	}
	var got proto.Rollout
	e.must(http.StatusOK, "GET", "/v1/rollouts/"+ro.ID, viewerToken, nil).decode(t, &got)
	if got.ID != ro.ID || got.Spec.Version != 1 {
		t.Fatalf("GET: %+v", got)
	}
	var list []proto.Rollout
	e.must(http.StatusOK, "GET", "/v1/rollouts", viewerToken, nil).decode(t, &list)
	if len(list) != 1 || list[0].ID != ro.ID {
		t.Fatalf("list: %+v", list)
	}
	// One active rollout per rule set; and the rule set cannot go.
	before := e.revision()
	e.must(http.StatusConflict, "POST", "/v1/rollouts", operatorToken, `{"ruleset": "web", "version": 1}`)
	r = e.must(http.StatusConflict, "DELETE", "/v1/rulesets/web", adminToken, nil)
	if eb := r.apiError(t); !strings.Contains(eb.Message, ro.ID) {
		t.Fatalf("delete during a rollout: %+v, want the rollout named", eb)
	}
	if e.revision() != before {
		t.Fatal("refused requests wrote")
	}

	for _, step := range []struct{ verb, want string }{
		{"pause", proto.RolloutWantPause}, {"resume", proto.RolloutWantRun}, {"abort", proto.RolloutWantAbort},
	} {
		var c proto.Rollout
		e.must(http.StatusOK, "POST", "/v1/rollouts/"+ro.ID+"/"+step.verb, operatorToken, nil).decode(t, &c)
		if c.Control.Want != step.want || c.Control.By != "oscar" {
			t.Fatalf("%s: control %+v", step.verb, c.Control)
		}
	}
	before = e.revision()
	r = e.must(http.StatusConflict, "POST", "/v1/rollouts/"+ro.ID+"/resume", operatorToken, nil)
	if eb := r.apiError(t); eb.Code != proto.CodeConflict || !strings.Contains(eb.Message, "abort") {
		t.Fatalf("resume after abort: %+v", eb)
	}
	e.must(http.StatusNotFound, "GET", "/v1/rollouts/nope", viewerToken, nil)
	e.must(http.StatusNotFound, "POST", "/v1/rollouts/nope/pause", operatorToken, nil)
	e.must(http.StatusForbidden, "POST", "/v1/rollouts/"+ro.ID+"/pause", viewerToken, nil)
	e.refusedOnly(before, "refused controls")

	// Every rollout write is in the audit trail, newest first.
	var recs []proto.AuditRecord
	e.must(http.StatusOK, "GET", "/v1/audit?limit=5", adminToken, nil).decode(t, &recs)
	// The newest is the viewer's refused pause, audited as denied.
	if len(recs) == 0 || recs[0].Who != "vera" || recs[0].Target != "denied" || !strings.HasPrefix(recs[0].Result, "403") ||
		recs[0].Action != "POST /v1/rollouts/"+ro.ID+"/pause" {
		t.Fatalf("newest audit record %+v, want the viewer's refused pause", recs)
	}
	recs = recs[1:]
	want := []string{
		"POST /v1/rollouts/" + ro.ID + "/abort: want abort (rule set web version 1)",
		"POST /v1/rollouts/" + ro.ID + "/resume: want run (rule set web version 1)",
		"POST /v1/rollouts/" + ro.ID + "/pause: want pause (rule set web version 1)",
		"POST /v1/rollouts: created (rule set web version 1)",
	}
	if len(recs) != len(want) {
		t.Fatalf("audit records %+v", recs)
	}
	// Each record was written by the write's own transaction: at the
	// revision of the rollout key it records.
	writeRevs := []int64{}
	for _, key := range []string{e.keys.RolloutControl(ro.ID), e.keys.RolloutSpec(ro.ID)} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		kv, err := e.cli.Get(ctx, key, clientv3.WithRev(0))
		cancel()
		if err != nil || len(kv.Kvs) != 1 {
			t.Fatalf("get %s: %v", key, err)
		}
		if key == e.keys.RolloutControl(ro.ID) {
			writeRevs = append(writeRevs, kv.Kvs[0].ModRevision) // the abort, newest
		} else {
			writeRevs = append(writeRevs, kv.Kvs[0].CreateRevision)
		}
	}
	for i, rec := range recs {
		if got := rec.Action + ": " + rec.Result; got != want[i] || rec.Who != "oscar" || rec.Target != "rollout "+ro.ID || rec.Revision == 0 {
			t.Errorf("record %d: %+v, want %q by oscar", i, rec, want[i])
		}
		if (i == 0 && rec.Revision != writeRevs[0]) || (i == len(recs)-1 && rec.Revision != writeRevs[1]) {
			t.Errorf("record %d (%s) at revision %d, not in the transaction of the write it records (revisions %v)", i, rec.Result, rec.Revision, writeRevs)
		}
	}
}
