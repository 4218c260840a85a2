package bpf

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/xdpfw/xdpfw/bpf/internal/packet"
	"github.com/xdpfw/xdpfw/bpf/pcap"
)

const sampleRules = `
apiVersion: xdpfw/v1
kind: RuleSet
name: staged
priority: 1
mode: deny
enforcement: dry-run
rules:
  - id: no-dns
    action: drop
    protocol: udp
    dstPorts: ["53"]
---
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
priority: 2
mode: deny
rules:
  - id: telnet
    action: drop
    protocol: tcp
    dstPorts: ["23"]
  - id: bad-net
    action: drop
    src: [203.0.113.0/24]
`

// readSamples reads what the ring buffer holds now.
func readSamples(t *testing.T, r *DropReader) []Sample {
	t.Helper()
	var out []Sample
	r.SetDeadline(time.Now().Add(100 * time.Millisecond))
	for {
		s, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatalf("read sample: %v", err)
		}
		out = append(out, s)
	}
}

func TestSampleLayout(t *testing.T) {
	if off := unsafe.Offsetof(firewallFwSample{}.Data); off != sampleHeader {
		t.Fatalf("fw_sample.data at %d, decode reads it at %d", off, sampleHeader)
	}
	var s firewallFwSourceSample
	if size, off := unsafe.Sizeof(s), unsafe.Offsetof(s.Src); size != sourceSampleSize || off != 16 ||
		unsafe.Offsetof(s.Slot) != 8 || unsafe.Offsetof(s.Family) != 14 {
		t.Fatalf("fw_source_sample is %d bytes, src at %d: SourceReader reads 32 and 16", size, off)
	}
}

func TestSourceSamplesBesideFrameSamples(t *testing.T) {
	fw := openTestFirewall(t)
	mustApply(t, fw, mustDecode(t, sampleRules))
	bad4 := packet.UDP("203.0.113.9", "198.51.100.1", 5000, 9999).Bytes()
	telnet6 := packet.TCP("2001:db8::7", "2001:db8::1", 40000, 23, 0x02).Bytes()

	src, err := fw.ReadDropSources()
	if err != nil {
		t.Fatalf("ReadDropSources: %v", err)
	}
	defer src.Close()
	// A frame reader at the same time: each gets every sample.
	frames, err := fw.ReadDrops("")
	if err != nil {
		t.Fatalf("ReadDrops beside a source reader: %v", err)
	}
	defer frames.Close()
	run(t, fw, bad4)
	run(t, fw, telnet6)

	src.SetDeadline(time.Now().Add(300 * time.Millisecond))
	var got []SourceSample
	for {
		s, err := src.Read()
		if err != nil {
			break
		}
		got = append(got, s)
	}
	if len(got) != 2 || got[0].Rule != "edge/bad-net" || got[0].Src != netip.MustParseAddr("203.0.113.9") ||
		got[0].Reason != "drop-rule" || got[1].Rule != "edge/telnet" || got[1].Src != netip.MustParseAddr("2001:db8::7") {
		t.Fatalf("source samples: %+v", got)
	}
	if n := len(readSamples(t, frames)); n != 2 {
		t.Fatalf("frame samples beside source samples: %d, want 2", n)
	}
	st, err := fw.Sampling()
	if err != nil {
		t.Fatal(err)
	}
	if st.Sources.Sent != 2 || st.Frames.Sent != 2 || st.Sources.ReaderPID != os.Getpid() {
		t.Fatalf("sampling status %+v", st)
	}
}

