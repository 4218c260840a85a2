package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/xdpfw/xdpfw/proto"
)

// migrate takes over an interface whose pinned maps this version cannot use
// (an older layout) without a gap in filtering, as an upgrade must: it
// creates this version's maps in a staging directory and fills them with the
// rule sets the old active generation was compiled from (kept in its docs
// map), switches the running program to this version's with one
// link.Update, then moves the new pins over the old ones. Until the update
// the old program filters with the old maps; from it, the new one with the
// new maps. Counters start again from zero. The caller holds the
// directory's writer lock.
func migrate(opts Options, dir string) (*Firewall, error) {
	sets, copts, parseDrop, nonIPDrop, err := readOldFirewall(opts.Interface, dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w, and cannot be migrated (%w): detach with `xdpfwctl local detach --iface %s` and apply again",
			dir, ErrIncompatible, err, opts.Interface)
	}
	var compiled *Compiled
	if sets != nil {
		if compiled, err = CompileWith(sets, opts.Interface, copts); err != nil {
			return nil, fmt.Errorf("migrate %s: compile the applied rule sets: %w", dir, err)
		}
	}

	// bpffs refuses names with dots; no interface name has a colon, so
	// this one cannot be an interface's directory.
	staging := filepath.Join(filepath.Dir(dir), "migrating:"+filepath.Base(dir))
	if err := os.RemoveAll(staging); err != nil { // a migration that died half-way
		return nil, fmt.Errorf("migrate %s: remove %s: %w", dir, staging, err)
	}
	if err := os.Mkdir(staging, 0o700); err != nil {
		return nil, fmt.Errorf("migrate %s: %w", dir, wrapPerm(err))
	}
	defer os.RemoveAll(staging)
	fw, err := load(opts, staging)
	if err != nil {
		return nil, fmt.Errorf("migrate %s: %w", dir, err)
	}
	ok := false
	defer func() {
		if !ok {
			fw.Close()
		}
	}()
	if err := fw.SetPolicy(parseDrop, nonIPDrop); err != nil {
		return nil, err
	}
	if compiled != nil {
		if _, err := fw.Apply(compiled); err != nil {
			return nil, fmt.Errorf("migrate %s: apply the rule sets to the new maps: %w", dir, err)
		}
	}

	// The switch: from here packets run this version's program and maps.
	if l, err := link.LoadPinnedLink(filepath.Join(dir, linkPin), nil); err == nil {
		uerr := l.Update(fw.objs.XdpfwFilter)
		l.Close()
		if uerr != nil {
			return nil, fmt.Errorf("migrate %s: replace the running program: %w", dir, uerr)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("migrate %s: load pinned link: %w", dir, wrapPerm(err))
	}

	// Move the new pins over the old ones (a rename replaces a pin in one
	// step); pins this version no longer has go.
	newPins, err := os.ReadDir(staging)
	if err != nil {
		return nil, fmt.Errorf("migrate %s: %w", dir, err)
	}
	keep := map[string]bool{linkPin: true}
	for _, e := range newPins {
		keep[e.Name()] = true
		if err := os.Rename(filepath.Join(staging, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			return nil, fmt.Errorf("migrate %s: move %s into place: %w", dir, e.Name(), err)
		}
	}
	oldPins, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("migrate %s: %w", dir, err)
	}
	for _, e := range oldPins {
		if !keep[e.Name()] {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("migrate %s: unpin %s: %w", dir, e.Name(), err)
			}
		}
	}
	fw.dir = dir
	ok = true
	return fw, nil
}

// readOldFirewall reads what an older version's pinned firewall enforces:
// the rule sets of its active generation (nil when none is active) and its
// parse-error and non-IP policies. It reads only maps whose layout every
// version shares (gen_sel, docs, settings).
func readOldFirewall(iface, dir string) (sets []proto.RuleSet, copts CompileOptions, parseDrop, nonIPDrop bool, err error) {
	old := &Firewall{iface: iface, dir: dir}
	defer old.Close()
	for name, dst := range map[string]**ebpf.Map{"gen_sel": &old.objs.GenSel, "docs": &old.objs.Docs} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			return nil, copts, false, false, fmt.Errorf("open pinned map %s: %w", name, wrapPerm(err))
		}
		*dst = m
	}
	if _, err := old.ActiveGeneration(); errors.Is(err, ErrNoGeneration) {
		sets = nil // nothing applied: nothing to carry over
	} else if sets, copts, err = old.AppliedRuleSets(); err != nil {
		return nil, copts, false, false, err
	}
	if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "settings"), nil); err == nil {
		defer m.Close()
		var s firewallFwSettings
		if m.ValueSize() == uint32(binary.Size(s)) && m.Lookup(uint32(0), &s) == nil {
			parseDrop = s.ParseErrorAction == uint32(firewallFwActionFW_ACTION_DROP)
			nonIPDrop = s.NonIpAction == uint32(firewallFwActionFW_ACTION_DROP)
		}
	}
	return sets, copts, parseDrop, nonIPDrop, nil
}
