package rollout

import (
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"

	"github.com/xdpfw/xdpfw/proto"
)

// maxNamedHosts bounds the hosts a rollout's message names.
const maxNamedHosts = 10

// stepper decides the next state of rollouts from a snapshot. It is pure:
// everything it needs is in the snapshot, the time and the key layout
// (which says which document a host's error is about).
type stepper struct {
	snap *Snapshot
	keys proto.Keys
	now  time.Time
}

// step returns the next state of a rollout, and whether it just
// succeeded (so the rule set's release must be written with it). The
// state of a finished rollout is returned unchanged.
func (s *stepper) step(ro *RolloutView) (proto.RolloutState, bool) {
	st := cloneState(ro.State)
	if !active(st.State) {
		return st, false
	}
	p, err := ro.plan()
	if err != nil {
		// Create accepted it, so someone wrote the key by hand.
		if st.State != proto.RolloutHalted && st.State != proto.RolloutAborting {
			st.State, st.WaveHealthyAt = proto.RolloutHalted, time.Time{}
			st.ControlRevision = ro.ControlRevision
			st.Message = "halted: the spec does not parse: " + oneLine(err.Error())
		}
		if ro.Control.Want != proto.RolloutWantAbort {
			return st, false
		}
	}

	want := ro.Control.Want
	if want == proto.RolloutWantAbort && st.State != proto.RolloutAborting {
		st.State, st.WaveHealthyAt = proto.RolloutAborting, time.Time{}
		// Each host given the version has a deadline from now to return.
		for h, e := range st.Hosts {
			if given(e.State) {
				e.UpdatedAt = s.now
				st.Hosts[h] = e
			}
		}
		st.Message = "aborting" + byWhom(ro.Control.By) + ": returning hosts to their previous versions"
	}
	if st.State == proto.RolloutAborting {
		s.abort(ro, p, &st)
		return st, false
	}

	switch {
	case want == proto.RolloutWantPause && st.State == proto.RolloutRunning:
		st.State = proto.RolloutPaused
		st.Message = "paused" + byWhom(ro.Control.By)
	case want == proto.RolloutWantRun && st.State == proto.RolloutPaused:
		st.State = proto.RolloutRunning
		st.Message = "resumed" + byWhom(ro.Control.By)
	case want == proto.RolloutWantRun && st.State == proto.RolloutHalted && ro.ControlRevision > st.ControlRevision:
		st.State, st.WaveHealthyAt = proto.RolloutRunning, time.Time{}
		retried := 0
		for h, e := range st.Hosts {
			if e.State == proto.HostFailed {
				e.State, e.Error, e.UpdatedAt = proto.HostApplying, "", s.now
				st.Hosts[h] = e
				retried++
			}
		}
		st.Message = fmt.Sprintf("resumed%s after a halt: %d failed hosts get another %s", byWhom(ro.Control.By), retried, p.deadline)
	}

	rs, ok := s.snap.RuleSets[p.ruleSet]
	if !ok || rs.Head == 0 {
		if st.State != proto.RolloutHalted {
			st.State, st.WaveHealthyAt = proto.RolloutHalted, time.Time{}
			st.ControlRevision = ro.ControlRevision
			st.Message = fmt.Sprintf("halted: rule set %s has no head (%s): it was deleted", p.ruleSet, s.keys.RuleSetHead(p.ruleSet))
		}
		return st, false
	}
	// The hosts the rollout is for: live, matched by the rule set's
	// selector and by the rollout's own.
	var candidates []string
	for h, hv := range s.snap.Hosts {
		if hv.Live() && Matches(rs.Selector, hv.Labels()) && Matches(p.selector, hv.Labels()) {
			candidates = append(candidates, h)
		}
	}
	kept := make(map[string]int, len(st.Hosts))
	for h, e := range st.Hosts {
		kept[h] = e.Wave
	}
	waveOf := assignWavesKeeping(ro.ID, candidates, p.waves, kept)

	for {
		if st.State == proto.RolloutRunning {
			s.give(p, rs, waveOf, &st)
		}
		s.evaluate(p, waveOf, &st)
		if failed := failedHosts(&st); len(failed) > p.maxError && st.State != proto.RolloutHalted {
			st.State, st.WaveHealthyAt = proto.RolloutHalted, time.Time{}
			st.ControlRevision = ro.ControlRevision
			st.Message = fmt.Sprintf("halted: %d hosts failed, more than maxErrorHosts %d: %s",
				len(failed), p.maxError, describeHosts(&st, failed))
			return st, false
		}
		if st.State != proto.RolloutRunning {
			return st, false
		}
		if len(waveOf) == 0 {
			// Every host the rollout was for is gone (lost, or relabelled):
			// going on would run empty waves to a "success" that applied
			// nothing, and release the version to hosts nobody saw take it.
			st.State, st.WaveHealthyAt = proto.RolloutHalted, time.Time{}
			st.ControlRevision = ro.ControlRevision
			st.Message = fmt.Sprintf("halted: no live host matches the selectors any more%s; resume once hosts are back, or abort",
				goneHosts(s.snap, &st))
			return st, false
		}
		if waiting := s.unhealthy(waveOf, &st); len(waiting) > 0 {
			st.WaveHealthyAt = time.Time{}
			st.Message = fmt.Sprintf("wave %d of %d: waiting for %d hosts to apply %s: %s",
				st.Wave+1, len(p.waves), len(waiting), p.ref(), strings.Join(firstN(waiting), ", "))
			return st, false
		}
		if st.WaveHealthyAt.IsZero() {
			st.WaveHealthyAt = s.now
		}
		if st.Wave >= len(p.waves)-1 {
			applied, failed := 0, 0
			for _, e := range st.Hosts {
				switch e.State {
				case proto.HostApplied:
					applied++
				case proto.HostFailed:
					failed++
				}
			}
			if applied == 0 {
				// Every host it reached failed (within maxErrorHosts):
				// releasing the version to the fleet would be a success
				// no host showed.
				st.State, st.WaveHealthyAt = proto.RolloutHalted, time.Time{}
				st.ControlRevision = ro.ControlRevision
				st.Message = fmt.Sprintf("halted: no host applied %s (%d failed: %s): not released",
					p.ref(), failed, describeHosts(&st, failedHosts(&st)))
				return st, false
			}
			st.State, st.Wave, st.WaveHealthyAt = proto.RolloutSucceeded, len(p.waves), time.Time{}
			st.Message = fmt.Sprintf("succeeded: %d hosts apply %s (%d failed); released to every host of the rule set", applied, p.ref(), failed)
			return st, true
		}
		if next := st.WaveHealthyAt.Add(p.pause); s.now.Before(next) {
			// The message names a time, not what is left, so that it does
			// not change (and get written) every round of the pause.
			st.Message = fmt.Sprintf("wave %d of %d is healthy: the next starts after the pause of %s, at %s",
				st.Wave+1, len(p.waves), p.pause, next.UTC().Format(time.RFC3339))
			return st, false
		}
		st.Wave++
		st.WaveHealthyAt = time.Time{}
		st.Message = fmt.Sprintf("wave %d of %d (%s) started", st.Wave+1, len(p.waves), p.waves[st.Wave])
	}
}

