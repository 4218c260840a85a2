package integration

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdpfw/xdpfw/bpf"
)

// Rate limits and drop samples with real traffic: a sender of our own
// floods the server's eth0 through the veth with crafted UDP frames (any
// source address, as a spoofed flood has), and the firewall's counters say
// what it passed.

// flooder sends crafted IPv4 UDP frames out of a host's eth0 through an
// AF_PACKET socket, as fast as it can.
type flooder struct {
	fd       int
	src, dst net.HardwareAddr
}

func newFlooder(t testing.TB, from, to *host) *flooder {
	t.Helper()
	f := &flooder{}
	err := from.do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0) // send only
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		ifc, err := net.InterfaceByName(ifaceName)
		if err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifc.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket: %w", err)
		}
		f.fd, f.src = fd, ifc.HardwareAddr
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", from, err)
	}
	t.Cleanup(func() { unix.Close(f.fd) })
	nh, l := to.eth0(t)
	nh.Close()
	f.dst = l.Attrs().HardwareAddr
	return f
}

// udpFrame is an Ethernet frame holding an IPv4 UDP datagram with a
// 32-byte payload.
func (f *flooder) udpFrame(src, dst netip.Addr, sport, dport uint16) []byte {
	b := make([]byte, 14+20+8+32)
	copy(b[0:], f.dst)
	copy(b[6:], f.src)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], 20+8+32)
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xFFFF {
		sum = sum>>16 + sum&0xFFFF
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := b[34:42]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], 8+32)
	return b // UDP checksum 0: none, valid for IPv4
}

// flood sends frames (in turn) until ctx ends and returns how many it sent.
func (f *flooder) flood(ctx context.Context, frames [][]byte) (int, error) {
	sent := 0
	for ctx.Err() == nil {
		for range 64 {
			if _, err := unix.Write(f.fd, frames[sent%len(frames)]); err != nil {
				if err == unix.ENOBUFS || err == unix.EAGAIN {
					continue
				}
				return sent, err
			}
			sent++
		}
	}
	return sent, nil
}

// floodInBackground floods until the returned stop is called.
func (f *flooder) floodInBackground(t testing.TB, frames [][]byte) (stop func() int) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var sent int
	var err error
	wg.Go(func() { sent, err = f.flood(ctx, frames) })
	var once sync.Once
	stop = func() int {
		once.Do(func() {
			cancel()
			wg.Wait()
			if err != nil {
				t.Errorf("flood: %v", err)
			}
		})
		return sent
	}
	t.Cleanup(func() { stop() })
	return stop
}

// ruleCounter reads one rule's counters from the pinned maps directly
// (no process to start: the reads bracket a measured interval tightly).
func ruleCounter(t testing.TB, h *host, id string) (matched, limited uint64) {
	t.Helper()
	fw, err := bpf.OpenPinned(bpf.Options{PinPath: h.pinPath, Interface: ifaceName})
	if err != nil {
		t.Fatalf("%s: %v", h, err)
	}
	defer fw.Close()
	st, err := fw.Stats()
	if err != nil {
		t.Fatalf("%s: %v", h, err)
	}
	for _, r := range st.Rules {
		if r.ID == id && r.Action == "rate-limit" {
			return r.Packets, r.Limited.Packets
		}
	}
	t.Fatalf("%s: no rate-limit rule %q in %+v", h, id, st.Rules)
	return 0, 0
}

// passedRate measures, over d, the packets per second rule id matched and
// passed (matched minus over the limit).
func passedRate(t testing.TB, h *host, id string, d time.Duration) (passed, offered float64) {
	t.Helper()
	m0, l0 := ruleCounter(t, h, id)
	start := time.Now()
	time.Sleep(d)
	m1, l1 := ruleCounter(t, h, id)
	secs := time.Since(start).Seconds()
	return float64((m1-l1)-(m0-l0)) / secs, float64(m1-m0) / secs
}

// within10 fails the test unless got is within 10% of want, and the flood
// was far above the limit.
func within10(t testing.TB, what string, got, offered, want float64) {
	t.Helper()
	t.Logf("%s: passed %.0f/s of %.0f/s offered, limit %.0f/s", what, got, offered, want)
	if offered < 4*want {
		t.Errorf("%s: the flood reached only %.0f packets/s, not far above the limit %.0f/s", what, offered, want)
	}
	if got < 0.9*want || got > 1.1*want {
		t.Errorf("%s: passed %.0f packets/s, want within 10%% of %.0f", what, got, want)
	}
}

// dnsLimit is a rule set whose one rule limits UDP to port 53.
func dnsLimit(rateLimit string) string {
	return `
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
mode: deny
rules:
  - id: dns-flood
    action: rate-limit
    protocol: udp
    dstPorts: ["53"]
    rateLimit: ` + rateLimit + "\n"
}

