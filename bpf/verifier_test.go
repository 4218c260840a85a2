package bpf

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestVerifierBudget loads the program in each configuration it can be
// loaded in, reads how many instructions the kernel's verifier processed,
// prints it, and fails above VerifierBudget (DESIGN §4). The kernel matrix
// (make kernels) runs it on every supported kernel and reads this line.
func TestVerifierBudget(t *testing.T) {
	configs := []struct {
		name string
		vars map[string]uint32
	}{
		{"production", nil},
		{"test clock", map[string]uint32{"fw_test_clock": 1}},
		{"sampling compiled out", map[string]uint32{"fw_no_sampling": 1}},
	}
	most, mostName := 0, ""
	for _, c := range configs {
		n, err := verifierCost(c.vars)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		t.Logf("%s: processed %d insns", c.name, n)
		if n > most {
			most, mostName = n, c.name
		}
	}
	t.Logf("verifier: processed %d insns (budget %d) on kernel %s [%s]", most, VerifierBudget, kernelRelease(), mostName)
	if most > VerifierBudget {
		t.Errorf("the verifier processed %d instructions (%s), over the budget of %d: split the stage that grew into a global function, or make its loop converge", most, mostName, VerifierBudget)
	}
}

// verifierCost loads the embedded program with its variables set, maps
// unpinned, and returns the processed-instruction count.
func verifierCost(vars map[string]uint32) (int, error) {
	spec, err := loadFirewall()
	if err != nil {
		return 0, err
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return 0, err
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
	})
	if err != nil {
		return 0, explainVerifierError(err)
	}
	defer coll.Close()
	prog := coll.Programs["xdpfw_filter"]
	if prog == nil {
		return 0, errors.New("no program xdpfw_filter in the object")
	}
	n, ok := ProcessedInsns(strings.Split(prog.VerifierLog, "\n"))
	if !ok {
		return 0, errors.New("the verifier's log has no processed-instruction count")
	}
	return n, nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// TestVerifierRefusalSays checks what a refused load says: how far the
// verifier got and its last lines, not "argument list too long".
func TestVerifierRefusalSays(t *testing.T) {
	err := explainVerifierError(&ebpf.VerifierError{
		Cause: unix.E2BIG,
		Log: []string{
			"0: (b7) r0 = 0",
			"BPF program is too large. Processed 1000001 insn",
			"processed 1000001 insns (limit 1000000) max_states_per_insn 93 total_states 41557 peak_states 123472 mark_read 0",
		},
	})
	if !errors.Is(err, ErrVerifierRefused) || !errors.Is(err, unix.E2BIG) {
		t.Fatalf("error %v: want ErrVerifierRefused wrapping E2BIG", err)
	}
	want := "the kernel's verifier refused the program after 1000001 instructions: 0: (b7) r0 = 0 | BPF program is too large. Processed 1000001 insn"
	if err.Error() != want {
		t.Errorf("error says\n%q\nwant\n%q", err.Error(), want)
	}
}
