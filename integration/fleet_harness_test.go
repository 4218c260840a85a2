package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// A fleet is many test hosts on one segment: every host is a network
// namespace whose eth0 is a veth whose other end is a port of a Linux
// bridge in a "lan" namespace of its own. On that segment: the "etcd"
// namespace runs a 3-member etcd cluster (three processes, one address
// each), "client" is the traffic source of the tests, and h1..hN are the
// agent hosts. The test process itself stays in the root namespace with
// no address; it reaches etcd and the agents through sockets it opens
// inside the client or agent namespaces (host.do).

// Fleet addresses (docs/testing.md, "Test hosts and addresses"). The client has clientV4 and
// clientV6 of the host pairs.
var (
	memberV4 = []netip.Prefix{
		netip.MustParsePrefix("198.18.0.11/24"),
		netip.MustParsePrefix("198.18.0.12/24"),
		netip.MustParsePrefix("198.18.0.13/24"),
	}
	// etcdV6 is there only because every host has an IPv6 address; the
	// members listen on IPv4.
	etcdV6 = netip.MustParsePrefix("2001:db8::11/64")
)

// agentV4 and agentV6 are the addresses of agent host i (1-based):
// 198.18.0.2i/24 and 2001:db8::2i/64.
func agentV4(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(20 + i)}), 24)
}

func agentV6(i int) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("2001:db8::%d/64", 20+i))
}

const (
	maxAgentHosts  = 3
	etcdClientPort = 2379
	etcdPeerPort   = 2380
	// agentMetricsPort is on each agent host's own loopback, so one
	// number fits every host and none is ever taken by another test.
	agentMetricsPort = 9464
	bridgeName       = "br0"

	// memberReadyTimeout bounds an etcd member's start: a fresh cluster
	// elects its first leader in about a second.
	memberReadyTimeout = 30 * time.Second
	// stopTimeout bounds a graceful stop (SIGTERM); an etcd leader hands
	// its leadership over first.
	stopTimeout = 20 * time.Second
	// killTimeout bounds the exit after SIGKILL, which the kernel does
	// at once: only a harness bug makes it wait.
	killTimeout = 5 * time.Second
	// etcdRequestTimeout bounds one request of the harness to etcd.
	etcdRequestTimeout = 2 * time.Second
	// memberLogLevel is the --log-level of every member: info includes
	// the raft elections, which a failed fault test needs to be read.
	memberLogLevel = "info"
	// logPrintLimit is how much of the end of each process log a failed
	// test prints.
	logPrintLimit = 128 << 10
)

// fleet is the hosts and processes of one fleet test. Its methods are for
// the test's goroutine; none is safe for concurrent use.
type fleet struct {
	dir     string // data dirs and logs, removed when the test ends (removeFleetLeftovers after a crash)
	etcdNS  *host  // where the members run
	client  *host  // the traffic source; also where the harness's etcd connections come from
	hosts   []*agentHost
	members []*etcdMember
	etcd    *clientv3.Client // reaches every member, through client's namespace

	lanName   string
	lan       netns.NsHandle
	bridgeIdx int
	logs      []string // printed when the test fails
}

// newFleet builds a fleet with agents agent hosts (0 to 3) and a running
// 3-member etcd cluster, and returns once the cluster serves and every
// host is ready for traffic. No agent runs yet (agentHost.startAgent).
// Everything it made is removed when the test ends, whether it passed,
// failed, or stopped half-way through newFleet.
func newFleet(t testing.TB, agents int) *fleet {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: needs root, network namespaces and XDP; not run with -short")
	}
	if agents < 0 || agents > maxAgentHosts {
		t.Fatalf("newFleet: %d agent hosts, want 0..%d", agents, maxAgentHosts)
	}
	n := hostSeq.Add(1)
	// Cleanups run last-registered first. The temporary directory comes
	// first so it goes last, once every process writing there is gone;
	// the logs are printed just before, when they are complete.
	f := &fleet{dir: filepath.Join(t.TempDir(), fmt.Sprintf("%s%d-%d-fleet", namePrefix, os.Getpid(), n))}
	if err := os.Mkdir(f.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.printLogs(t) })

	f.makeLAN(t, n)
	// A host whose eth0 gets all three member addresses, not just one.
	f.etcdNS = newHost(t, n, "etcd", memberV4[0], etcdV6)
	f.etcdNS.addrs = append(append([]netip.Prefix(nil), memberV4...), etcdV6)
	f.plug(t, f.etcdNS)
	f.client = newHost(t, n, "client", clientV4, clientV6)
	f.plug(t, f.client)
	for i := 1; i <= agents; i++ {
		f.hosts = append(f.hosts, f.newAgentHost(t, n, i))
	}
	for _, h := range append([]*host{f.etcdNS, f.client}, f.agentHosts()...) {
		h.waitReady(t)
	}

	for i := range memberV4 {
		f.members = append(f.members, f.newMember(t, i))
	}
	// A member of a new cluster is ready only once a quorum has formed,
	// so all three start before the first is waited for.
	for _, m := range f.members {
		m.start(t)
	}
	for _, m := range f.members {
		m.waitReady(t)
	}
	f.etcd = f.newClient(t)
	return f
}