func TestRateLimitPerRuleHoldsUnderSpoofedFlood(t *testing.T) {
	client, server := newPair(t)
	server.apply(t, dnsLimit("{pps: 2000, burst: 500, per: rule}"))
	f := newFlooder(t, client, server)

	// Every frame from another source, as in a spoofed flood.
	frames := make([][]byte, 4096)
	for i := range frames {
		src := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		frames[i] = f.udpFrame(src, server.v4, uint16(1024+rand.IntN(60000)), 53)
	}
	stop := f.floodInBackground(t, frames)

	// The first second: the limit plus the burst, once.
	time.Sleep(time.Second)
	m, l := ruleCounter(t, server, "dns-flood")
	if first := float64(m - l); first > 1.1*(2000+500) {
		t.Errorf("first second: %.0f passed, want at most the limit plus the burst (2,500) + 10%%", first)
	}
	got, offered := passedRate(t, server, "dns-flood", 2*time.Second)
	within10(t, "per rule, 4096 sources", got, offered, 2000)
	stop()
}

func TestRateLimitPerSourceGivesEachSourceItsBucket(t *testing.T) {
	client, server := newPair(t)
	server.apply(t, dnsLimit("{pps: 1000, burst: 100, per: source}"))
	f := newFlooder(t, client, server)
	a := f.udpFrame(netip.MustParseAddr("198.19.0.1"), server.v4, 40000, 53)
	b := f.udpFrame(netip.MustParseAddr("198.19.0.2"), server.v4, 40000, 53)

	// One source: its bucket holds it to the limit.
	stop := f.floodInBackground(t, [][]byte{a})
	time.Sleep(500 * time.Millisecond) // past the burst
	got, offered := passedRate(t, server, "dns-flood", 2*time.Second)
	within10(t, "one source", got, offered, 1000)
	stop()

	// A second source has a bucket of its own: twice the limit in all.
	stop = f.floodInBackground(t, [][]byte{a, b})
	time.Sleep(500 * time.Millisecond)
	got, offered = passedRate(t, server, "dns-flood", 2*time.Second)
	within10(t, "two sources", got, offered, 2000)
	stop()
}

const dropsRules = `
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
mode: deny
rules:
  - id: no-9999
    action: drop
    protocol: udp
    dstPorts: ["9999"]
  - id: dns-flood
    action: rate-limit
    protocol: udp
    dstPorts: ["53"]
    rateLimit: {pps: 1, burst: 1}
`

// waitForReader waits until a drop reader holds h's samples.
func waitForReader(t testing.TB, h *host) {
	t.Helper()
	fw, err := bpf.OpenPinned(bpf.Options{PinPath: h.pinPath, Interface: ifaceName})
	if err != nil {
		t.Fatalf("%s: %v", h, err)
	}
	defer fw.Close()
	for range 100 {
		if st, err := fw.Sampling(); err == nil && st.Frames.ReaderPID != 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: no drop reader came up in 5 s", h)
}

// startDrops starts `xdpfwctl local drops` on h with args.
func (h *host) startDrops(t testing.TB, args ...string) (*exec.Cmd, *strings.Builder, *strings.Builder) {
	t.Helper()
	cmd := h.nsenter(ctlBin, append([]string{"local", "drops", "--iface", ifaceName, "--pin-path", h.pinPath}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start xdpfwctl local drops: %v", err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	waitForReader(t, h)
	return cmd, &stdout, &stderr
}

func TestDropSamplesAsPcapForTcpdump(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	server.apply(t, dropsRules)
	pcapFile := filepath.Join(t.TempDir(), "drops.pcap")
	cmd, _, stderr := server.startDrops(t, "-w", pcapFile, "--count", "6", "--duration", "20s")

	sendUDP(t, udp4(client, server, 9999), 4)
	// The second and third DNS datagrams are over the limit of 1/s.
	sendUDP(t, udp4(client, server, 53), 3)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("xdpfwctl local drops: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr.String(), "6 sample(s) to "+pcapFile) {
		t.Errorf("drops said %q, want it to report 6 samples written", stderr)
	}

	out, err := exec.Command("tcpdump", "-nn", "-r", pcapFile).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v\n%s", pcapFile, err, out)
	}
	var to9999, to53 int
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.Contains(line, "198.18.0.1.") && strings.Contains(line, "> 198.18.0.2.9999: UDP"):
			to9999++
		case strings.Contains(line, "198.18.0.1.") && strings.Contains(line, "> 198.18.0.2.53: "):
			to53++
		}
	}
	if to9999 != 4 || to53 != 2 {
		t.Fatalf("tcpdump read %d datagrams to 9999 and %d to 53, want 4 and 2:\n%s", to9999, to53, out)
	}
}

// dropLine mirrors a line of `xdpfwctl local drops -o json`.
type dropLine struct {
	Rule      string `json:"rule"`
	Reason    string `json:"reason"`
	Interface string `json:"interface"`
	FrameLen  int    `json:"frameLen"`
	Packet    struct {
		ProtocolName string `json:"protocolName"`
		Src          string `json:"src"`
		Dst          string `json:"dst"`
		SrcPort      int    `json:"srcPort"`
		DstPort      int    `json:"dstPort"`
	} `json:"packet"`
}

