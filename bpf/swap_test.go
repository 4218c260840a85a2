package bpf

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/xdpfw/xdpfw/bpf/internal/packet"
)

// Two rule sets built so that any mix of their generations is visible. The
// probe (UDP from 203.0.113.7 to port 80) is dropped by both, by rule a-hit
// in A (index 0) and b-hit in B (index 1). Their vectors:
//
//	A: src(P) = {0}      dport(80) = {0}
//	B: src(P) = {0, 1}   dport(80) = {1}   (b-decoy at 0 matches port 81 only)
//
// A's src vector with B's dport vector is empty: the probe would pass by
// default. B's src with A's dport is {0}: B's rule 0 is b-decoy, a pass. So a
// packet that saw a mix passes, and moves pass-default or pass-rule.
const swapA = `
apiVersion: xdpfw/v1
kind: RuleSet
name: swap
mode: deny
rules:
  - id: a-hit
    action: drop
    src: [203.0.113.7/32]
    protocol: udp
    dstPorts: ["80"]
`

const swapB = `
apiVersion: xdpfw/v1
kind: RuleSet
name: swap
mode: deny
rules:
  - id: b-decoy
    action: pass
    src: [203.0.113.0/24]
    protocol: udp
    dstPorts: ["81"]
  - id: b-hit
    action: drop
    src: [203.0.113.7/32]
    protocol: udp
    dstPorts: ["80"]
`

// TestSwapIsAtomic flips between two rule sets thousands of times while
// packets run on every CPU, and shows that no packet was classified by a mix
// of the two generations.
func TestSwapIsAtomic(t *testing.T) {
	fw := openTestFirewall(t)
	a, err := Compile(mustDecode(t, swapA), "lo")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Compile(mustDecode(t, swapB), "lo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Apply(a); err != nil {
		t.Fatal(err)
	}
	probe := packet.UDP("203.0.113.7", "198.18.0.2", 1000, 80).Bytes()
	before := snapshot(t, fw)

	flips := 2000
	if testing.Short() {
		flips = 300
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var runs [8]uint64
	var runErr [8]error
	workers := min(runtime.NumCPU(), len(runs))
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for ctx.Err() == nil {
				// Repeat runs the program 100 times in one syscall, each
				// run reading the generation anew.
				ret, err := fw.Program().Run(&ebpf.RunOptions{Data: probe, Repeat: 100})
				if err != nil {
					runErr[w] = err
					return
				}
				if ret != xdpDrop {
					runErr[w] = errors.New("the probe passed")
					return
				}
				runs[w] += 100
			}
		}(w)
	}
	start := time.Now()
	for i := 0; i < flips; i++ {
		next := a
		if i%2 == 0 {
			next = b
		}
		if _, err := fw.Apply(next); err != nil {
			cancel()
			wg.Wait()
			t.Fatalf("flip %d: %v", i, err)
		}
	}
	cancel()
	wg.Wait()
	elapsed := time.Since(start)
	for w := 0; w < workers; w++ {
		if runErr[w] != nil {
			t.Fatalf("worker %d: %v", w, runErr[w])
		}
	}
	var total uint64
	for _, n := range runs {
		total += n
	}
	d := delta(before, snapshot(t, fw))
	t.Logf("%d flips in %v (%v each) under %d probe runs", flips, elapsed, elapsed/time.Duration(flips), total)
	if total < uint64(flips) {
		t.Fatalf("only %d probe runs during %d flips: the test did not overlap packets and flips", total, flips)
	}
	if d["action:pass-default"] != 0 || d["action:pass-rule"] != 0 {
		t.Fatalf("%d packets passed by default and %d by a pass rule: they saw a mix of generations", d["action:pass-default"], d["action:pass-rule"])
	}
	if d["action:drop-rule"] < total {
		t.Fatalf("drop-rule counted %d of %d probe runs", d["action:drop-rule"], total)
	}
}