// give gives the version to the live selected hosts of the waves up to
// the current one that do not have it yet.
func (s *stepper) give(p plan, rs RuleSetView, waveOf map[string]int, st *proto.RolloutState) {
	for h, w := range waveOf {
		if _, touched := st.Hosts[h]; touched || w > st.Wave {
			continue
		}
		prev := rs.Released
		if d := s.snap.Hosts[h].Desired; d != nil {
			prev = 0
			for _, r := range d.RuleSets {
				if r.Name == p.ruleSet {
					prev = r.Version
				}
			}
		}
		st.Hosts[h] = proto.RolloutHost{Wave: w, Previous: prev, State: proto.HostApplying, UpdatedAt: s.now}
	}
}

// evaluate moves the live hosts given the version to applied or failed
// from what their statuses say. A host that has applied the version
// stays applied unless it refuses it later (a desired-state write for
// another rule set must not send it back to applying). Hosts that no
// longer match the selectors are left as they are.
func (s *stepper) evaluate(p plan, waveOf map[string]int, st *proto.RolloutState) {
	ref := p.ref()
	for h, e := range st.Hosts {
		hv := s.snap.Hosts[h]
		if _, selected := waveOf[h]; !selected || !hv.Live() || !given(e.State) {
			continue
		}
		next := e
		switch msg := s.refusal(h, hv, ref); {
		case msg != "":
			next.State, next.Error = proto.HostFailed, msg
		case e.State == proto.HostApplied:
		case applied(hv, ref):
			next.State, next.Error = proto.HostApplied, ""
		case e.State == proto.HostApplying && s.now.Sub(e.UpdatedAt) > p.deadline:
			next.State = proto.HostFailed
			next.Error = fmt.Sprintf("did not apply %s within the deadline of %s", ref, p.deadline)
		}
		if next.State != e.State || next.Error != e.Error {
			next.UpdatedAt = s.now
			st.Hosts[h] = next
		}
	}
}

