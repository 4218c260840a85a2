package integration

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// Scenarios of `xdpfwctl local` (no agent, no etcd): the firewall sits on
// the server's eth0 and filters what arrives there, that is what the client
// sends and the answers to what the server sends. Real packets decide.

// denySSH is a deny list: it drops what it names and passes the rest.
const denySSH = `
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
mode: deny
rules:
  - id: no-ssh
    action: drop
    protocol: tcp
    dstPorts: ["22"]
  - id: no-syslog
    action: drop
    protocol: udp
    dstPorts: ["514"]
  - id: no-ping
    action: drop
    protocol: icmp
    icmpType: 8       # echo request
  - id: no-ping6
    action: drop
    protocol: icmpv6
    icmpType: 128     # echo request
`

func TestDenyListDropsSSHButPassesHTTP(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	server.apply(t, denySSH)

	expectFlows(t, map[flow]outcome{
		// What the list names is dropped on the way in, over IPv4 and IPv6.
		tcp4(client, server, 22):  blocked,
		tcp6(client, server, 22):  blocked,
		udp4(client, server, 514): blocked,
		udp6(client, server, 514): blocked,
		ping4(client, server):     blocked,
		ping6(client, server):     blocked,
		// Everything else passes.
		tcp4(client, server, 80): passes,
		tcp6(client, server, 80): passes,
		udp4(client, server, 53): passes,
		udp6(client, server, 53): passes,
		// The rules match requests: the answers to the server's own SSH
		// sessions (from port 22, not to it) and pings (echo replies) pass.
		tcp4(server, client, 22): passes,
		tcp6(server, client, 22): passes,
		ping4(server, client):    passes,
		ping6(server, client):    passes,
	})
}

// allowWeb is an allow list: what none of its rules passes is dropped.
const allowWeb = `
apiVersion: xdpfw/v1
kind: RuleSet
name: web-only
mode: allow
rules:
  - id: ssh-from-admin
    action: pass
    src: [198.18.0.1/32]   # the client's IPv4 address only
    protocol: tcp
    dstPorts: ["22"]
  - id: http
    action: pass
    protocol: tcp
    dstPorts: ["80", "8000-8099"]
  - id: dns
    action: pass
    protocol: udp
    dstPorts: ["53"]
  - id: ping
    action: pass
    protocol: icmp
    icmpType: 8
  - id: ping6
    action: pass
    protocol: icmpv6
    icmpType: 128
  # Neighbour discovery: without it IPv6 stops working altogether.
  - id: nd-solicit
    action: pass
    protocol: icmpv6
    icmpType: 135
  - id: nd-advert
    action: pass
    protocol: icmpv6
    icmpType: 136
`

func TestAllowListPassesOnlyListed(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	server.apply(t, allowWeb)

	expectFlows(t, map[flow]outcome{
		// Listed services pass, port ranges included.
		tcp4(client, server, 80):   passes,
		tcp6(client, server, 80):   passes,
		tcp4(client, server, 8080): passes,
		udp4(client, server, 53):   passes,
		udp6(client, server, 53):   passes,
		ping4(client, server):      passes,
		ping6(client, server):      passes,
		// SSH passes from the listed source address only.
		tcp4(client, server, 22): passes,
		tcp6(client, server, 22): blocked,
		// Anything not listed is dropped.
		tcp4(client, server, 443):  blocked,
		tcp6(client, server, 443):  blocked,
		tcp4(client, server, 8100): blocked,
		udp4(client, server, 514):  blocked,
		udp6(client, server, 514):  blocked,
		// The filter keeps no connection state: answers to the server's own
		// traffic are dropped too unless a rule lists them.
		ping4(server, client):    blocked,
		ping6(server, client):    blocked,
		tcp4(server, client, 80): blocked,
	})
}

// stagedLockdown is denySSH's core in dry-run: it counts what it would
// drop and drops nothing.
const stagedLockdown = `
apiVersion: xdpfw/v1
kind: RuleSet
name: staged-lockdown
mode: deny
enforcement: dry-run
rules:
  - id: no-ssh
    action: drop
    protocol: tcp
    dstPorts: ["22"]
  - id: no-9999
    action: drop
    protocol: udp
    dstPorts: ["9999"]
`

