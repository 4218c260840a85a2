package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// Version is the agent's version, reported in its status. Builds set it
// with -ldflags "-X github.com/xdpfw/xdpfw/agent.Version=..."; otherwise
// it is the VCS revision the binary was built from.
var Version = ""

func agentVersion() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return "dev"
}

// opTimeout bounds one etcd request: a request to a member that does not
// answer must not hold the agent up (it retries with backoff instead).
const opTimeout = 5 * time.Second

// Agent is one host's daemon. New opens the firewalls; Run does the work.
type Agent struct {
	cfg Config
	log *zap.Logger
	// etcd is the agent's one way to etcd.
	etcd    *etcdstore.Store
	keys    proto.Keys
	ifaces  []*managedIface
	metrics *metrics
	started time.Time

	// noAttach leaves the programs unattached (tests on interfaces that
	// cannot take XDP, such as lo): maps are still written and read.
	noAttach bool
	// onApplied, when set, is called by the sync loop each time the
	// firewalls enforce the desired state of a revision (benchmarks).
	onApplied func(rev int64)

	// open opens one interface's firewall: bpf.Open, or what a test or
	// the fault-injection hook gives New (WithOpenFirewall).
	open func(InterfaceConfig, string) (firewall, error)
	// loadRetryMin and loadRetryMax bound the backoff between attempts
	// to load a data plane that did not load.
	loadRetryMin, loadRetryMax time.Duration
	// dataPlane is the state of the attempts while a data plane is not
	// loaded (owned by Run's goroutine until the loops start).
	dataPlane dataPlaneState

	// cache is the sync loop's view of etcd (owned by that goroutine).
	cache syncCache

	status    box[proto.HostStatus]
	telemetry box[proto.HostTelemetry]
	// latest is the telemetry loop's last sample, served on /metrics.
	latest atomic.Pointer[sample]
}

// firewall is what the agent needs of one interface's data plane.
// *bpf.Firewall is the real one; the fan-out benchmark simulates hundreds
// of agents in one process with a firewall that writes no map.
type firewall interface {
	State() (*bpf.State, error)
	// Enforce applies and returns once packets see the change; Settle
	// waits out the kernel's grace period after it (bpf.Firewall.Enforce).
	Enforce(*bpf.Compiled) (*bpf.ApplyReport, error)
	Settle() error
	PrepareStandby(*bpf.Compiled) (*bpf.ApplyReport, error)
	Attach(bpf.AttachMode) (bpf.AttachMode, error)
	Stats() (*bpf.Stats, error)
	SetPolicy(dropParseErrors, dropNonIP bool) error
	SetSampling(bpf.SamplingConfig) error
	SourceBuckets() int
	ReadDropSources() (*bpf.SourceReader, error)
	Close() error
}

// dataPlaneState counts the failed attempts to load the data plane.
type dataPlaneState struct {
	since    time.Time
	attempts int
	next     time.Time
}

// managedIface is one interface's firewall, owned by the sync loop except
// for reads of counters (Stats), which are safe from any goroutine.
type managedIface struct {
	cfg InterfaceConfig
	// fw is nil while the interface's data plane is not loaded (loadErr
	// says why); the agent's loops start only once every fw is there.
	fw       firewall
	loadErr  error
	mode     bpf.AttachMode
	attached bool
	// What the active generation holds, as read at start and after each
	// apply (so the apply path reads no counters to learn it).
	digest    string
	rules     int
	appliedAt time.Time
	writes    int
	// base is what was compiled for the rule sets last applied (the
	// cache's appliedDocs), to update with the next change's set deltas;
	// nil until a whole compile.
	base *bpf.Compiled
	// dropped tallies sampled drops by rule and source for telemetry.
	dropped dropTally
}

// Option changes how New builds an agent.
type Option func(*options)

type options struct {
	openFirewall func(bpf.Options) (*bpf.Firewall, error)
}

// WithOpenFirewall makes the agent open each interface's firewall with
// open instead of bpf.Open: a fault seam, for tests and the agent's
// fault-injection hook, that can make loading fail as a kernel would.
func WithOpenFirewall(open func(bpf.Options) (*bpf.Firewall, error)) Option {
	return func(o *options) { o.openFirewall = open }
}

// DataPlaneDown reports whether err means the data plane did not load in
// the kernel (the verifier refused the program, the kernel lacks a
// feature, it refused a map): the agent then runs on, reports it and tries
// again, rather than exit. Other errors of opening a firewall (an unknown
// interface, no bpffs, no privileges) are the operator's to fix.
func DataPlaneDown(err error) bool {
	return errors.Is(err, bpf.ErrLoad) || errors.Is(err, bpf.ErrVerifierRefused) || errors.Is(err, bpf.ErrKernelTooOld)
}