// makeLAN creates the lan namespace and its bridge. It has IPv6 off so
// that neither the bridge nor its ports send anything of their own
// (router solicitations, MLD reports) onto the segment: only the hosts
// speak there.
func (f *fleet) makeLAN(t testing.TB, n int64) {
	t.Helper()
	f.lanName = fmt.Sprintf("%s%d-%d-lan", namePrefix, os.Getpid(), n)
	lan, err := createNetns(f.lanName)
	if err != nil {
		t.Fatalf("create network namespace %s: %v", f.lanName, err)
	}
	f.lan = lan
	t.Cleanup(func() {
		lan.Close()
		if err := netns.DeleteNamed(f.lanName); err != nil {
			t.Errorf("delete network namespace %s: %v", f.lanName, err)
		}
	})
	lanHost := &host{role: "lan", netns: f.lanName, ns: lan}
	err = lanHost.do(func() error {
		for _, conf := range []string{"all", "default"} {
			p := fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/disable_ipv6", conf)
			if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: turn IPv6 off: %v", f.lanName, err)
	}

	nh, err := netlink.NewHandleAt(lan)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", f.lanName, err)
	}
	defer nh.Close()
	// Without snooping the bridge floods all multicast to every port, so
	// neighbour discovery never depends on which MLD reports it saw.
	snooping := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}, MulticastSnooping: &snooping}
	if err := nh.LinkAdd(br); err != nil {
		t.Fatalf("%s: create bridge: %v", f.lanName, err)
	}
	// STP is off (the default), so a port forwards as soon as it is up.
	if err := nh.LinkSetUp(br); err != nil {
		t.Fatalf("%s: set %s up: %v", f.lanName, bridgeName, err)
	}
	f.bridgeIdx = br.Attrs().Index
}

// plug connects h to the segment: a veth pair whose end in h is eth0 and
// whose other end, a bridge port named after h's role, is in the lan
// namespace. Then h gets its addresses.
func (f *fleet) plug(t testing.TB, h *host) {
	t.Helper()
	nh, err := netlink.NewHandleAt(f.lan)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", f.lanName, err)
	}
	defer nh.Close()
	port := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: h.role, MasterIndex: f.bridgeIdx},
		PeerName:      ifaceName,
		PeerNamespace: netlink.NsFd(h.ns),
	}
	if err := nh.LinkAdd(port); err != nil {
		t.Fatalf("plug %s into %s: %v", h.netns, f.lanName, err)
	}
	if err := nh.LinkSetUp(port); err != nil {
		t.Fatalf("%s: set port %s up: %v", f.lanName, h.role, err)
	}
	h.configure(t)
}

func (f *fleet) agentHosts() []*host {
	hs := make([]*host, len(f.hosts))
	for i, h := range f.hosts {
		hs[i] = h.host
	}
	return hs
}

// logFile names a process log of the fleet and has it printed if the
// test fails.
func (f *fleet) logFile(name string) string {
	p := filepath.Join(f.dir, name+".log")
	f.logs = append(f.logs, p)
	return p
}

// printLogs prints the end of every process log if the test failed.
func (f *fleet) printLogs(t testing.TB) {
	if !t.Failed() {
		return
	}
	for _, p := range f.logs {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue // the process never started
		}
		if err != nil {
			t.Logf("%s: %v", p, err)
			continue
		}
		if len(b) == 0 {
			continue
		}
		cut := ""
		if len(b) > logPrintLimit {
			b = b[len(b)-logPrintLimit:]
			if i := bytes.IndexByte(b, '\n'); i >= 0 {
				b = b[i+1:]
			}
			cut = fmt.Sprintf(" (last %d KiB)", logPrintLimit>>10)
		}
		t.Logf("==== %s%s ====\n%s", filepath.Base(p), cut, b)
	}
}