func TestDryRunDropsNothingButCounts(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	server.apply(t, stagedLockdown)

	expectFlows(t, map[flow]outcome{
		tcp4(client, server, 22):   passes,
		tcp6(client, server, 22):   passes,
		udp4(client, server, 9999): passes,
		udp6(client, server, 9999): passes,
	})

	st := server.settledStats(t)
	ssh, udp := st.rule(t, "no-ssh"), st.rule(t, "no-9999")
	if !ssh.DryRun || !udp.DryRun {
		t.Errorf("rules not marked dry-run in stats: %+v", st.Rules)
	}
	// One datagram each over IPv4 and IPv6, exactly.
	if want := (counter{2, udpFrameBytes(1, 1)}); udp.counter != want {
		t.Errorf("no-9999 counted %+v, want %+v", udp.counter, want)
	}
	// At least the two SYNs; the rest of each connection matches too.
	if ssh.Packets < 2 {
		t.Errorf("no-ssh counted %d packets, want at least the 2 SYNs", ssh.Packets)
	}
	if got, want := st.Actions["would-drop"].Packets, ssh.Packets+udp.Packets; got != want {
		t.Errorf("would-drop = %d packets, want %d (every packet the two rules matched)", got, want)
	}
	if got := st.Actions["drop-rule"].Packets; got != 0 {
		t.Errorf("drop-rule = %d packets in dry-run, want 0", got)
	}
}

// swapA and swapB differ in mode, rules and map contents, but both pass
// DNS (udp/53) and drop udp/9999.
const (
	swapA = `
apiVersion: xdpfw/v1
kind: RuleSet
name: swap-a
mode: deny
rules:
  - id: no-ssh
    action: drop
    protocol: tcp
    dstPorts: ["22"]
  - id: no-high-udp
    action: drop
    protocol: udp
    dstPorts: ["9000-9999"]
`
	swapB = `
apiVersion: xdpfw/v1
kind: RuleSet
name: swap-b
mode: allow
sets:
  clients: [198.18.0.0/24, "2001:db8::/64"]
rules:
  - id: dns-from-clients
    action: pass
    src: [set:clients]
    protocol: udp
    dstPorts: ["53"]
  - id: nd-solicit
    action: pass
    protocol: icmpv6
    icmpType: 135
  - id: nd-advert
    action: pass
    protocol: icmpv6
    icmpType: 136
`
)

func TestSwapUnderTraffic(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	server.apply(t, swapA)

	// DNS probes that wait for their echo, and datagrams to udp/9999, both
	// over IPv4 and IPv6, steadily while the rule sets swap.
	allowed := []flow{udp4(client, server, 53), udp6(client, server, 53)}
	denied := []flow{udp4(client, server, 9999), udp6(client, server, 9999)}
	traffic := startUDPTraffic(t, allowed, denied)

	const swaps = 50
	for i := range swaps {
		rules := swapB
		if i%2 == 1 {
			rules = swapA
		}
		server.apply(t, rules)
	}
	probes, lost, errs := traffic.stop()

	for _, err := range errs {
		t.Error(err)
	}
	if lost != 0 {
		t.Errorf("allowed flow lost %d of %d DNS probes during %d swaps, want none", lost, probes, swaps)
	}
	// An apply takes a few hundred milliseconds and a probe goes out every
	// millisecond or so: each swap happens under traffic.
	if probes < 4*swaps {
		t.Errorf("only %d DNS probes went out during %d swaps: too few to cover every swap", probes, swaps)
	}
	time.Sleep(100 * time.Millisecond) // let the last datagrams land
	if n := server.udpReceived(9999); n != 0 {
		t.Errorf("denied flow: the server received %d datagrams on udp/9999 during the swaps, want 0", n)
	}
	if s := server.show(t); !slices.Equal(s.RuleSets, []string{"swap-a"}) || s.Seq < swaps+1 {
		t.Errorf("after %d swaps: rule sets %v, apply #%d; want [swap-a] and apply #%d", swaps, s.RuleSets, s.Seq, swaps+1)
	}
	t.Logf("%d swaps: %d of %d DNS probes answered, %d datagrams to udp/9999 dropped", swaps, probes-lost, probes, traffic.deniedSent)
}

