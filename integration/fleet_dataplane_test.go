package integration

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	wire "github.com/xdpfw/xdpfw/proto"
)

// faultLoadFailures is the agent's fault-injection hook: its first N
// attempts to load the data plane fail as a verifier refusal.
const faultLoadFailures = "XDPFW_FAULT_INJECT_LOAD_FAILURES"

// TestAgentWhoseProgramDoesNotLoadIsFailedAndHaltsARollout: an agent
// restarted on a kernel that refuses its XDP program (every load fails, by
// the fault-injection hook) does not exit: it registers, the operator sees
// the host failed with the reason (xdpfwctl get hosts) and its /metrics say
// so, the program the earlier agent pinned keeps filtering with its rules,
// and a rollout halts on the host while the other host applies it. Once the
// program loads again (an agent without the fault), resume finishes it.
func TestAgentWhoseProgramDoesNotLoadIsFailedAndHaltsARollout(t *testing.T) {
	f := newFleet(t, 2)
	good, broken := f.hosts[0], f.hosts[1]
	for _, h := range f.hosts {
		h.labels = append(h.labels, "role=web")
		h.startAgent(t)
	}
	f.waitRegistered(t)
	cp := f.startControlPlanes(t, 1)[0]
	cp.mustOp(t, "apply", "-f", f.writeRules(t, "web1.yaml", webRules(22)))
	cp.waitRollout(t, cp.startRollout(t, "web", "--version", "1"), wire.RolloutSucceeded)
	for _, h := range f.hosts {
		enforcesSSHPort(t, f, h, 22)
	}

	broken.stop(t)
	broken.env = []string{faultLoadFailures + "=1000000"}
	broken.startAgent(t)
	var st wire.HostStatus
	waitFor(t, fleetTimeout, fmt.Sprintf("%s reports its data plane failed, twice", broken), func() (bool, string) {
		var found bool
		st, found = f.status(t, broken)
		return found && st.DataPlaneError != nil && st.DataPlaneError.Attempts >= 2, fmt.Sprintf("status %+v", st)
	})
	if !broken.running() {
		t.Fatalf("%s: the agent exited: %s", broken, broken.agent.result())
	}
	const refusal = "the kernel's verifier refused the program after 1000001 instructions"
	if dp := st.DataPlaneError; dp.Interface != ifaceName || !strings.Contains(dp.Message, refusal) || st.InSync ||
		len(st.Interfaces) != 1 || !st.Interfaces[0].Attached {
		t.Fatalf("status %+v (data plane %+v): want the refusal, not in sync, the pinned program attached", st, dp)
	}
	// The operator's view: the host failed, and why.
	var row string
	for _, line := range strings.Split(cp.mustOp(t, "get", "hosts"), "\n") {
		if strings.HasPrefix(line, broken.name()+" ") {
			row = line
		}
	}
	if !strings.Contains(row, " failed ") || !strings.Contains(row, "data plane: ") || !strings.Contains(row, refusal) {
		t.Fatalf("xdpfwctl get hosts shows %s as %q; want failed with the refusal", broken, row)
	}
	waitFor(t, fleetTimeout, fmt.Sprintf("%s's /metrics show the data plane down", broken), func() (bool, string) {
		body, err := broken.metrics(t)
		if err != nil {
			return false, err.Error()
		}
		errs := metricSample(body, "xdpfw_agent_dataplane_load_errors_total")
		return strings.Contains(body, "\nxdpfw_agent_dataplane_ready 0\n") && errs >= 2,
			fmt.Sprintf("load errors %v in\n%s", errs, body)
	})
	// What the earlier agent pinned keeps filtering.
	enforcesSSHPort(t, f, broken, 22)

	// A rollout halts on the failed host; the other one applies it.
	cp.mustOp(t, "apply", "-f", f.writeRules(t, "web2.yaml", webRules(2222)))
	id := cp.startRollout(t, "web", "--version", "2", "--waves", "100%")
	r := cp.waitRollout(t, id, wire.RolloutHalted)
	if h := r.Status.Hosts[broken.name()]; h.State != wire.HostFailed || !strings.Contains(h.Error, "its data plane did not load") || !strings.Contains(h.Error, refusal) {
		t.Errorf("%s in the rollout: %+v; want failed with the refusal", broken, h)
	}
	if !strings.Contains(r.Status.Message, broken.name()) {
		t.Errorf("halt message %q does not name %s", r.Status.Message, broken.name())
	}
	waitApplied(t, f, good, wire.RuleSetRef{Name: "web", Version: 2})
	enforcesSSHPort(t, f, good, 2222)
	enforcesSSHPort(t, f, broken, 22)

	// The program loads again: the host adopts what is pinned, the resumed
	// rollout gives it version 2, and it succeeds.
	broken.stop(t)
	broken.env = nil
	broken.startAgent(t)
	waitFor(t, fleetTimeout, fmt.Sprintf("%s's data plane loads", broken), func() (bool, string) {
		st, found := f.status(t, broken)
		return found && st.DataPlaneError == nil, fmt.Sprintf("status %+v", st)
	})
	cp.mustOp(t, "rollout", "resume", id)
	cp.waitRollout(t, id, wire.RolloutSucceeded)
	waitApplied(t, f, broken, wire.RuleSetRef{Name: "web", Version: 2})
	enforcesSSHPort(t, f, broken, 2222)
}

// metricSample reads an unlabelled sample from a /metrics body (-1: none).
func metricSample(body, name string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				return f
			}
		}
	}
	return -1
}
