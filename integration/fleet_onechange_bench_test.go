package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	wire "github.com/xdpfw/xdpfw/proto"
)

// onePrefixPort is the UDP port of the probes of
// BenchmarkControlPlaneOnePrefixChange: the big set's rule drops only it,
// so the client's other traffic (etcd, the API) never meets the set.
const onePrefixPort = 7001

// BenchmarkControlPlaneOnePrefixChange: a rule set whose set holds 1M IPv4
// prefixes (XDPFW_BENCH_BIGSET to change it; 1M is the limit of a set),
// the client's own address among them, is uploaded through the API and
// rolled out to 3 real agents; then XDPFW_BENCH_CHANGES (20) changes of
// one prefix each, the client's address removed and added back in turn,
// each a PUT of the new version and a one-wave rollout, as an operator
// would. For each change, from the start of the PUT: the last host's raw
// watcher seeing its desired state name the new version (one plain watcher
// per host, in its namespace, on the agent's key, in the same run: no
// agent can be faster, docs/benchmarks.md, "Propagation"); the last host's data plane
// enforcing it (UDP probes from the client every millisecond: the first
// echo when the prefix went, the first unanswered probe after the last
// answered one when it came); the last agent's status saying so. Each
// agent's own apply of each change, by phase, is read from its log line
// "applied desired state".
//
// Target (issue 13): p99 of enforcement within the raw fan-out's p99 plus
// 100 ms, the agent's own apply under 20 ms.
func BenchmarkControlPlaneOnePrefixChange(b *testing.B) {
	size := envInt(b, "XDPFW_BENCH_BIGSET", 1_000_000)
	changes := envInt(b, "XDPFW_BENCH_CHANGES", 20)
	if size < wire.ChunkThreshold+1 || size > wire.MaxPrefixesPerSet || changes < 1 {
		b.Fatalf("XDPFW_BENCH_BIGSET=%d (want %d..%d), XDPFW_BENCH_CHANGES=%d (want >= 1)",
			size, wire.ChunkThreshold+1, wire.MaxPrefixesPerSet, changes)
	}
	benchStart := time.Now()
	f, cp := webFleetWithControlPlane(b)
	keys := wire.NewKeys("")

	// The set: 100.64.0.0 + i as /32s (documents only, never on a wire)
	// and the client's address, 198.18.0.1/32, which the changes take out
	// and put back.
	prefixes := make([]string, size-1, size)
	for i := range size - 1 {
		prefixes[i] = fmt.Sprintf("100.%d.%d.%d/32", 64+i>>16, (i>>8)&255, i&255)
	}
	toggled := clientV4.Addr().String() + "/32"
	doc := func(ps []string) []byte {
		rs := wire.RuleSet{APIVersion: wire.APIVersion, Kind: wire.KindRuleSet, Name: "web",
			Selector: map[string]string{"role": "web"}, Mode: wire.ModeDeny,
			Sets: map[string]wire.PrefixSet{"blocklist": {Prefixes: ps}},
			Rules: []wire.Rule{{ID: "blocklist", Action: wire.ActionDrop, Protocol: wire.ProtoUDP,
				DstPorts: []wire.PortSpec{wire.PortSpec(strconv.Itoa(onePrefixPort))}, Src: []string{"set:blocklist"}}}}
		data, err := json.Marshal(rs)
		if err != nil {
			b.Fatal(err)
		}
		return data
	}
	without := doc(prefixes)
	with := doc(append(prefixes, toggled))

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	w := newOnePrefixWatch(ctx, b, &wg, f, keys)

	// A UDP echo on each host and a prober from the client to it.
	probers := make([]*prober, len(f.hosts))
	for i, h := range f.hosts {
		fl := udp4(f.client, h.host, onePrefixPort)
		h.listen(b, fl.proto, onePrefixPort)
		c, err := f.client.dial("udp", fl.dst())
		if err != nil {
			b.Fatal(err)
		}
		p := &prober{conn: c}
		probers[i] = p
		wg.Go(func() { defer c.Close(); p.run(ctx) })
	}
	time.Sleep(500 * time.Millisecond) // the watches are set up

	// rollout PUTs a version and rolls it out to every host in one wave;
	// it returns the new reference, when the PUT began and how long it
	// took, and the rollout's ID.
	rollout := func(body []byte) (ref wire.RuleSetRef, start time.Time, upload time.Duration, id string) {
		start = time.Now()
		var wr wire.RuleSetWrite
		cp.call(b, "PUT", "/v1/rulesets/web", body, &wr)
		upload = time.Since(start)
		var ro wire.Rollout
		cp.call(b, "POST", "/v1/rollouts", fmt.Appendf(nil, `{"ruleset":"web","version":%d}`, wr.Version), &ro)
		return wire.RuleSetRef{Name: "web", Version: wr.Version}, start, upload, ro.ID
	}
	waitSucceeded := func(id string) {
		var got wire.Rollout
		waitFor(b, fleetTimeout, "rollout "+id+" succeeds", func() (bool, string) {
			cp.call(b, "GET", "/v1/rollouts/"+id, nil, &got)
			return got.Status.State == wire.RolloutSucceeded, got.Status.Message
		})
	}

	// The upload of the whole set, and its first apply.
	chunksBefore := f.countKeys(b, keys.Chunks())
	ref, start, upload, id := rollout(with)
	firstApplied := w.waitStatus(b, f, ref).Sub(start)
	for i, p := range probers {
		p.waitBlocked(b, start, w.statusAt(f.hosts[i], ref))
	}
	waitSucceeded(id)
	chunks := f.countKeys(b, keys.Chunks()) - chunksBefore
	firstRef := ref
	b.Logf("%d prefixes (%d bytes of JSON, %d chunks): uploaded in %v; every agent's status said applied %v after the upload began",
		size, len(with), chunks, upload.Round(time.Millisecond), firstApplied.Round(time.Millisecond))

	// The changes.
	var uploads, raw, probe, status, agentOver []time.Duration
	refs := map[int64]bool{}
	newChunks := 0 // chunk hashes a version names that the one before does not
	prev := firstRef
	for r := range changes {
		add := r%2 == 1
		body := without
		if add {
			body = with
		}
		ref, start, upload, id := rollout(body)
		refs[ref.Version] = true
		lastRaw := w.waitRaw(b, f, ref)
		lastStatus := w.waitStatus(b, f, ref)
		var lastProbe time.Time
		for i, p := range probers {
			var at time.Time
			if add {
				at = p.waitBlocked(b, start, w.statusAt(f.hosts[i], ref))
			} else {
				at = p.waitPassing(b, start)
			}
			lastProbe = later(lastProbe, at)
		}
		waitSucceeded(id)
		newChunks += len(chunksOnlyIn(b, f, ref, prev))
		prev = ref
		uploads = append(uploads, upload)
		raw = append(raw, lastRaw.Sub(start))
		status = append(status, lastStatus.Sub(start))
		probe = append(probe, lastProbe.Sub(start))
		agentOver = append(agentOver, lastProbe.Sub(lastRaw))
	}
	chunksPerChange := float64(newChunks) / float64(changes)

	// Each agent's own applies of the changes, from its log.
	// cpu is the agent process's CPU time over the apply (every thread:
	// its own work and its garbage collection), beside the wall time.
	// enforced is when the change was in force (the apply proper: the
	// target's); settle, release and the status follow it.
	phases := []string{"fetch", "decode", "compile", "write", "enforced", "settle", "release", "total", "cpu"}
	byPhase := map[string][]time.Duration{}
	var perAgent []string
	gcs := 0 // GC cycles completed during the applies, over every agent
	for _, h := range f.hosts {
		applies := agentApplies(b, h, "web")
		var totals []time.Duration
		for v, a := range applies {
			if !refs[v] {
				continue
			}
			if !a.Incremental || a.PrefixesAdded+a.PrefixesRemoved != 1 {
				b.Errorf("%s: the apply of web@%d says incremental %v, %d prefixes added, %d removed; want one prefix",
					h, v, a.Incremental, a.PrefixesAdded, a.PrefixesRemoved)
			}
			for _, p := range phases {
				byPhase[p] = append(byPhase[p], a.phase(p))
			}
			totals = append(totals, a.phase("enforced"))
			gcs += a.GCCycles
		}
		if len(totals) != changes {
			b.Fatalf("%s: %d applies of the changes logged, want %d", h, len(totals), changes)
		}
		perAgent = append(perAgent, fmt.Sprintf("%s %.1f / %.1f", h, msOf(pct(totals, 50)), msOf(pct(totals, 99))))
		if first, ok := applies[firstRef.Version]; ok {
			b.Logf("%s: first apply of %d prefixes: %s", h, size, first)
		}
	}

	report := func(name string, d []time.Duration) (p50, p99 float64) {
		p50, p99 = msOf(pct(d, 50)), msOf(pct(d, 99))
		b.ReportMetric(p50, name+"-p50-ms")
		b.ReportMetric(p99, name+"-p99-ms")
		return p50, p99
	}
	b.ReportMetric(msOf(upload), "upload-all-ms")
	b.ReportMetric(msOf(firstApplied), "first-applied-ms")
	up50, up99 := report("upload", uploads)
	rw50, rw99 := report("raw-watch", raw)
	pr50, pr99 := report("probe", probe)
	st50, st99 := report("status", status)
	ov50, ov99 := report("probe-minus-raw", agentOver)
	b.ReportMetric(pr99-rw99, "probe-p99-minus-raw-p99-ms")
	b.ReportMetric(chunksPerChange, "new-chunks-per-change")
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	b.Logf("%d one-prefix changes of a %d-prefix set through the API (PUT %d bytes, one-wave rollout), 3 agents, "+
		"from the start of the PUT, p50 / p99 ms: PUT %.0f / %.0f; raw watch fan-out %.0f / %.0f; "+
		"data plane of every host enforcing %.0f / %.0f (1 ms probes); every status %.0f / %.0f; "+
		"enforcing minus raw watch, per change %.0f / %.0f; p99 minus raw p99 %.0f (target <= 100: %s); %.1f new chunks per change (of %d)",
		changes, size, len(with), up50, up99, rw50, rw99, pr50, pr99, st50, st99, ov50, ov99, pr99-rw99,
		verdict(pr99-rw99 <= 100), chunksPerChange, chunks)
	var lines []string
	for _, p := range phases {
		p50, p99 := msOf(pct(byPhase[p], 50)), msOf(pct(byPhase[p], 99))
		b.ReportMetric(p50, "apply-"+p+"-p50-ms")
		b.ReportMetric(p99, "apply-"+p+"-p99-ms")
		lines = append(lines, fmt.Sprintf("%s %.1f / %.1f", p, p50, p99))
	}
	b.ReportMetric(float64(gcs)/float64(len(byPhase["total"])), "apply-gc-cycles")
	b.Logf("each agent's own apply of a change (%d applies), p50 / p99 ms: %s; %.2f GC cycles per apply; enforced by agent: %s; target enforced p99 < 20 ms: %s",
		len(byPhase["total"]), strings.Join(lines, "; "), float64(gcs)/float64(len(byPhase["total"])), strings.Join(perAgent, "; "),
		verdict(msOf(pct(byPhase["enforced"], 99)) < 20))
	b.Logf("wall time %v", time.Since(benchStart).Round(time.Second))
}

