package bpf

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/xdpfw/xdpfw/proto"
)

// ticksPerSecond is the rate limiter's clock: 1/16 ns (struct fw_limit).
const ticksPerSecond = 16_000_000_000

// kernelLimit turns a rule's rate limit into its fw_limit: the costs and
// tolerances of GCRA in ticks, and the bucket identity. Compile calls it
// once per rule; a scope that does not parse (validation refuses it first)
// is an error.
func kernelLimit(identity string, rl *proto.RateLimit) (firewallFwLimit, error) {
	var l firewallFwLimit
	scope, err := proto.ParseLimitScope(rl.Per)
	if err != nil {
		return l, fmt.Errorf("rate limit: per %q: %w", rl.Per, err)
	}
	if scope.PerSource {
		l.Per = uint8(firewallFwLimitPerFW_PER_SOURCE)
		l.Prefix4, l.Prefix6 = uint8(scope.Bits4), uint8(scope.Bits6)
	}
	if rl.PPS > 0 {
		l.PktCost = (ticksPerSecond + rl.PPS/2) / rl.PPS
		l.PktTol = (rl.EffectiveBurst() - 1) * l.PktCost
	}
	if rl.BPS > 0 {
		// Ticks per byte in 16.16 fixed point: 8 bits a byte.
		l.ByteCost = (ticksPerSecond<<16*8 + rl.BPS/2) / rl.BPS
		// burstBytes (up to 2^40) times the cost (up to 2^40) needs
		// 128 bits before the shift.
		hi, lo := bits.Mul64(rl.EffectiveBurstBytes(), l.ByteCost)
		l.ByteTol = hi<<48 | lo>>16
		if hi>>16 != 0 || l.ByteTol > math.MaxInt64 {
			l.ByteTol = math.MaxInt64
		}
	}
	l.Id = limitID(identity, rl, scope)
	return l, nil
}

// limitID identifies a rule's buckets: the same rule with the same limit
// keeps them across swaps (and agent restarts), a changed limit gets new,
// full ones. WithinLimit is left out: it does not change what is counted.
func limitID(identity string, rl *proto.RateLimit, scope proto.LimitScope) uint64 {
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00pps=%d bps=%d burst=%d burstBytes=%d scope=%+v",
		identity, rl.PPS, rl.BPS, rl.EffectiveBurst(), rl.EffectiveBurstBytes(), scope))
	return binary.LittleEndian.Uint64(h[:8])
}

// DefaultSourceSketchLines is the default size of the sketch per-source
// limits count every packet in: 4,096 lines of 8 counters, 256 KiB of kernel
// memory, two rows of 16,384 counters. It holds a flood whose packets a
// second times the limit's seconds a packet (its cost a second) stay well
// below 16,384: 1.6 Mpps of new sources against 100 pps each. Larger
// sketches hold more, and cost each packet a colder memory read; see
// docs/dataplane.md, "Per-source limits under a flood".
const DefaultSourceSketchLines = int(firewallFwLimitsFW_DEFAULT_SKETCH_LINES)

// MaxSourceSketchLines bounds Options.SourceSketchLines (1 GiB).
const MaxSourceSketchLines = 1 << 24

// prepareSketch sizes the rl_sketch map in spec and sets the program's
// sketch constants before the load. A pinned sketch is adopted as it is,
// with its size and hash seed (a new size or seed would scatter every
// source's counters); otherwise the map gets lines lines (0: the default)
// and a new random seed, returned so that storeSketchSeed keeps it in
// rl_sketch[0] after the load. It returns 0 when the seed is already there.
func prepareSketch(spec *ebpf.CollectionSpec, lines int, dir string) (uint64, error) {
	if lines < 0 || lines > MaxSourceSketchLines {
		return 0, fmt.Errorf("source sketch lines %d: out of range 0..%d", lines, MaxSourceSketchLines)
	}
	if lines == 0 {
		lines = DefaultSourceSketchLines
	}
	var seed, newSeed uint64
	pin := filepath.Join(dir, "rl_sketch")
	m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	switch {
	case err == nil:
		defer m.Close()
		if m.MaxEntries() < 2 {
			return 0, fmt.Errorf("use pinned map %s: %d entries, want at least 2: %w", pin, m.MaxEntries(), ErrIncompatible)
		}
		lines = int(m.MaxEntries()) - 1
		var head firewallFwSketchLine
		if m.ValueSize() == uint32(binary.Size(head)) {
			if err := m.Lookup(uint32(0), &head); err != nil {
				return 0, fmt.Errorf("read %s[0]: %w", pin, err)
			}
			seed = head.Tat[0]
		}
		// Another value size is an older layout: the load refuses it and
		// the firewall is migrated to a new map (see migrate).
	case !errors.Is(err, os.ErrNotExist):
		return 0, fmt.Errorf("open pinned map %s: %w", pin, wrapPerm(err))
	}
	if seed == 0 {
		// A new map, or one whose creator died before storing its seed.
		var b [8]byte
		for seed == 0 {
			if _, err := rand.Read(b[:]); err != nil {
				return 0, fmt.Errorf("sketch seed: %w", err)
			}
			seed = binary.LittleEndian.Uint64(b[:])
		}
		newSeed = seed
	}
	spec.Maps["rl_sketch"].MaxEntries = uint32(lines) + 1
	if err := spec.Variables["fw_sketch_seed"].Set(seed); err != nil {
		return 0, fmt.Errorf("set sketch seed: %w", err)
	}
	if err := spec.Variables["fw_sketch_lines"].Set(uint32(lines)); err != nil {
		return 0, fmt.Errorf("set sketch lines: %w", err)
	}
	return newSeed, nil
}

// storeSketchSeed keeps a new sketch's seed in rl_sketch[0], where the next
// load finds it (the program reads its own copy, fw_sketch_seed).
func (fw *Firewall) storeSketchSeed(seed uint64) error {
	if seed == 0 {
		return nil
	}
	var head firewallFwSketchLine
	head.Tat[0] = seed
	if err := fw.objs.RlSketch.Put(uint32(0), &head); err != nil {
		return fmt.Errorf("write rl_sketch[0] (the seed): %w", err)
	}
	return nil
}

// SourceSketchLines is the number of lines of the per-source sketch.
// It is 0 for a pinned firewall of a version without the sketch.
func (fw *Firewall) SourceSketchLines() int {
	m := fw.pinnedMap(&fw.objs.RlSketch, "rl_sketch")
	if m == nil {
		return 0
	}
	return int(m.MaxEntries()) - 1
}