func TestDropSamplesCarryRuleAndFrame(t *testing.T) {
	fw := openTestFirewall(t)
	mustApply(t, fw, mustDecode(t, sampleRules))
	telnet := packet.TCP("192.0.2.1", "198.51.100.1", 40000, 23, 0x02)
	telnet.Payload = make([]byte, 300) // longer than a sample
	bad := packet.UDP("203.0.113.9", "198.51.100.1", 5000, 9999).Bytes()
	dns := packet.UDP("192.0.2.1", "198.51.100.1", 5000, 53).Bytes()

	// No reader: drops send nothing.
	run(t, fw, telnet.Bytes())
	if st, err := fw.Sampling(); err != nil || st.Frames.Sent != 0 || st.Frames.ReaderPID != 0 {
		t.Fatalf("with no reader: sampling %+v, %v; want nothing sent", st, err)
	}

	r, err := fw.ReadDrops("")
	if err != nil {
		t.Fatalf("ReadDrops: %v", err)
	}
	defer r.Close()
	if st, _ := fw.Sampling(); st.Frames.ReaderPID != os.Getpid() {
		t.Fatalf("reader pid = %d, want ours", st.Frames.ReaderPID)
	}
	start := time.Now()
	if v := run(t, fw, telnet.Bytes()); v != xdpDrop {
		t.Fatalf("telnet verdict %d, want drop", v)
	}
	run(t, fw, bad)
	run(t, fw, dns) // a would-drop: not sampled unless asked for
	got := readSamples(t, r)
	if len(got) != 2 {
		t.Fatalf("got %d samples, want 2: %+v", len(got), got)
	}
	s := got[0]
	if s.Rule != "edge/telnet" || s.Reason != "drop-rule" || s.WouldDrop {
		t.Fatalf("sample 0: rule %q reason %q would %v; want edge/telnet drop-rule", s.Rule, s.Reason, s.WouldDrop)
	}
	if s.FrameLen != len(telnet.Bytes()) || len(s.Data) != SampleBytes {
		t.Fatalf("sample 0: frame %d bytes, %d captured; want %d and %d", s.FrameLen, len(s.Data), len(telnet.Bytes()), SampleBytes)
	}
	if d := s.Time.Sub(start); d < -time.Second || d > 5*time.Second {
		t.Fatalf("sample 0 time %v is %v from when it was sent", s.Time, d)
	}
	if sum := pcap.Decode(s.Data).String(); sum != "tcp 192.0.2.1:40000 > 198.51.100.1:23 [SYN] (truncated)" && sum != "tcp 192.0.2.1:40000 > 198.51.100.1:23 [SYN]" {
		t.Fatalf("sample 0 decodes as %q", sum)
	}
	if got[1].Rule != "edge/bad-net" || len(got[1].Data) != len(bad) {
		t.Fatalf("sample 1: %+v, want edge/bad-net with the whole %d-byte frame", got[1], len(bad))
	}

	// Would-drops on request; a rule filter.
	if err := fw.SetSampling(SamplingConfig{WouldDrop: true}); err != nil {
		t.Fatal(err)
	}
	run(t, fw, dns)
	got = readSamples(t, r)
	if len(got) != 1 || got[0].Rule != "staged/no-dns" || !got[0].WouldDrop || got[0].Reason != "drop-rule" {
		t.Fatalf("would-drop samples: %+v", got)
	}
	r.Close()
	if st, _ := fw.Sampling(); st.Frames.ReaderPID != 0 || st.Frames.Sent != 3 {
		t.Fatalf("after Close: %+v, want no reader and 3 sent", st)
	}

	only, err := fw.ReadDrops("bad-net")
	if err != nil {
		t.Fatalf("ReadDrops(bad-net): %v", err)
	}
	defer only.Close()
	run(t, fw, telnet.Bytes())
	run(t, fw, bad)
	if got := readSamples(t, only); len(got) != 1 || got[0].Rule != "edge/bad-net" {
		t.Fatalf("filtered samples: %+v, want one of edge/bad-net", got)
	}
}

func TestDropSamplesCapAndOff(t *testing.T) {
	fw := openTestFirewall(t)
	mustApply(t, fw, mustDecode(t, sampleRules))
	telnet := packet.TCP("192.0.2.1", "198.51.100.1", 40000, 23, 0x02).Bytes()
	if err := fw.SetSampling(SamplingConfig{MaxPerSecond: 5}); err != nil {
		t.Fatal(err)
	}
	r, err := fw.ReadDrops("")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for range 20 {
		run(t, fw, telnet)
	}
	got := readSamples(t, r)
	st, err := fw.Sampling()
	if err != nil {
		t.Fatal(err)
	}
	// 5 a second: 5, or up to 10 if a second began during the 20 runs.
	if len(got) < 5 || len(got) > 10 || st.Frames.Sent != uint64(len(got)) || st.Frames.Sent+st.Frames.Capped != 20 {
		t.Fatalf("20 drops with a cap of 5/s: %d samples, status %+v", len(got), st)
	}

	if err := fw.SetSampling(SamplingConfig{Off: true}); err != nil {
		t.Fatal(err)
	}
	run(t, fw, telnet)
	if got := readSamples(t, r); len(got) != 0 {
		t.Fatalf("sampling off: %d samples", len(got))
	}

	// One in 4: about a quarter.
	if err := fw.SetSampling(SamplingConfig{Every: 4, MaxPerSecond: 100000}); err != nil {
		t.Fatal(err)
	}
	for range 2000 {
		run(t, fw, telnet)
	}
	if n := len(readSamples(t, r)); n < 350 || n > 650 {
		t.Fatalf("1 in 4 of 2000 drops: %d samples, want about 500", n)
	}
}

func TestDropReaderRefusesSecondReaderAndUnknownRule(t *testing.T) {
	fw := openTestFirewall(t)
	mustApply(t, fw, mustDecode(t, sampleRules))
	if _, err := fw.ReadDrops("nope"); !errors.Is(err, ErrNoRule) {
		t.Fatalf("ReadDrops(nope) = %v, want ErrNoRule", err)
	}
	// Another live process (init) holds the lease.
	claim := firewallFwSampleReader{UntilNs: monotonicNow() + uint64(time.Minute), Pid: 1}
	if err := fw.objs.SampleReader.Put(uint32(0), &claim); err != nil {
		t.Fatal(err)
	}
	if _, err := fw.ReadDrops(""); !errors.Is(err, ErrSamplesBusy) {
		t.Fatalf("ReadDrops with another reader = %v, want ErrSamplesBusy", err)
	}
	// An expired lease is taken over.
	claim.UntilNs = monotonicNow() - 1
	if err := fw.objs.SampleReader.Put(uint32(0), &claim); err != nil {
		t.Fatal(err)
	}
	r, err := fw.ReadDrops("")
	if err != nil {
		t.Fatalf("ReadDrops after the lease ran out: %v", err)
	}
	r.Close()
}
