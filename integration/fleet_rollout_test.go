package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	wire "github.com/xdpfw/xdpfw/proto"
)

// The control-plane issue's rollout scenarios: replicas of
// xdpfw-controlplane on the fleet's etcd cluster, real agents, the operator
// using xdpfwctl from the client host, and packets deciding what each host
// enforces.

const (
	cpPort      = 8080
	cpToken     = "it-operator-token-0123456789"
	cpAdmin     = "it-admin-token-0123456789"
	cpReadyLine = "xdpfw-controlplane: ready"
)

// controlPlane is one replica of xdpfw-controlplane, in the etcd namespace
// on one of the members' addresses.
type controlPlane struct {
	f       *fleet
	name    string
	addr    netip.Addr
	logPath string
	proc    *proc
}

func (c *controlPlane) url() string {
	return "http://" + netip.AddrPortFrom(c.addr, cpPort).String()
}

// startControlPlanes starts n replicas (at most 3) against the fleet's etcd
// cluster and waits until each serves.
func (f *fleet) startControlPlanes(t testing.TB, n int) []*controlPlane {
	t.Helper()
	tokens := filepath.Join(f.dir, "tokens.yaml")
	doc := fmt.Sprintf("tokens:\n  - {name: it-operator, role: operator, token: %s}\n  - {name: it-admin, role: admin, token: %s}\n", cpToken, cpAdmin)
	if err := os.WriteFile(tokens, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var cps []*controlPlane
	for i := range n {
		c := &controlPlane{f: f, name: fmt.Sprintf("cp%d", i+1), addr: memberV4[i].Addr()}
		c.logPath = f.logFile("controlplane-" + c.name)
		args := []string{
			"--name", c.name, "--listen", netip.AddrPortFrom(c.addr, cpPort).String(), "--insecure-http",
			"--tokens-file", tokens, "--etcd-endpoints", f.endpoints(),
			"--rollout-interval", "200ms", "--log-level", "info",
		}
		logf := openLog(t, c.logPath, "xdpfw-controlplane "+strings.Join(args, " "))
		ready := make(chan struct{})
		stdout := &lineSignal{w: logf, prefix: []byte(cpReadyLine), ready: ready}
		p, err := startProc(f.etcdNS, "controlplane "+c.name, logf, stdout, cpBin, args...)
		if err != nil {
			t.Fatal(err)
		}
		c.proc = p
		t.Cleanup(func() { p.cleanUp(t) })
		select {
		case <-ready:
		case <-p.exited:
			t.Fatalf("%s ended before it was ready: %s", c.name, p.result())
		case <-time.After(30 * time.Second):
			t.Fatalf("%s not ready after 30s", c.name)
		}
		cps = append(cps, c)
	}
	return cps
}

// leads reports whether the replica's rollout controller is the leader,
// from its /metrics.
func (c *controlPlane) leads(t testing.TB) bool {
	t.Helper()
	cl := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: c.f.client.dialContext, DisableKeepAlives: true}}
	resp, err := cl.Get(c.url() + "/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(b), "\nxdpfw_controller_leader 1\n")
}

// call sends one API request as the operator, from the client host, and
// decodes the answer into out (nil: none); an error answer fails t.
func (c *controlPlane) call(t testing.TB, method, path string, body []byte, out any) {
	t.Helper()
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DialContext: c.f.client.dialContext, DisableKeepAlives: true}}
	req, err := http.NewRequest(method, c.url()+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cpToken)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %d %.300s", method, path, resp.StatusCode, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decode: %v", method, path, err)
		}
	}
}

// op runs xdpfwctl as the operator, from the client host, against cp.
func (c *controlPlane) op(t testing.TB, args ...string) cliResult {
	t.Helper()
	return c.f.client.ctl(append(args, "--server", c.url(), "--token", cpToken)...)
}

