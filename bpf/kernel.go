package bpf

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// MinKernel is the oldest Linux release xdpfw is tested on (CI boots
// Debian's 6.1 kernel). CheckKernel refuses a kernel that lacks a feature
// the program uses; an older kernel that has them all (backports) is not
// refused, but is not tested either.
const MinKernel = "6.1"

// ErrKernelTooOld is the error (errors.Is) of a kernel that lacks a BPF
// feature the program needs (it is an ErrLoad too).
var ErrKernelTooOld = errors.New("kernel too old")

// kernelFeature is one BPF feature the program or its loader uses: the
// first Linux release that has it, and a probe that returns nil when the
// running kernel has it and an error wrapping ebpf.ErrNotSupported when it
// does not (any other error means the probe itself failed).
type kernelFeature struct {
	name  string
	since string
	probe func() error
}

// requiredFeatures lists what firewall.c and this package use that an old
// kernel may lack, oldest first. Helpers every BPF kernel has
// (bpf_map_lookup_elem, bpf_ktime_get_ns, bpf_get_prandom_u32) and map
// types older than 4.10 (hash, array, per-CPU array) are left out.
var requiredFeatures = []kernelFeature{
	{"LRU hashes", "4.10", func() error { return features.HaveMapType(ebpf.LRUHash) }},
	{"LPM tries", "4.11", func() error { return features.HaveMapType(ebpf.LPMTrie) }},
	{"arrays of maps", "4.12", func() error { return features.HaveMapType(ebpf.ArrayOfMaps) }},
	{"programs over 4,096 instructions", "5.2", features.HaveLargeInstructions},
	{"mmapable arrays", "5.5", func() error { return features.HaveMapFlag(features.BPF_F_MMAPABLE) }},
	{"ring buffers", "5.8", func() error { return features.HaveMapType(ebpf.RingBuf) }},
	{"XDP links", "5.9", haveXDPLink},
	{"inner maps of their own size (BPF_F_INNER_MAP)", "5.10", func() error { return features.HaveMapFlag(features.BPF_F_INNER_MAP) }},
	{"bpf_ktime_get_coarse_ns", "5.11", func() error { return features.HaveProgramHelper(ebpf.XDP, asm.FnKtimeGetCoarseNs) }},
	{"atomic compare-and-exchange", "5.12", haveCmpXchg},
	{"bpf_loop", "5.17", func() error { return features.HaveProgramHelper(ebpf.XDP, asm.FnLoop) }},
	{"bpf_xdp_load_bytes", "5.18", func() error { return features.HaveProgramHelper(ebpf.XDP, asm.FnXdpLoadBytes) }},
}

// CheckKernel probes the running kernel for every BPF feature xdpfw needs.
// It returns nil when all are there, an error wrapping ErrKernelTooOld that
// names each missing one when some are not, and another error when a probe
// could not tell. Probe results are cached for the life of the process.
func CheckKernel() error {
	return checkKernel(runningKernel(), requiredFeatures)
}

func checkKernel(release string, feats []kernelFeature) error {
	var missing []kernelFeature
	var errs []error
	for _, f := range feats {
		err := f.probe()
		switch {
		case err == nil:
		case errors.Is(err, ebpf.ErrNotSupported):
			missing = append(missing, f)
		default:
			errs = append(errs, fmt.Errorf("probe the kernel for %s: %w", f.name, wrapPerm(err)))
		}
	}
	if len(missing) > 0 {
		return kernelTooOld(release, missing)
	}
	return errors.Join(errs...)
}

// kernelTooOld says in one line what the kernel lacks:
//
//	kernel 5.10.0 lacks bpf_loop (needs 5.17), ring buffers (needs 5.8): xdpfw needs Linux 6.1 or later
func kernelTooOld(release string, missing []kernelFeature) error {
	parts := make([]string, len(missing))
	for i, f := range missing {
		parts[i] = fmt.Sprintf("%s (needs %s)", f.name, f.since)
	}
	return loadError{fmt.Errorf("kernel %s lacks %s: xdpfw needs Linux %s or later: %w",
		release, strings.Join(parts, ", "), MinKernel, ErrKernelTooOld)}
}

// runningKernel is uname -r.
func runningKernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "(unknown release)"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// conclusive caches a probe's result once it is conclusive (nil or
// ErrNotSupported); a probe that failed runs again next time.
func conclusive(probe func() error) func() error {
	var mu sync.Mutex
	var done bool
	var result error
	return func() error {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return result
		}
		err := probe()
		if err == nil || errors.Is(err, ebpf.ErrNotSupported) {
			done, result = true, err
		}
		return err
	}
}

// haveCmpXchg loads an XDP program with a BPF_ATOMIC compare-and-exchange on
// the stack (the rate limiter's __sync_val_compare_and_swap); kernels
// before 5.12 do not know the instruction.
var haveCmpXchg = conclusive(func() error {
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R1, 0),
			asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 0),
			asm.Mov.Imm(asm.R2, 1),
			asm.CmpXchg.Mem(asm.RFP, asm.R2, asm.DWord, -8),
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
	}, ebpf.ProgramOptions{LogDisabled: true})
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("BPF_ATOMIC cmpxchg: %w", ebpf.ErrNotSupported)
	}
	if err != nil {
		return err
	}
	return prog.Close()
})

// haveXDPLink attaches an XDP_PASS program with a bpf_link to the loopback
// interface of a network namespace of its own, made for the probe on a
// thread that ends with it: the host's interfaces are never touched. A
// kernel without XDP links (before 5.9) refuses the link with EINVAL.
var haveXDPLink = conclusive(func() error {
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	}, ebpf.ProgramOptions{LogDisabled: true})
	if err != nil {
		return fmt.Errorf("load an XDP program: %w", err)
	}
	defer prog.Close()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, and the namespace with it, ends
		// when this goroutine does.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("create a network namespace: %w", err)
			return
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: 1, Flags: link.XDPGenericMode})
		if err != nil {
			if errors.Is(err, unix.EINVAL) {
				err = fmt.Errorf("%w (%w)", ebpf.ErrNotSupported, err)
			}
			errc <- fmt.Errorf("attach with a bpf_link: %w", err)
			return
		}
		errc <- l.Close()
	}()
	return <-errc
})