// New checks the configuration, connects to etcd (lazily: the client
// reconnects by itself) and opens, or adopts, the firewall of every managed
// interface. It changes no map: the first apply happens in Run. A data
// plane that does not load (DataPlaneDown) is not an error here: Run
// registers the host, reports why and tries again.
func New(cfg Config, log *zap.Logger, opts ...Option) (*Agent, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	openFW := o.openFirewall
	if openFW == nil {
		openFW = bpf.Open
	}
	return newAgent(cfg, log, func(ic InterfaceConfig, pinPath string) (firewall, error) {
		fw, err := openFW(bpf.Options{PinPath: pinPath, Interface: ic.Name, SourceBuckets: ic.SourceBuckets, SourceSketchLines: ic.SourceSketchLines})
		if err != nil {
			return nil, err // not a nil *bpf.Firewall in a non-nil interface
		}
		return fw, nil
	})
}

func newAgent(cfg Config, log *zap.Logger, open func(InterfaceConfig, string) (firewall, error)) (*Agent, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	a := &Agent{
		cfg: cfg, log: log, keys: proto.NewKeys(cfg.KeyPrefix), started: time.Now().UTC(),
		metrics: newMetrics(), open: open,
		loadRetryMin: 2 * time.Second, loadRetryMax: 2 * time.Minute,
	}
	a.status.init()
	a.telemetry.init()
	for _, ic := range cfg.Interfaces {
		m := &managedIface{cfg: ic}
		a.ifaces = append(a.ifaces, m)
		if err := a.openIface(m); err != nil {
			if !DataPlaneDown(err) {
				a.closeFirewalls()
				return nil, err
			}
			a.loadFailed(m, err)
		}
	}
	a.metrics.dataPlaneReady.Set(boolFloat(a.dataPlaneReady()))
	st, err := etcdstore.Open(etcdstore.ClientConfig{
		Endpoints: cfg.Endpoints, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, CAFile: cfg.CAFile,
		DialTimeout: opTimeout,
	}, a.keys)
	if err != nil {
		a.closeFirewalls()
		return nil, err
	}
	a.etcd = st
	return a, nil
}

// openIface opens an interface's firewall and configures it (drop
// sampling, parse-error and non-IP policies). On error m.fw stays nil.
func (a *Agent) openIface(m *managedIface) error {
	ic := m.cfg
	fw, err := a.open(ic, a.cfg.PinPath)
	if err != nil {
		return fmt.Errorf("open firewall of %s: %w", ic.Name, err)
	}
	if ic.SourceBuckets != 0 && fw.SourceBuckets() != ic.SourceBuckets {
		a.log.Warn("keeping the pinned source buckets: a new size takes effect after `xdpfwctl local detach`",
			zap.String("iface", ic.Name), zap.Int("pinned", fw.SourceBuckets()), zap.Int("configured", ic.SourceBuckets))
	}
	if ic.Sampling != nil {
		if err := fw.SetSampling(*ic.Sampling); err != nil {
			fw.Close()
			return fmt.Errorf("set drop sampling of %s: %w", ic.Name, err)
		}
	}
	if a.cfg.ParseErrors != "" || a.cfg.NonIP != "" {
		if err := fw.SetPolicy(a.cfg.ParseErrors == "drop", a.cfg.NonIP == "drop"); err != nil {
			fw.Close()
			return fmt.Errorf("set policy of %s: %w", ic.Name, err)
		}
	}
	m.fw, m.loadErr = fw, nil
	return nil
}

// loadFailed records a failed attempt to load an interface's data plane.
func (a *Agent) loadFailed(m *managedIface, err error) {
	m.loadErr = err
	if a.dataPlane.attempts == 0 {
		a.dataPlane.since = time.Now().UTC()
	}
	a.dataPlane.attempts++
	a.metrics.loadErrors.Inc()
	a.log.Error("data plane did not load: nothing new is applied until it does; what was pinned before keeps filtering",
		zap.String("iface", m.cfg.Name), zap.Int("attempt", a.dataPlane.attempts),
		zap.Bool("pinnedProgramAttached", bpf.LinkPinned(bpf.Options{PinPath: a.cfg.PinPath, Interface: m.cfg.Name})),
		zap.Error(err))
}

// dataPlaneReady says whether every managed interface's firewall is open.
func (a *Agent) dataPlaneReady() bool {
	for _, m := range a.ifaces {
		if m.fw == nil {
			return false
		}
	}
	return true
}