func (c *controlPlane) mustOp(t testing.TB, args ...string) string {
	t.Helper()
	r := c.op(t, args...)
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	return r.stdout
}

func (c *controlPlane) rollout(t testing.TB, id string) wire.Rollout {
	t.Helper()
	var r wire.Rollout
	if err := json.Unmarshal([]byte(c.mustOp(t, "rollout", "status", id, "-o", "json")), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// startRollout starts a rollout and returns its id.
func (c *controlPlane) startRollout(t testing.TB, args ...string) string {
	t.Helper()
	var r wire.Rollout
	out := c.mustOp(t, append([]string{"rollout", "start"}, append(args, "-o", "json")...)...)
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("rollout start: %v: %s", err, out)
	}
	return r.ID
}

// waitRollout waits until the rollout is in state and returns it.
func (c *controlPlane) waitRollout(t testing.TB, id, state string) wire.Rollout {
	t.Helper()
	var r wire.Rollout
	waitFor(t, fleetTimeout, fmt.Sprintf("rollout %s %s", id, state), func() (bool, string) {
		r = c.rollout(t, id)
		return r.Status.State == state, fmt.Sprintf("state %s: %s", r.Status.State, r.Status.Message)
	})
	return r
}

// writeRules writes a rules file into the fleet's directory.
func (f *fleet) writeRules(t testing.TB, name, doc string) string {
	t.Helper()
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// webRules drops TCP to sshPort on the hosts labelled role=web.
func webRules(sshPort int) string {
	return fmt.Sprintf(`
apiVersion: xdpfw/v1
kind: RuleSet
name: web
selector: {role: web}
mode: deny
rules:
  - id: no-ssh
    action: drop
    protocol: tcp
    dstPorts: ["%d"]
`, sshPort)
}

func startWebFleet(t *testing.T, replicas int) (*fleet, []*controlPlane) {
	f := newFleet(t, 3)
	for _, h := range f.hosts {
		h.labels = append(h.labels, "role=web")
		h.startAgent(t)
	}
	f.waitRegistered(t)
	return f, f.startControlPlanes(t, replicas)
}

// waitRegistered waits until every agent has written its status: a
// rollout started before would count fewer hosts (a host that registers
// later joins the rollout as it goes, which is another scenario).
func (f *fleet) waitRegistered(t testing.TB) {
	t.Helper()
	for _, h := range f.hosts {
		waitFor(t, fleetTimeout, fmt.Sprintf("%s registers", h), func() (bool, string) {
			_, found := f.status(t, h)
			return found, "no status"
		})
	}
}

func TestRolloutAdvancesWaveByWaveOnHealth(t *testing.T) {
	f, cps := startWebFleet(t, 1)
	cp := cps[0]
	if out := cp.mustOp(t, "apply", "-f", f.writeRules(t, "web.yaml", webRules(22))); !strings.Contains(out, "web: version 1") {
		t.Fatalf("apply: %s", out)
	}
	for _, h := range f.hosts {
		enforcesNothingOn22(t, f, h)
	}
	id := cp.startRollout(t, "web", "--version", "1", "--waves", "1,2,100%", "--pause", "2s")

	// Watch the rollout: a host of wave k+1 is given the version only once
	// every host of wave k reports it applied, and the pause has passed.
	healthyAt := map[int]time.Time{}
	givenAt := map[int]time.Time{}
	var r wire.Rollout
	waitFor(t, fleetTimeout, "rollout succeeds", func() (bool, string) {
		r = cp.rollout(t, id)
		now := time.Now()
		byWave := map[int][]wire.RolloutHost{}
		for _, h := range r.Status.Hosts {
			byWave[h.Wave] = append(byWave[h.Wave], h)
		}
		for w, hs := range byWave {
			if _, ok := givenAt[w]; !ok {
				givenAt[w] = now
			}
			all := true
			for _, h := range hs {
				all = all && h.State == wire.HostApplied
			}
			if _, ok := healthyAt[w]; !ok && all && len(hs) == 1 { // one host a wave: 1, 2, 100% of 3
				healthyAt[w] = now
			}
			if w > 0 {
				prev := byWave[w-1]
				for _, h := range prev {
					if h.State != wire.HostApplied {
						t.Errorf("wave %d started while a host of wave %d was %s", w+1, w, h.State)
					}
				}
			}
		}
		return r.Status.State == wire.RolloutSucceeded, fmt.Sprintf("%s: %s", r.Status.State, r.Status.Message)
	})
	if len(r.Status.Hosts) != 3 {
		t.Fatalf("rollout touched %d hosts, want 3: %+v", len(r.Status.Hosts), r.Status.Hosts)
	}
	waves := map[int]int{}
	for _, h := range r.Status.Hosts {
		waves[h.Wave]++
	}
	if waves[0] != 1 || waves[1] != 1 || waves[2] != 1 {
		t.Errorf("hosts per wave %v, want one each (waves 1, 2, 100%% of 3)", waves)
	}
	for w := 1; w <= 2; w++ {
		// Both times are when this test saw the change (one xdpfwctl run
		// apart, tens of milliseconds when the machine is busy): a second
		// of slack, and still far from no pause at all.
		if gap := givenAt[w].Sub(healthyAt[w-1]); gap < time.Second {
			t.Errorf("wave %d started %v after wave %d was healthy, want the 2 s pause", w+1, gap, w)
		}
	}
	for _, h := range f.hosts {
		enforcesSSHPort(t, f, h, 22)
	}
	// The success released the version.
	var sets []wire.RuleSetSummary
	if err := json.Unmarshal([]byte(cp.mustOp(t, "get", "rulesets", "-o", "json")), &sets); err != nil {
		t.Fatal(err)
	}
	if len(sets) != 1 || sets[0].Name != "web" || sets[0].Released != 1 {
		t.Errorf("rule sets %+v, want web released at version 1", sets)
	}

	// Deleting a rule set the fleet enforces retires it first: every host
	// drops it (port 22 opens), then a second DELETE removes it.
	if code := cp.delete(t, "/v1/rulesets/web"); code != http.StatusAccepted {
		t.Fatalf("DELETE of an enforced rule set: %d, want 202", code)
	}
	for _, h := range f.hosts {
		waitFor(t, fleetTimeout, fmt.Sprintf("%s drops web", h), func() (bool, string) {
			st, found := f.status(t, h)
			return found && st.InSync && len(st.Applied) == 0, fmt.Sprintf("applied %v", st.Applied)
		})
		enforcesNothingOn22(t, f, h)
	}
	if code := cp.delete(t, "/v1/rulesets/web"); code != http.StatusNoContent {
		t.Fatalf("DELETE once no host enforces it: %d, want 204", code)
	}
}

// delete sends DELETE as the admin and returns the status code.
func (c *controlPlane) delete(t testing.TB, path string) int {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: c.f.client.dialContext, DisableKeepAlives: true}}
	req, err := http.NewRequest("DELETE", c.url()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cpAdmin)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// enforcesNothingOn22 checks that h lets TCP to port 22 through.
func enforcesNothingOn22(t *testing.T, f *fleet, h *agentHost) {
	t.Helper()
	expectFlows(t, map[flow]outcome{tcp4(f.client, h.host, 22): passes})
}

// bulkRules is a rule set of n rules, enough with another set to pass the
// 4,096 rules one host can enforce.
func bulkRules(n int) string {
	var b strings.Builder
	b.WriteString("apiVersion: xdpfw/v1\nkind: RuleSet\nname: bulk\nselector: {bulk: \"yes\"}\nmode: deny\nrules:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {id: r%d, action: drop, protocol: udp, dstPorts: [\"%d\"]}\n", i, 20000+i)
	}
	return b.String()
}

