package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/xdpfw/xdpfw/controlplane/auth"
	"github.com/xdpfw/xdpfw/controlplane/rulediff"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// ruleSetName returns the {name} of the URL, checked.
func (s *Server) ruleSetName(r *http.Request) (string, error) {
	name := r.PathValue("name")
	if _, _, ok := s.keys.ParseRuleSetVersion(s.keys.RuleSetVersion(name, 1)); !ok {
		return "", &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid,
			Message:  fmt.Sprintf("rule set name %q in the URL is not valid", name),
			Problems: []proto.Problem{{Path: "name", Message: "want a lowercase RFC 1123 label (letters, digits and '-', at most 63)"}}}
	}
	return name, nil
}

// ifMatch reads If-Match: absent is -1 (any version), otherwise a version
// number, bare (as xdpfwctl sends it) or quoted (as ETag gives it).
func ifMatch(r *http.Request, allowZero bool) (int64, error) {
	h := strings.TrimSpace(r.Header.Get("If-Match"))
	if h == "" {
		return -1, nil
	}
	v := strings.Trim(h, `"`)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || (n == 0 && !allowZero) {
		want := "a version number"
		if allowZero {
			want += " (0: create only)"
		}
		return 0, invalid("If-Match %q: want %s", h, want)
	}
	return n, nil
}

func etag(v int64) string { return `"` + strconv.FormatInt(v, 10) + `"` }

// readBody reads a request body within the cap.
func readBody(r *http.Request) ([]byte, error) {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, err
		}
		return nil, invalid("read the request body: %v", err)
	}
	return data, nil
}

