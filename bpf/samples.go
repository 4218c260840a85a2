package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// SamplingConfig is an interface's drop sampling (the sampling map).
type SamplingConfig struct {
	// Every samples one drop in Every (0 or 1: every drop).
	Every uint32 `json:"every"`
	// MaxPerSecond caps the samples sent per second (0: the default,
	// DefaultSamplesPerSecond).
	MaxPerSecond uint32 `json:"maxPerSecond"`
	// WouldDrop samples dry-run sets' would-drops too.
	WouldDrop bool `json:"wouldDrop,omitempty"`
	// Off sends no samples, even to a reader.
	Off bool `json:"off,omitempty"`
}

// DefaultSamplesPerSecond is an interface's sample cap when none is set.
const DefaultSamplesPerSecond = int(firewallFwLimitsFW_SAMPLE_DEFAULT_RATE)

// SampleBytes is how much of a dropped frame a sample holds.
const SampleBytes = int(firewallFwLimitsFW_SAMPLE_BYTES)

// SamplingStatus is the sampling configuration and what it did.
type SamplingStatus struct {
	SamplingConfig
	// Frames is what went to the frame samples' reader (xdpfwctl local
	// drops), Sources what went to the dropped-source counts' reader (the
	// agent).
	Frames  SampleCounts `json:"frames"`
	Sources SampleCounts `json:"sources"`
}

// SampleCounts are one consumer's sample counters and reader.
type SampleCounts struct {
	// Sent, Capped and Lost count samples written to the ring buffer,
	// skipped over the per-second cap, and lost to a full ring buffer.
	Sent   uint64 `json:"sent"`
	Capped uint64 `json:"capped"`
	Lost   uint64 `json:"lost"`
	// ReaderPID is the process reading now, 0 when none.
	ReaderPID int `json:"readerPid,omitempty"`
}

// SetSampling configures the interface's drop sampling. It takes effect at
// once, for the reader there is and the ones to come.
func (fw *Firewall) SetSampling(cfg SamplingConfig) error {
	v := firewallFwSampling{Every: cfg.Every, MaxPerSec: cfg.MaxPerSecond}
	if cfg.WouldDrop {
		v.Flags |= uint32(firewallFwSamplingFlagFW_SAMPLING_WOULD_DROP)
	}
	if cfg.Off {
		v.Flags |= uint32(firewallFwSamplingFlagFW_SAMPLING_OFF)
	}
	if err := fw.objs.Sampling.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("write sampling of %s: %w", fw.iface, err)
	}
	return nil
}

// Sampling reads the interface's drop sampling and its counters.
func (fw *Firewall) Sampling() (*SamplingStatus, error) {
	var v firewallFwSampling
	if err := fw.objs.Sampling.Lookup(uint32(0), &v); err != nil {
		return nil, fmt.Errorf("read sampling of %s: %w", fw.iface, err)
	}
	st := &SamplingStatus{SamplingConfig: SamplingConfig{
		Every: v.Every, MaxPerSecond: v.MaxPerSec,
		WouldDrop: v.Flags&uint32(firewallFwSamplingFlagFW_SAMPLING_WOULD_DROP) != 0,
		Off:       v.Flags&uint32(firewallFwSamplingFlagFW_SAMPLING_OFF) != 0,
	}}
	for consumer, counts := range map[uint32]*SampleCounts{
		uint32(firewallFwSampleConsumerFW_CONSUMER_FRAMES): &st.Frames, uint32(firewallFwSampleConsumerFW_CONSUMER_SOURCES): &st.Sources,
	} {
		for stat, dst := range map[firewallFwSampleStat]*uint64{
			firewallFwSampleStatFW_SAMPLE_SENT: &counts.Sent, firewallFwSampleStatFW_SAMPLE_CAPPED: &counts.Capped,
			firewallFwSampleStatFW_SAMPLE_LOST: &counts.Lost,
		} {
			key := consumer*uint32(firewallFwSampleStatFW_SAMPLE_STAT_MAX) + uint32(stat)
			var per []uint64
			if err := fw.objs.SampleStats.Lookup(key, &per); err != nil {
				return nil, fmt.Errorf("read sample_stats[%d]: %w", key, err)
			}
			for _, n := range per {
				*dst += n
			}
		}
		var rd firewallFwSampleReader
		if err := fw.objs.SampleReader.Lookup(consumer, &rd); err != nil {
			return nil, fmt.Errorf("read sample_reader[%d]: %w", consumer, err)
		}
		if rd.UntilNs > monotonicNow() {
			counts.ReaderPID = int(rd.Pid)
		}
	}
	return st, nil
}