func webRulesWithFiller(sshPort, filler int) string {
	var b strings.Builder
	b.WriteString(webRules(sshPort))
	for i := range filler {
		fmt.Fprintf(&b, "  - {id: f%d, action: drop, protocol: udp, dstPorts: [\"%d\"]}\n", i, 40000+i)
	}
	return b.String()
}

func TestRolloutHaltsWhenAnAgentRefusesAndAbortRestores(t *testing.T) {
	f := newFleet(t, 3)
	refuser := f.hosts[1]
	for _, h := range f.hosts {
		h.labels = append(h.labels, "role=web")
		if h == refuser {
			h.labels = append(h.labels, "bulk=yes")
		}
		h.startAgent(t)
	}
	f.waitRegistered(t)
	cp := f.startControlPlanes(t, 1)[0]

	// The refusing host also enforces a rule set of 4,000 rules: a version
	// of web with 200 rules more than fits there (4,096 rules a host), and
	// nowhere else.
	cp.mustOp(t, "apply", "-f", f.writeRules(t, "bulk.yaml", bulkRules(4000)))
	cp.waitRollout(t, cp.startRollout(t, "bulk", "--version", "1"), wire.RolloutSucceeded)
	cp.mustOp(t, "apply", "-f", f.writeRules(t, "web1.yaml", webRules(22)))
	cp.waitRollout(t, cp.startRollout(t, "web", "--version", "1"), wire.RolloutSucceeded)
	for _, h := range f.hosts {
		enforcesSSHPort(t, f, h, 22)
	}

	cp.mustOp(t, "apply", "-f", f.writeRules(t, "web2.yaml", webRulesWithFiller(2222, 200)))
	id := cp.startRollout(t, "web", "--version", "2", "--waves", "100%")
	r := cp.waitRollout(t, id, wire.RolloutHalted)
	if h := r.Status.Hosts[refuser.name()]; h.State != wire.HostFailed || !strings.Contains(h.Error, "4096") && !strings.Contains(h.Error, "limit") {
		t.Errorf("the refusing host in the rollout: %+v; want failed with the rule limit as the reason", h)
	}
	if !strings.Contains(r.Status.Message, refuser.name()) {
		t.Errorf("halt message %q does not name %s", r.Status.Message, refuser.name())
	}
	// The others run version 2 (drop 2222), the refusing host still runs
	// version 1 (drop 22): its agent kept the last good rules.
	for _, h := range f.hosts {
		if h == refuser {
			enforcesSSHPort(t, f, h, 22)
			continue
		}
		waitApplied(t, f, h, wire.RuleSetRef{Name: "web", Version: 2})
		enforcesSSHPort(t, f, h, 2222)
	}

	// Abort: every host returns to version 1, and traffic shows it.
	cp.mustOp(t, "rollout", "abort", id)
	cp.waitRollout(t, id, wire.RolloutAborted)
	for _, h := range f.hosts {
		waitApplied(t, f, h, wire.RuleSetRef{Name: "web", Version: 1})
		enforcesSSHPort(t, f, h, 22)
	}
}