// chunksOnlyIn returns the chunk hashes that version a of rule set web
// names and version b does not, as stored in etcd.
func chunksOnlyIn(b *testing.B, f *fleet, x, y wire.RuleSetRef) []string {
	b.Helper()
	chunksOf := func(ref wire.RuleSetRef) []string {
		ctx, cancel := context.WithTimeout(b.Context(), etcdRequestTimeout)
		defer cancel()
		key := wire.NewKeys("").RuleSetVersion(ref.Name, ref.Version)
		resp, err := f.etcd.Get(ctx, key)
		if err != nil || len(resp.Kvs) == 0 {
			b.Fatalf("get %s: %v (%d keys)", key, err, len(resp.Kvs))
		}
		rs, err := wire.DecodeRuleSet(resp.Kvs[0].Value)
		if err != nil {
			b.Fatalf("%s: %v", key, err)
		}
		return rs.ChunkRefs()
	}
	in := map[string]bool{}
	for _, h := range chunksOf(y) {
		in[h] = true
	}
	var out []string
	for _, h := range chunksOf(x) {
		if !in[h] {
			out = append(out, h)
		}
	}
	return out
}

// envInt reads a positive integer from the environment, or def.
func envInt(b *testing.B, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(strings.ReplaceAll(s, "_", ""))
	if err != nil {
		b.Fatalf("%s=%q: %v", name, s, err)
	}
	return n
}