// ErrSamplesBusy means another process reads the interface's samples (a
// ring buffer has one reader: two would each get a part).
var ErrSamplesBusy = errors.New("another process is reading drop samples")

// ErrNoRule means a rule named in a filter is not in the applied rule sets.
var ErrNoRule = errors.New("no such rule in the applied rule sets")

// Sample is one sampled drop.
type Sample struct {
	Time    time.Time `json:"time"`
	Ifindex int       `json:"ifindex"`
	// Rule is the deciding rule ("ruleset/rule-id"); empty for a frame
	// dropped by the parse-error or non-IP policy.
	Rule string `json:"rule,omitempty"`
	// Reason is the action counter of the drop: drop-rule, rate-limited,
	// parse-error or non-ip (for a would-drop: what it would have been).
	Reason string `json:"reason"`
	// WouldDrop marks a dry-run set's would-drop: the frame passed.
	WouldDrop bool `json:"wouldDrop,omitempty"`
	// FrameLen is the frame's length; Data holds its first bytes.
	FrameLen int    `json:"frameLen"`
	Data     []byte `json:"-"`
}

// DropReader streams an interface's frame samples. While it is open the
// program sends them (sampling costs nothing otherwise); Close stops it.
type DropReader struct{ sampleReader }

// SourceSample is one sampled drop as the dropped-source counts see it.
type SourceSample struct {
	Time time.Time
	// Rule and Reason are as in Sample.
	Rule      string
	Reason    string
	WouldDrop bool
	// Src is the source address; invalid for a frame the parser could
	// not read as IP.
	Src netip.Addr
}

// SourceReader streams the rule and source of sampled drops, for counting
// the top dropped sources (the agent reads it; it does not compete with a
// DropReader).
type SourceReader struct{ sampleReader }

// sampleReader reads one consumer's ring buffer and holds its lease.
type sampleReader struct {
	fw       *Firewall
	consumer uint32
	ring     *ringbuf.Reader
	only     uint32 // slot + 1 of the one rule sampled, 0 for all
	names    map[uint32]string
	// toWall turns the kernel's CLOCK_MONOTONIC into wall-clock time.
	toWall time.Duration

	deadline  atomic.Pointer[time.Time]
	stop      chan struct{}
	done      chan struct{}
	mu        sync.Mutex // serialises sample_reader writes (lease and Close)
	closeOnce sync.Once
	closeErr  error
}

// readerLease is how long a reader's claim lasts without renewal: a reader
// killed without Close stops the samples within it.
const readerLease = 3 * time.Second

// ReadDrops starts reading the interface's frame samples, of every rule or
// only of rule (a "ruleset/rule-id" identity, or a rule id that names one
// rule). It works on a firewall opened with OpenPinned: no daemon needed.
func (fw *Firewall) ReadDrops(rule string) (*DropReader, error) {
	r := &DropReader{}
	if err := r.open(fw, uint32(firewallFwSampleConsumerFW_CONSUMER_FRAMES), fw.objs.Samples, rule); err != nil {
		return nil, err
	}
	return r, nil
}

