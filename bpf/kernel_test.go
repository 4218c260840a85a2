package bpf

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestKernelHasEveryFeature runs every probe on the running kernel: the
// ones CI runs on (6.1 and later) have them all.
func TestKernelHasEveryFeature(t *testing.T) {
	for _, f := range requiredFeatures {
		if err := f.probe(); err != nil {
			t.Errorf("kernel %s: %s (since %s): %v", runningKernel(), f.name, f.since, err)
		}
	}
	if err := CheckKernel(); err != nil {
		t.Fatalf("CheckKernel on %s: %v", runningKernel(), err)
	}
}

// TestKernelTooOldSaysWhatIsMissing checks the one line an operator reads
// on an old kernel: every missing feature with the release that has it,
// and the minimum.
func TestKernelTooOldSaysWhatIsMissing(t *testing.T) {
	missing := func() error { return fmt.Errorf("probe: %w", ebpf.ErrNotSupported) }
	have := func() error { return nil }
	feats := []kernelFeature{
		{"LPM tries", "4.11", have},
		{"ring buffers", "5.8", missing},
		{"bpf_loop", "5.17", missing},
	}
	err := checkKernel("5.10.0-28-amd64", feats)
	if !errors.Is(err, ErrKernelTooOld) {
		t.Fatalf("error %v: want ErrKernelTooOld", err)
	}
	want := "kernel 5.10.0-28-amd64 lacks ring buffers (needs 5.8), bpf_loop (needs 5.17): xdpfw needs Linux 6.1 or later: kernel too old"
	if err.Error() != want {
		t.Errorf("error says\n%q\nwant\n%q", err.Error(), want)
	}

	// A probe that fails for another reason is not a missing feature.
	feats[0].probe = func() error { return fmt.Errorf("create map: %w", unix.ENOMEM) }
	feats[1].probe, feats[2].probe = have, have
	err = checkKernel("6.1.0", feats)
	if err == nil || errors.Is(err, ErrKernelTooOld) || !errors.Is(err, unix.ENOMEM) {
		t.Fatalf("error %v: want the probe's ENOMEM, not ErrKernelTooOld", err)
	}

	if err := checkKernel("6.18.0", feats[1:]); err != nil {
		t.Fatalf("every feature there: %v", err)
	}
}

// TestConclusiveProbesAreCached checks that a probe runs again until it
// gives a conclusive answer, then never again.
func TestConclusiveProbesAreCached(t *testing.T) {
	runs := 0
	answers := []error{unix.EAGAIN, ebpf.ErrNotSupported, nil}
	p := conclusive(func() error { runs++; return answers[min(runs-1, len(answers)-1)] })
	if err := p(); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("first run: %v", err)
	}
	for range 3 {
		if err := p(); !errors.Is(err, ebpf.ErrNotSupported) {
			t.Fatalf("later runs: %v, want the cached ErrNotSupported", err)
		}
	}
	if runs != 2 {
		t.Fatalf("probe ran %d times, want 2", runs)
	}
}