// onePrefixWatch records, per host and version of rule set web, when the
// host's raw watcher first saw its desired state name the version and
// when its agent's status first said it applied it.
type onePrefixWatch struct {
	mu     sync.Mutex
	raw    map[string]map[int64]time.Time
	status map[string]map[int64]time.Time
}

func newOnePrefixWatch(ctx context.Context, b *testing.B, wg *sync.WaitGroup, f *fleet, keys wire.Keys) *onePrefixWatch {
	w := &onePrefixWatch{raw: map[string]map[int64]time.Time{}, status: map[string]map[int64]time.Time{}}
	for _, h := range f.hosts {
		w.raw[h.name()], w.status[h.name()] = map[int64]time.Time{}, map[int64]time.Time{}
	}
	note := func(m map[string]map[int64]time.Time, host string, refs []wire.RuleSetRef, at time.Time) {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, r := range refs {
			if r.Name == "web" && m[host] != nil && m[host][r.Version].IsZero() {
				m[host][r.Version] = at
			}
		}
	}
	statusCh := f.etcd.Watch(ctx, keys.Hosts(), clientv3.WithPrefix())
	wg.Go(func() {
		for resp := range statusCh {
			now := time.Now()
			for _, ev := range resp.Events {
				host, leaf, ok := keys.ParseHostKey(string(ev.Kv.Key))
				if !ok || leaf != "status" || len(ev.Kv.Value) == 0 {
					continue
				}
				var st wire.HostStatus
				if json.Unmarshal(ev.Kv.Value, &st) == nil && st.InSync {
					note(w.status, host, st.Applied, now)
				}
			}
		}
	})
	for _, h := range f.hosts {
		cli, err := clientv3.New(clientv3.Config{
			Endpoints: strings.Split(f.endpoints(), ","), Logger: zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return h.dialContext(ctx, "tcp", addr)
			})},
		})
		if err != nil {
			b.Fatal(err)
		}
		wch := cli.Watch(ctx, keys.HostDesired(h.name()))
		wg.Go(func() {
			defer cli.Close()
			for resp := range wch {
				now := time.Now()
				for _, ev := range resp.Events {
					var d wire.HostDesired
					if json.Unmarshal(ev.Kv.Value, &d) == nil {
						note(w.raw, h.name(), d.RuleSets, now)
					}
				}
			}
		})
	}
	return w
}

