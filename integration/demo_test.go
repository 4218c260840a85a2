package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFleetDemo runs tools/demo/fleet.sh (`make demo`) on the binaries
// built for these tests: a control plane whose embedded etcd serves TLS
// with client certificates and etcd auth on, two hosts enrolled through
// the API whose agents run on their enrollment bundles, a rollout, real
// traffic dropped and passed as the rules say, and etcd refusing one
// host's identity a write of the other's desired state. The script exits
// non-zero on any flow that does not do what the rules say.
func TestFleetDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("needs root, network namespaces and BPF")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "./tools/demo/fleet.sh")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "BIN="+filepath.Dir(ctlBin))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fleet demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"enrolled as etcd user xdpfw-host:web-1",
		"role=web (enrolled)",
		"attacker tcp/22 -> web-1     dropped  dropped",
		"refused: xdpfwctl: write /xdpfw/v1/hosts/web-2/desired: etcdserver: permission denied",
		"done.",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}
