package bpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultPinPath is where a firewall's objects live, one directory per
// interface.
const DefaultPinPath = "/sys/fs/bpf/xdpfw"

// linkPin is the file name of the pinned bpf_link in an interface's
// directory; the maps are pinned beside it under their own names.
const linkPin = "link"

// Sentinel errors callers branch on.
var (
	ErrNoBPFFS       = errors.New("no BPF filesystem")
	ErrNoInterface   = errors.New("no such interface")
	ErrNotPinned     = errors.New("no xdpfw firewall pinned")
	ErrIncompatible  = errors.New("pinned maps are incompatible with this version")
	ErrNotPermitted  = errors.New("not permitted")
	ErrForeignXDP    = errors.New("interface already has an XDP program that xdpfw did not attach")
	ErrNoGeneration  = errors.New("no rule set applied yet")
	errBadGeneration = errors.New("bad generation")
)

// AttachMode selects how the XDP program is attached.
type AttachMode string

const (
	// ModeAuto tries native (driver) mode and falls back to generic.
	ModeAuto AttachMode = "auto"
	// ModeNative attaches in the driver, before any allocation.
	ModeNative AttachMode = "native"
	// ModeGeneric attaches after the kernel builds the skb; works everywhere.
	ModeGeneric AttachMode = "generic"
)

// ParseAttachMode checks an attach mode given by a user.
func ParseAttachMode(s string) (AttachMode, error) {
	switch m := AttachMode(s); m {
	case ModeAuto, ModeNative, ModeGeneric:
		return m, nil
	case "":
		return ModeAuto, nil
	}
	return "", fmt.Errorf("attach mode %q: want auto, native or generic", s)
}

// Options says which firewall to open.
type Options struct {
	// PinPath is the bpffs directory holding one directory per interface.
	PinPath string
	// Interface is the network interface the firewall filters.
	Interface string
	// SourceBuckets sizes the LRU map of per-source rate-limit buckets
	// when Open creates it (0: DefaultSourceBuckets). A pinned map keeps
	// the size it was created with; see Firewall.SourceBuckets.
	SourceBuckets int
	// SourceSketchLines sizes the sketch every per-source limited packet
	// is counted in (64 bytes a line) when Open creates it (0:
	// DefaultSourceSketchLines). A pinned sketch keeps its size; see
	// ratelimit.go.
	SourceSketchLines int

	// testClock loads the program with its test clock (fw_clock_ns in
	// place of the kernel's), for the rate limiter's tests.
	testClock bool
	// noSampling loads the program with drop sampling compiled out, for
	// the benchmark's baseline.
	noSampling bool
	// patchSpec, when set, changes the loaded spec before the load (tests:
	// a program the verifier refuses).
	patchSpec func(*ebpf.CollectionSpec)
}

// DefaultSourceBuckets is the default number of per-source rate-limit
// buckets of an interface: about 6 MB of kernel memory.
const DefaultSourceBuckets = int(firewallFwLimitsFW_DEFAULT_SOURCE_BUCKETS)

// MaxSourceBuckets bounds Options.SourceBuckets (about 6 GB of kernel
// memory).
const MaxSourceBuckets = 1 << 26

func (o Options) dir() string {
	p := o.PinPath
	if p == "" {
		p = DefaultPinPath
	}
	return filepath.Join(p, o.Interface)
}

// Firewall is the data plane of one interface: its program and pinned maps.
// Open it with Open (to change it) or OpenPinned (to read it).
type Firewall struct {
	iface string
	dir   string
	spec  *ebpf.CollectionSpec
	objs  firewallObjects
	lock  *os.File
	// cache holds what each generation contains, as last written by this
	// process, so an apply reads the maps back only when another process
	// wrote them since (gen_info.seq tells).
	cache [2]*genState
	// slotNames mirrors rule_names (counter slot -> rule identity).
	slotNames map[uint32]string
	// mapped keeps the memory mappings of the inner maps applies write
	// (see memoryOf).
	mapped map[innerSlot]mappedInner
	// directScratch is where writeRange4 reads a direct table to compare.
	directScratch []uint32
	// settling, when set, receives the result of the last flip's
	// gen_sel update once the kernel has waited out its RCU grace period;
	// until then programs may still run on the generation it replaced,
	// which must not be written (see Enforce and settle). removed are
	// the counter slots of the rules that flip dropped, released then.
	settling chan error
	removed  *slotPlan
}