// waitRaw waits until every host's raw watcher saw ref, and returns the
// last time one did.
func (w *onePrefixWatch) waitRaw(b *testing.B, f *fleet, ref wire.RuleSetRef) time.Time {
	return w.wait(b, f, w.raw, ref, "raw watcher sees")
}

// waitStatus waits until every agent's status said it applied ref, and
// returns the last time one did.
func (w *onePrefixWatch) waitStatus(b *testing.B, f *fleet, ref wire.RuleSetRef) time.Time {
	return w.wait(b, f, w.status, ref, "status says applied")
}

func (w *onePrefixWatch) statusAt(h *agentHost, ref wire.RuleSetRef) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status[h.name()][ref.Version]
}

func (w *onePrefixWatch) wait(b *testing.B, f *fleet, m map[string]map[int64]time.Time, ref wire.RuleSetRef, what string) time.Time {
	b.Helper()
	var last time.Time
	waitFor(b, fleetTimeout, fmt.Sprintf("every host's %s %s", what, ref), func() (bool, string) {
		w.mu.Lock()
		defer w.mu.Unlock()
		last = time.Time{}
		for _, h := range f.hosts {
			at := m[h.name()][ref.Version]
			if at.IsZero() {
				return false, h.name() + " not yet"
			}
			last = later(last, at)
		}
		return true, ""
	})
	return last
}

// prober sends a numbered UDP probe about every millisecond and records
// when it sent each and when its echo came back (a late echo still
// counts: it names its probe). Its goroutine is the only writer.
type prober struct {
	conn   net.Conn
	mu     sync.Mutex
	sent   []time.Time // by sequence number
	echoed []time.Time // zero: no echo (yet)
}

func (p *prober) run(ctx context.Context) {
	buf := make([]byte, 64)
	for seq := 0; ctx.Err() == nil; seq++ {
		msg := probeMessage(seq)
		p.mu.Lock()
		p.sent = append(p.sent, time.Now())
		p.echoed = append(p.echoed, time.Time{})
		p.mu.Unlock()
		p.conn.Write(msg) // an error shows as a probe without an echo
		p.conn.SetReadDeadline(time.Now().Add(time.Millisecond))
		for {
			n, err := p.conn.Read(buf)
			if err != nil {
				break
			}
			s, ok := bytes.CutPrefix(buf[:n], []byte("xdpfw-probe-"))
			got, err := strconv.Atoi(string(s))
			if !ok || err != nil {
				continue
			}
			p.mu.Lock()
			if got < len(p.echoed) && p.echoed[got].IsZero() {
				p.echoed[got] = time.Now()
			}
			p.mu.Unlock()
		}
	}
}