// unhealthy returns the live selected hosts of the waves up to the
// current one that have neither applied the version nor failed (failed
// hosts are within maxErrorHosts, or the rollout would have halted).
func (s *stepper) unhealthy(waveOf map[string]int, st *proto.RolloutState) []string {
	var out []string
	for h, e := range st.Hosts {
		if _, selected := waveOf[h]; !selected || !s.snap.Hosts[h].Live() || e.Wave > st.Wave {
			continue
		}
		if e.State != proto.HostApplied && e.State != proto.HostFailed {
			out = append(out, h)
		}
	}
	sort.Strings(out)
	return out
}

// abort waits for the hosts given the version to be back at their
// previous versions: the rollout is aborted when every such host's
// desired state says so and every live one reports it, or when the live
// ones that do not are past the deadline (named in the message).
func (s *stepper) abort(ro *RolloutView, p plan, st *proto.RolloutState) {
	deadline := p.deadline
	if deadline <= 0 {
		deadline = DefaultDeadline
	}
	name := ro.Spec.RuleSet
	rs := s.snap.RuleSets[name]
	var unwritten, waiting, overdue []string
	reverted := 0
	for h, e := range st.Hosts {
		if !given(e.State) {
			if e.State == proto.HostReverted {
				reverted++
			}
			continue
		}
		hv := s.snap.Hosts[h]
		if !hv.Live() && hv.Desired == nil {
			continue // lost before it was given anything: nothing to take back
		}
		// What Desired gives the host while the rollout aborts: its
		// previous version, or nothing if the rule set no longer applies
		// to it.
		target := e.Previous
		if hv.Live() && (rs.Head == 0 || !Matches(rs.Selector, hv.Labels())) {
			target = 0
		}
		if !desiredAt(hv.Desired, name, target) {
			unwritten = append(unwritten, h)
			continue
		}
		if !hv.Live() {
			continue
		}
		if enforces(hv, name, target) {
			e.State, e.Error, e.UpdatedAt = proto.HostReverted, "", s.now
			st.Hosts[h] = e
			reverted++
			continue
		}
		if s.now.Sub(e.UpdatedAt) > deadline {
			overdue = append(overdue, h)
			continue
		}
		waiting = append(waiting, h)
	}
	sort.Strings(overdue)
	sort.Strings(waiting)
	switch {
	case len(unwritten) > 0 || len(waiting) > 0:
		st.Message = fmt.Sprintf("aborting%s: %d hosts reverted, waiting for %d", byWhom(ro.Control.By), reverted, len(unwritten)+len(waiting))
		if len(waiting) > 0 {
			st.Message += ": " + strings.Join(firstN(waiting), ", ")
		}
	case len(overdue) > 0:
		for _, h := range overdue {
			e := st.Hosts[h]
			e.Error = fmt.Sprintf("did not return to %s within the deadline of %s", prevString(name, e.Previous), deadline)
			e.UpdatedAt = s.now
			st.Hosts[h] = e
		}
		st.State = proto.RolloutAborted
		st.Message = fmt.Sprintf("aborted%s: %d hosts reverted; %d did not report their previous version within %s: %s",
			byWhom(ro.Control.By), reverted, len(overdue), deadline, describeHosts(st, overdue))
	default:
		st.State = proto.RolloutAborted
		st.Message = fmt.Sprintf("aborted%s: %d hosts reverted to their previous versions", byWhom(ro.Control.By), reverted)
	}
}

// goneHosts says what became of the hosts a rollout touched, for the
// message of a rollout left with none: ": its N hosts are lost (a, b)".
func goneHosts(snap *Snapshot, st *proto.RolloutState) string {
	if len(st.Hosts) == 0 {
		return " (it had not reached any)"
	}
	var lost, relabelled []string
	for h := range st.Hosts {
		if snap.Hosts[h].Live() {
			relabelled = append(relabelled, h)
		} else {
			lost = append(lost, h)
		}
	}
	sort.Strings(lost)
	sort.Strings(relabelled)
	var parts []string
	if len(lost) > 0 {
		parts = append(parts, fmt.Sprintf("%d lost (%s)", len(lost), strings.Join(firstN(lost), ", ")))
	}
	if len(relabelled) > 0 {
		parts = append(parts, fmt.Sprintf("%d no longer selected (%s)", len(relabelled), strings.Join(firstN(relabelled), ", ")))
	}
	return fmt.Sprintf(": of its %d hosts, %s", len(st.Hosts), strings.Join(parts, " and "))
}

