package bpf

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// VerifierBudget is the most instructions the kernel's verifier may process
// to load the program in its most expensive configuration: 15% of the
// kernel's limit of 1,000,000, so a kernel whose verifier explores more
// states than the ones we test on still loads it (DESIGN §4).
const VerifierBudget = 150_000

// ErrVerifierRefused is the error (errors.Is) of a program the kernel's
// verifier did not accept.
var ErrVerifierRefused = errors.New("the kernel's verifier refused the program")

var processedRE = regexp.MustCompile(`^processed (\d+) insns`)

// statsRE matches the other lines of the verifier's statistics (log level
// LogLevelStats), which say nothing about why it refused a program.
var statsRE = regexp.MustCompile(`^(verification time \d+ usec|stack depth [0-9+]+)$`)

// ProcessedInsns reads the verifier's count of processed instructions from
// its log ("processed N insns (limit 1000000) max_states_per_insn ..."),
// which it writes at log level LogLevelStats and above.
func ProcessedInsns(log []string) (int, bool) {
	for i := len(log) - 1; i >= 0; i-- {
		if m := processedRE.FindStringSubmatch(strings.TrimSpace(log[i])); m != nil {
			n, err := strconv.Atoi(m[1])
			return n, err == nil
		}
	}
	return 0, false
}

// VerifierRefusal is a load error the verifier gave: how far it got and the
// last lines of its log, which say why.
type VerifierRefusal struct {
	Processed int      // instructions processed before it gave up; 0 if unknown
	Last      []string // the log's last lines (at most 5)
	Err       error    // the *ebpf.VerifierError
}

func (e *VerifierRefusal) Error() string {
	var b strings.Builder
	b.WriteString(ErrVerifierRefused.Error())
	if e.Processed > 0 {
		fmt.Fprintf(&b, " after %d instructions", e.Processed)
	}
	if len(e.Last) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(e.Last, " | "))
	}
	return b.String()
}

func (e *VerifierRefusal) Unwrap() []error { return []error{ErrVerifierRefused, e.Err} }

// explainVerifierError turns a verifier error into a VerifierRefusal; other
// errors are returned as they are.
func explainVerifierError(err error) error {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		return err
	}
	r := &VerifierRefusal{Err: err}
	r.Processed, _ = ProcessedInsns(ve.Log)
	var lines []string
	for _, l := range ve.Log {
		l = strings.TrimSpace(l)
		if l == "" || processedRE.MatchString(l) || statsRE.MatchString(l) {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	r.Last = lines
	if len(r.Last) == 0 {
		r.Last = []string{ve.Cause.Error()}
	}
	return r
}
