package integration

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Test hosts are named network namespaces "xdpfw-it-<pid>-<n>-<role>", and
// each test binary pins its firewalls under /sys/fs/bpf/xdpfw-it-<pid>. The
// pid tells the leftovers of a crashed run (its process is gone) from the
// hosts of a run still going on.
const namePrefix = "xdpfw-it-"

const (
	netnsDir  = "/run/netns"  // where `ip netns` and nsenter find named namespaces
	bpffsRoot = "/sys/fs/bpf" // the root bpffs, shared by every network namespace
	ifaceName = "eth0"        // each host's end of the veth pair
)

// Host addresses (docs/testing.md, "Test hosts and addresses": 198.18.0.0/15 and 2001:db8::/32 only).
var (
	clientV4 = netip.MustParsePrefix("198.18.0.1/24")
	clientV6 = netip.MustParsePrefix("2001:db8::1/64")
	serverV4 = netip.MustParsePrefix("198.18.0.2/24")
	serverV6 = netip.MustParsePrefix("2001:db8::2/64")
)

// probeTimeout bounds one TCP connect or UDP echo. On an idle veth an
// answer takes well under a millisecond, so a flow that has none by then
// was dropped.
const probeTimeout = time.Second

// probePayload is the size of every UDP probe, so byte counters can be
// checked exactly.
const probePayload = 32

var (
	hostSeq atomic.Int64
	// pinRoot is this test binary's bpffs directory (set by TestMain).
	pinRoot string
)

// host is a test machine: a named network namespace whose eth0 is one end
// of a veth pair.
type host struct {
	role    string // "client" or "server"
	netns   string // namespace name, under /run/netns
	ns      netns.NsHandle
	v4, v6  netip.Addr
	addrs   []netip.Prefix // on eth0
	pinPath string         // --pin-path of this host's firewall

	mu       sync.Mutex
	services map[string]bool       // "tcp/22", "udp/53": listening
	udpSeen  map[int]*atomic.Int64 // datagrams received per UDP port
}

func (h *host) String() string { return h.role }

// newPair creates two hosts joined by a veth pair whose ends are both
// called eth0: the client has 198.18.0.1/24 and 2001:db8::1/64, the server
// 198.18.0.2/24 and 2001:db8::2/64. Both are ready for traffic when it
// returns (no duplicate address detection to wait for), and are removed,
// with any firewall left on them, when the test ends.
func newPair(t testing.TB) (client, server *host) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: needs root, network namespaces and XDP; not run with -short")
	}
	n := hostSeq.Add(1)
	client = newHost(t, n, "client", clientV4, clientV6)
	server = newHost(t, n, "server", serverV4, serverV6)

	nh, err := netlink.NewHandleAt(client.ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", client.netns, err)
	}
	defer nh.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: ifaceName},
		PeerName:      ifaceName,
		PeerNamespace: netlink.NsFd(server.ns),
	}
	if err := nh.LinkAdd(veth); err != nil {
		t.Fatalf("create veth pair %s <-> %s: %v", client.netns, server.netns, err)
	}
	client.configure(t)
	server.configure(t)
	client.waitReady(t)
	server.waitReady(t)
	return client, server
}

func newHost(t testing.TB, n int64, role string, v4, v6 netip.Prefix) *host {
	t.Helper()
	name := fmt.Sprintf("%s%d-%d-%s", namePrefix, os.Getpid(), n, role)
	ns, err := createNetns(name)
	if err != nil {
		t.Fatalf("create network namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	h := &host{
		role: role, netns: name, ns: ns,
		v4: v4.Addr(), v6: v6.Addr(), addrs: []netip.Prefix{v4, v6},
		pinPath:  filepath.Join(pinRoot, name),
		services: map[string]bool{},
		udpSeen:  map[int]*atomic.Int64{},
	}
	// Registered after the namespace, so it runs before the namespace goes.
	t.Cleanup(func() { h.removeFirewall(t) })
	return h
}

// createNetns makes a named network namespace (as `ip netns add` does) with
// IPv6 duplicate address detection off, so addresses work at once.
func createNetns(name string) (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	c := make(chan result, 1)
	go func() {
		// Never unlocked: this thread leaves the root namespace, so it must
		// end with the goroutine and never run anything else.
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		if err != nil {
			c <- result{ns, err}
			return
		}
		if err := disableDAD(); err != nil {
			ns.Close()
			netns.DeleteNamed(name)
			c <- result{netns.None(), err}
			return
		}
		c <- result{ns, nil}
	}()
	r := <-c
	return r.ns, r.err
}

// disableDAD turns off duplicate address detection in the calling thread's
// network namespace (/proc/sys/net follows the thread's namespace), for
// interfaces created from now on, link-local addresses included.
func disableDAD() error {
	for _, conf := range []string{"all", "default"} {
		p := fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/accept_dad", conf)
		if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
			return fmt.Errorf("disable DAD: %w", err)
		}
	}
	return nil
}