// udpTraffic is a steady stream of UDP probes, running until stopped.
type udpTraffic struct {
	done       chan struct{}
	wg         sync.WaitGroup
	probes     int // allowed probes sent
	lost       int // allowed probes whose echo did not come back
	deniedSent int
	errs       []error
}

// startUDPTraffic sends, about every millisecond, one echo probe on each
// allowed flow (waiting for the echo) and one datagram on each denied flow.
func startUDPTraffic(t testing.TB, allowed, denied []flow) *udpTraffic {
	t.Helper()
	tr := &udpTraffic{done: make(chan struct{})}
	type sock struct {
		f flow
		c net.Conn
	}
	var allowedSocks, deniedSocks []sock
	for _, list := range []struct {
		flows []flow
		socks *[]sock
	}{{allowed, &allowedSocks}, {denied, &deniedSocks}} {
		for _, f := range list.flows {
			f.to.listen(t, f.proto, f.port)
			c, err := f.from.dial("udp", f.dst())
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			t.Cleanup(func() { c.Close() })
			*list.socks = append(*list.socks, sock{f, c})
		}
	}
	tr.wg.Go(func() {
		for seq := 0; ; seq++ {
			select {
			case <-tr.done:
				return
			case <-time.After(time.Millisecond): // a steady stream, not a CPU hog
			}
			msg := probeMessage(seq)
			for _, s := range allowedSocks {
				ok, err := echo(s.c, msg)
				tr.probes++
				if err != nil {
					tr.errs = append(tr.errs, fmt.Errorf("%s: probe %d: %w", s.f, seq, err))
					return
				}
				if !ok {
					tr.lost++
				}
			}
			for _, s := range deniedSocks {
				if _, err := s.c.Write(msg); err != nil {
					tr.errs = append(tr.errs, fmt.Errorf("%s: send %d: %w", s.f, seq, err))
					return
				}
				tr.deniedSent++
			}
		}
	})
	return tr
}

func (tr *udpTraffic) stop() (probes, lost int, errs []error) {
	close(tr.done)
	tr.wg.Wait()
	return tr.probes, tr.lost, tr.errs
}