// TestFailedFlipChangesNothing makes the flip fail after the inactive
// generation was written: packets keep the old rules, and the next apply
// writes the generation again from what the maps hold.
func TestFailedFlipChangesNothing(t *testing.T) {
	fw := openTestFirewall(t)
	mustApply(t, fw, mustDecode(t, swapA))
	b, err := Compile(mustDecode(t, swapB), "lo")
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("injected flip failure")
	if _, err := fw.apply(b, func(uint32) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("apply with a failing flip: %v, want the injected error", err)
	}
	st, err := fw.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Rules) != 1 || st.Rules[0].ID != "a-hit" {
		t.Fatalf("after a failed flip the active rules are %+v, want rule set A", st.Rules)
	}
	// The port-81 probe passes by default under A; b-decoy would pass it too,
	// so probe port 80 with a different source: A passes it, B passes it.
	if got := run(t, fw, packet.UDP("203.0.113.7", "198.18.0.2", 1000, 80).Bytes()); got != xdpDrop {
		t.Fatalf("probe after failed flip: verdict %d, want drop", got)
	}
	rep := mustApply(t, fw, mustDecode(t, swapB))
	st, err = fw.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Rules) != 2 || st.Rules[1].ID != "b-hit" {
		t.Fatalf("after the retry the active rules are %+v, want rule set B", st.Rules)
	}
	t.Logf("retry wrote %d entries", rep.TotalWrites())
}

// TestCountersSurviveSwaps: a rule that stays keeps its counter across
// applies; a rule that leaves and comes back starts from zero.
func TestCountersSurviveSwaps(t *testing.T) {
	fw := openTestFirewall(t)
	mustApply(t, fw, mustDecode(t, swapB))
	probe := packet.UDP("203.0.113.7", "198.18.0.2", 1000, 80).Bytes()
	for i := 0; i < 5; i++ {
		run(t, fw, probe)
	}
	// Same rules with one more in front: b-hit moves to index 2.
	mustApply(t, fw, mustDecode(t, swapB+`
  - id: extra
    action: drop
    protocol: tcp
`))
	c := snapshot(t, fw)
	if c["swap/b-hit"] != 5 {
		t.Fatalf("b-hit counter after a swap: %d, want 5", c["swap/b-hit"])
	}
	mustApply(t, fw, mustDecode(t, swapA))
	mustApply(t, fw, mustDecode(t, swapB))
	if c := snapshot(t, fw); c["swap/b-hit"] != 0 {
		t.Fatalf("b-hit counter after leaving and coming back: %d, want 0", c["swap/b-hit"])
	}
}

// TestSecondProcessAdoptsWithoutDetaching attaches to a real interface, then
// opens the same pin path again as a new agent would: the maps and rules are
// adopted, the link stays, and the program is never detached.
func TestSecondProcessAdoptsWithoutDetaching(t *testing.T) {
	opts := vethOptions(t, "xfwadopt")
	fw1, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, fw1, mustDecode(t, swapA))
	mode, err := fw1.Attach(ModeNative)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	if mode != ModeNative {
		t.Fatalf("attached in %s mode, want native (veth supports it)", mode)
	}
	st1, err := fw1.State()
	if err != nil {
		t.Fatal(err)
	}
	fw1.Close() // the process goes away; the link and maps stay pinned
	t.Cleanup(func() { _ = Detach(opts) })

	if l, _ := netlink.LinkByName("xfwadopt0"); l == nil || l.Attrs().Xdp == nil || !l.Attrs().Xdp.Attached {
		t.Fatal("program detached when the first process closed")
	}

	fw2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fw2.Attach(ModeAuto); err != nil {
		t.Fatalf("second attach: %v", err)
	}
	st2, err := fw2.State()
	if err != nil {
		t.Fatal(err)
	}
	if st2.ProgramID != st1.ProgramID || st2.Digest != st1.Digest || st2.Seq != st1.Seq {
		t.Fatalf("second process changed what runs: before %+v, after %+v", st1, st2)
	}
	// It applies incrementally on top of what it adopted.
	rep := mustApply(t, fw2, mustDecode(t, swapB))
	if rep.Generation != 1 {
		t.Fatalf("second process wrote generation %d, want 1", rep.Generation)
	}
	if _, err := net.InterfaceByName("xfwadopt0"); err != nil {
		t.Fatal(err)
	}
	// A writer holds the lock: detach waits, then says so.
	LockTimeout = 100 * time.Millisecond
	defer func() { LockTimeout = 10 * time.Second }()
	if err := Detach(opts); !errors.Is(err, ErrLocked) {
		t.Fatalf("detach while another writer holds the lock: %v, want ErrLocked", err)
	}
	fw2.Close()
	if err := Detach(opts); err != nil {
		t.Fatalf("detach: %v", err)
	}
	if l, _ := netlink.LinkByName("xfwadopt0"); l != nil && l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
		t.Fatal("still attached after detach")
	}
}