// waitPassing waits for the echo of a probe sent after start and returns
// when the first came back.
func (p *prober) waitPassing(b *testing.B, start time.Time) time.Time {
	b.Helper()
	var at time.Time
	waitFor(b, fleetTimeout, "a probe passes", func() (bool, string) {
		p.mu.Lock()
		defer p.mu.Unlock()
		at = time.Time{}
		for i := len(p.sent) - 1; i >= 0 && !p.sent[i].Before(start); i-- {
			if !p.echoed[i].IsZero() && (at.IsZero() || p.echoed[i].Before(at)) {
				at = p.echoed[i]
			}
		}
		return !at.IsZero(), "no echo since the change began"
	})
	return at
}

// quiet is how long after its agent said it applied a change that blocks
// the probes every probe must have gone unanswered: the probe after the
// last answered one is when the data plane began to drop them.
const quiet = 200 * time.Millisecond

// waitBlocked waits until the probes sent in the quiet period after
// applied (the agent's status) all went unanswered, and returns when the
// first probe after the last answered one was sent.
func (p *prober) waitBlocked(b *testing.B, start, applied time.Time) time.Time {
	b.Helper()
	if applied.IsZero() {
		b.Fatal("waitBlocked: the agent has not said it applied the change")
	}
	time.Sleep(time.Until(applied.Add(quiet)))
	p.mu.Lock()
	defer p.mu.Unlock()
	last := -1
	for i := range p.echoed {
		if !p.echoed[i].IsZero() {
			last = i
		}
	}
	if last >= 0 && p.sent[last].After(applied) {
		b.Fatalf("a probe sent %v after the agent said it applied the change came back", p.sent[last].Sub(applied))
	}
	if last+1 >= len(p.sent) {
		b.Fatal("no probe sent since the last answered one")
	}
	at := p.sent[last+1]
	if at.Before(start) {
		b.Fatalf("the probes stopped passing %v before the change began", start.Sub(at))
	}
	return at
}

// agentApply is one "applied desired state" line of an agent's log.
type agentApply struct {
	RuleSets        []string `json:"ruleSets"`
	Fetch           float64  `json:"fetch"`
	Decode          float64  `json:"decode"`
	Compile         float64  `json:"compile"`
	Write           float64  `json:"write"`
	Enforced        float64  `json:"enforced"`
	Settle          float64  `json:"settle"`
	Release         float64  `json:"release"`
	Total           float64  `json:"total"`
	CPU             float64  `json:"cpu"`
	GCCycles        int      `json:"gcCycles"`
	Incremental     bool     `json:"incremental"`
	PrefixesAdded   int      `json:"prefixesAdded"`
	PrefixesRemoved int      `json:"prefixesRemoved"`
}

func (a agentApply) phase(name string) time.Duration {
	s := map[string]float64{"fetch": a.Fetch, "decode": a.Decode, "compile": a.Compile,
		"write": a.Write, "enforced": a.Enforced, "settle": a.Settle, "release": a.Release, "total": a.Total, "cpu": a.CPU}[name]
	return time.Duration(s * float64(time.Second))
}

func (a agentApply) String() string {
	ms := func(s float64) string { return strconv.FormatFloat(s*1000, 'f', 1, 64) }
	return fmt.Sprintf("fetch %s, decode %s, compile %s, write %s: enforced at %s; settle %s, release %s, total %s ms (CPU %s ms, %d GC cycles)",
		ms(a.Fetch), ms(a.Decode), ms(a.Compile), ms(a.Write), ms(a.Enforced), ms(a.Settle), ms(a.Release), ms(a.Total), ms(a.CPU), a.GCCycles)
}

// agentApplies reads h's agent log: its applies of rule set name, by
// version (the agent logs durations in seconds).
func agentApplies(b *testing.B, h *agentHost, name string) map[int64]agentApply {
	b.Helper()
	lf, err := os.Open(h.logPath)
	if err != nil {
		b.Fatalf("%s: agent log: %v", h, err)
	}
	defer lf.Close()
	out := map[int64]agentApply{}
	sc := bufio.NewScanner(lf)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.Contains(line, []byte(`"msg":"applied desired state"`)) {
			continue
		}
		var a agentApply
		if err := json.Unmarshal(line, &a); err != nil {
			b.Fatalf("%s: agent log line %q: %v", h, line, err)
		}
		for _, r := range a.RuleSets {
			if v, ok := strings.CutPrefix(r, name+"@"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				out[n] = a
			}
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatalf("%s: agent log: %v", h, err)
	}
	return out
}