// stopClean stops the traffic and fails the test unless every allowed
// probe (at least one) got its echo and no denied datagram reached the
// server's udp/deniedPort during what the test did.
func (tr *udpTraffic) stopClean(t testing.TB, during string, server *host, deniedPort int) {
	t.Helper()
	probes, lost, errs := tr.stop()
	for _, err := range errs {
		t.Error(err)
	}
	if lost != 0 || probes == 0 {
		t.Errorf("allowed flow lost %d of %d DNS probes %s, want none lost", lost, probes, during)
	}
	time.Sleep(100 * time.Millisecond) // let the last datagrams land
	if n := server.udpReceived(deniedPort); n != 0 {
		t.Errorf("denied flow: the server received %d datagrams on udp/%d %s, want 0", n, deniedPort, during)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	server.apply(t, denySSH)
	before := server.show(t)

	// An empty deny list would open everything, were it applied.
	const openAll = "apiVersion: xdpfw/v1\nkind: RuleSet\nname: open\nmode: deny\nrules: []\n"
	const badCIDR = `
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
mode: deny
rules:
  - id: typo
    action: drop
    src: [198.18.0.300/24]
    protocol: icmp
    dstPorts: ["22"]
`
	const unknownSet = `
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
mode: deny
rules:
  - id: threat-intel
    action: drop
    src: [set:bad-actors]
`
	for _, tc := range []struct {
		name       string
		run        func() cliResult
		wantStderr []string // what the operator must be told
	}{{
		name:       "invalid rule file",
		run:        func() cliResult { return server.tryApply(t, badCIDR) },
		wantStderr: []string{"rules[0].src[0]", "198.18.0.300/24", "rules[0].dstPorts"},
	}, {
		name:       "reference to an unknown set",
		run:        func() cliResult { return server.tryApply(t, unknownSet) },
		wantStderr: []string{"bad-actors"},
	}, {
		name: "misspelled field (would widen the rule to every protocol)",
		run: func() cliResult {
			return server.tryApply(t, strings.Replace(denySSH, "protocol: tcp", "protocl: tcp", 1))
		},
		wantStderr: []string{`unknown field "protocl"`},
	}, {
		name:       "a bad document after a good one",
		run:        func() cliResult { return server.tryApply(t, openAll+"---\n"+unknownSet) },
		wantStderr: []string{"bad-actors"},
	}, {
		name:       "not YAML",
		run:        func() cliResult { return server.tryApply(t, "rules: [unclosed\n") },
		wantStderr: []string{"line 1"},
	}, {
		name:       "missing rules file",
		run:        func() cliResult { return server.local("apply", "-f", "/nonexistent/rules.yaml") },
		wantStderr: []string{"/nonexistent/rules.yaml"},
	}, {
		name: "unknown interface",
		run: func() cliResult {
			return server.ctl("local", "apply", "--iface", "nosuch0", "--pin-path", server.pinPath, "-f", writeRules(t, openAll))
		},
		wantStderr: []string{"no such interface", "nosuch0"},
	}, {
		name:       "unknown attach mode",
		run:        func() cliResult { return server.tryApply(t, openAll, "--mode", "turbo") },
		wantStderr: []string{"turbo"},
	}} {
		r := tc.run()
		if r.code == 0 {
			t.Errorf("%s: exit 0, want a failure\n%s", tc.name, r)
			continue
		}
		for _, want := range tc.wantStderr {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("%s: stderr does not say %q:\n%s", tc.name, want, r.stderr)
			}
		}
	}

	after := server.show(t)
	if after.Digest != before.Digest || after.Seq != before.Seq || !slices.Equal(after.RuleSets, before.RuleSets) {
		t.Errorf("rejected input changed the firewall: before %+v, after %+v", before, after)
	}
	// The rules applied before still enforce.
	expectFlows(t, map[flow]outcome{
		tcp4(client, server, 22): blocked,
		tcp6(client, server, 22): blocked,
		tcp4(client, server, 80): passes,
		tcp6(client, server, 80): passes,
	})
}

func TestDetachStopsFiltering(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	server.apply(t, denySSH)
	expectFlows(t, map[flow]outcome{
		tcp4(client, server, 22): blocked,
		tcp6(client, server, 22): blocked,
	})

	server.detach(t)

	expectFlows(t, map[flow]outcome{
		tcp4(client, server, 22): passes,
		tcp6(client, server, 22): passes,
		ping4(client, server):    passes,
		ping6(client, server):    passes,
	})
	if mode := server.xdpMode(t); mode != "" {
		t.Errorf("after detach the kernel still reports an XDP program on %s (%s mode)", ifaceName, mode)
	}
	if r := server.local("show"); r.code == 0 || !strings.Contains(r.stderr, "no xdpfw firewall pinned") {
		t.Errorf("show after detach: want a failure saying nothing is pinned\n%s", r)
	}
	if r := server.local("detach"); r.code == 0 || !strings.Contains(r.stderr, "nothing to detach") {
		t.Errorf("second detach: want a failure saying there is nothing to detach\n%s", r)
	}
}

func TestNonIPDropCutsIPv4Off(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	server.apply(t, denySSH, "--non-ip", "drop")
	// ARP is not IP: dropping non-IP frames leaves the client unable to
	// resolve the server's IPv4 address once its cache forgets it. IPv6
	// finds neighbours with ICMPv6, which is IP, and keeps working.
	client.forgetNeighbours(t)
	expectFlows(t, map[flow]outcome{
		udp4(client, server, 53): blocked,
		udp6(client, server, 53): passes,
	})
	if st := server.stats(t); st.Actions["non-ip"].Packets == 0 {
		t.Errorf("non-ip counted nothing, want the dropped ARP requests: %+v", st.Actions)
	}

	// Back to the default: non-IP frames pass. The client's entry for the
	// server is still resolving (or failed) from the blocked probe: its
	// next ARP request may be up to a second away, longer than a probe
	// waits. Forgetting it makes the client ask at once, under the new
	// policy.
	server.apply(t, denySSH, "--non-ip", "pass")
	client.forgetNeighbours(t)
	expectFlows(t, map[flow]outcome{
		udp4(client, server, 53): passes,
		udp6(client, server, 53): passes,
	})
}

