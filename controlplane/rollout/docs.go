package rollout

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// specDoc is the value of rollouts/<id>/spec: the RolloutSpec as Create
// accepted it (defaults filled in), with who created the rollout and
// when. Its fields are the spec's plus createdBy and createdAt, so a
// reader that decodes a RolloutSpec from it (ignoring unknown fields)
// reads the spec.
type specDoc struct {
	proto.RolloutSpec
	CreatedBy string    `json:"createdBy,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
}

// Leaves of a rollout's keys.
const (
	leafSpec    = "spec"
	leafControl = "control"
	leafState   = "state"
)

// rolloutKVs are the keys of one rollout as etcd returned them.
type rolloutKVs struct {
	spec, control, state *etcdstore.KeyValue
	// parsed is the spec decoded and parsed, when a reader holds it
	// (the spec is immutable: the snapshot reader parses it once).
	parsed *parsedSpec
}

// parsedSpec is a stored spec decoded (err: it does not decode) and its
// plan parsed (planErr: it does not parse).
type parsedSpec struct {
	doc     specDoc
	err     error
	plan    plan
	planErr error
}

// parseSpec decodes and parses a stored spec.
func parseSpec(kv *etcdstore.KeyValue) *parsedSpec {
	var ps parsedSpec
	if err := json.Unmarshal(kv.Value, &ps.doc); err != nil {
		ps.err = fmt.Errorf("decode %s: %w", kv.Key, err)
		return &ps
	}
	ps.plan, ps.planErr = parsePlan(ps.doc.RolloutSpec)
	return &ps
}

// parseRolloutKey splits rollouts/<id>/<leaf>.
func parseRolloutKey(keys proto.Keys, key string) (id, leaf string, ok bool) {
	rest, found := strings.CutPrefix(key, keys.Rollouts())
	if !found {
		return "", "", false
	}
	id, leaf, found = strings.Cut(rest, "/")
	if !found || !validID(id) {
		return "", "", false
	}
	switch leaf {
	case leafSpec, leafControl, leafState:
		return id, leaf, true
	}
	return "", "", false
}

// groupRollouts sorts the kvs under rollouts/ by rollout, the IDs oldest
// first.
func groupRollouts(keys proto.Keys, kvs []etcdstore.KeyValue) ([]string, map[string]*rolloutKVs) {
	byID := map[string]*rolloutKVs{}
	for i := range kvs {
		kv := &kvs[i]
		id, leaf, ok := parseRolloutKey(keys, kv.Key)
		if !ok {
			continue
		}
		r := byID[id]
		if r == nil {
			r = &rolloutKVs{}
			byID[id] = r
		}
		switch leaf {
		case leafSpec:
			r.spec = kv
		case leafControl:
			r.control = kv
		case leafState:
			r.state = kv
		}
	}
	ids := make([]string, 0, len(byID))
	for id, r := range byID {
		if r.spec != nil {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, byID
}

// decodeRollout decodes one rollout's documents. A missing control means
// "run"; a missing state is an empty one (the controller leaves it
// alone).
func decodeRollout(keys proto.Keys, id string, r *rolloutKVs) (RolloutView, specDoc, error) {
	if r.spec == nil {
		return RolloutView{}, specDoc{}, fmt.Errorf("rollout %s: no %s", id, keys.RolloutSpec(id))
	}
	ps := r.parsed
	if ps == nil {
		ps = parseSpec(r.spec)
	}
	doc := ps.doc
	if ps.err != nil {
		return RolloutView{}, doc, ps.err
	}
	v := RolloutView{ID: id, Spec: doc.RolloutSpec, Control: proto.RolloutControl{Want: proto.RolloutWantRun}, parsed: ps}
	if r.control != nil {
		if err := json.Unmarshal(r.control.Value, &v.Control); err != nil {
			return RolloutView{}, doc, fmt.Errorf("decode %s: %w", r.control.Key, err)
		}
		v.ControlRevision = r.control.ModRevision
	}
	if r.state != nil {
		if err := json.Unmarshal(r.state.Value, &v.State); err != nil {
			return RolloutView{}, doc, fmt.Errorf("decode %s: %w", r.state.Key, err)
		}
		v.StateRevision = r.state.ModRevision
	}
	if v.State.Hosts == nil {
		v.State.Hosts = map[string]proto.RolloutHost{}
	}
	return v, doc, nil
}

// apiRollout is a rollout as the API returns it.
func apiRollout(v RolloutView, doc specDoc) proto.Rollout {
	return proto.Rollout{
		ID: v.ID, Spec: v.Spec, Control: v.Control, Status: v.State,
		CreatedBy: doc.CreatedBy, CreatedAt: doc.CreatedAt,
	}
}

// validID accepts what can be a path segment of rollouts/<id>/: the IDs
// Create makes ("r-20261202T031500Z-0001") and anything of the same
// alphabet.
func validID(id string) bool {
	if id == "" || len(id) > proto.MaxNameLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return id != "." && id != ".."
}

// idTimeLayout is the time part of a rollout ID.
const idTimeLayout = "20060102T150405Z"

// maxIDSeq keeps an ID's sequence number at four digits, so that IDs
// sort as strings.
const maxIDSeq = 9999

// nextID returns an ID for a rollout created at now that sorts after
// newest (the newest existing ID, "" if none): "r-<UTC second>-<seq>",
// where seq counts the rollouts created in that second. A clock behind
// the newest ID's time (another replica's, say) borrows that time.
func nextID(now time.Time, newest string) string {
	t := now.UTC().Truncate(time.Second)
	seq := 1
	if nt, nseq, ok := parseID(newest); ok && !nt.Before(t) {
		t, seq = nt, nseq+1
		if seq > maxIDSeq {
			t, seq = t.Add(time.Second), 1
		}
	}
	return fmt.Sprintf("r-%s-%04d", t.Format(idTimeLayout), seq)
}

// parseID reads an ID that nextID made.
func parseID(id string) (time.Time, int, bool) {
	rest, ok := strings.CutPrefix(id, "r-")
	if !ok {
		return time.Time{}, 0, false
	}
	ts, seqStr, ok := strings.Cut(rest, "-")
	if !ok || len(seqStr) != 4 {
		return time.Time{}, 0, false
	}
	t, err := time.Parse(idTimeLayout, ts)
	if err != nil {
		return time.Time{}, 0, false
	}
	var seq int
	if _, err := fmt.Sscanf(seqStr, "%04d", &seq); err != nil || seq < 1 {
		return time.Time{}, 0, false
	}
	return t, seq, true
}
