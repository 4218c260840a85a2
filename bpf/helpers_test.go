package bpf

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/xdpfw/xdpfw/proto"
)

// XDP verdicts as BPF_PROG_RUN returns them.
const (
	xdpDrop = 1
	xdpPass = 2
)

// openTestFirewall opens a firewall pinned in a fresh bpffs directory, on
// the loopback interface (programs are run with BPF_PROG_RUN, not attached).
func openTestFirewall(t testing.TB) *Firewall {
	t.Helper()
	return openTestFirewallWith(t, Options{})
}

// openTestFirewallWith is openTestFirewall with options (the pin path and
// interface are the test's).
func openTestFirewallWith(t testing.TB, opts Options) *Firewall {
	t.Helper()
	opts.PinPath, opts.Interface = testPinDir(t), "lo"
	fw, err := Open(opts)
	if err != nil {
		t.Fatalf("open firewall: %v", err)
	}
	// Runs before testPinDir's removal (cleanups run last first).
	t.Cleanup(func() { fw.Close() })
	return fw
}

// testPinDir makes a fresh pin directory in the BPF filesystem, removed
// when the test ends.
func testPinDir(t testing.TB) string {
	t.Helper()
	if err := checkBPFFS(DefaultPinPath); err != nil {
		t.Fatalf("BPF tests need root and a bpffs at /sys/fs/bpf: %v", err)
	}
	dir, err := os.MkdirTemp("/sys/fs/bpf", "xdpfw-test-")
	if err != nil {
		t.Fatalf("make pin dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// mustDecode decodes and validates rule sets written in YAML.
func mustDecode(t testing.TB, doc string) []proto.RuleSet {
	t.Helper()
	sets, err := proto.DecodeRuleSets([]byte(doc))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return sets
}

// mustApply compiles and applies rule sets.
func mustApply(t testing.TB, fw *Firewall, sets []proto.RuleSet) *ApplyReport {
	t.Helper()
	c, err := Compile(sets, fw.Interface())
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	rep, err := fw.Apply(c)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return rep
}

// run runs the program once on a frame and returns the XDP verdict.
func run(t testing.TB, fw *Firewall, frame []byte) uint32 {
	t.Helper()
	ret, err := fw.Program().Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("BPF_PROG_RUN: %v", err)
	}
	return ret
}

// vethOptions creates a veth pair named NAME0/NAME1 (removed when the test
// ends) and returns the options of a firewall on NAME0 in a fresh pin path.
func vethOptions(t *testing.T, name string) Options {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name + "0"}, PeerName: name + "1"}
	_ = netlink.LinkDel(veth)
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth: %v", err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(veth) })
	if err := netlink.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	first := openTestFirewall(t) // for its fresh pin path
	pinPath := first.dir[:len(first.dir)-len("/lo")]
	first.Close()
	return Options{PinPath: pinPath, Interface: name + "0"}
}
