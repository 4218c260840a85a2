package agent

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/proto"
)

// nullFirewall stands for an interface's data plane when hundreds of agents
// share one process in the fan-out benchmark: the agent's code path is the
// same (watch, decode, compile, diff by digest, status), but no map is
// written. The real data plane's apply time is measured by make bench in
// bpf/ and end to end by the integration benchmark.
type nullFirewall struct{ digest string }

func (f *nullFirewall) State() (*bpf.State, error) {
	return &bpf.State{Generation: -1, Digest: f.digest}, nil
}

func (f *nullFirewall) Enforce(c *bpf.Compiled) (*bpf.ApplyReport, error) {
	f.digest = hex.EncodeToString(c.Digest[:])
	return &bpf.ApplyReport{Rules: len(c.Rules), Digest: c.Digest, Writes: map[string]int{}}, nil
}

func (f *nullFirewall) PrepareStandby(*bpf.Compiled) (*bpf.ApplyReport, error) { return nil, nil }

func (f *nullFirewall) Settle() error { return nil }

func (f *nullFirewall) Attach(bpf.AttachMode) (bpf.AttachMode, error) { return "none", nil }
func (f *nullFirewall) Stats() (*bpf.Stats, error) {
	return &bpf.Stats{Actions: map[string]bpf.Counter{}}, nil
}
func (f *nullFirewall) SetPolicy(bool, bool) error           { return nil }
func (f *nullFirewall) SetSampling(bpf.SamplingConfig) error { return nil }
func (f *nullFirewall) SourceBuckets() int                   { return 0 }
func (f *nullFirewall) ReadDropSources() (*bpf.SourceReader, error) {
	return nil, errors.New("simulated firewall: no samples")
}
func (f *nullFirewall) Close() error { return nil }

const benchRules = `{"apiVersion":"xdpfw/v1","kind":"RuleSet","name":"edge","mode":"deny","rules":[
 {"id":"ssh","action":"drop","protocol":"tcp","dstPorts":["%d"]},
 {"id":"dns","action":"drop","protocol":"udp","dstPorts":["53"],"src":["198.51.100.0/24"]},
 {"id":"ping","action":"drop","protocol":"icmp","icmpType":8}]}`

// BenchmarkPropagation measures the time from the write of every host's
// desired state (in 128-put transactions, as a rollout writes them) to the
// last agent enforcing it, over 100 changes, beside the raw watch fan-out
// of the same writes to one plain watcher per host in the same run
// (docs/benchmarks.md, "Propagation": no agent can beat its watch). Agents are simulated
// in this process with their own etcd clients; see nullFirewall.
func BenchmarkPropagation(b *testing.B) {
	for _, n := range []int{3, 200} {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) { benchPropagation(b, n, 100) })
	}
}