// decodeProblemRE splits a decode error such as `rules[2]: unknown field
// "dstport"` into its path and message.
var decodeProblemRE = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9]*(?:\[[^\]]*\]|\.[A-Za-z0-9_./-]+)*): (.*)$`)

func decodeProblem(err error) proto.Problem {
	msg := err.Error()
	if m := decodeProblemRE.FindStringSubmatch(msg); m != nil {
		switch m[1] {
		case "yaml", "json", "decode":
		default:
			return proto.Problem{Path: m[1], Message: m[2]}
		}
	}
	return proto.Problem{Message: msg}
}

// putRuleSet answers PUT /v1/rulesets/{name}: the body (YAML or JSON)
// becomes the rule set's next version.
func (s *Server) putRuleSet(w http.ResponseWriter, r *http.Request, id auth.Identity) error {
	name, err := s.ruleSetName(r)
	if err != nil {
		return err
	}
	match, err := ifMatch(r, true)
	if err != nil {
		return err
	}
	data, err := readBody(r)
	if err != nil {
		return err
	}
	rs, err := proto.DecodeRuleSet(data)
	if err != nil {
		return &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid,
			Message:  "the body is not a rule set document (YAML or JSON); nothing was written: " + err.Error(),
			Problems: []proto.Problem{decodeProblem(err)}}
	}
	var problems []proto.Problem
	if rs.Name != name {
		problems = append(problems, proto.Problem{Path: "name",
			Message: fmt.Sprintf("the document names rule set %q but the URL names %q: make them the same", rs.Name, name)})
	}
	if err := rs.Validate(); err != nil {
		var ve *proto.ValidationError
		if !errors.As(err, &ve) {
			return err
		}
		problems = append(problems, ve.Problems...)
	}
	if len(problems) > 0 {
		return &proto.ValidationError{Problems: problems}
	}
	return s.writeRuleSet(w, r, id, rs, match, "")
}

// writeRuleSet stores rs as the next version with its audit record and
// answers with the write and its diff.
func (s *Server) writeRuleSet(w http.ResponseWriter, r *http.Request, id auth.Identity, rs proto.RuleSet, match int64, note string) error {
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	res, err := s.store.PutRuleSetAudited(ctx, rs, match, func(v int64) proto.AuditRecord {
		rec := auditRecord(r, id, "ruleset "+rs.Name)
		rec.Result = fmt.Sprintf("version %d%s", v, note)
		return rec
	})
	if err != nil {
		return err
	}
	out := proto.RuleSetWrite{Name: rs.Name, Version: res.Version, Revision: res.Revision}
	if res.Previous != nil {
		d := rulediff.Diff(rs.Name, res.PreviousVersion, res.Version, *res.Previous, rs)
		out.Diff = &d
	}
	w.Header().Set("ETag", etag(res.Version))
	code := http.StatusOK
	if res.PreviousVersion == 0 {
		code = http.StatusCreated
		w.Header().Set("Location", "/v1/rulesets/"+rs.Name)
	}
	s.log.Info("rule set written", zapRuleSet(rs.Name), zapVersion(res.Version), zapRevision(res.Revision), zapWho(id))
	writeJSON(w, code, out)
	return nil
}

// getRuleSet answers GET /v1/rulesets/{name}: the head, ETag its version.
func (s *Server) getRuleSet(w http.ResponseWriter, r *http.Request, _ auth.Identity) error {
	return s.answerVersion(w, r, 0)
}

// getVersion answers GET /v1/rulesets/{name}/versions/{version}.
func (s *Server) getVersion(w http.ResponseWriter, r *http.Request, _ auth.Identity) error {
	v, err := versionParam("version", r.PathValue("version"))
	if err != nil {
		return err
	}
	return s.answerVersion(w, r, v)
}

func (s *Server) answerVersion(w http.ResponseWriter, r *http.Request, version int64) error {
	name, err := s.ruleSetName(r)
	if err != nil {
		return err
	}
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	rs, v, err := s.store.GetRuleSet(ctx, name, version)
	if err != nil {
		return err
	}
	if version == 0 {
		w.Header().Set("ETag", etag(v))
	}
	writeJSON(w, http.StatusOK, proto.RuleSetVersion{Name: name, Version: v, RuleSet: rs})
	return nil
}

func versionParam(what, v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return 0, &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid,
			Message:  fmt.Sprintf("%s %q: want a version number from 1", what, v),
			Problems: []proto.Problem{{Path: what, Message: "want a version number from 1"}}}
	}
	return n, nil
}

// listRuleSets answers GET /v1/rulesets.
func (s *Server) listRuleSets(w http.ResponseWriter, r *http.Request, _ auth.Identity) error {
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	sums, err := s.store.ListRuleSets(ctx)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sums)
	return nil
}

// listVersions answers GET /v1/rulesets/{name}/versions, oldest first.
func (s *Server) listVersions(w http.ResponseWriter, r *http.Request, _ auth.Identity) error {
	name, err := s.ruleSetName(r)
	if err != nil {
		return err
	}
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	infos, err := s.store.VersionInfos(ctx, name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, infos)
	return nil
}

// diff answers GET /v1/rulesets/{name}/diff?from=A&to=B.
func (s *Server) diff(w http.ResponseWriter, r *http.Request, _ auth.Identity) error {
	name, err := s.ruleSetName(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	var problems []proto.Problem
	from, err1 := strconv.ParseInt(q.Get("from"), 10, 64)
	if err1 != nil || from < 1 {
		problems = append(problems, proto.Problem{Path: "from", Message: fmt.Sprintf("%q: want a version number from 1", q.Get("from"))})
	}
	to, err2 := strconv.ParseInt(q.Get("to"), 10, 64)
	if err2 != nil || to < 1 {
		problems = append(problems, proto.Problem{Path: "to", Message: fmt.Sprintf("%q: want a version number from 1", q.Get("to"))})
	}
	if len(problems) > 0 {
		return &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid,
			Message: "want ?from=VERSION&to=VERSION", Problems: problems}
	}
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	a, _, err := s.store.GetRuleSet(ctx, name, from)
	if err != nil {
		return err
	}
	b, _, err := s.store.GetRuleSet(ctx, name, to)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rulediff.Diff(name, from, to, a, b))
	return nil
}

// rollbackRequest is the body of POST /v1/rulesets/{name}/rollback.
type rollbackRequest struct {
	To int64 `json:"to"`
}

// rollback answers POST /v1/rulesets/{name}/rollback {"to": V}: a new
// version equal to version V. If-Match applies as for PUT.
func (s *Server) rollback(w http.ResponseWriter, r *http.Request, id auth.Identity) error {
	name, err := s.ruleSetName(r)
	if err != nil {
		return err
	}
	match, err := ifMatch(r, false)
	if err != nil {
		return err
	}
	var req rollbackRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if req.To < 1 {
		return &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid, Message: `want {"to": VERSION}`,
			Problems: []proto.Problem{{Path: "to", Message: fmt.Sprintf("%d: want a version number from 1", req.To)}}}
	}
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	rs, _, err := s.store.GetRuleSet(ctx, name, req.To)
	if err != nil {
		return err
	}
	return s.writeRuleSet(w, r, id, rs, match, fmt.Sprintf(" (rollback to version %d)", req.To))
}

// decodeJSON decodes a JSON body strictly: unknown fields and trailing
// data are errors.
func decodeJSON(r *http.Request, v any) error {
	data, err := readBody(r)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalid("the body is not the JSON document this route takes: %v", err)
	}
	if dec.More() {
		return invalid("the body holds data after its JSON document")
	}
	return nil
}

// deleteRuleSet answers DELETE /v1/rulesets/{name}: every version, the
// head and the release go in one transaction with the audit record; 409
// while hosts or active rollouts use the rule set. If-Match applies.
func (s *Server) deleteRuleSet(w http.ResponseWriter, r *http.Request, id auth.Identity) error {
	name, err := s.ruleSetName(r)
	if err != nil {
		return err
	}
	match, err := ifMatch(r, false)
	if err != nil {
		return err
	}
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	res, err := s.store.DeleteRuleSetAudited(ctx, name, match, func(v int64) proto.AuditRecord {
		rec := auditRecord(r, id, "ruleset "+name)
		rec.Result = fmt.Sprintf("deleted (head was version %d)", v)
		return rec
	})
	var inUse *etcdstore.InUseError
	if errors.As(err, &inUse) && len(inUse.Rollouts) == 0 {
		// Hosts enforce its release: retire it (the controller takes it
		// off them) and say so; a DELETE once they have deletes it.
		rec := auditRecord(r, id, "ruleset "+name)
		rec.Result = "retired: the controller takes it off every host"
		retired, rev, rerr := s.store.RetireRuleSet(ctx, name, rec)
		if rerr != nil {
			return rerr
		}
		if retired {
			s.log.Info("rule set retired", zapRuleSet(name), zapRevision(rev), zapWho(id))
		}
		writeJSON(w, http.StatusAccepted, RetireAnswer{Name: name, Hosts: inUse.Hosts,
			Message: fmt.Sprintf("rule set %s is being taken off %d host(s); DELETE it again once none enforces it", name, len(inUse.Hosts))})
		return nil
	}
	if err != nil {
		return err
	}
	s.log.Info("rule set deleted", zapRuleSet(name), zapVersion(res.Version), zapRevision(res.Revision), zapWho(id))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// RetireAnswer is the 202 answer of a DELETE of a rule set that hosts
// still enforce: it is retired first.
type RetireAnswer struct {
	Name    string   `json:"name"`
	Hosts   []string `json:"hosts"`
	Message string   `json:"message"`
}
