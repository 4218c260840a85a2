package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/proto"
)

// refusingOpener opens firewalls with bpf.Open, but refuses as the kernel's
// verifier would until allow is called; it records when it was called.
type refusingOpener struct {
	mu      sync.Mutex
	allowed bool
	calls   []time.Time
}

func (o *refusingOpener) open(opts bpf.Options) (*bpf.Firewall, error) {
	o.mu.Lock()
	o.calls = append(o.calls, time.Now())
	allowed := o.allowed
	o.mu.Unlock()
	if !allowed {
		return nil, fmt.Errorf("load XDP program and maps for %s: %w", opts.Interface, &bpf.VerifierRefusal{
			Processed: 1000001, Last: []string{"BPF program is too large. Processed 1000001 insn"},
			Err: errors.New("load program: argument list too long")})
	}
	return bpf.Open(opts)
}

func (o *refusingOpener) allow() {
	o.mu.Lock()
	o.allowed = true
	o.mu.Unlock()
}

func (o *refusingOpener) callTimes() []time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]time.Time(nil), o.calls...)
}

// TestAgentWhoseDataPlaneDoesNotLoadRunsReportsAndRecovers: when the XDP
// program does not load (here the verifier refuses it, through the agent's
// fault seam), the agent does not exit: it registers, writes its status
// with the refusal, shows it on /metrics, leaves the pinned maps as they
// are, and tries again with backoff; once the program loads it applies
// the desired state.
func TestAgentWhoseDataPlaneDoesNotLoadRunsReportsAndRecovers(t *testing.T) {
	f := newFixture(t)
	// What an earlier agent left pinned: port 2222 dropped.
	old, err := bpf.Open(bpf.Options{PinPath: f.pinPath, Interface: "lo"})
	if err != nil {
		t.Fatal(err)
	}
	sets, err := proto.DecodeRuleSets([]byte(fmt.Sprintf(testRules, "old", 2222)))
	if err != nil {
		t.Fatal(err)
	}
	c, err := bpf.Compile(sets, "lo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Apply(c); err != nil {
		t.Fatal(err)
	}
	old.Close()
	pinned := f.applied()

	f.putRuleSet("edge", 1, 22)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	opener := &refusingOpener{}
	addr := strings.TrimPrefix(etcdtest.FreeURLs(t, 1)[0], "http://")
	const retryMin, retryMax = 100 * time.Millisecond, 400 * time.Millisecond
	f.startWith(addr, func(a *Agent) { a.loadRetryMin, a.loadRetryMax = retryMin, retryMax }, WithOpenFirewall(opener.open))

	// Registered, with the refusal in its status, retried.
	st := f.waitStatus("the data plane's refusal after 3 attempts", func(st proto.HostStatus) bool {
		return st.DataPlaneError != nil && st.DataPlaneError.Attempts >= 3
	})
	dp := st.DataPlaneError
	wantMsg := "open firewall of lo: load XDP program and maps for lo: the kernel's verifier refused the program after 1000001 instructions: BPF program is too large. Processed 1000001 insn"
	if dp.Interface != "lo" || dp.Message != wantMsg || dp.Since.IsZero() || !dp.NextAttemptAt.After(dp.Since) {
		t.Fatalf("data plane error %+v, want lo and\n%s", dp, wantMsg)
	}
	if st.InSync || len(st.Applied) != 0 || st.LastError != nil || len(st.Interfaces) != 1 || st.Interfaces[0].Error != wantMsg {
		t.Fatalf("status %+v: want not in sync, nothing applied, the interface's error", st)
	}
	resp, err := f.cli.Get(context.Background(), f.keys.HostStatus(f.host))
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("status %v (%v): want it written under the host's lease", resp, err)
	}
	info := proto.HostInfo{Host: f.host, Status: &st}
	if state, reason := proto.HostStateOf(info); state != proto.HostStateFailed || reason != "data plane: "+wantMsg {
		t.Fatalf("host state %q (%q), want failed with the refusal", state, reason)
	}
	waitMetricsFunc(t, addr, func(body string) string {
		if !strings.Contains(body, "xdpfw_agent_dataplane_ready 0\n") {
			return "xdpfw_agent_dataplane_ready 0"
		}
		if n := metricValue(body, "xdpfw_agent_dataplane_load_errors_total"); n < 3 {
			return fmt.Sprintf("xdpfw_agent_dataplane_load_errors_total >= 3 (got %v)", n)
		}
		return ""
	})
	// The backoff: apart by at least half the first delay (full jitter),
	// and never by much more than the cap.
	calls := opener.callTimes()
	for i := 1; i < len(calls); i++ {
		if gap := calls[i].Sub(calls[i-1]); gap < retryMin/2 || gap > retryMax+time.Second {
			t.Errorf("attempt %d came %v after the one before, want between %v and %v", i+1, gap, retryMin/2, retryMax)
		}
	}
	// Nothing pinned was touched: the earlier rules are in force.
	if got := f.applied(); strings.Join(got, " ") != strings.Join(pinned, " ") {
		t.Fatalf("while the data plane did not load the maps changed: %v, were %v", got, pinned)
	}

	// The program loads: the agent carries on as it would have.
	opener.allow()
	st = f.waitStatus("edge@1 applied once the program loads", applied(proto.RuleSetRef{Name: "edge", Version: 1}))
	if st.DataPlaneError != nil || st.Interfaces[0].Error != "" {
		t.Fatalf("status %+v: the data plane error is still there", st)
	}
	if got := f.applied(); got[0] != "edge:22" {
		t.Fatalf("maps enforce %v, want edge:22", got)
	}
	waitMetrics(t, addr, "xdpfw_agent_dataplane_ready 1", "xdpfw_agent_in_sync 1")
}

// TestAgentRefusesToStartOnAUsageError: an error that another attempt
// cannot fix (no such interface) still stops New, as before.
func TestAgentRefusesToStartOnAUsageError(t *testing.T) {
	f := newFixture(t)
	f.iface = InterfaceConfig{Name: "xdpfw-nosuch0"}
	off := ""
	_, err := New(Config{Endpoints: f.cli.Endpoints(), Host: f.host, Interfaces: []InterfaceConfig{f.iface}, PinPath: f.pinPath, MetricsAddr: &off}, zaptest.NewLogger(t))
	if !errors.Is(err, bpf.ErrNoInterface) || DataPlaneDown(err) {
		t.Fatalf("New on an unknown interface: %v, want ErrNoInterface and not a data plane failure", err)
	}
}

// metricValue reads an unlabelled sample from a /metrics body (-1: none).
func metricValue(body, name string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}
