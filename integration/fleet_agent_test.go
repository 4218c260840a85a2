package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// endpoints is the --endpoints of an agent: every member's client URL.
func (f *fleet) endpoints() string {
	eps := make([]string, len(f.members))
	for i, m := range f.members {
		eps[i] = m.clientURL()
	}
	return strings.Join(eps, ",")
}

// agentHost is a fleet host that runs an agent. It is a host of the pair
// tests' kind (flows, listen and xdpfwctl work on agentHost.host), named
// "h1".."h3", which is also its --host name.
type agentHost struct {
	*host
	f      *fleet
	labels []string // "k=v" for --labels; set before startAgent
	// env is added to the agent's environment ("K=V"; the fault-injection
	// hooks); set before startAgent.
	env     []string
	logPath string
	agent   *proc // the latest run, nil before the first
	cut     []*netlink.Route
}

func (f *fleet) newAgentHost(t testing.TB, n int64, i int) *agentHost {
	t.Helper()
	h := &agentHost{
		host: newHost(t, n, fmt.Sprintf("h%d", i), agentV4(i), agentV6(i)),
		f:    f,
	}
	h.logPath = f.logFile("agent-" + h.role)
	// Registered after newHost's clean-ups, so it runs before them: the
	// agent is gone before the firewall is detached and the namespace
	// deleted.
	t.Cleanup(func() {
		if h.agent != nil {
			h.agent.cleanUp(t)
		}
	})
	f.plug(t, h.host)
	return h
}

// name is the agent's --host.
func (h *agentHost) name() string { return h.role }

// startAgent starts xdpfw-agent on h and returns without waiting for it
// to do anything. A flag in extraArgs replaces the harness's value of it
// ("--iface", "eth0:generic" attaches in generic mode instead of the
// default; --iface may be repeated, so adding would not do).
func (h *agentHost) startAgent(t testing.TB, extraArgs ...string) {
	t.Helper()
	if h.running() {
		t.Fatalf("%s: an agent runs already", h)
	}
	defaults := [][2]string{
		{"endpoints", h.f.endpoints()},
		{"host", h.name()},
		{"iface", ifaceName},
		{"pin-path", h.pinPath},
		{"lease-ttl", "2s"},
		{"telemetry-interval", "1s"},
		{"metrics-addr", fmt.Sprintf("127.0.0.1:%d", agentMetricsPort)},
	}
	if len(h.labels) > 0 {
		defaults = append(defaults, [2]string{"labels", strings.Join(h.labels, ",")})
	}
	given := map[string]bool{}
	for _, a := range extraArgs {
		if name, ok := flagName(a); ok {
			given[name] = true
		}
	}
	var args []string
	for _, d := range defaults {
		if !given[d[0]] {
			args = append(args, "--"+d[0], d[1])
		}
	}
	args = append(args, extraArgs...)
	logf := openLog(t, h.logPath, strings.TrimSpace(fmt.Sprintf("%s xdpfw-agent %s", strings.Join(h.env, " "), strings.Join(args, " "))))
	p, err := startProcEnv(h.host, "agent "+h.name(), logf, nil, h.env, agentBin, args...)
	if err != nil {
		t.Fatal(err)
	}
	h.agent = p
}

// flagName is the name of the flag that arg sets ("--iface=eth0" and
// "-iface" both give "iface"), or false if arg is not a flag. A value that
// looks like a flag is taken for one, which at worst keeps a default out.
func flagName(arg string) (string, bool) {
	name, ok := strings.CutPrefix(arg, "-")
	if !ok || name == "" || name == "-" {
		return "", false
	}
	name = strings.TrimPrefix(name, "-")
	name, _, _ = strings.Cut(name, "=")
	return name, true
}

// running reports whether h's agent runs.
func (h *agentHost) running() bool { return h.agent != nil && h.agent.running() }

// kill9 kills h's agent with SIGKILL, as a crash would.
func (h *agentHost) kill9(t testing.TB) {
	t.Helper()
	h.mustHaveRun(t)
	h.agent.kill(t)
}

// stop stops h's agent with SIGTERM and fails the test unless it exits
// with status 0.
func (h *agentHost) stop(t testing.TB) {
	t.Helper()
	h.mustHaveRun(t)
	h.agent.stop(t)
}

// waitExit waits up to timeout for an agent that is meant to end by
// itself (a bad flag, say) and returns how it ended (nil: status 0).
func (h *agentHost) waitExit(t testing.TB, timeout time.Duration) error {
	t.Helper()
	h.mustHaveRun(t)
	h.agent.signalled = true
	select {
	case <-h.agent.exited:
		return h.agent.err
	case <-time.After(timeout):
		t.Fatalf("%s still running after %s", h.agent.what, timeout)
		return nil
	}
}

func (h *agentHost) mustHaveRun(t testing.TB) {
	t.Helper()
	if h.agent == nil {
		t.Fatalf("%s: no agent was started", h)
	}
}

// metrics fetches the agent's /metrics, from inside h's namespace.
func (h *agentHost) metrics(t testing.TB) (string, error) {
	t.Helper()
	c := &http.Client{
		Timeout: etcdRequestTimeout,
		// No keep-alive: nothing is left open between two scrapes.
		Transport: &http.Transport{DialContext: h.dialContext, DisableKeepAlives: true},
	}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", agentMetricsPort))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s: %s", resp.Status, b)
	}
	return string(b), nil
}

// cutOffEtcd makes h's traffic to every etcd member vanish, in h's own
// namespace only: blackhole routes to the members' addresses. Segments
// of established connections are then dropped on the way out, so those
// connections stall as across a broken network (nothing resets them),
// while a new connect fails at once (EINVAL). Traffic between h and the
// other hosts is untouched.
func (h *agentHost) cutOffEtcd(t testing.TB) {
	t.Helper()
	if h.cut != nil {
		t.Fatalf("%s: cut off from etcd already", h)
	}
	nh, err := netlink.NewHandleAt(h.ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", h.netns, err)
	}
	defer nh.Close()
	for _, p := range memberV4 {
		r := &netlink.Route{
			Dst:  &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)},
			Type: unix.RTN_BLACKHOLE,
		}
		if err := nh.RouteAdd(r); err != nil {
			t.Fatalf("%s: blackhole route to %s: %v", h, p.Addr(), err)
		}
		h.cut = append(h.cut, r)
	}
}

// restoreEtcd undoes cutOffEtcd.
func (h *agentHost) restoreEtcd(t testing.TB) {
	t.Helper()
	if h.cut == nil {
		t.Fatalf("%s: not cut off from etcd", h)
	}
	nh, err := netlink.NewHandleAt(h.ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", h.netns, err)
	}
	defer nh.Close()
	for _, r := range h.cut {
		if err := nh.RouteDel(r); err != nil {
			t.Fatalf("%s: remove blackhole route to %s: %v", h, r.Dst, err)
		}
	}
	h.cut = nil
}