// ReadDropSources starts reading the rule and source of sampled drops.
func (fw *Firewall) ReadDropSources() (*SourceReader, error) {
	r := &SourceReader{}
	if err := r.open(fw, uint32(firewallFwSampleConsumerFW_CONSUMER_SOURCES), fw.objs.SrcSamples, ""); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *sampleReader) open(fw *Firewall, consumer uint32, ringMap *ebpf.Map, rule string) error {
	r.fw, r.consumer, r.names = fw, consumer, map[uint32]string{}
	r.stop, r.done = make(chan struct{}), make(chan struct{})
	if err := r.readNames(); err != nil {
		return err
	}
	if rule != "" {
		slot, err := r.findRule(rule)
		if err != nil {
			return err
		}
		r.only = slot + 1
	}
	var cur firewallFwSampleReader
	if err := fw.objs.SampleReader.Lookup(consumer, &cur); err != nil {
		return fmt.Errorf("read sample_reader of %s: %w", fw.iface, err)
	}
	if cur.UntilNs > monotonicNow() && int(cur.Pid) != os.Getpid() && processAlive(int(cur.Pid)) {
		return fmt.Errorf("%s: %w (pid %d)", fw.iface, ErrSamplesBusy, cur.Pid)
	}
	ring, err := ringbuf.NewReader(ringMap)
	if err != nil {
		return fmt.Errorf("open ring buffer %s of %s: %w", ringMap, fw.iface, wrapPerm(err))
	}
	r.ring = ring
	// Samples a reader before us left unread are not ours to show.
	ring.SetDeadline(time.Now())
	for {
		if _, err := ring.Read(); err != nil {
			break
		}
	}
	r.toWall = time.Duration(time.Now().UnixNano()) - time.Duration(monotonicNow())
	if err := r.renew(); err != nil {
		ring.Close()
		return err
	}
	go r.keepLease()
	return nil
}

func (r *sampleReader) readNames() error {
	names := make([]firewallFwRuleName, counterSlots)
	if err := readArray(r.fw.objs.RuleNames, 0, names); err != nil {
		return fmt.Errorf("read rule_names of %s: %w", r.fw.iface, err)
	}
	for i := range names {
		if n := cString(names[i].Name[:]); n != "" {
			r.names[uint32(i)] = n
		}
	}
	return nil
}

func (r *sampleReader) findRule(rule string) (uint32, error) {
	var matches []uint32
	for slot, name := range r.names {
		_, id, _ := strings.Cut(name, "/")
		if name == rule {
			return slot, nil
		}
		if id == rule {
			matches = append(matches, slot)
		}
	}
	switch len(matches) {
	case 0:
		return 0, fmt.Errorf("rule %q on %s: %w", rule, r.fw.iface, ErrNoRule)
	case 1:
		return matches[0], nil
	}
	var names []string
	for _, s := range matches {
		names = append(names, r.names[s])
	}
	return 0, fmt.Errorf("rule %q on %s names %d rules (%s): give ruleset/rule-id", rule, r.fw.iface, len(matches), strings.Join(names, ", "))
}

func (r *sampleReader) renew() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := firewallFwSampleReader{
		UntilNs: monotonicNow() + uint64(readerLease), Pid: uint32(os.Getpid()), OnlySlot: r.only,
	}
	if err := r.fw.objs.SampleReader.Put(r.consumer, &v); err != nil {
		return fmt.Errorf("claim samples of %s: %w", r.fw.iface, err)
	}
	return nil
}

// keepLease renews the reader's claim every second until Close.
func (r *sampleReader) keepLease() {
	defer close(r.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			// A failed renewal lets the lease run out: samples stop,
			// and Read reports nothing worse than a quiet interface.
			_ = r.renew()
		}
	}
}

// SetDeadline makes Read return os.ErrDeadlineExceeded at t (zero: never).
func (r *sampleReader) SetDeadline(t time.Time) {
	r.deadline.Store(&t)
}

// pollInterval bounds how long a sample waits in the ring buffer: the
// program wakes the reader only when a quarter of the ring is full (a
// wakeup per sample would cost more than the sample), so Read also looks
// this often.
const pollInterval = 100 * time.Millisecond

