package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// The binaries under test, built once by TestMain: the CLI, and the agent
// and the etcd member of the fleet tests.
var ctlBin, agentBin, etcdBin, cpBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips itself in newPair
	}
	os.Exit(setUpAndRun(m))
}

func setUpAndRun(m *testing.M) int {
	if err := checkMachine(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	if err := removeLeftovers(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	if err := removeFleetLeftovers(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}

	dir, err := os.MkdirTemp("", "xdpfw-integration-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctlBin = filepath.Join(dir, "xdpfwctl")
	agentBin = filepath.Join(dir, "xdpfw-agent")
	etcdBin = filepath.Join(dir, "xdpfw-etcd")
	cpBin = filepath.Join(dir, "xdpfw-controlplane")
	// One build for the four: the go command compiles their common
	// packages once and links them in parallel.
	build := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"github.com/xdpfw/xdpfw/tools/xdpfwctl",
		"github.com/xdpfw/xdpfw/agent/cmd/xdpfw-agent",
		"github.com/xdpfw/xdpfw/controlplane/cmd/xdpfw-etcd",
		"github.com/xdpfw/xdpfw/controlplane/cmd/xdpfw-controlplane")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: build xdpfwctl, xdpfw-agent, xdpfw-etcd, xdpfw-controlplane: %v\n%s", err, out)
		return 1
	}

	pinRoot = filepath.Join(bpffsRoot, fmt.Sprintf("%s%d", namePrefix, os.Getpid()))
	if err := os.Mkdir(pinRoot, 0o700); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	defer os.RemoveAll(pinRoot)
	return m.Run()
}

// checkMachine fails early, with what to do, when the machine cannot run
// the tests: they would all fail for the same reason otherwise.
func checkMachine() error {
	if os.Geteuid() != 0 {
		return errors.New("end-to-end tests need root (network namespaces, XDP, bpffs); run them as root or with -short to leave them out")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(bpffsRoot, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("no BPF filesystem at %s: mount one with `mount -t bpf bpf %s` (or `make bpffs`)", bpffsRoot, bpffsRoot)
	}
	for tool, pkg := range map[string]string{"nsenter": "util-linux", "ping": "iputils-ping", "go": "the Go toolchain"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: install %s", tool, pkg)
		}
	}
	return nil
}

// cliResult is how one xdpfwctl run ended.
type cliResult struct {
	args           []string
	code           int
	stdout, stderr string
}

func (r cliResult) String() string {
	return fmt.Sprintf("xdpfwctl %q: exit %d\nstdout: %s\nstderr: %s", r.args, r.code, r.stdout, r.stderr)
}

// ctl runs xdpfwctl with args in h's network namespace.
func (h *host) ctl(args ...string) cliResult {
	cmd := h.nsenter(ctlBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		r.code = -1
		r.stderr += err.Error()
	}
	return r
}

// local runs `xdpfwctl local CMD` on h's eth0 with h's pin path.
func (h *host) local(cmd string, args ...string) cliResult {
	return h.ctl(append([]string{"local", cmd, "--iface", ifaceName, "--pin-path", h.pinPath}, args...)...)
}

// writeRules puts a rules document in a file of the test's own.
func writeRules(t testing.TB, rules string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "rules-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(rules); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// tryApply runs `xdpfwctl local apply` with rules on h's eth0.
func (h *host) tryApply(t testing.TB, rules string, args ...string) cliResult {
	t.Helper()
	return h.local("apply", append([]string{"-f", writeRules(t, rules)}, args...)...)
}

// apply applies rules on h's eth0, fails the test if that fails, and
// returns what the command printed.
func (h *host) apply(t testing.TB, rules string, args ...string) string {
	t.Helper()
	r := h.tryApply(t, rules, args...)
	if r.code != 0 {
		t.Fatalf("%s: apply failed: %s", h, r)
	}
	return r.stdout
}

// detach runs `xdpfwctl local detach` and fails the test if that fails.
func (h *host) detach(t testing.TB) {
	t.Helper()
	if r := h.local("detach"); r.code != 0 {
		t.Fatalf("%s: detach failed: %s", h, r)
	}
}

// counter, ruleStats and stats mirror `xdpfwctl local stats -o json`.
type counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

type ruleStats struct {
	Index   int    `json:"index"`
	RuleSet string `json:"ruleSet"`
	ID      string `json:"id"`
	Action  string `json:"action"`
	DryRun  bool   `json:"dryRun"`
	counter
	// Limited counts a rate-limit rule's packets over its limit.
	Limited counter `json:"limited"`
}

type stats struct {
	Rules   []ruleStats        `json:"rules"`
	Actions map[string]counter `json:"actions"`
}

// rule is the counter of the rule with this id; the test fails if there is
// none.
func (s stats) rule(t testing.TB, id string) ruleStats {
	t.Helper()
	for _, r := range s.Rules {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("stats: no rule %q in %+v", id, s.Rules)
	return ruleStats{}
}

// state mirrors `xdpfwctl local show -o json`.
type state struct {
	Interface  string   `json:"interface"`
	Attached   bool     `json:"attached"`
	ProgramID  uint32   `json:"programId"`
	Mode       string   `json:"mode"`
	Generation int      `json:"generation"`
	Seq        uint64   `json:"applySeq"`
	Digest     string   `json:"digest"`
	Rules      int      `json:"rules"`
	RuleSets   []string `json:"ruleSets"`
	// Tables: how each address field is looked up (lpm, range).
	Tables map[string]string `json:"tables"`
}

func (h *host) stats(t testing.TB) stats {
	t.Helper()
	var s stats
	h.readJSON(t, &s, "stats")
	return s
}

func (h *host) show(t testing.TB) state {
	t.Helper()
	var s state
	h.readJSON(t, &s, "show")
	return s
}

func (h *host) readJSON(t testing.TB, v any, cmd string) {
	t.Helper()
	r := h.local(cmd, "-o", "json")
	if r.code != 0 {
		t.Fatalf("%s: %s", h, r)
	}
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("%s: decode %s output: %v\n%s", h, cmd, err, r.stdout)
	}
}
