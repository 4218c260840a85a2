package flood

import (
	"errors"
	"fmt"
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// CheckMachine says, with what to do, why this machine cannot flood: the
// harness needs root, a BPF filesystem and the tools it runs.
func CheckMachine() error {
	if os.Geteuid() != 0 {
		return errors.New("the flood harness needs root (network namespaces, XDP, bpffs, nftables); run it as root, or with -short to leave it out")
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		return errors.New("no BPF filesystem at /sys/fs/bpf: mount one with `mount -t bpf bpf /sys/fs/bpf` (or `make bpffs`)")
	}
	for tool, pkg := range map[string]string{"trafgen": "netsniff-ng", "nft": "nftables", "ip": "iproute2", "timeout": "coreutils"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: install the Debian package %s", tool, pkg)
		}
	}
	return nil
}