// waitApplied waits until h's status lists ref among what it applied.
func waitApplied(t testing.TB, f *fleet, h *agentHost, ref wire.RuleSetRef) {
	t.Helper()
	waitFor(t, fleetTimeout, fmt.Sprintf("%s applies %s", h, ref), func() (bool, string) {
		st, found := f.status(t, h)
		if !found {
			return false, "no status"
		}
		for _, a := range st.Applied {
			if a == ref && st.InSync {
				return true, ""
			}
		}
		return false, fmt.Sprintf("in sync %v, applied %v, error %+v", st.InSync, st.Applied, st.LastError)
	})
}

func TestRolloutContinuesWhenTheLeaderControlPlaneIsKilled(t *testing.T) {
	f, cps := startWebFleet(t, 2)
	var leader, other *controlPlane
	waitFor(t, fleetTimeout, "one replica leads", func() (bool, string) {
		a, b := cps[0].leads(t), cps[1].leads(t)
		switch {
		case a && !b:
			leader, other = cps[0], cps[1]
		case b && !a:
			leader, other = cps[1], cps[0]
		default:
			return false, fmt.Sprintf("cp1 leads %v, cp2 leads %v", a, b)
		}
		return true, ""
	})
	other.mustOp(t, "apply", "-f", f.writeRules(t, "web.yaml", webRules(22)))
	// A long pause after the first wave: the leader dies in it.
	id := other.startRollout(t, "web", "--version", "1", "--waves", "1,100%", "--pause", "3s")
	waitFor(t, fleetTimeout, "the first wave is healthy", func() (bool, string) {
		r := other.rollout(t, id)
		applied, _ := countApplied(r)
		return applied == 1, fmt.Sprintf("%s: %s", r.Status.State, r.Status.Message)
	})
	leader.proc.kill(t)

	waitFor(t, fleetTimeout, "the other replica takes over", func() (bool, string) {
		return other.leads(t), "not leading"
	})
	r := other.waitRollout(t, id, wire.RolloutSucceeded)
	if r.Status.Controller != other.name {
		t.Errorf("the rollout finished under %q, want %s", r.Status.Controller, other.name)
	}
	for _, h := range f.hosts {
		enforcesSSHPort(t, f, h, 22)
	}
}