// configure brings up lo and eth0 and gives eth0 its addresses.
func (h *host) configure(t testing.TB) {
	t.Helper()
	nh, err := netlink.NewHandleAt(h.ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", h.netns, err)
	}
	defer nh.Close()
	for _, name := range []string{"lo", ifaceName} {
		l, err := nh.LinkByName(name)
		if err != nil {
			t.Fatalf("%s: find %s: %v", h.netns, name, err)
		}
		if name == ifaceName {
			for _, p := range h.addrs {
				addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
				if p.Addr().Is6() {
					addr.Flags = unix.IFA_F_NODAD
				}
				if err := nh.AddrAdd(l, addr); err != nil {
					t.Fatalf("%s: add %s to %s: %v", h.netns, p, name, err)
				}
			}
		}
		if err := nh.LinkSetUp(l); err != nil {
			t.Fatalf("%s: set %s up: %v", h.netns, name, err)
		}
	}
}

// waitReady waits until eth0 has carrier and IPv6 works on it: a link-local
// address that is not tentative, and the multicast route of the local table
// (until the kernel adds both, a moment after carrier, incoming neighbour
// solicitations are dropped as unroutable and the first IPv6 flow stalls
// for a second).
func (h *host) waitReady(t testing.TB) {
	t.Helper()
	nh, err := netlink.NewHandleAt(h.ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", h.netns, err)
	}
	defer nh.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		why := h.notReady(nh)
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s not ready after 5s: %s", h.netns, ifaceName, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// notReady says what eth0 still lacks, or "" when it is ready.
func (h *host) notReady(nh *netlink.Handle) string {
	l, err := nh.LinkByName(ifaceName)
	if err != nil {
		return err.Error()
	}
	if st := l.Attrs().OperState; st != netlink.OperUp {
		return fmt.Sprintf("oper state %s", st)
	}
	addrs, err := nh.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return err.Error()
	}
	linkLocal := false
	for _, a := range addrs {
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			return fmt.Sprintf("%s is tentative", a.IP)
		}
		linkLocal = linkLocal || a.IP.IsLinkLocalUnicast()
	}
	if !linkLocal {
		return "no IPv6 link-local address"
	}
	routes, err := nh.RouteListFiltered(netlink.FAMILY_V6,
		&netlink.Route{Table: unix.RT_TABLE_LOCAL, LinkIndex: l.Attrs().Index},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	if err != nil {
		return err.Error()
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == "ff00::/8" {
			return ""
		}
	}
	return "no IPv6 multicast route"
}

// eth0 opens a netlink handle in h's namespace and finds its eth0; the
// caller closes the handle.
func (h *host) eth0(t testing.TB) (*netlink.Handle, netlink.Link) {
	t.Helper()
	nh, err := netlink.NewHandleAt(h.ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", h.netns, err)
	}
	l, err := nh.LinkByName(ifaceName)
	if err != nil {
		nh.Close()
		t.Fatalf("%s: find %s: %v", h.netns, ifaceName, err)
	}
	return nh, l
}

// xdpMode is how an XDP program is attached to h's eth0, as the kernel
// reports it: "native", "generic", or "" when none is.
func (h *host) xdpMode(t testing.TB) string {
	t.Helper()
	nh, l := h.eth0(t)
	defer nh.Close()
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		switch x.AttachMode {
		case nl.XDP_ATTACHED_DRV:
			return "native"
		case nl.XDP_ATTACHED_SKB:
			return "generic"
		}
		return fmt.Sprintf("attach mode %d", x.AttachMode)
	}
	return ""
}

// forgetNeighbours empties h's neighbour cache (ARP and NDP), so the next
// packet to each address has to resolve it again.
func (h *host) forgetNeighbours(t testing.TB) {
	t.Helper()
	nh, l := h.eth0(t)
	defer nh.Close()
	neighs, err := nh.NeighList(l.Attrs().Index, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("%s: list neighbours: %v", h.netns, err)
	}
	for _, n := range neighs {
		if err := nh.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Fatalf("%s: forget neighbour %s: %v", h.netns, n.IP, err)
		}
	}
}

// do runs f on an OS thread that has entered h's network namespace. A
// socket made there stays in the namespace whichever thread uses it later.
func (h *host) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine, so no other
		// goroutine ever runs in the test host's namespace by mistake.
		runtime.LockOSThread()
		if err := netns.Set(h.ns); err != nil {
			errc <- fmt.Errorf("enter %s: %w", h.netns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// nsenter runs a program in h's network namespace only, so it shares the
// root mount namespace and with it /sys/fs/bpf (`ip netns exec` would give
// it a private sysfs and bpffs).
func (h *host) nsenter(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + filepath.Join(netnsDir, h.netns), name}, args...)...)
}