// next waits for the next record (at most pollInterval after it was sent).
func (r *sampleReader) next() ([]byte, error) {
	for {
		wait := time.Now().Add(pollInterval)
		deadline := r.deadline.Load()
		if deadline != nil && !deadline.IsZero() && deadline.Before(wait) {
			wait = *deadline
		}
		r.ring.SetDeadline(wait)
		rec, err := r.ring.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if deadline != nil && !deadline.IsZero() && !time.Now().Before(*deadline) {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		return rec.RawSample, nil
	}
}

// Read waits for the next sample.
func (r *DropReader) Read() (Sample, error) {
	raw, err := r.next()
	if err != nil {
		return Sample{}, err
	}
	return r.decode(raw)
}

// Read waits for the next sample.
func (r *SourceReader) Read() (SourceSample, error) {
	raw, err := r.next()
	if err != nil {
		return SourceSample{}, err
	}
	if len(raw) < sourceSampleSize {
		return SourceSample{}, fmt.Errorf("source sample of %d bytes: want %d", len(raw), sourceSampleSize)
	}
	le := binary.LittleEndian
	s := SourceSample{
		Time:      time.Unix(0, int64(time.Duration(le.Uint64(raw[0:]))+r.toWall)),
		WouldDrop: raw[13] != 0,
	}
	s.Reason = reasonName(int(raw[12]))
	switch raw[14] {
	case 4:
		s.Src = netip.AddrFrom4([4]byte(raw[16:20]))
	case 6:
		s.Src = netip.AddrFrom16([16]byte(raw[16:32]))
	}
	s.Rule, err = r.ruleName(le.Uint32(raw[8:]))
	return s, err
}

// sampleHeader is the size of struct fw_sample before data, and
// sourceSampleSize the size of struct fw_source_sample.
const (
	sampleHeader     = 24
	sourceSampleSize = 32
)

func (r *DropReader) decode(raw []byte) (Sample, error) {
	if len(raw) < sampleHeader {
		return Sample{}, fmt.Errorf("sample of %d bytes: shorter than its header", len(raw))
	}
	le := binary.LittleEndian
	ktime := le.Uint64(raw[0:])
	s := Sample{
		Time:     time.Unix(0, int64(time.Duration(ktime)+r.toWall)),
		Ifindex:  int(le.Uint32(raw[8:])),
		FrameLen: int(le.Uint32(raw[16:])),
	}
	capLen := int(le.Uint16(raw[20:]))
	if capLen > len(raw)-sampleHeader || capLen > SampleBytes {
		return Sample{}, fmt.Errorf("sample claims %d bytes, holds %d", capLen, len(raw)-sampleHeader)
	}
	s.Data = append([]byte(nil), raw[sampleHeader:sampleHeader+capLen]...)
	s.Reason = reasonName(int(raw[22]))
	s.WouldDrop = raw[23] != 0
	var err error
	s.Rule, err = r.ruleName(le.Uint32(raw[12:]))
	return s, err
}

func reasonName(stat int) string {
	if stat < len(actionNames) {
		return actionNames[stat]
	}
	return fmt.Sprintf("stat-%d", stat)
}

// ruleName is the identity of a counter slot ("" for FW_NO_SLOT).
func (r *sampleReader) ruleName(slot uint32) (string, error) {
	if slot == uint32(firewallFwLimitsFW_NO_SLOT) {
		return "", nil
	}
	name, ok := r.names[slot]
	if !ok {
		// A rule applied after we started: read the names again.
		if err := r.readNames(); err != nil {
			return "", err
		}
		name = r.names[slot]
	}
	return name, nil
}

// Close stops reading: the program stops sending samples. Calling it again
// does nothing.
func (r *sampleReader) Close() error {
	r.closeOnce.Do(func() { r.closeErr = r.close() })
	return r.closeErr
}

func (r *sampleReader) close() error {
	close(r.stop)
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	var err error
	var cur firewallFwSampleReader
	if r.fw.objs.SampleReader.Lookup(r.consumer, &cur) == nil && int(cur.Pid) == os.Getpid() {
		if perr := r.fw.objs.SampleReader.Put(r.consumer, &firewallFwSampleReader{}); perr != nil {
			err = fmt.Errorf("release samples of %s: %w", r.fw.iface, perr)
		}
	}
	if cerr := r.ring.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close samples ring buffer: %w", cerr)
	}
	return err
}

// monotonicNow is CLOCK_MONOTONIC in nanoseconds, the clock of
// bpf_ktime_get_ns.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
