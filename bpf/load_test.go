package bpf

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// TestOpenSaysWhyTheVerifierRefused loads the real object through Open with
// its program replaced by one the kernel's verifier refuses (it reads R5,
// which an XDP program is not given, after four good instructions): the
// error says how far the verifier got and why, in the words
// `xdpfwctl local apply` and the agent's status show, not "permission
// denied".
func TestOpenSaysWhyTheVerifierRefused(t *testing.T) {
	dir := testPinDir(t)
	_, err := Open(Options{PinPath: dir, Interface: "lo", patchSpec: func(spec *ebpf.CollectionSpec) {
		p := spec.Programs["xdpfw_filter"]
		first := p.Instructions[0]
		p.Instructions = asm.Instructions{
			asm.Mov.Imm(asm.R0, 0).WithMetadata(first.Metadata), // keeps the program's symbol and BTF
			asm.Add.Imm(asm.R0, 1),
			asm.Add.Imm(asm.R0, 1),
			asm.Add.Imm(asm.R0, 1),
			asm.Mov.Reg(asm.R0, asm.R5),
			asm.Return(),
		}
	}})
	if err == nil {
		t.Fatal("Open loaded a program that reads an uninitialised register")
	}
	var r *VerifierRefusal
	if !errors.As(err, &r) || !errors.Is(err, ErrVerifierRefused) || !errors.Is(err, ErrLoad) {
		t.Fatalf("error %v (%T): want a *VerifierRefusal, ErrVerifierRefused and ErrLoad", err, err)
	}
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		t.Errorf("error %v: the library's *ebpf.VerifierError is not kept", err)
	}
	if errors.Is(err, ErrNotPermitted) {
		t.Errorf("error %v: a refusal is not a permission problem", err)
	}
	want := "load XDP program and maps for lo: the kernel's verifier refused the program after 5 instructions: R5 !read_ok"
	if err.Error() != want {
		t.Errorf("error says\n%q\nwant\n%q", err.Error(), want)
	}
	if r.Processed != 5 {
		t.Errorf("processed %d instructions, want 5 (the verifier's own count, from its log)", r.Processed)
	}
}

// TestOpenLoadsWithTheVerifierStats checks that Open loads the program with
// the verifier's statistics: what makes a refusal say how far it got.
func TestOpenLoadsWithTheVerifierStats(t *testing.T) {
	fw := openTestFirewall(t)
	log := strings.Split(fw.Program().VerifierLog, "\n")
	n, ok := ProcessedInsns(log)
	if !ok || n == 0 {
		t.Fatalf("the verifier log of a load has no processed-instruction count: %q", fw.Program().VerifierLog)
	}
	t.Logf("processed %d insns", n)
}