// applied says whether a host reports the version in force for the
// desired state that names it.
func applied(hv HostView, ref proto.RuleSetRef) bool {
	return desiredAt(hv.Desired, ref.Name, ref.Version) && enforces(hv, ref.Name, ref.Version)
}

// enforces says whether a live host reports, for the desired state it
// was last given, that version v of rule set name is in force (v 0: that
// no version of it is).
func enforces(hv HostView, name string, v int64) bool {
	st := hv.Status
	if st == nil || hv.DesiredRevision == 0 || !st.InSync || st.Revision < hv.DesiredRevision {
		return false
	}
	if st.LastError != nil || st.DataPlaneError != nil {
		return false // a host that reports an error is not healthy
	}
	got := int64(0)
	for _, r := range st.Applied {
		if r.Name == name {
			got = r.Version
		}
	}
	return got == v
}

// desiredAt says whether a desired state gives version v of rule set
// name (v 0: does not name it).
func desiredAt(d *proto.HostDesired, name string, v int64) bool {
	if d == nil {
		return v == 0
	}
	got := int64(0)
	for _, r := range d.RuleSets {
		if r.Name == name {
			got = r.Version
		}
	}
	return got == v
}

// refusal returns why a host refused the version, or "": its data plane
// did not load, or its status, for the desired state that gives it the
// version, has an error about that version's document or about the
// desired state as a whole (it does not compile or apply).
func (s *stepper) refusal(host string, hv HostView, ref proto.RuleSetRef) string {
	st := hv.Status
	if st != nil && st.DataPlaneError != nil {
		// Its XDP program did not load: it applies nothing, whatever it
		// is given, until its agent manages to load it.
		return fmt.Sprintf("cannot apply %s: its data plane did not load: %s", ref, oneLine(st.DataPlaneError.Message))
	}
	if st == nil || st.LastError == nil || hv.DesiredRevision == 0 || st.Revision < hv.DesiredRevision ||
		!desiredAt(hv.Desired, ref.Name, ref.Version) {
		return ""
	}
	le := st.LastError
	if le.Document != s.keys.RuleSetVersion(ref.Name, ref.Version) && le.Document != s.keys.HostDesired(host) {
		return ""
	}
	return fmt.Sprintf("refused %s: %s: %s", ref, le.Document, oneLine(le.Message))
}

func failedHosts(st *proto.RolloutState) []string {
	var out []string
	for h, e := range st.Hosts {
		if e.State == proto.HostFailed {
			out = append(out, h)
		}
	}
	sort.Strings(out)
	return out
}

// describeHosts names hosts with their errors, at most maxNamedHosts.
func describeHosts(st *proto.RolloutState, hosts []string) string {
	parts := make([]string, 0, min(len(hosts), maxNamedHosts)+1)
	for _, h := range firstN(hosts) {
		parts = append(parts, h+" ("+st.Hosts[h].Error+")")
	}
	if len(hosts) > maxNamedHosts {
		parts = append(parts, fmt.Sprintf("and %d more", len(hosts)-maxNamedHosts))
	}
	return strings.Join(parts, "; ")
}

func firstN(hosts []string) []string {
	if len(hosts) > maxNamedHosts {
		return append(hosts[:maxNamedHosts:maxNamedHosts], fmt.Sprintf("... (%d more)", len(hosts)-maxNamedHosts))
	}
	return hosts
}

func prevString(name string, v int64) string {
	if v == 0 {
		return "no version of " + name
	}
	return proto.RuleSetRef{Name: name, Version: v}.String()
}

// byWhom is " by WHO", or nothing when who is unknown.
func byWhom(who string) string {
	if who == "" {
		return ""
	}
	return " by " + who
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

func cloneState(st proto.RolloutState) proto.RolloutState {
	out := st
	out.Hosts = maps.Clone(st.Hosts)
	if out.Hosts == nil {
		out.Hosts = map[string]proto.RolloutHost{}
	}
	return out
}