// Open loads the firewall of an interface, creating and pinning its maps or
// adopting the pinned ones, and takes the interface's writer lock (released
// by Close). Maps pinned by a version with another layout are migrated (see
// migrate): filtering goes on. It does not attach; see Attach.
func Open(opts Options) (*Firewall, error) {
	if err := checkInterface(opts.Interface); err != nil {
		return nil, err
	}
	if err := CheckKernel(); err != nil {
		return nil, err
	}
	if err := checkBPFFS(opts.PinPath); err != nil {
		return nil, err
	}
	dir := opts.dir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory %s: %w", dir, wrapPerm(err))
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	fw, err := load(opts, dir)
	if errors.Is(err, ErrIncompatible) {
		// Pinned by an older version: take it over without a gap.
		fw, err = migrate(opts, dir)
	}
	if err != nil {
		lock.Close()
		return nil, err
	}
	fw.lock = lock
	return fw, nil
}

func load(opts Options, dir string) (*Firewall, error) {
	iface := opts.Interface
	spec, err := loadFirewall()
	if err != nil {
		return nil, fmt.Errorf("load embedded BPF object: %w", err)
	}
	if opts.SourceBuckets < 0 || opts.SourceBuckets > MaxSourceBuckets {
		return nil, fmt.Errorf("source buckets %d: out of range 0..%d", opts.SourceBuckets, MaxSourceBuckets)
	}
	if opts.SourceBuckets > 0 {
		spec.Maps["rl_source"].MaxEntries = uint32(opts.SourceBuckets)
	}
	// A pinned bucket map is adopted at whatever size it has: resizing
	// would drop every bucket, and the running program uses that map.
	if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "rl_source"), &ebpf.LoadPinOptions{ReadOnly: true}); err == nil {
		spec.Maps["rl_source"].MaxEntries = m.MaxEntries()
		m.Close()
	}
	newSeed, err := prepareSketch(spec, opts.SourceSketchLines, dir)
	if err != nil {
		return nil, err
	}
	if opts.testClock {
		if err := spec.Variables["fw_test_clock"].Set(uint32(1)); err != nil {
			return nil, fmt.Errorf("set test clock: %w", err)
		}
	}
	if opts.noSampling {
		if err := spec.Variables["fw_no_sampling"].Set(uint32(1)); err != nil {
			return nil, fmt.Errorf("compile sampling out: %w", err)
		}
	}
	if opts.patchSpec != nil {
		opts.patchSpec(spec)
	}
	if err := checkPinnedLayout(spec, dir); err != nil {
		return nil, err
	}
	fw := &Firewall{iface: iface, dir: dir, spec: spec}
	err = spec.LoadAndAssign(&fw.objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: dir},
		// The statistics level costs a successful load nothing measurable
		// and gives a refused one its "processed N insns" line in one
		// attempt (with no level, the library loads the program again with
		// a full instruction trace, which for a program near the
		// complexity limit is hundreds of MB verified a second time).
		Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
	})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("use pinned maps in %s: %w (%w): detach with `xdpfwctl local detach --iface %s` and apply again", dir, ErrIncompatible, err, iface)
	}
	if err != nil {
		err = wrapPerm(explainVerifierError(err))
		if !errors.Is(err, ErrNotPermitted) {
			err = loadError{err}
		}
		return nil, fmt.Errorf("load XDP program and maps for %s: %w", iface, err)
	}
	if err := fw.storeSketchSeed(newSeed); err != nil {
		fw.Close()
		return nil, err
	}
	return fw, nil
}

// checkPinnedLayout refuses, as ErrIncompatible (so Open migrates), a pin
// directory written by a version with other maps: one that holds a firewall
// (gen_sel) but lacks a pinned map of this version. Loading there would run
// this program on the old generation's field bits with new, empty tables
// until the next apply (a big-set table changed layout, for one).
func checkPinnedLayout(spec *ebpf.CollectionSpec, dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "gen_sel")); err != nil {
		return nil // nothing pinned yet (or a fresh staging directory)
	}
	for name, m := range spec.Maps {
		if m.Pinning != ebpf.PinByName {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, name)); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pinned maps in %s lack %s (an older layout): %w", dir, name, ErrIncompatible)
		}
	}
	return nil
}

// ErrLoad is the error (errors.Is) of a data plane that did not load in
// the kernel: the verifier refused the program (ErrVerifierRefused), the
// kernel lacks a feature (ErrKernelTooOld), or it refused a map. It is not
// the error of a usage problem (no interface, no bpffs, no privileges):
// those are fixed by the operator, not by another attempt or kernel.
var ErrLoad = errors.New("the XDP program and its maps did not load")

// loadError marks an error as ErrLoad without changing its message.
type loadError struct{ err error }

func (e loadError) Error() string        { return e.err.Error() }
func (e loadError) Unwrap() error        { return e.err }
func (e loadError) Is(target error) bool { return target == ErrLoad }

