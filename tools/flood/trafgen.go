package flood

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Family is the address family of a flood.
type Family int

// The two families.
const (
	IPv4 Family = iota
	IPv6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// macBytes writes a MAC address as trafgen bytes.
func macBytes(mac []byte) string {
	var parts []string
	for _, b := range mac {
		parts = append(parts, fmt.Sprintf("0x%02x", b))
	}
	return strings.Join(parts, ", ")
}

// TrafgenConfig is the trafgen packet configuration of a flood on one CPU:
// UDP to port 53 of 198.18.0.2 or 2001:db8::2 with a new random source
// address on every packet (drnd: random bytes drawn per packet, not once).
//
//   - IPv4: a 60-byte frame (64 on the wire with the FCS); the whole source
//     address is random, and the header checksum is recomputed per packet.
//   - IPv6: 62 bytes, the smallest UDP frame (no payload); the source is
//     2001:db8: and 96 random bits, the /32 the benchmark's IPv6 prefixes
//     are spread over, so every lookup walks the table to the /48 or /64
//     the source falls in.
func TrafgenConfig(f Family, cpu int) string {
	var b strings.Builder
	// Packets for this CPU only: trafgen forks one process per CPU up to
	// --cpus and pins each to its CPU; the others have nothing to send.
	fmt.Fprintf(&b, "cpu(%d): {\n", cpu)
	fmt.Fprintf(&b, "  %s,\n  %s,\n", macBytes(receiverMAC), macBytes(senderMAC))
	if f == IPv4 {
		b.WriteString(`  c16(0x0800),
  0x45, 0x00, c16(46), c16(0), c16(0x4000), 64, 17, csumip(14, 33),
  drnd(4),
  198, 18, 0, 2,
  c16(1000), c16(53), c16(26), c16(0),
  fill(0x00, 18)
}
`)
	} else {
		b.WriteString(`  c16(0x86dd),
  0x60, 0x00, 0x00, 0x00, c16(8), 17, 64,
  0x20, 0x01, 0x0d, 0xb8, drnd(12),
  0x20, 0x01, 0x0d, 0xb8, fill(0x00, 11), 0x02,
  c16(1000), c16(53), c16(8), csumudp6(14, 54)
}
`)
	}
	return b.String()
}

// Sender is a running trafgen in the sender's namespace.
type Sender struct {
	cmd    *exec.Cmd
	done   chan struct{}
	err    error // Wait's result, once done is closed
	output bytes.Buffer
}

// StartSender starts trafgen flooding from the sender's veth on one CPU.
// The process is bounded twice over, so that a test killed before its
// cleanup cannot leave a flood behind: by timeout(1) at limit, and by a
// parent-death signal.
func StartSender(p *Pair, dir string, f Family, cpu int, limit time.Duration) (*Sender, error) {
	conf := filepath.Join(dir, fmt.Sprintf("flood-%s-cpu%d.cfg", strings.ToLower(f.String()), cpu))
	if err := os.WriteFile(conf, []byte(TrafgenConfig(f, cpu)), 0o644); err != nil {
		return nil, fmt.Errorf("write trafgen configuration: %w", err)
	}
	secs := fmt.Sprintf("%d", int(limit.Seconds())+1)
	s := &Sender{done: make(chan struct{})}
	s.cmd = exec.Command("ip", "netns", "exec", p.SenderNS,
		// The highest nice level: see the autogroup below.
		"nice", "-n", "-20",
		// timeout signals its whole process group (trafgen and its
		// forks); -k: SIGKILL two seconds after, if SIGINT was not enough.
		"timeout", "-s", "INT", "-k", "2", secs,
		"trafgen", "--dev", SenderIface, "--conf", conf,
		"--cpus", fmt.Sprint(cpu+1), // processes for CPUs 0..cpu; only cpu has packets
		"--seed", "1", // the same source sequence every run
		"--no-sock-mem",  // leave the machine's socket memory sysctls alone
		"--notouch-irq",  // and its IRQ affinities
		"--no-cpu-stats", // the exit report is not read
	)
	s.cmd.Stdout, s.cmd.Stderr = &s.output, &s.output
	s.cmd.SysProcAttr = &syscall.SysProcAttr{
		// A session of its own: one process group to signal (timeout,
		// trafgen, trafgen's forks), and one scheduler autogroup.
		Setsid:    true,
		Pdeathsig: syscall.SIGTERM, // timeout passes it on to the group
	}
	// A parent-death signal is sent when the thread that forked the
	// child ends, not the process, and Go ends threads (one that a
	// goroutine locked and left locked, as Pair.InReceiver does). So the
	// fork happens on a thread locked until trafgen has ended.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := s.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start trafgen: %w", err)
	}
	// The machine may be shared. With autogroups (Debian's default), the
	// CPU is shared between sessions first and by nice level only within
	// one, so the sender's session gets the highest priority too. It then
	// keeps its CPU against ordinary tasks (the scheduler moves them to
	// the other CPUs), and the rate measures the flood, not the
	// neighbours; Measure reports what waiting is left. Not a real-time
	// policy: that would starve the CPU's kernel threads.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/autogroup", s.cmd.Process.Pid), []byte("-20"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, errors.Join(fmt.Errorf("raise the sender's autogroup priority: %w", err), s.Stop())
	}
	return s, nil
}

// Running reports an error if trafgen ended before Stop.
func (s *Sender) Running() error {
	select {
	case <-s.done:
		return fmt.Errorf("trafgen exited early (%v): %s", s.err, strings.TrimSpace(s.output.String()))
	default:
		return nil
	}
}

// SchedStat sums the scheduler statistics of the sender's trafgen
// processes: the time they ran, and the time they were runnable but
// waited for the CPU (another task had it: the measurement was shared).
func (s *Sender) SchedStat() (run, wait time.Duration, err error) {
	pgid := s.cmd.Process.Pid
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, fmt.Errorf("list processes: %w", err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // gone
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces, so cut at
		// the last parenthesis.
		open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
		if open < 0 || end < open {
			continue
		}
		fields := strings.Fields(string(stat[end+1:]))
		if string(stat[open+1:end]) != "trafgen" || len(fields) < 3 || fields[2] != strconv.Itoa(pgid) {
			continue
		}
		ss, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
		if err != nil {
			continue
		}
		var r, w uint64
		if _, err := fmt.Sscan(string(ss), &r, &w); err != nil {
			return 0, 0, fmt.Errorf("parse /proc/%d/schedstat: %w", pid, err)
		}
		run += time.Duration(r)
		wait += time.Duration(w)
	}
	return run, wait, nil
}

// Stop ends the flood: SIGINT to the process group, then SIGKILL if it
// lingers. It is safe to call twice.
func (s *Sender) Stop() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	pgid := s.cmd.Process.Pid
	if err := syscall.Kill(-pgid, syscall.SIGINT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop trafgen (process group %d): %w", pgid, err)
	}
	select {
	case <-s.done:
		return nil
	case <-time.After(5 * time.Second):
	}
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill trafgen (process group %d): %w", pgid, err)
	}
	<-s.done
	return fmt.Errorf("trafgen ignored SIGINT for 5 s and was killed: %s", strings.TrimSpace(s.output.String()))
}