// removeFirewall detaches whatever firewall a test left on h.
func (h *host) removeFirewall(t testing.TB) {
	if _, err := os.Stat(filepath.Join(h.pinPath, ifaceName)); err == nil {
		if r := h.local("detach"); r.code != 0 {
			t.Errorf("%s: cleanup: xdpfwctl local detach: exit %d: %s", h, r.code, r.stderr)
		}
	}
	if err := os.RemoveAll(h.pinPath); err != nil {
		t.Errorf("%s: cleanup: %v", h, err)
	}
}

// Services: a probe starts the service it needs on the target host first, so
// a flow's outcome is about the firewall, never about a missing listener.

// listen starts a TCP acceptor or a UDP echo server on port (all
// addresses, IPv4 and IPv6) unless one runs already.
func (h *host) listen(t testing.TB, p proto, port int) {
	t.Helper()
	if p == pingProto {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	key := fmt.Sprintf("%s/%d", p, port)
	if h.services[key] {
		return
	}
	addr := fmt.Sprintf(":%d", port)
	switch p {
	case tcpProto:
		var ln net.Listener
		if err := h.do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
			t.Fatalf("%s: listen on tcp/%d: %v", h, port, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	case udpProto:
		var pc net.PacketConn
		if err := h.do(func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
			t.Fatalf("%s: listen on udp/%d: %v", h, port, err)
		}
		t.Cleanup(func() { pc.Close() })
		seen := new(atomic.Int64)
		h.udpSeen[port] = seen
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				seen.Add(1)
				pc.WriteTo(buf[:n], from)
			}
		}()
	default:
		t.Fatalf("listen: unknown protocol %q", p)
	}
	h.services[key] = true
}

// udpReceived is how many datagrams h's echo server on port has received.
func (h *host) udpReceived(port int) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.udpSeen[port]; c != nil {
		return c.Load()
	}
	return 0
}

// dial opens a socket in h's namespace connected to addr ("tcp" or "udp").
func (h *host) dial(network string, addr netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := h.do(func() (err error) {
		d := net.Dialer{Timeout: probeTimeout}
		c, err = d.Dial(network, addr.String())
		return err
	})
	return c, err
}

type proto string

const (
	tcpProto  proto = "tcp"
	udpProto  proto = "udp"
	pingProto proto = "ping" // ICMP or ICMPv6 echo
)

// flow is one kind of traffic from one host to another: a TCP connection,
// a UDP datagram and its echo, or a ping.
type flow struct {
	from, to *host
	proto    proto
	port     int
	ipv6     bool
}

func tcp4(from, to *host, port int) flow { return flow{from, to, tcpProto, port, false} }
func tcp6(from, to *host, port int) flow { return flow{from, to, tcpProto, port, true} }
func udp4(from, to *host, port int) flow { return flow{from, to, udpProto, port, false} }
func udp6(from, to *host, port int) flow { return flow{from, to, udpProto, port, true} }
func ping4(from, to *host) flow          { return flow{from, to, pingProto, 0, false} }
func ping6(from, to *host) flow          { return flow{from, to, pingProto, 0, true} }

func (f flow) String() string {
	fam := "IPv4"
	if f.ipv6 {
		fam = "IPv6"
	}
	if f.proto == pingProto {
		return fmt.Sprintf("%s -> %s ping (%s)", f.from, f.to, fam)
	}
	return fmt.Sprintf("%s -> %s %s/%d (%s)", f.from, f.to, f.proto, f.port, fam)
}

func (f flow) dst() netip.AddrPort {
	if f.ipv6 {
		return netip.AddrPortFrom(f.to.v6, uint16(f.port))
	}
	return netip.AddrPortFrom(f.to.v4, uint16(f.port))
}

// try sends the flow once: reached is true when the target answered (TCP
// handshake done, UDP echo back, ping reply), false when nothing came back
// in time. err is for anything else, which is a broken test set-up.
func (f flow) try() (reached bool, err error) {
	switch f.proto {
	case tcpProto:
		c, err := f.from.dial("tcp", f.dst())
		if err != nil {
			if isTimeout(err) {
				return false, nil
			}
			return false, err
		}
		c.Close()
		return true, nil
	case udpProto:
		c, err := f.from.dial("udp", f.dst())
		if err != nil {
			return false, err
		}
		defer c.Close()
		return echo(c, probeMessage(0))
	case pingProto:
		fam := "-4"
		if f.ipv6 {
			fam = "-6"
		}
		cmd := f.from.nsenter("ping", fam, "-n", "-c", "1", "-W", "1", f.dst().Addr().String())
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.ExitCode() == 1 {
			return false, nil // no reply
		}
		if err != nil {
			return false, fmt.Errorf("ping: %v: %s", err, bytes.TrimSpace(out))
		}
		return true, nil
	}
	return false, fmt.Errorf("unknown protocol %q", f.proto)
}