// countedDNS passes DNS and drops udp/9999, each by a rule of its own.
const countedDNS = `
apiVersion: xdpfw/v1
kind: RuleSet
name: counted
mode: deny
rules:
  - id: dns
    action: pass
    protocol: udp
    dstPorts: ["53"]
  - id: no-9999
    action: drop
    protocol: udp
    dstPorts: ["9999"]
`

func TestStatsCountRealPackets(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	server.apply(t, countedDNS)
	st := server.stats(t)
	if dns, drop := st.rule(t, "dns"), st.rule(t, "no-9999"); dns.Packets != 0 || drop.Packets != 0 {
		t.Fatalf("a fresh firewall starts with counts: dns %+v, no-9999 %+v", dns, drop)
	}

	// 5+3 DNS queries, each answered; 4+3 datagrams to udp/9999.
	for range 5 {
		if !reaches(t, udp4(client, server, 53)) {
			t.Fatal("udp/53 over IPv4 got no answer")
		}
	}
	for range 3 {
		if !reaches(t, udp6(client, server, 53)) {
			t.Fatal("udp/53 over IPv6 got no answer")
		}
	}
	sendUDP(t, udp4(client, server, 9999), 4)
	sendUDP(t, udp6(client, server, 9999), 3)

	st = server.settledStats(t)
	if got, want := st.rule(t, "dns").counter, (counter{8, udpFrameBytes(5, 3)}); got != want {
		t.Errorf("rule dns counted %+v, want %+v", got, want)
	}
	if got, want := st.rule(t, "no-9999").counter, (counter{7, udpFrameBytes(4, 3)}); got != want {
		t.Errorf("rule no-9999 counted %+v, want %+v", got, want)
	}
	if got, want := st.Actions["drop-rule"], (counter{7, udpFrameBytes(4, 3)}); got != want {
		t.Errorf("action drop-rule counted %+v, want %+v", got, want)
	}
	if got, want := st.Actions["pass-rule"], (counter{8, udpFrameBytes(5, 3)}); got != want {
		t.Errorf("action pass-rule counted %+v, want %+v", got, want)
	}
	if n := server.udpReceived(9999); n != 0 {
		t.Errorf("the server received %d datagrams on udp/9999, want 0", n)
	}
	if n := server.udpReceived(53); n != 8 {
		t.Errorf("the server received %d datagrams on udp/53, want 8", n)
	}

	// Counters belong to the rule, not to its place: a new rule in front
	// moves both, and their counts stay.
	server.apply(t, strings.Replace(countedDNS, "rules:\n", "rules:\n  - id: no-telnet\n    action: drop\n    protocol: tcp\n    dstPorts: [\"23\"]\n", 1))
	sendUDP(t, udp4(client, server, 9999), 1)
	st = server.settledStats(t)
	if got := st.rule(t, "no-telnet"); got.Index != 0 || got.Packets != 0 {
		t.Errorf("new rule no-telnet: %+v, want index 0 and no packets", got)
	}
	if got, want := st.rule(t, "dns").counter, (counter{8, udpFrameBytes(5, 3)}); got != want {
		t.Errorf("after the swap, rule dns counts %+v, want %+v", got, want)
	}
	if got, want := st.rule(t, "no-9999").counter, (counter{8, udpFrameBytes(5, 3)}); got != want {
		t.Errorf("after the swap and one more datagram, rule no-9999 counts %+v, want %+v", got, want)
	}
}