func countApplied(r wire.Rollout) (applied, total int) {
	for _, h := range r.Status.Hosts {
		total++
		if h.State == wire.HostApplied {
			applied++
		}
	}
	return applied, total
}

// bigBlocklist is rule set web dropping everything from a set of n /32s
// of 100.64.0.0/10, plus extra prefixes.
func bigBlocklist(n int, extra ...string) string {
	var b strings.Builder
	b.WriteString("apiVersion: xdpfw/v1\nkind: RuleSet\nname: web\nselector: {role: web}\nmode: deny\n")
	b.WriteString("rules:\n  - {id: blocklist, action: drop, src: [set:blocklist]}\nsets:\n  blocklist:\n")
	for i := range n {
		fmt.Fprintf(&b, "    - 100.%d.%d.%d/32\n", 64+i>>16, (i>>8)&255, i&255)
	}
	for _, e := range extra {
		fmt.Fprintf(&b, "    - %s\n", e)
	}
	return b.String()
}

func TestRolloutOfABigSetThroughTheAPI(t *testing.T) {
	f, cps := startWebFleet(t, 1)
	cp := cps[0]
	chunks := wire.NewKeys("").Chunks()

	// 30,000 prefixes and the client's address: stored as chunks, rolled
	// out, and the client is cut off from every host.
	cp.mustOp(t, "apply", "-f", f.writeRules(t, "big1.yaml", bigBlocklist(30_000, clientV4.Addr().String()+"/32")))
	stored := f.countKeys(t, chunks)
	if stored < 5 {
		t.Fatalf("%d chunks stored for 30,001 prefixes", stored)
	}
	cp.waitRollout(t, cp.startRollout(t, "web", "--version", "1"), wire.RolloutSucceeded)
	for _, h := range f.hosts {
		expectFlows(t, map[flow]outcome{tcp4(f.client, h.host, 80): blocked, tcp6(f.client, h.host, 80): passes})
	}

	// Without the client's address: one chunk changes, and the client is
	// let through again.
	cp.mustOp(t, "apply", "-f", f.writeRules(t, "big2.yaml", bigBlocklist(30_000)))
	if n := f.countKeys(t, chunks) - stored; n < 1 || n > 2 {
		t.Errorf("removing one prefix stored %d new chunks, want 1 or 2", n)
	}
	cp.waitRollout(t, cp.startRollout(t, "web", "--version", "2"), wire.RolloutSucceeded)
	for _, h := range f.hosts {
		expectFlows(t, map[flow]outcome{tcp4(f.client, h.host, 80): passes})
	}
}
