package api

import (
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/controlplane/auth"
	"github.com/xdpfw/xdpfw/proto"
)

// Stable log keys.
func zapRuleSet(name string) zap.Field { return zap.String("ruleset", name) }
func zapVersion(v int64) zap.Field     { return zap.Int64("version", v) }
func zapRevision(r int64) zap.Field    { return zap.Int64("revision", r) }
func zapWho(id auth.Identity) zap.Field {
	return zap.String("who", id.Name)
}
func zapRollout(id string) zap.Field { return zap.String("rollout", id) }

// MaxHostsPage is the most hosts one page of GET /v1/hosts holds.
const MaxHostsPage = 5000

// listHosts answers GET /v1/hosts[?limit=N[&continue=HOST]]: every host
// with a desired state, a status or an enrollment, by name. With limit,
// one page of at most N hosts after continue, and, when more follow, a
// Link header (rel="next") whose continue is the page's last host.
func (s *Server) listHosts(w http.ResponseWriter, r *http.Request, _ auth.Identity) error {
	q := r.URL.Query()
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxHostsPage {
			return invalid("limit=%q: want a number from 1 to %d", v, MaxHostsPage)
		}
		limit = n
	}
	after := q.Get("continue")
	if after != "" {
		if err := proto.ValidateHostName(after); err != nil {
			return invalid("continue=%q: %v", after, err)
		}
	}
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	names, err := s.store.ListHosts(ctx)
	if err != nil {
		return err
	}
	if after != "" {
		names = names[sort.SearchStrings(names, after+"\x00"):]
	}
	more := limit > 0 && len(names) > limit
	if more {
		names = names[:limit]
	}
	infos, err := s.store.HostInfos(ctx, names)
	if err != nil {
		return err
	}
	if more {
		next := url.Values{"limit": {strconv.Itoa(limit)}, "continue": {names[len(names)-1]}}
		w.Header().Set("Link", fmt.Sprintf(`</v1/hosts?%s>; rel="next"`, next.Encode()))
	}
	s.warnAlarms(w, r)
	writeJSON(w, http.StatusOK, infos)
	return nil
}

// getHost answers GET /v1/hosts/{host}.
func (s *Server) getHost(w http.ResponseWriter, r *http.Request, _ auth.Identity) error {
	host := r.PathValue("host")
	if err := proto.ValidateHostName(host); err != nil {
		return &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid, Message: err.Error(),
			Problems: []proto.Problem{{Path: "host", Message: err.Error()}}}
	}
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	infos, err := s.store.HostInfos(ctx, []string{host})
	if err != nil {
		return err
	}
	if len(infos) == 0 {
		return &Error{Status: http.StatusNotFound, Code: proto.CodeNotFound,
			Message: fmt.Sprintf("host %s has neither a desired state nor a status (no %s or %s)", host, s.keys.HostDesired(host), s.keys.HostStatus(host))}
	}
	writeJSON(w, http.StatusOK, infos[0])
	return nil
}

// telemetry answers GET /v1/telemetry?ruleset=&host=&perHost=1: the
// counters of every host's telemetry document summed per outcome and per
// rule (rates summed too). ruleset= keeps only that rule set's rules;
// host= only that host's document (404 if it has none). perHost=1, or
// host=, adds each host's own document.
//
// A host's document lists its busiest rules only (docs/architecture.md, "Telemetry"),
// so the per-rule sums cover the rules that were busy somewhere.
func (s *Server) telemetry(w http.ResponseWriter, r *http.Request, _ auth.Identity) error {
	q := r.URL.Query()
	host, ruleset := q.Get("host"), q.Get("ruleset")
	var problems []proto.Problem
	if host != "" {
		if err := proto.ValidateHostName(host); err != nil {
			problems = append(problems, proto.Problem{Path: "host", Message: err.Error()})
		}
	}
	if ruleset != "" {
		if _, _, ok := s.keys.ParseRuleSetVersion(s.keys.RuleSetVersion(ruleset, 1)); !ok {
			problems = append(problems, proto.Problem{Path: "ruleset", Message: fmt.Sprintf("%q is not a rule set name (lowercase RFC 1123 label)", ruleset)})
		}
	}
	perHost := host != ""
	switch v := q.Get("perHost"); v {
	case "":
	case "1", "true":
		perHost = true
	case "0", "false":
	default:
		problems = append(problems, proto.Problem{Path: "perHost", Message: fmt.Sprintf("%q: want 1 or 0", v)})
	}
	if len(problems) > 0 {
		return &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid, Message: "bad query parameters", Problems: problems}
	}

	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	docs, bad, err := s.store.Telemetry(ctx, host)
	if err != nil {
		return err
	}
	if bad > 0 {
		s.log.Warn("telemetry documents that do not decode were left out", zap.Int("count", bad))
	}
	if host != "" && len(docs) == 0 {
		return &Error{Status: http.StatusNotFound, Code: proto.CodeNotFound,
			Message: fmt.Sprintf("host %s has no telemetry (no %s): its agent is not running or its lease expired", host, s.keys.HostTelemetry(host))}
	}
	writeJSON(w, http.StatusOK, Aggregate(docs, ruleset, perHost, time.Now().UTC()))
	return nil
}