// echo sends msg on a connected UDP socket and waits for the same bytes
// back. Older echoes still on their way are skipped.
func echo(c net.Conn, msg []byte) (bool, error) {
	if _, err := c.Write(msg); err != nil {
		return false, fmt.Errorf("send: %w", err)
	}
	if err := c.SetReadDeadline(time.Now().Add(probeTimeout)); err != nil {
		return false, err
	}
	buf := make([]byte, 2048)
	for {
		n, err := c.Read(buf)
		if isTimeout(err) {
			return false, nil
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return false, fmt.Errorf("port unreachable: nothing listens (test set-up)")
		}
		if err != nil {
			return false, err
		}
		if bytes.Equal(buf[:n], msg) {
			return true, nil
		}
	}
}

// probeMessage is the payload of UDP probe number seq: always probePayload
// bytes long.
func probeMessage(seq int) []byte {
	return fmt.Appendf(nil, "xdpfw-probe-%0*d", probePayload-len("xdpfw-probe-"), seq)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// outcome is what the firewall should do with a flow.
type outcome bool

const (
	passes  outcome = true
	blocked outcome = false
)

func (o outcome) String() string {
	if o {
		return "passes"
	}
	return "blocked"
}

// expectFlows sends every flow once, all at the same time, and fails the
// test for each whose outcome is not the one wanted.
func expectFlows(t testing.TB, want map[flow]outcome) {
	t.Helper()
	flows := make([]flow, 0, len(want))
	for f := range want {
		flows = append(flows, f)
		f.to.listen(t, f.proto, f.port)
	}
	sort.Slice(flows, func(i, j int) bool { return flows[i].String() < flows[j].String() })
	type result struct {
		reached bool
		err     error
	}
	got := make([]result, len(flows))
	var wg sync.WaitGroup
	for i, f := range flows {
		wg.Go(func() { got[i].reached, got[i].err = f.try() })
	}
	wg.Wait()
	for i, f := range flows {
		switch r := got[i]; {
		case r.err != nil:
			t.Errorf("%s: %v", f, r.err)
		case outcome(r.reached) != want[f]:
			t.Errorf("%s: %s, want %s", f, outcome(r.reached), want[f])
		}
	}
}

// reaches sends f once and tells whether it got through.
func reaches(t testing.TB, f flow) bool {
	t.Helper()
	f.to.listen(t, f.proto, f.port)
	ok, err := f.try()
	if err != nil {
		t.Fatalf("%s: %v", f, err)
	}
	return ok
}

// sendUDP sends n probe datagrams of f without waiting for echoes.
func sendUDP(t testing.TB, f flow, n int) {
	t.Helper()
	f.to.listen(t, f.proto, f.port)
	c, err := f.from.dial("udp", f.dst())
	if err != nil {
		t.Fatalf("%s: %v", f, err)
	}
	defer c.Close()
	for i := range n {
		if _, err := c.Write(probeMessage(i)); err != nil {
			t.Fatalf("%s: send: %v", f, err)
		}
	}
}

// removeLeftovers deletes the test hosts and pin directories of earlier
// runs whose process is gone (a crash, a kill).
func removeLeftovers() error {
	var errs []error
	if entries, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range entries {
			if stale(e.Name()) {
				if err := netns.DeleteNamed(e.Name()); err != nil {
					errs = append(errs, fmt.Errorf("delete leftover network namespace %s: %w", e.Name(), err))
				}
			}
		}
	}
	entries, err := os.ReadDir(bpffsRoot)
	if err != nil {
		return fmt.Errorf("read %s: %w", bpffsRoot, err)
	}
	for _, e := range entries {
		if stale(e.Name()) {
			if err := os.RemoveAll(filepath.Join(bpffsRoot, e.Name())); err != nil {
				errs = append(errs, fmt.Errorf("remove leftover pins: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// stale reports whether name belongs to a test run whose process is gone.
func stale(name string) bool {
	rest, ok := strings.CutPrefix(name, namePrefix)
	if !ok {
		return false
	}
	pidStr, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	if err != nil {
		return false
	}
	if pid == os.Getpid() {
		return true // an earlier run that had our pid: we made nothing yet
	}
	err = syscall.Kill(pid, 0)
	return errors.Is(err, syscall.ESRCH)
}