// OpenPinned opens the pinned firewall of an interface for reading
// (counters, state) without loading a program or taking the writer lock.
func OpenPinned(opts Options) (*Firewall, error) {
	if err := checkBPFFS(opts.PinPath); err != nil {
		return nil, err
	}
	dir := opts.dir()
	if _, err := os.Stat(filepath.Join(dir, "gen_sel")); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w in %s (apply a rule set first)", opts.Interface, ErrNotPinned, dir)
		}
		return nil, fmt.Errorf("open %s: %w", dir, wrapPerm(err))
	}
	spec, err := loadFirewall()
	if err != nil {
		return nil, fmt.Errorf("load embedded BPF object: %w", err)
	}
	fw := &Firewall{iface: opts.Interface, dir: dir, spec: spec}
	maps := map[string]**ebpf.Map{
		"src4": &fw.objs.Src4, "dst4": &fw.objs.Dst4, "src6": &fw.objs.Src6, "dst6": &fw.objs.Dst6,
		"sport": &fw.objs.Sport, "dport": &fw.objs.Dport, "proto": &fw.objs.Proto,
		"tcpflags": &fw.objs.Tcpflags, "icmptype": &fw.objs.Icmptype, "bitvecs": &fw.objs.Bitvecs,
		"rules": &fw.objs.Rules, "gen_info": &fw.objs.GenInfo, "gen_sel": &fw.objs.GenSel,
		"settings": &fw.objs.Settings, "rule_stats": &fw.objs.RuleStats,
		"action_stats": &fw.objs.ActionStats, "rule_names": &fw.objs.RuleNames, "docs": &fw.objs.Docs,
		"rule_limited": &fw.objs.RuleLimited, "rl_rule": &fw.objs.RlRule, "rl_source": &fw.objs.RlSource,
		"sampling": &fw.objs.Sampling, "sample_reader": &fw.objs.SampleReader,
		"sample_win": &fw.objs.SampleWin, "sample_stats": &fw.objs.SampleStats, "samples": &fw.objs.Samples,
	}
	for name, dst := range maps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			fw.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", filepath.Join(dir, name), wrapPerm(err))
		}
		*dst = m
	}
	return fw, nil
}

// LinkPinned reports whether an interface has a pinned xdpfw link: a
// program xdpfw attached filters it, whether or not this build's program
// can be loaded.
func LinkPinned(opts Options) bool {
	_, err := os.Stat(filepath.Join(opts.dir(), linkPin))
	return err == nil
}

// SourceBuckets is the size of the per-source rate-limit bucket map.
func (fw *Firewall) SourceBuckets() int { return int(fw.objs.RlSource.MaxEntries()) }

// Interface is the interface this firewall filters.
func (fw *Firewall) Interface() string { return fw.iface }

// PinDir is the bpffs directory of this firewall's objects.
func (fw *Firewall) PinDir() string { return fw.dir }

// Program is the XDP program loaded by Open (nil after OpenPinned).
func (fw *Firewall) Program() *ebpf.Program { return fw.objs.XdpfwFilter }

// Close releases this process's handles; the pinned objects stay, and so
// does the attached program: filtering goes on.
func (fw *Firewall) Close() error {
	// Another writer may take the lock next: it must find the standby
	// generation free of programs and the removed rules' slots released.
	serr := fw.Settle()
	fw.mapped = nil // unmapped when collected
	err := errors.Join(serr, fw.objs.Close())
	if fw.lock != nil {
		fw.lock.Close()
	}
	return err
}

// Attach attaches the program to the interface and pins the link, unless a
// pinned link exists: then it adopts that link and, if the running program
// differs from this build's, replaces it atomically with link.Update. It
// never detaches, so filtering does not stop. It returns the mode in use.
func (fw *Firewall) Attach(mode AttachMode) (AttachMode, error) {
	if fw.objs.XdpfwFilter == nil {
		return "", fmt.Errorf("attach %s: firewall opened read-only", fw.iface)
	}
	pin := filepath.Join(fw.dir, linkPin)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		cur := currentMode(fw.iface)
		if mode != ModeAuto && mode != "" && cur != "" && mode != cur {
			return "", fmt.Errorf("%s is attached in %s mode: changing the mode means detaching (`xdpfwctl local detach --iface %s`), which stops filtering until the next apply", fw.iface, cur, fw.iface)
		}
		if err := fw.updateProgram(l); err != nil {
			return "", err
		}
		return cur, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("load pinned link %s: %w", pin, wrapPerm(err))
	}

	ifc, err := net.InterfaceByName(fw.iface)
	if err != nil {
		return "", fmt.Errorf("%w: %s", ErrNoInterface, fw.iface)
	}
	try := []AttachMode{mode}
	if mode == ModeAuto || mode == "" {
		try = []AttachMode{ModeNative, ModeGeneric}
	}
	var errs []error
	for _, m := range try {
		flags := link.XDPDriverMode
		if m == ModeGeneric {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: fw.objs.XdpfwFilter, Interface: ifc.Index, Flags: flags})
		if err != nil {
			if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
				return "", fmt.Errorf("attach to %s: %w (%w)", fw.iface, ErrForeignXDP, err)
			}
			errs = append(errs, fmt.Errorf("%s mode: %w", m, err))
			continue
		}
		defer l.Close()
		if err := l.Pin(pin); err != nil {
			return "", fmt.Errorf("pin link at %s: %w", pin, err)
		}
		return m, nil
	}
	return "", fmt.Errorf("attach XDP program to %s: %w", fw.iface, wrapPerm(errors.Join(errs...)))
}

