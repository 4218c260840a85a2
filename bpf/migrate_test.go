package bpf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/xdpfw/xdpfw/bpf/internal/packet"
)

// pinOlderLayout makes a pinned firewall look like an older version's: its
// action_stats pin is replaced by a map of another size (the program that
// runs keeps the map it was loaded with).
func pinOlderLayout(t *testing.T, dir string) {
	t.Helper()
	path := filepath.Join(dir, "action_stats")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(path); err != nil {
		t.Fatal(err)
	}
}

// TestOpenMigratesAnOlderLayoutWithoutDetaching: an upgrade finds maps it
// cannot use; it builds its own, fills them with the rule sets the old ones
// enforce (and the policies), switches the attached program with one
// link update, and takes the old pins' place. The interface stays attached
// throughout.
func TestOpenMigratesAnOlderLayoutWithoutDetaching(t *testing.T) {
	testMigration(t, "xfwmig", pinOlderLayout)
}

// pinOlderTables makes a pinned firewall look like one of a version with
// other big-set tables: a map this version has is not pinned (the old
// version had none by that name), and one it does not know is.
func pinOlderTables(t *testing.T, dir string) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, "src4_direct")); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(dir, "src4_t24")); err != nil {
		t.Fatal(err)
	}
}

// TestOpenMigratesWhenAMapIsMissing: maps this version needs that the
// pinned firewall lacks (a table whose layout changed, under a new name)
// are a reason to migrate, not to run the old generation's field bits
// against new, empty tables; the old version's own pins go.
func TestOpenMigratesWhenAMapIsMissing(t *testing.T) {
	testMigration(t, "xfwmis", pinOlderTables)
}

func testMigration(t *testing.T, ifname string, makeOlder func(t *testing.T, dir string)) {
	opts := vethOptions(t, ifname)

	old, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, old, mustDecode(t, swapA))
	if err := old.SetPolicy(true, false); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Attach(ModeNative); err != nil {
		t.Fatalf("attach: %v", err)
	}
	before, err := old.State()
	if err != nil {
		t.Fatal(err)
	}
	old.Close()
	t.Cleanup(func() { _ = Detach(opts) })
	makeOlder(t, old.dir)

	fw, err := Open(opts)
	if err != nil {
		t.Fatalf("open over an older layout: %v", err)
	}
	defer fw.Close()
	after, err := fw.State()
	if err != nil {
		t.Fatal(err)
	}
	if !after.Attached || after.ProgramID == before.ProgramID || after.Digest != before.Digest || after.Generation < 0 {
		t.Fatalf("after the migration: %+v; before: %+v (want attached, a new program, the same rule sets)", after, before)
	}
	if l, _ := netlink.LinkByName(ifname + "0"); l == nil || l.Attrs().Xdp == nil || l.Attrs().Xdp.ProgId != after.ProgramID {
		t.Fatalf("the interface does not run the new program %d", after.ProgramID)
	}
	// The new maps are in place, with the rules and the policy.
	m, err := ebpf.LoadPinnedMap(filepath.Join(fw.dir, "action_stats"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := m.MaxEntries(); n != uint32(firewallFwStatFW_STAT_MAX) {
		t.Fatalf("pinned action_stats has %d entries, want this version's %d", n, firewallFwStatFW_STAT_MAX)
	}
	m.Close()
	hit := packet.UDP("203.0.113.7", "198.51.100.1", 1000, 80).Bytes()
	if v := run(t, fw, hit); v != xdpDrop {
		t.Fatalf("migrated rules: verdict %d for a-hit, want drop", v)
	}
	if v := run(t, fw, hit[:20]); v != xdpDrop {
		t.Fatalf("migrated policy: a truncated frame got verdict %d, want drop", v)
	}
	entries, _ := os.ReadDir(filepath.Dir(fw.dir))
	for _, e := range entries {
		if strings.Contains(e.Name(), "migrating") {
			t.Fatalf("staging directory %s left behind", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(fw.dir, "src4_t24")); !os.IsNotExist(err) {
		t.Fatalf("a pin this version does not have is left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(fw.dir, "src4_direct")); err != nil {
		t.Fatalf("this version's src4_direct is not pinned: %v", err)
	}
	// And it is an ordinary firewall again: the next apply is a swap.
	if rep := mustApply(t, fw, mustDecode(t, swapB)); rep.TotalWrites() == 0 {
		t.Fatal("apply after the migration wrote nothing")
	}
}