func TestNativeAndGenericModes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ flag, want string }{
		{"generic", "generic"},
		{"native", "native"},
		{"auto", "native"}, // veth has a native XDP driver
	} {
		t.Run(tc.flag, func(t *testing.T) {
			t.Parallel()
			client, server := newPair(t)
			out := server.apply(t, denySSH, "--mode", tc.flag)
			if !strings.Contains(out, tc.want+" mode") {
				t.Errorf("apply --mode %s printed %q, want it to say %s mode", tc.flag, out, tc.want)
			}
			s := server.show(t)
			if !s.Attached || s.Mode != tc.want || s.Interface != ifaceName || !slices.Equal(s.RuleSets, []string{"edge"}) {
				t.Errorf("show: attached %v, mode %q, interface %q, rule sets %v; want attached in %s mode on %s with [edge]",
					s.Attached, s.Mode, s.Interface, s.RuleSets, tc.want, ifaceName)
			}
			if got := server.xdpMode(t); got != tc.want {
				t.Errorf("the kernel reports %q mode on %s, want %s", got, ifaceName, tc.want)
			}
			expectFlows(t, map[flow]outcome{
				tcp4(client, server, 22): blocked,
				tcp6(client, server, 22): blocked,
				tcp4(client, server, 80): passes,
				tcp6(client, server, 80): passes,
			})
			// Asking for the other mode on an attached firewall is refused
			// (it would mean detaching) and changes nothing.
			other := map[string]string{"generic": "native", "native": "generic"}[tc.want]
			r := server.tryApply(t, denySSH, "--mode", other)
			if r.code == 0 || !strings.Contains(r.stderr, "detach") {
				t.Errorf("apply --mode %s on a firewall attached in %s mode: %s; want an error that says to detach first", other, tc.want, r)
			}
			if got := server.xdpMode(t); got != tc.want {
				t.Errorf("after the refused mode change the kernel reports %q mode, want %s", got, tc.want)
			}
		})
	}
}

// udpFrameBytes is what XDP counts for n4 IPv4 and n6 IPv6 UDP probes:
// whole Ethernet frames (14 bytes of header, 20 or 40 of IP, 8 of UDP).
func udpFrameBytes(n4, n6 uint64) uint64 {
	return n4*(14+20+8+probePayload) + n6*(14+40+8+probePayload)
}

// settledStats reads the counters once they stop moving, so packets still
// on their way are in.
func (h *host) settledStats(t testing.TB) stats {
	t.Helper()
	prev := h.stats(t)
	for range 20 {
		time.Sleep(50 * time.Millisecond)
		cur := h.stats(t)
		if reflect.DeepEqual(cur, prev) {
			return cur
		}
		prev = cur
	}
	t.Fatalf("%s: counters still moving after a second", h)
	return prev
}

// TestUpgradeOverAnOlderLayoutKeepsFiltering: a new version of xdpfwctl (or
// of the agent) finds maps pinned by an older one, with another layout. It
// takes them over without a gap: the attached program is replaced in one
// link update by one that already holds the rules, and traffic never sees
// the interface unfiltered.
func TestUpgradeOverAnOlderLayoutKeepsFiltering(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	server.apply(t, swapA)
	before := server.show(t)

	allowed := []flow{udp4(client, server, 53), udp6(client, server, 53)}
	denied := []flow{udp4(client, server, 9999), udp6(client, server, 9999)}
	traffic := startUDPTraffic(t, allowed, denied)
	time.Sleep(200 * time.Millisecond)

	// What an older version left: a pinned map of another layout (the
	// running program keeps the map it was loaded with).
	path := filepath.Join(server.pinPath, ifaceName, "action_stats")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(path); err != nil {
		t.Fatal(err)
	}
	m.Close()

	server.apply(t, swapA)
	time.Sleep(200 * time.Millisecond)
	traffic.stopClean(t, "during the upgrade", server, 9999)
	after := server.show(t)
	if !after.Attached || after.ProgramID == before.ProgramID || !slices.Equal(after.RuleSets, before.RuleSets) || after.Mode != before.Mode {
		t.Errorf("after the upgrade: %+v; before: %+v (want the same rule sets, attached as before, in a new program)", after, before)
	}
	st := server.stats(t)
	if _, ok := st.Actions["rate-limited"]; !ok {
		t.Errorf("after the upgrade the counters are not this version's: %v", st.Actions)
	}
}