func benchPropagation(b *testing.B, hosts, rounds int) {
	_, writer := etcdtest.StartWithClient(b)
	keys := proto.NewKeys("")
	ctx := context.Background()
	for v := int64(1); v <= 2; v++ {
		if _, err := writer.Put(ctx, keys.RuleSetVersion("edge", v), fmt.Sprintf(benchRules, 20+v)); err != nil {
			b.Fatal(err)
		}
	}

	// Each round: the revision each host must reach, and when it did.
	var mu sync.Mutex
	var target []int64
	agentAt := make([]time.Time, hosts)
	rawAt := make([]time.Time, hosts)
	// The last revision each agent and watcher reached, and when: an event
	// may come before its round's targets are known.
	type seen struct {
		rev int64
		at  time.Time
	}
	lastAgent := make([]seen, hosts)
	lastRaw := make([]seen, hosts)
	reached := func(at []time.Time, last []seen, i int, rev int64) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		last[i] = seen{rev, now}
		if target != nil && rev >= target[i] && at[i].IsZero() {
			at[i] = now
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	off := ""
	for i := range hosts {
		host := fmt.Sprintf("h%d", i)
		a, err := newAgent(Config{
			Endpoints: writer.Endpoints(), Host: host, Interfaces: []InterfaceConfig{{Name: "eth0"}}, NoDropSources: true,
			TelemetryInterval: Duration(time.Hour), MetricsAddr: &off,
		}, zap.NewNop(), func(InterfaceConfig, string) (firewall, error) { return &nullFirewall{}, nil })
		if err != nil {
			b.Fatal(err)
		}
		a.onApplied = func(rev int64) { reached(agentAt, lastAgent, i, rev) }
		wg.Add(1)
		go func() { defer wg.Done(); defer a.Close(); a.Run(runCtx) }()

		// The raw watcher of the same key, on a client of its own.
		cli, err := clientv3.New(clientv3.Config{Endpoints: writer.Endpoints(), Logger: zap.NewNop()})
		if err != nil {
			b.Fatal(err)
		}
		wch := cli.Watch(runCtx, keys.HostDesired(host))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cli.Close()
			for resp := range wch {
				for _, ev := range resp.Events {
					reached(rawAt, lastRaw, i, ev.Kv.ModRevision)
				}
			}
		}()
	}

	var agentLat, rawLat []time.Duration
	for r := range rounds + 1 { // round 0 warms up (first apply, registration)
		doc, _ := json.Marshal(proto.NewHostDesired(proto.RuleSetRef{Name: "edge", Version: int64(1 + r%2)}))
		revs := make([]int64, hosts)
		mu.Lock()
		target = make([]int64, hosts)
		for i := range target {
			target[i] = 1 << 62 // until the write's revision is known
			agentAt[i], rawAt[i] = time.Time{}, time.Time{}
		}
		mu.Unlock()
		start := time.Now()
		for lo := 0; lo < hosts; lo += 128 {
			hi := min(lo+128, hosts)
			ops := make([]clientv3.Op, 0, hi-lo)
			for i := lo; i < hi; i++ {
				ops = append(ops, clientv3.OpPut(keys.HostDesired(fmt.Sprintf("h%d", i)), string(doc)))
			}
			resp, err := writer.Txn(ctx).Then(ops...).Commit()
			if err != nil {
				b.Fatal(err)
			}
			for i := lo; i < hi; i++ {
				revs[i] = resp.Header.Revision
			}
		}
		mu.Lock()
		copy(target, revs)
		for i := range hosts {
			if lastAgent[i].rev >= target[i] {
				agentAt[i] = lastAgent[i].at
			}
			if lastRaw[i].rev >= target[i] {
				rawAt[i] = lastRaw[i].at
			}
		}
		mu.Unlock()
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			done := !slices.ContainsFunc(agentAt, time.Time.IsZero) && !slices.ContainsFunc(rawAt, time.Time.IsZero)
			mu.Unlock()
			if done {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("round %d: not every agent applied within 30s", r)
			}
			time.Sleep(200 * time.Microsecond)
		}
		if r == 0 {
			continue
		}
		mu.Lock()
		agentLat = append(agentLat, slices.MaxFunc(agentAt, time.Time.Compare).Sub(start))
		rawLat = append(rawLat, slices.MaxFunc(rawAt, time.Time.Compare).Sub(start))
		mu.Unlock()
	}
	ap50, ap99 := percentile(agentLat, 50), percentile(agentLat, 99)
	rp50, rp99 := percentile(rawLat, 50), percentile(rawLat, 99)
	b.ReportMetric(ms(ap50), "p50-ms")
	b.ReportMetric(ms(ap99), "p99-ms")
	b.ReportMetric(ms(rp50), "raw-p50-ms")
	b.ReportMetric(ms(rp99), "raw-p99-ms")
	b.ReportMetric(ms(ap99)/ms(rp99), "p99/raw-p99")
	b.Logf("%d agents, %d changes: last agent applied p50 %.1f ms p99 %.1f ms; raw watch fan-out p50 %.1f ms p99 %.1f ms; "+
		"p99 bound (1.5 x raw + 20 ms): %.1f ms", hosts, rounds, ms(ap50), ms(ap99), ms(rp50), ms(rp99), 1.5*ms(rp99)+20)
}

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(i-1, len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