// Aggregate sums hosts' telemetry documents into a fleet report: per
// outcome, and per rule (of rule set ruleset only, when not empty),
// busiest rules first. perHost keeps each document, its rules filtered
// the same way.
func Aggregate(docs []proto.HostTelemetry, ruleset string, perHost bool, at time.Time) proto.TelemetryReport {
	rep := proto.TelemetryReport{At: at, Hosts: len(docs), Actions: map[string]proto.Rate{}, Rules: []proto.RuleTelemetry{}}
	type ruleKey struct{ set, id string }
	rules := map[ruleKey]*proto.RuleTelemetry{}
	var order []ruleKey
	for _, doc := range docs {
		for _, ifc := range doc.Interfaces {
			for action, rate := range ifc.Actions {
				rep.Actions[action] = addRate(rep.Actions[action], rate)
			}
			for _, rt := range ifc.Rules {
				if ruleset != "" && rt.RuleSet != ruleset {
					continue
				}
				k := ruleKey{rt.RuleSet, rt.ID}
				sum, ok := rules[k]
				if !ok {
					sum = &proto.RuleTelemetry{RuleSet: rt.RuleSet, ID: rt.ID, Action: rt.Action, DryRun: rt.DryRun}
					rules[k] = sum
					order = append(order, k)
				}
				sum.Rate = addRate(sum.Rate, rt.Rate)
				if rt.Limited != nil {
					l := addRate(zeroIfNil(sum.Limited), *rt.Limited)
					sum.Limited = &l
				}
				sum.TopSources = mergeSources(sum.TopSources, rt.TopSources)
			}
		}
		if perHost {
			rep.PerHost = append(rep.PerHost, filterRules(doc, ruleset))
		}
	}
	for _, k := range order {
		rep.Rules = append(rep.Rules, *rules[k])
	}
	sort.SliceStable(rep.Rules, func(i, j int) bool {
		a, b := rep.Rules[i], rep.Rules[j]
		if a.PPS != b.PPS {
			return a.PPS > b.PPS
		}
		if a.Packets != b.Packets {
			return a.Packets > b.Packets
		}
		if a.RuleSet != b.RuleSet {
			return a.RuleSet < b.RuleSet
		}
		return a.ID < b.ID
	})
	return rep
}

// maxFleetTopSources is how many dropped sources a fleet rule lists.
const maxFleetTopSources = 5

// mergeSources adds b's source counts to a's, most first, the top
// maxFleetTopSources kept. (Each host lists its top few: a source spread
// thin over many hosts can be missing; the fleet view is the sum of what
// hosts saw most.)
func mergeSources(a, b []proto.SourceCount) []proto.SourceCount {
	if len(b) == 0 {
		return a
	}
	sum := map[string]uint64{}
	for _, s := range a {
		sum[s.Src] += s.Packets
	}
	for _, s := range b {
		sum[s.Src] += s.Packets
	}
	out := make([]proto.SourceCount, 0, len(sum))
	for src, n := range sum {
		out = append(out, proto.SourceCount{Src: src, Packets: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Packets != out[j].Packets {
			return out[i].Packets > out[j].Packets
		}
		return out[i].Src < out[j].Src
	})
	return out[:min(len(out), maxFleetTopSources)]
}

func zeroIfNil(r *proto.Rate) proto.Rate {
	if r == nil {
		return proto.Rate{}
	}
	return *r
}

func addRate(a, b proto.Rate) proto.Rate {
	return proto.Rate{Packets: a.Packets + b.Packets, Bytes: a.Bytes + b.Bytes, PPS: a.PPS + b.PPS, BPS: a.BPS + b.BPS}
}

func filterRules(doc proto.HostTelemetry, ruleset string) proto.HostTelemetry {
	if ruleset == "" {
		return doc
	}
	out := doc
	out.Interfaces = make([]proto.InterfaceTelemetry, len(doc.Interfaces))
	for i, ifc := range doc.Interfaces {
		ifc.Rules = nil
		for _, rt := range doc.Interfaces[i].Rules {
			if rt.RuleSet == ruleset {
				ifc.Rules = append(ifc.Rules, rt)
			}
		}
		out.Interfaces[i] = ifc
	}
	return out
}