// loadDataPlane tries again, with capped and jittered backoff, to open the
// firewalls that did not load, reporting each attempt in the status, until
// all are open (true) or ctx ends (false). It never touches what is
// pinned: a program attached before keeps filtering with its last rules.
func (a *Agent) loadDataPlane(ctx context.Context) bool {
	bo := newBackoff(a.loadRetryMin, a.loadRetryMax)
	for {
		wait := bo.next()
		a.dataPlane.next = time.Now().Add(wait).UTC()
		a.publishStatus()
		a.log.Info("loading the data plane again", zap.Duration("in", wait), zap.Int("failedAttempts", a.dataPlane.attempts))
		if !sleep(ctx, wait) {
			return false
		}
		for _, m := range a.ifaces {
			if m.fw != nil {
				continue
			}
			if err := a.openIface(m); err != nil {
				a.loadFailed(m, err)
			}
		}
		if a.dataPlaneReady() {
			a.log.Info("data plane loaded", zap.Int("failedAttempts", a.dataPlane.attempts),
				zap.Duration("after", time.Since(a.dataPlane.since)))
			a.dataPlane = dataPlaneState{}
			a.metrics.dataPlaneReady.Set(1)
			return true
		}
	}
}

func (a *Agent) closeFirewalls() {
	for _, m := range a.ifaces {
		if m.fw != nil {
			m.fw.Close()
		}
	}
}

// Close releases the etcd client and the firewalls' handles. Everything
// pinned stays: the programs keep filtering with the last applied rules.
func (a *Agent) Close() error {
	a.closeFirewalls()
	return a.etcd.Close()
}

// Run adopts what is pinned, then keeps the firewalls equal to etcd and
// reports, until ctx ends (SIGTERM): then it revokes the lease and returns,
// leaving the data plane attached and pinned. While a data plane is not
// loaded, it registers, serves /metrics and reports why in its status, and
// tries again; the rest starts once it is loaded.
func (a *Agent) Run(ctx context.Context) error {
	ready := a.dataPlaneReady()
	if ready {
		a.adopt()
	}
	a.publishStatus()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	var srv *http.Server
	if addr := *a.cfg.MetricsAddr; addr != "" {
		s, ln, err := a.metricsServer(addr)
		if err != nil {
			return err
		}
		srv = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				select {
				case errc <- fmt.Errorf("metrics server: %w", err):
				default:
				}
				cancel()
			}
		}()
	}
	wg.Add(1)
	go func() { defer wg.Done(); a.reportLoop(ctx) }()
	if !ready && a.loadDataPlane(ctx) {
		a.adopt()
		a.publishStatus()
		ready = true
	}
	if ready {
		if !a.cfg.NoDropSources {
			for _, m := range a.ifaces {
				wg.Add(1)
				go func() { defer wg.Done(); a.dropSourceLoop(ctx, m) }()
			}
		}
		wg.Add(2)
		go func() { defer wg.Done(); a.syncLoop(ctx) }()
		go func() { defer wg.Done(); a.telemetryLoop(ctx) }()
	}
	<-ctx.Done()
	if srv != nil {
		sctx, c := context.WithTimeout(context.Background(), time.Second)
		srv.Shutdown(sctx)
		c()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// adopt reads what the pinned firewalls enforce now (a restarted agent, or
// rules applied with xdpfwctl local) and re-attaches nothing that is
// attached: Attach adopts a pinned link and never detaches.
func (a *Agent) adopt() {
	for _, m := range a.ifaces {
		st, err := m.fw.State()
		if err != nil {
			a.log.Error("read pinned firewall", zap.String("iface", m.cfg.Name), zap.Error(err))
			continue
		}
		if st.Generation < 0 {
			continue // nothing applied yet: attach after the first apply
		}
		m.digest, m.rules, m.appliedAt = st.Digest, st.Rules, st.AppliedAt
		if err := a.attach(m); err != nil {
			a.log.Error("adopt pinned firewall", zap.String("iface", m.cfg.Name), zap.Error(err))
			continue
		}
		a.log.Info("adopted pinned firewall", zap.String("iface", m.cfg.Name), zap.String("mode", string(m.mode)))
	}
}

func (a *Agent) attach(m *managedIface) error {
	if a.noAttach || m.attached {
		return nil
	}
	mode, err := m.fw.Attach(m.cfg.Mode)
	if err != nil {
		return err
	}
	m.mode, m.attached = mode, true
	return nil
}

func (a *Agent) metricsServer(addr string) (*http.Server, net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics listen on %s: %w", addr, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(a.metrics.collectors()...)
	reg.MustRegister(&countersCollector{a: a})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln, nil
}

// box holds the latest value of a document for the reporter to write, and
// signals that it changed. Values are replaced whole, never merged.
type box[T any] struct {
	mu      sync.Mutex
	v       T
	seq     uint64
	changed chan struct{}
}

func (b *box[T]) init() { b.changed = make(chan struct{}, 1) }

func (b *box[T]) set(v T) {
	b.mu.Lock()
	b.v = v
	b.seq++
	b.mu.Unlock()
	select {
	case b.changed <- struct{}{}:
	default:
	}
}

func (b *box[T]) get() (T, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.v, b.seq
}

// backoff is capped exponential backoff with full jitter.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d or until ctx ends; it reports whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