// waitFor polls cond until it holds, and fails the test with cond's last
// detail if it does not within timeout. what says what was awaited.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (ok bool, detail string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %s", what, timeout, detail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeFleetLeftovers deletes the data dirs of fleets whose test binary
// died before its clean-ups ran (a timeout, kill -9): three members' data
// are a few hundred MB, too much to leave behind at each crash. A fleet's
// dir is <TMPDIR>/<test's TempDir>/<namePrefix><pid>-<n>-fleet.
func removeFleetLeftovers() error {
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), "*", "*", namePrefix+"*-fleet"))
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range dirs {
		if stale(filepath.Base(d)) {
			if err := os.RemoveAll(d); err != nil {
				errs = append(errs, fmt.Errorf("remove leftover fleet data: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// dialContext opens a connection from inside h's network namespace.
func (h *host) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Processes.

// proc is one run of a fleet program (an etcd member, an agent) in a
// host's network namespace, its output appended to a log file.
type proc struct {
	what      string // "etcd m1", "agent h1": for messages
	cmd       *exec.Cmd
	logf      *os.File      // the harness notes its signals there too
	exited    chan struct{} // closed once the process has ended and been reaped
	err       error         // what Wait returned; read only once exited is closed
	signalled bool          // the harness stopped or killed it, or a test awaited its exit
}

// startProc starts bin in h's network namespace. Its stderr goes to
// logf, and so does its stdout, unless stdout is given (which then writes
// to logf itself). logf belongs to the process from then on: it is
// closed when the process has ended.
//
// The process gets SIGKILL when the test binary dies, whatever the way
// (a panic, a timeout, kill -9), so that no member or agent outlives its
// test and its namespace. The kernel sends that signal when the thread
// that started the process ends, not the process, and the Go runtime
// ends threads of its own accord (each host.do does), so the process is
// started from a goroutine locked to its thread that waits for it: the
// thread lives exactly as long as the process needs it to.
func startProc(h *host, what string, logf *os.File, stdout io.Writer, bin string, args ...string) (*proc, error) {
	return startProcEnv(h, what, logf, stdout, nil, bin, args...)
}

// startProcEnv is startProc with env ("K=V") added to the process's
// environment.
func startProcEnv(h *host, what string, logf *os.File, stdout io.Writer, env []string, bin string, args ...string) (*proc, error) {
	cmd := h.nsenter(bin, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Bounds Wait if something the process started keeps its stdout open.
	cmd.WaitDelay = killTimeout
	p := &proc{what: what, cmd: cmd, logf: logf, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer logf.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", what, err)
	}
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// signal sends sig and waits up to timeout for the process to end. It
// reports whether it did.
func (p *proc) signal(sig syscall.Signal, timeout time.Duration) bool {
	p.signalled = true
	// The file is shared with the process and opened for appending, so
	// this line lands between two of its writes. Errors (the process
	// has ended and the file is closed) mean there is nothing to note.
	fmt.Fprintf(p.logf, "---- %s: the harness sends %s\n", time.Now().Format("15:04:05.000"), unix.SignalName(sig))
	// An error means the process has ended already, which the wait below
	// sees.
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		return true
	case <-time.After(timeout):
		return false
	}
}

// stop ends the process with SIGTERM and fails the test unless it exits
// with status 0 within stopTimeout (then it is killed).
func (p *proc) stop(t testing.TB) {
	t.Helper()
	if !p.running() {
		t.Fatalf("stop %s: it is not running: %s", p.what, p.result())
	}
	if !p.signal(syscall.SIGTERM, stopTimeout) {
		p.signal(syscall.SIGKILL, killTimeout)
		t.Fatalf("stop %s: still running %s after SIGTERM (killed)", p.what, stopTimeout)
	}
	if p.err != nil {
		t.Fatalf("stop %s: %s after SIGTERM, want exit status 0", p.what, p.result())
	}
}

// kill ends the process with SIGKILL.
func (p *proc) kill(t testing.TB) {
	t.Helper()
	if !p.running() {
		t.Fatalf("kill %s: it is not running: %s", p.what, p.result())
	}
	if !p.signal(syscall.SIGKILL, killTimeout) {
		t.Fatalf("kill %s: still running %s after SIGKILL", p.what, killTimeout)
	}
}

// cleanUp kills the process if it still runs, and fails the test if it
// ended without the harness asking it to: a member or an agent that
// crashes is a failure even when the test's own checks passed.
func (p *proc) cleanUp(t testing.TB) {
	if !p.running() {
		if !p.signalled {
			t.Errorf("%s ended on its own during the test: %s", p.what, p.result())
		}
		return
	}
	if !p.signal(syscall.SIGKILL, killTimeout) {
		t.Errorf("cleanup: %s still running %s after SIGKILL", p.what, killTimeout)
	}
}

// result says how the process ended.
func (p *proc) result() string {
	if p.running() {
		return "running"
	}
	if p.err == nil {
		return "exit status 0"
	}
	return p.err.Error()
}

// lineSignal passes a process's output on to w and closes ready at the
// first line that starts with prefix. Only exec's copying goroutine
// writes to it.
type lineSignal struct {
	w      io.Writer
	prefix []byte
	ready  chan struct{}
	line   []byte // the line so far, until ready is closed
	seen   bool
}

func (l *lineSignal) Write(b []byte) (int, error) {
	if !l.seen {
		l.line = append(l.line, b...)
		for {
			i := bytes.IndexByte(l.line, '\n')
			if i < 0 {
				break
			}
			if bytes.HasPrefix(l.line[:i], l.prefix) {
				l.seen, l.line = true, nil
				close(l.ready)
				break
			}
			l.line = l.line[i+1:]
		}
	}
	return l.w.Write(b)
}

// openLog opens a process log for appending, with a line that says what
// starts now, so that the runs of a restarted process stay apart.
func openLog(t testing.TB, path, what string) *os.File {
	t.Helper()
	logf, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "---- %s: %s\n", time.Now().Format("15:04:05.000"), what)
	return logf
}

// etcd members.

// etcdMember is one member of the fleet's etcd cluster: the binary
// xdpfw-etcd in the etcd namespace, on its own address.
type etcdMember struct {
	f       *fleet
	name    string // "m1"
	addr    netip.Addr
	dataDir string
	logPath string
	proc    *proc         // the latest run, nil before the first
	ready   chan struct{} // closed when the latest run says it serves
	id      uint64        // the member ID, known once leader has seen it
}

func (f *fleet) newMember(t testing.TB, i int) *etcdMember {
	m := &etcdMember{
		f:    f,
		name: fmt.Sprintf("m%d", i+1),
		addr: memberV4[i].Addr(),
	}
	m.dataDir = filepath.Join(f.dir, "etcd-"+m.name)
	m.logPath = f.logFile("etcd-" + m.name)
	// Registered after the etcd namespace: runs before it is deleted.
	t.Cleanup(func() {
		if m.proc != nil {
			m.proc.cleanUp(t)
		}
	})
	return m
}

func (m *etcdMember) String() string { return "etcd " + m.name }

func (m *etcdMember) clientURL() string {
	return fmt.Sprintf("http://%s", netip.AddrPortFrom(m.addr, etcdClientPort))
}

func (m *etcdMember) peerURL() string {
	return fmt.Sprintf("http://%s", netip.AddrPortFrom(m.addr, etcdPeerPort))
}

// launch starts the member's process without waiting for it to serve.
// state is its --initial-cluster-state: "new" or "existing".
func (m *etcdMember) launch(t testing.TB, state string) {
	t.Helper()
	if m.running() {
		t.Fatalf("start %s: it runs already", m)
	}
	peers := make([]string, len(m.f.members))
	for i, o := range m.f.members {
		peers[i] = o.name + "=" + o.peerURL()
	}
	args := []string{
		"--name", m.name,
		"--data-dir", m.dataDir,
		"--listen-client", m.clientURL(),
		"--listen-peer", m.peerURL(),
		"--initial-cluster", strings.Join(peers, ","),
		"--initial-cluster-state", state,
		"--log-level", memberLogLevel,
		// The harness's etcd is a plain cluster: what it tests is
		// failover and fan-out; etcd's TLS and auth are tested by the
		// fleet demo (TestFleetDemo) and the etcdstore and agent tests.
		"--insecure",
	}
	logf := openLog(t, m.logPath, fmt.Sprintf("xdpfw-etcd %s", strings.Join(args, " ")))
	m.ready = make(chan struct{})
	stdout := &lineSignal{w: logf, prefix: []byte("xdpfw-etcd: ready"), ready: m.ready}
	p, err := startProc(m.f.etcdNS, m.String(), logf, stdout, etcdBin, args...)
	if err != nil {
		t.Fatal(err)
	}
	m.proc = p
}

// waitReady waits until the member's latest run says it serves clients.
func (m *etcdMember) waitReady(t testing.TB) {
	t.Helper()
	select {
	case <-m.ready:
	case <-m.proc.exited:
		t.Fatalf("%s ended before it was ready: %s", m, m.proc.result())
	case <-time.After(memberReadyTimeout):
		t.Fatalf("%s not ready after %s", m, memberReadyTimeout)
	}
}

// start starts a member that was never started, as a member of a new
// cluster, and returns at once: it serves only once a quorum of the new
// cluster has started, so newFleet starts all three before it waits for
// each (waitReady).
func (m *etcdMember) start(t testing.TB) {
	t.Helper()
	m.launch(t, "new")
}

// restart starts a stopped or killed member again on its data dir and
// waits until it serves (which needs a quorum of the cluster).
func (m *etcdMember) restart(t testing.TB) {
	t.Helper()
	m.launch(t, "existing")
	m.waitReady(t)
}

// stop stops the member with SIGTERM and waits for a clean exit.
func (m *etcdMember) stop(t testing.TB) {
	t.Helper()
	m.mustHaveRun(t)
	m.proc.stop(t)
}

// kill stops the member with SIGKILL.
func (m *etcdMember) kill(t testing.TB) {
	t.Helper()
	m.mustHaveRun(t)
	m.proc.kill(t)
}

func (m *etcdMember) running() bool { return m.proc != nil && m.proc.running() }

func (m *etcdMember) mustHaveRun(t testing.TB) {
	t.Helper()
	if m.proc == nil {
		t.Fatalf("%s was never started", m)
	}
}

// runningMembers is the members whose process runs.
func (f *fleet) runningMembers() []*etcdMember {
	var ms []*etcdMember
	for _, m := range f.members {
		if m.running() {
			ms = append(ms, m)
		}
	}
	return ms
}

// leader finds the member that leads the cluster now: one that says it
// is the leader and that a majority of the cluster says so too (a leader
// cut off from the others may believe it leads for a while). It waits up
// to 10 s for an election to end.
func (f *fleet) leader(t testing.TB) *etcdMember {
	t.Helper()
	var leader *etcdMember
	waitFor(t, 10*time.Second, "an etcd leader", func() (bool, string) {
		votes := map[uint64]int{}
		var claims []*etcdMember
		var problems []string
		for _, m := range f.runningMembers() {
			ctx, cancel := context.WithTimeout(t.Context(), etcdRequestTimeout)
			st, err := f.etcd.Status(ctx, m.clientURL())
			cancel()
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", m, err))
				continue
			}
			m.id = st.Header.MemberId
			votes[st.Leader]++
			if st.Leader != 0 && st.Leader == m.id {
				claims = append(claims, m)
			}
		}
		for _, m := range claims {
			if votes[m.id] > len(f.members)/2 {
				leader = m
				return true, ""
			}
		}
		return false, fmt.Sprintf("leader claims %v, votes by member ID %v; %s", claims, votes, strings.Join(problems, "; "))
	})
	return leader
}

// newClient returns an etcd client of the test process that reaches the
// given members (all when none is given) from inside the client
// namespace, so that the root namespace needs no address. It is closed
// when the test ends.
func (f *fleet) newClient(t testing.TB, members ...*etcdMember) *clientv3.Client {
	t.Helper()
	if len(members) == 0 {
		members = f.members
	}
	var eps []string
	for _, m := range members {
		eps = append(eps, m.clientURL())
	}
	log := f.clientLog(t)
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: etcdRequestTimeout,
		Logger:      log,
		// clientv3 sets no dialer of its own and appends these options
		// last, so every connection, Status ones included, is opened here.
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return f.client.dialContext(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		t.Fatalf("etcd client for %v: %v", eps, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// clientLog is the logger of the harness's etcd clients: warnings and
// errors (failed dials, retries) into a log printed when the test fails.
func (f *fleet) clientLog(t testing.TB) *zap.Logger {
	t.Helper()
	path := filepath.Join(f.dir, "etcd-client.log")
	logf, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(f.logs, path) {
		f.logs = append(f.logs, path)
	}
	// Registered before the client's Close, so it runs after it.
	t.Cleanup(func() { logf.Close() })
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(logf), zap.WarnLevel))
}