// updateProgram replaces the program behind a pinned link when this build's
// program differs (by tag) from the running one.
func (fw *Firewall) updateProgram(l link.Link) error {
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("pinned link of %s: %w", fw.iface, err)
	}
	running, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return fmt.Errorf("program %d of %s: %w", info.Program, fw.iface, err)
	}
	defer running.Close()
	ri, err := running.Info()
	if err != nil {
		return fmt.Errorf("program %d info: %w", info.Program, err)
	}
	oi, err := fw.objs.XdpfwFilter.Info()
	if err != nil {
		return fmt.Errorf("program info: %w", err)
	}
	if ri.Tag == oi.Tag {
		return nil
	}
	if err := l.Update(fw.objs.XdpfwFilter); err != nil {
		return fmt.Errorf("replace program on %s: %w", fw.iface, err)
	}
	return nil
}

// Detach removes the firewall from an interface: the link (which detaches
// the program) and every pinned map. Filtering stops.
func Detach(opts Options) error {
	if err := checkBPFFS(opts.PinPath); err != nil {
		return err
	}
	dir := opts.dir()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: %w in %s", opts.Interface, ErrNotPinned, dir)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, wrapPerm(err))
	}
	lock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer lock.Close()
	pin := filepath.Join(dir, linkPin)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		uerr := l.Unpin()
		l.Close()
		if uerr != nil {
			return fmt.Errorf("unpin link %s: %w", pin, uerr)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("load pinned link %s: %w", pin, wrapPerm(err))
	}
	for _, e := range entries {
		if e.Name() == linkPin {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unpin %s: %w", filepath.Join(dir, e.Name()), err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// currentMode reads how XDP is attached to an interface, from netlink.
func currentMode(iface string) AttachMode {
	l, err := netlink.LinkByName(iface)
	if err != nil || l.Attrs().Xdp == nil {
		return ""
	}
	switch l.Attrs().Xdp.AttachMode {
	case 1: // XDP_ATTACHED_DRV
		return ModeNative
	case 2: // XDP_ATTACHED_SKB
		return ModeGeneric
	}
	return ""
}

func checkInterface(name string) error {
	if name == "" {
		return fmt.Errorf("%w: no interface given", ErrNoInterface)
	}
	if _, err := net.InterfaceByName(name); err != nil {
		return fmt.Errorf("%w: %s", ErrNoInterface, name)
	}
	return nil
}

// checkBPFFS makes sure the pin path lies on a BPF filesystem.
func checkBPFFS(pinPath string) error {
	if pinPath == "" {
		pinPath = DefaultPinPath
	}
	// The pin path itself may not exist yet: check the nearest ancestor.
	p := pinPath
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("%w at %s: mount one with `mount -t bpf bpf /sys/fs/bpf`", ErrNoBPFFS, pinPath)
			}
			return nil
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" {
			return fmt.Errorf("check %s: %w", pinPath, wrapPerm(err))
		}
		p = filepath.Dir(p)
	}
}

// LockTimeout is how long Open and Detach wait for another writer.
var LockTimeout = 10 * time.Second

// ErrLocked means another process holds an interface's writer lock.
var ErrLocked = errors.New("another xdpfw process is changing this firewall")

// lockDir takes the writer lock of an interface directory: one writer at a
// time, so two applies cannot interleave their generations. It waits up to
// LockTimeout for the holder (an agent mid-apply, say) rather than forever.
func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, wrapPerm(err))
	}
	deadline := time.Now().Add(LockTimeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("lock %s: %w (waited %v; is an agent running?)", dir, ErrLocked, LockTimeout)
			}
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wrapPerm adds what to do to a permission error.
func wrapPerm(err error) error {
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return err // the verifier said no: not a permission problem
	}
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: %w (run as root: xdpfw needs CAP_BPF, CAP_NET_ADMIN and write access to the pin path)", ErrNotPermitted, err)
	}
	return err
}
