package flood

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// xdpDrop is the XDP_DROP verdict.
const xdpDrop = 1

// BareDrop loads the floor of every XDP configuration: XDP_DROP and
// nothing else.
func BareDrop() (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "flood_bare", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, xdpDrop),
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("load bare XDP_DROP program: %w", err)
	}
	return prog, nil
}

// Trie is the kernel-LPM-trie reference: a plain XDP program that looks the
// source address up in a BPF_MAP_TYPE_LPM_TRIE holding the prefixes and
// drops the packet whatever the answer, so that its rate compares with
// configurations that drop everything.
type Trie struct {
	Prog *ebpf.Program
	Map  *ebpf.Map
}

// NewTrie fills a trie with the prefixes (all of one family) and loads
// the program.
func NewTrie(f Family, prefixes []netip.Prefix) (*Trie, error) {
	addrLen := 4
	if f == IPv6 {
		addrLen = 16
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "flood_trie", Type: ebpf.LPMTrie, KeySize: uint32(4 + addrLen), ValueSize: 4,
		MaxEntries: uint32(len(prefixes) + 1),
		Flags:      1, // BPF_F_NO_PREALLOC: LPM tries require it
	})
	if err != nil {
		return nil, fmt.Errorf("create LPM trie of %d prefixes: %w", len(prefixes), err)
	}
	key := make([]byte, 4+addrLen)
	for _, p := range prefixes {
		if p.Addr().Is4() != (f == IPv4) {
			m.Close()
			return nil, fmt.Errorf("prefix %v in an %v trie", p, f)
		}
		binary.LittleEndian.PutUint32(key, uint32(p.Bits())) // host order, as the kernel reads it
		copy(key[4:], p.Addr().AsSlice())
		if err := m.Put(key, uint32(1)); err != nil {
			m.Close()
			return nil, fmt.Errorf("add %v to the LPM trie: %w", p, err)
		}
	}
	// Ethernet, then the source address at 26 (IPv4) or 22 (IPv6). The
	// frames are trafgen's, so the EtherType is not checked: the program
	// is the lookup, as cheap as a lookup can be wrapped.
	srcOff, need := int16(26), int32(34)
	if f == IPv6 {
		srcOff, need = 22, 54
	}
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, need),
		asm.JGT.Reg(asm.R4, asm.R3, "drop"),
		asm.StoreImm(asm.RFP, int16(-4-addrLen), int64(addrLen*8), asm.Word), // prefixlen: the whole address
	}
	for off := 0; off < addrLen; off += 4 {
		insns = append(insns,
			asm.LoadMem(asm.R5, asm.R2, srcOff+int16(off), asm.Word),
			asm.StoreMem(asm.RFP, int16(-addrLen+off), asm.R5, asm.Word))
	}
	insns = append(insns,
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(-4-addrLen)),
		asm.FnMapLookupElem.Call(),
		// A hit and a miss both drop, on separate paths: the lookup's
		// result is used, as a filter would use it.
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.Mov.Imm(asm.R0, xdpDrop),
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpDrop).WithSymbol("drop"),
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "flood_trie", Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("load LPM trie program: %w", err)
	}
	return &Trie{Prog: prog, Map: m}, nil
}

// Close unloads the program and frees the trie.
func (t *Trie) Close() error {
	return errors.Join(t.Prog.Close(), t.Map.Close())
}

// XDPFilterObject is Debian's xdp-filter program (package xdp-tools) with
// every feature compiled in and policy deny: packets no filter matches are
// dropped.
const XDPFilterObject = "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_dny_all.o"

// XDPFilter is xdp-filter as `xdp-filter load --policy deny` and a few
// `xdp-filter ip`/`port` filters configure it.
type XDPFilter struct {
	coll *ebpf.Collection
	Prog *ebpf.Program
}

// NewXDPFilter loads xdp-filter with private maps (not the pinned ones
// xdp-filter itself shares machine-wide) and two allow filters per field
// that the flood never matches (addresses in 203.0.113.0/24 and
// 2001:db8:bad::/48, destination ports 22 and 23), so every packet is
// looked up in each of its maps and dropped.
func NewXDPFilter() (*XDPFilter, error) {
	spec, err := ebpf.LoadCollectionSpec(XDPFilterObject)
	if err != nil {
		return nil, fmt.Errorf("load xdp-filter object (Debian package xdp-tools): %w", err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("load xdp-filter: %w", err)
	}
	// Its map values are per-CPU bit masks: which fields a filter covers.
	const flagSrc, flagDst, flagTCP, flagUDP = 1, 2, 4, 8
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		coll.Close()
		return nil, fmt.Errorf("count possible CPUs: %w", err)
	}
	perCPU := func(v uint64) []uint64 {
		out := make([]uint64, ncpu)
		for i := range out {
			out[i] = v
		}
		return out
	}
	put := func(mapName string, key any, v uint64) error {
		m := coll.Maps[mapName]
		if m == nil {
			return fmt.Errorf("xdp-filter object has no map %s", mapName)
		}
		if err := m.Put(key, perCPU(v)); err != nil {
			return fmt.Errorf("xdp-filter %s: add %v: %w", mapName, key, err)
		}
		return nil
	}
	var errs []error
	for _, a := range []string{"203.0.113.1", "203.0.113.2"} {
		errs = append(errs, put("filter_ipv4", netip.MustParseAddr(a).As4(), flagSrc))
	}
	for _, a := range []string{"2001:db8:bad::1", "2001:db8:bad::2"} {
		errs = append(errs, put("filter_ipv6", netip.MustParseAddr(a).As16(), flagSrc))
	}
	for _, port := range []uint32{22, 23} {
		errs = append(errs, put("filter_ports", port, flagDst|flagTCP|flagUDP))
	}
	prog := coll.Programs["xdpfilt_dny_all"]
	if prog == nil {
		errs = append(errs, fmt.Errorf("%s has no program xdpfilt_dny_all", XDPFilterObject))
	}
	if err := errors.Join(errs...); err != nil {
		coll.Close()
		return nil, err
	}
	return &XDPFilter{coll: coll, Prog: prog}, nil
}

// Close unloads xdp-filter.
func (x *XDPFilter) Close() error {
	x.coll.Close()
	return nil
}

// CheckDrops runs a program on frames with BPF_PROG_RUN and fails unless
// it drops each: a configuration that passed packets up the stack would
// be measured on a different path.
func CheckDrops(prog *ebpf.Program, frames ...[]byte) error {
	for i, f := range frames {
		ret, err := prog.Run(&ebpf.RunOptions{Data: f})
		if err != nil {
			return fmt.Errorf("BPF_PROG_RUN: %w", err)
		}
		if ret != xdpDrop {
			return fmt.Errorf("frame %d: verdict %d, not XDP_DROP (%d)", i, ret, xdpDrop)
		}
	}
	return nil
}

// AttachNative attaches a program to the receiving veth in native (driver)
// mode; closing the link detaches it. The link is not pinned: the
// benchmark switches programs between measurements, and nothing must be
// left on the interface when it ends.
func (p *Pair) AttachNative(prog *ebpf.Program) (link.Link, error) {
	var l link.Link
	err := p.InReceiver(func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: p.ReceiverIndex, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach XDP program to %s in native mode: %w", ReceiverIface, err)
	}
	return l, nil
}
