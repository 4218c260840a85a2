package rollout

import (
	"slices"
	"sort"

	"github.com/xdpfw/xdpfw/proto"
)

// Snapshot is what the controller decides from: the documents of the
// fleet as etcd held them at one revision.
type Snapshot struct {
	// Revision is the etcd revision the snapshot was read at.
	Revision int64
	// Hosts are the known hosts (a status or a desired key), by name.
	Hosts map[string]HostView
	// RuleSets are the rule sets with a head or a release, by name.
	RuleSets map[string]RuleSetView
	// Rollouts are every rollout, oldest first (by ID).
	Rollouts []RolloutView
}

// HostView is one host's documents.
type HostView struct {
	// Status is what the host's agent reports; nil when the host is lost
	// (its lease expired: no status key) or its status does not decode.
	Status *proto.HostStatus
	// Desired is the host's desired state; nil when there is no desired
	// key or it does not decode.
	Desired *proto.HostDesired
	// DesiredRevision is the mod revision of the desired key (0: none).
	DesiredRevision int64
	// Enrollment is the host's enrollment, written by the control plane
	// (nil: not enrolled, or it does not decode).
	Enrollment *proto.HostEnrollment
}

// Live says whether the host's agent reports (its status is there).
func (h HostView) Live() bool { return h.Status != nil }

// Labels are what rule-set and rollout selectors match: an enrolled
// host's labels are its enrollment's, whatever its agent reports, so
// that no host can pick its own rules; a host that is not enrolled (a
// fleet whose etcd has no per-host identities) is taken at its word.
func (h HostView) Labels() map[string]string {
	if h.Enrollment != nil {
		return h.Enrollment.Labels
	}
	if h.Status != nil {
		return h.Status.Labels
	}
	return nil
}

// RuleSetView is what the desired states need of a rule set.
type RuleSetView struct {
	// Head is the latest version (0: no head, the rule set is gone).
	Head int64
	// Selector is the head version's selector (empty: every host).
	Selector map[string]string
	// Released is the version hosts get outside rollouts (0: none).
	Released int64
}

// RolloutView is one rollout's documents and the mod revisions of the
// keys the controller guards its writes with.
type RolloutView struct {
	ID      string
	Spec    proto.RolloutSpec
	Control proto.RolloutControl
	State   proto.RolloutState
	// ControlRevision and StateRevision are the mod revisions of
	// rollouts/<id>/control and rollouts/<id>/state.
	ControlRevision, StateRevision int64
	// parsed is the spec as parsed when it was read (nil: not parsed).
	parsed *parsedSpec
}

// plan returns the rollout's parsed spec: parsed once when it was read,
// or now for a view built by hand.
func (ro *RolloutView) plan() (plan, error) {
	if ro.parsed != nil && ro.parsed.err == nil {
		return ro.parsed.plan, ro.parsed.planErr
	}
	return parsePlan(ro.Spec)
}

// active says whether a rollout state still decides anything.
func active(state string) bool {
	switch state {
	case proto.RolloutRunning, proto.RolloutPaused, proto.RolloutHalted, proto.RolloutAborting:
		return true
	}
	return false
}

// given says whether a rollout host state means the host was given the
// rollout's version (and an abort must take it back).
func given(hostState string) bool {
	switch hostState {
	case proto.HostApplying, proto.HostApplied, proto.HostFailed:
		return true
	}
	return false
}

// dictate returns the version that a rollout gives a host: ok is false
// when the rollout decides nothing for it; version 0 means "not this rule
// set". A running, paused or halted rollout gives its version to the
// hosts it has given it to; an aborting one gives them back their
// previous version. A finished rollout decides nothing any more: a
// succeeded one lives on as the rule set's release, an aborted one left
// its hosts to the release.
func dictate(ro *RolloutView, host string) (version int64, ok bool) {
	e, touched := ro.State.Hosts[host]
	if !touched {
		return 0, false
	}
	switch ro.State.State {
	case proto.RolloutRunning, proto.RolloutPaused, proto.RolloutHalted:
		if given(e.State) {
			return ro.Spec.Version, true
		}
	case proto.RolloutAborting:
		if given(e.State) || e.State == proto.HostReverted {
			return e.Previous, true
		}
	}
	return 0, false
}

// Matches says whether labels satisfy a selector: every key of the
// selector is a label of that value. An empty selector matches every
// host.
func Matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Desired computes the desired state of every known host from a
// snapshot (the rollout states in it being the ones just decided). A
// host gets, for each rule set whose head selector matches the labels of
// its status, ordered by rule-set name:
//
//   - the version the active rollout of that rule set gives it, if one
//     has touched it (see dictate);
//   - else the rule set's released version;
//   - else nothing.
//
// A lost host (no status, so no labels) keeps its desired state as it is
// except where an active rollout decides otherwise for it (an abort
// returning it to its previous version); a lost host with no (readable)
// desired state is left out. The result holds every other known host,
// with an empty list for a host that gets no rule set.
func Desired(s *Snapshot) map[string][]proto.RuleSetRef {
	// The newest active rollout of each rule set (Create allows one).
	activeOf := map[string]*RolloutView{}
	for i := range s.Rollouts {
		ro := &s.Rollouts[i]
		if active(ro.State.State) {
			activeOf[ro.Spec.RuleSet] = ro
		}
	}
	names := make([]string, 0, len(s.RuleSets))
	for name := range s.RuleSets {
		names = append(names, name)
	}
	sort.Strings(names)

	out := make(map[string][]proto.RuleSetRef, len(s.Hosts))
	for host, hv := range s.Hosts {
		if !hv.Live() {
			if hv.Desired == nil {
				continue
			}
			out[host] = lostDesired(hv.Desired.RuleSets, host, activeOf)
			continue
		}
		refs := []proto.RuleSetRef{}
		for _, name := range names {
			rs := s.RuleSets[name]
			if rs.Head == 0 || !Matches(rs.Selector, hv.Labels()) {
				continue
			}
			if ro := activeOf[name]; ro != nil {
				if v, ok := dictate(ro, host); ok {
					if v > 0 {
						refs = append(refs, proto.RuleSetRef{Name: name, Version: v})
					}
					continue
				}
			}
			if rs.Released > 0 {
				refs = append(refs, proto.RuleSetRef{Name: name, Version: rs.Released})
			}
		}
		out[host] = refs
	}
	return out
}

// lostDesired is the desired state of a lost host: what it has, with
// what active rollouts decide for it.
func lostDesired(have []proto.RuleSetRef, host string, activeOf map[string]*RolloutView) []proto.RuleSetRef {
	byName := make(map[string]int64, len(have))
	for _, r := range have {
		byName[r.Name] = r.Version
	}
	changed := false
	for name, ro := range activeOf {
		v, ok := dictate(ro, host)
		cur, has := byName[name]
		switch {
		case !ok:
		case v > 0 && (!has || cur != v):
			byName[name], changed = v, true
		case v == 0 && has:
			delete(byName, name)
			changed = true
		}
	}
	if !changed {
		return slices.Clone(have)
	}
	refs := make([]proto.RuleSetRef, 0, len(byName))
	for name, v := range byName {
		refs = append(refs, proto.RuleSetRef{Name: name, Version: v})
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].Name < refs[j].Name })
	return refs
}