// TestAppliedRuleSetsTravelWithTheGeneration: the rule sets a generation was
// compiled from are stored with it and come back after the flip, and a
// failed flip leaves the active generation's documents in place.
func TestAppliedRuleSetsTravelWithTheGeneration(t *testing.T) {
	fw := openTestFirewall(t)
	if _, _, err := fw.AppliedRuleSets(); !errors.Is(err, ErrNoGeneration) {
		t.Fatalf("before any apply: %v, want ErrNoGeneration", err)
	}
	mustApply(t, fw, mustDecode(t, swapA))
	sets, _, err := fw.AppliedRuleSets()
	if err != nil {
		t.Fatal(err)
	}
	if len(sets) != 1 || len(sets[0].Rules) != 1 || sets[0].Rules[0].ID != "a-hit" {
		t.Fatalf("applied rule sets after A: %+v", sets)
	}
	b, err := Compile(mustDecode(t, swapB), "lo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fw.apply(b, func(uint32) error { return errors.New("no flip") }); err == nil {
		t.Fatal("apply with a failing flip succeeded")
	}
	if sets, _, err = fw.AppliedRuleSets(); err != nil || sets[0].Rules[0].ID != "a-hit" {
		t.Fatalf("after a failed flip: %+v, %v; want A still", sets, err)
	}
	mustApply(t, fw, mustDecode(t, swapB))
	if sets, _, err = fw.AppliedRuleSets(); err != nil || len(sets[0].Rules) != 2 {
		t.Fatalf("after B: %+v, %v", sets, err)
	}
}

// TestEnforceLeavesTheGracePeriodToSettle: Enforce returns with the new
// generation in force (packets are classified by it at once); the counter
// slot of a rule it dropped stays named until Settle frees it; and every
// later write settles first, so that a second Enforce without Settle, and
// Close, leave the maps as Apply would.
func TestEnforceLeavesTheGracePeriodToSettle(t *testing.T) {
	fw := openTestFirewall(t)
	mustApply(t, fw, mustDecode(t, swapA))
	probe := packet.UDP("203.0.113.7", "198.18.0.2", 1000, 80).Bytes()
	run(t, fw, probe)

	b, err := Compile(mustDecode(t, swapB), fw.Interface())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := fw.Enforce(b)
	if err != nil {
		t.Fatalf("enforce B: %v", err)
	}
	if gen, err := fw.ActiveGeneration(); err != nil || int(gen) != rep.Generation {
		t.Fatalf("after Enforce the active generation is %d (%v), want %d", gen, err, rep.Generation)
	}
	before := snapshot(t, fw)
	if got := run(t, fw, probe); got != xdpDrop {
		t.Fatalf("probe right after Enforce: verdict %d, want drop", got)
	}
	if d := delta(before, snapshot(t, fw)); d["swap/b-hit"] != 1 {
		t.Fatalf("probe right after Enforce moved %v, want swap/b-hit by 1", d)
	}
	if !slotNamed(t, fw, "swap/b-hit") {
		t.Fatal("b-hit has no named counter slot after Enforce")
	}
	if !slotNamed(t, fw, "swap/a-hit") && fw.removed != nil {
		t.Fatal("a-hit's slot was freed before Settle")
	}
	if err := fw.Settle(); err != nil {
		t.Fatalf("settle: %v", err)
	}
	if slotNamed(t, fw, "swap/a-hit") {
		t.Fatal("a-hit's slot still named after Settle")
	}
	if err := fw.Settle(); err != nil {
		t.Fatalf("settle with nothing to wait for: %v", err)
	}

	// A then B again, without Settle: the second Enforce settles the
	// first, so b-hit's slot was freed in between and starts from zero.
	for _, doc := range []string{swapA, swapB} {
		c, err := Compile(mustDecode(t, doc), fw.Interface())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fw.Enforce(c); err != nil {
			t.Fatalf("enforce: %v", err)
		}
	}
	if c := snapshot(t, fw); c["swap/b-hit"] != 0 {
		t.Fatalf("b-hit counter after leaving and coming back through Enforce: %d, want 0", c["swap/b-hit"])
	}

	// Close settles: a-hit, dropped by the last Enforce, is free for the
	// next writer.
	dir := fw.dir
	if err := fw.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	again, err := Open(Options{PinPath: filepath.Dir(dir), Interface: "lo"})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer again.Close()
	if slotNamed(t, again, "swap/a-hit") {
		t.Fatal("a-hit's slot still named after Enforce and Close")
	}
}

// slotNamed reports whether a counter slot in rule_names holds identity.
func slotNamed(t *testing.T, fw *Firewall, identity string) bool {
	t.Helper()
	var slot uint32
	var n firewallFwRuleName
	it := fw.objs.RuleNames.Iterate()
	for it.Next(&slot, &n) {
		var b []byte
		for _, c := range n.Name {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		if string(b) == identity {
			return true
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("read rule_names: %v", err)
	}
	return false
}