func TestDropSamplesDecodedWithRule(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	server.apply(t, dropsRules)

	// JSON, one rule only: the other rule's drops are not sampled.
	cmd, stdout, stderr := server.startDrops(t, "-o", "json", "--rule", "edge/dns-flood", "--count", "2", "--duration", "20s")
	sendUDP(t, udp4(client, server, 9999), 3)
	sendUDP(t, udp4(client, server, 53), 3)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("xdpfwctl local drops: %v\n%s", err, stderr)
	}
	sc := bufio.NewScanner(strings.NewReader(stdout.String()))
	n := 0
	for sc.Scan() {
		var d dropLine
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Fatalf("decode %q: %v", sc.Text(), err)
		}
		n++
		p := d.Packet
		if d.Rule != "edge/dns-flood" || d.Reason != "rate-limited" || d.Interface != ifaceName ||
			p.ProtocolName != "udp" || p.Src != "198.18.0.1" || p.Dst != "198.18.0.2" || p.DstPort != 53 || p.SrcPort == 0 ||
			d.FrameLen != 14+20+8+probePayload {
			t.Errorf("sample %d: %+v", n, d)
		}
	}
	if n != 2 {
		t.Fatalf("got %d samples, want 2:\n%s", n, stdout)
	}

	// The table: time, rule, reason, the packet and its length.
	cmd, stdout, stderr = server.startDrops(t, "--duration", "2s")
	sendUDP(t, udp6(client, server, 9999), 1)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("xdpfwctl local drops: %v\n%s", err, stderr)
	}
	line := regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.\d{6} +edge/no-9999 +drop-rule +udp \[2001:db8::1\]:\d+ > \[2001:db8::2\]:9999 +94$`)
	if !strings.HasPrefix(stdout.String(), "TIME ") || !line.MatchString(stdout.String()) {
		t.Fatalf("table output lacks the IPv6 drop:\n%s", stdout)
	}
	if _, err := os.Stat(filepath.Join(server.pinPath, ifaceName, "samples")); err != nil {
		t.Fatalf("samples ring buffer not pinned: %v", err)
	}
}

// Through the agent: a rate limit arrives from etcd, holds a flood, and
// the host's telemetry reports what passed, what was over the limit and
// from which sources; an operator samples the drops beside the running
// agent.
func TestFleetRateLimitReportedInTelemetry(t *testing.T) {
	f, h := oneHostEnforcingEdge1(t)
	f.putVersion(t, 2, dnsLimit("{pps: 500, burst: 50, per: source}"))
	rev := f.desire(t, f.hosts, edge(2))
	f.waitApplied(t, f.hosts, rev, edge(2))

	fl := newFlooder(t, f.client, h.host)
	var frames [][]byte
	for i := range 2 {
		frames = append(frames, fl.udpFrame(netip.AddrFrom4([4]byte{198, 19, 0, byte(1 + i)}), h.host.v4, 40000, 53))
	}
	stop := fl.floodInBackground(t, frames)
	defer stop()

	// Sampling works beside the agent, on the pinned objects.
	r := h.host.local("drops", "--count", "3", "--duration", "20s", "-o", "json")
	if r.code != 0 || strings.Count(r.stdout, `"rule":"edge/dns-flood","reason":"rate-limited"`) != 3 {
		t.Errorf("local drops beside the agent: %s", r)
	}

	// Two sources at 500/s each: 1,000/s pass; the rest is over the limit.
	waitFor(t, fleetTimeout, "telemetry of the limited flood", func() (bool, string) {
		tm, found := f.telemetry(t, h)
		if !found || len(tm.Interfaces) != 1 || tm.IntervalSeconds == 0 {
			return false, fmt.Sprintf("telemetry %+v", tm)
		}
		it := tm.Interfaces[0]
		for _, rt := range it.Rules {
			if rt.ID != "dns-flood" || rt.Limited == nil {
				continue
			}
			passed := rt.PPS - rt.Limited.PPS
			ok := rt.Action == "rate-limit" && rt.Limited.PPS > 4*passed && passed > 900 && passed < 1100 &&
				it.Actions["rate-limited"].PPS > 0
			// The top dropped sources: the two flooders, each about half
			// of what the rule dropped over the interval.
			dropped := rt.Limited.PPS * tm.IntervalSeconds
			var sum float64
			for _, src := range rt.TopSources {
				sum += float64(src.Packets)
				ok = ok && (src.Src == "198.19.0.1" || src.Src == "198.19.0.2") && float64(src.Packets) > 0.3*dropped
			}
			ok = ok && len(rt.TopSources) == 2 && sum > 0.9*dropped && sum < 1.1*dropped
			return ok, fmt.Sprintf("rule %+v, over the limit %+v (passed %.0f/s), top sources %+v of %.0f dropped; rate-limited %+v",
				rt, *rt.Limited, passed, rt.TopSources, dropped, it.Actions["rate-limited"])
		}
		return false, fmt.Sprintf("no rule dns-flood with a limited rate in %+v", it.Rules)
	})
	m, err := h.metrics(t)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m, `xdpfw_rule_limited_packets_total{interface="eth0",rule="dns-flood",ruleset="edge"} `) {
		t.Errorf("/metrics lacks the over-limit count of dns-flood")
	}
}
