package flood

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
)

// Config is one way of dropping the flood on the receiving veth.
type Config struct {
	// Kind is "bare", "xdp-filter", "trie", "nftables" or "xdpfw"; N the
	// prefix count (0 for the configurations without prefixes).
	Kind string
	N    int
	// Enable puts the configuration in place on the receiving veth and
	// returns what takes it away again.
	Enable func() (disable func() error, err error)
	// Prog is the XDP program of the configuration (nil: nftables), whose
	// run-time statistics give its own time per packet when the kernel
	// keeps them (see EnableProgramStats).
	Prog *ebpf.Program
	// Seen, when set, reads the configuration's own count of the packets
	// it dropped (xdpfw's statistics): the check that the packets the veth
	// counted did go through it.
	Seen func() (uint64, error)
}

// Settings are the measurement's parameters.
type Settings struct {
	// CPU is the one CPU trafgen sends from (and the receiver runs on).
	CPU int
	// Warmup goes by after a configuration is put in place, before
	// counting starts (caches and the veth's page pool settle on the new
	// path); Duration is counted.
	Warmup, Duration time.Duration
	// Dir holds trafgen's configuration files.
	Dir string
	// MaxWait is the largest share of a measurement trafgen may spend
	// waiting for its CPU (another task had it) before the measurement is
	// taken again, up to Attempts times in all; the least disturbed
	// attempt is kept. The machine may be shared: a measurement that lost
	// its CPU for part of the time is low by that much.
	MaxWait  float64
	Attempts int
}

// Sample is one measurement of one configuration.
type Sample struct {
	// Packets the receiving veth processed in Elapsed.
	Packets uint64
	Elapsed time.Duration
	// SenderDropped is what the sender could not hand to the receiver in
	// the same time (its ring or backlog full).
	SenderDropped uint64
	// NetRXOnCPU and NetRXElsewhere count NET_RX softirqs on the sending
	// CPU and on the others: where the receive work ran.
	NetRXOnCPU, NetRXElsewhere uint64
	// Idle and Steal are shares of the sending CPU's time: idle (the
	// sender did not keep it busy) and stolen by the hypervisor.
	Idle, Steal float64
	// Waited is the share of the time trafgen was runnable but waited
	// for its CPU: another task had it, and the rate is low by as much.
	Waited float64
	// Seen is the configuration's own count (when it has one) over a
	// window that holds the veth's.
	Seen uint64
	// StackPackets is what the receiver's IP stack received meanwhile:
	// none, when the configuration dropped every packet.
	StackPackets uint64
	// ProgRuns and ProgTime are the runs of the configuration's program
	// and the time the kernel counted in them over the measurement (zero
	// unless its run-time statistics are on).
	ProgRuns uint64
	ProgTime time.Duration
}

// ProgNs is the time the program spent on a packet, by the kernel's
// statistics (0 when they are off).
func (s Sample) ProgNs() float64 {
	if s.ProgRuns == 0 {
		return 0
	}
	return float64(s.ProgTime.Nanoseconds()) / float64(s.ProgRuns)
}

// progStats reads a program's run count and run time (zero for nil).
func progStats(p *ebpf.Program) (uint64, time.Duration, error) {
	if p == nil {
		return 0, 0, nil
	}
	st, err := p.Stats()
	if err != nil {
		return 0, 0, fmt.Errorf("program statistics: %w", err)
	}
	return st.RunCount, st.Runtime, nil
}

// Mpps is the receiver's rate in millions of packets per second.
func (s Sample) Mpps() float64 {
	return float64(s.Packets) / s.Elapsed.Seconds() / 1e6
}

// startTimeout bounds the time trafgen takes to start flooding.
const startTimeout = 10 * time.Second

// Flood is trafgen flooding the pair for a series of measurements: one
// sender for all of them, so that each measures a warm flood and none
// waits for trafgen to start.
type Flood struct {
	p      *Pair
	set    Settings
	sender *Sender
}

// StartFlood starts trafgen and returns once packets arrive. limit bounds
// trafgen's life (see StartSender).
func StartFlood(p *Pair, f Family, set Settings, limit time.Duration) (*Flood, error) {
	before, err := p.Read()
	if err != nil {
		return nil, err
	}
	sender, err := StartSender(p, set.Dir, f, set.CPU, limit)
	if err != nil {
		return nil, err
	}
	fl := &Flood{p: p, set: set, sender: sender}
	// trafgen's start (exec, configuration, ring setup) takes a variable
	// time on a busy machine.
	for deadline := time.Now().Add(startTimeout); ; {
		if err := sender.Running(); err != nil {
			return nil, err
		}
		now, err := p.Read()
		if err != nil {
			return nil, errors.Join(err, fl.Stop())
		}
		if now.RxPackets-before.RxPackets >= 1000 {
			return fl, nil
		}
		if time.Now().After(deadline) {
			return nil, errors.Join(fmt.Errorf("trafgen has not flooded in %v", startTimeout), fl.Stop())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop stops trafgen.
func (fl *Flood) Stop() error { return fl.sender.Stop() }

// Measure measures one configuration under the flood: it enables it, lets
// the warm-up go by, counts the receiver's packets over the duration and
// disables the configuration.
func (fl *Flood) Measure(c Config) (s Sample, err error) {
	p, set := fl.p, fl.set
	if err := fl.sender.Running(); err != nil {
		return s, err
	}
	disable, err := c.Enable()
	if err != nil {
		return s, fmt.Errorf("enable %s %d: %w", c.Kind, c.N, err)
	}
	defer func() {
		if derr := disable(); derr != nil {
			err = errors.Join(err, fmt.Errorf("disable %s %d: %w", c.Kind, c.N, derr))
		}
	}()
	time.Sleep(set.Warmup)
	// The configuration's own count is read before the veth's and after
	// it, so that its window holds the veth's.
	var seen0 uint64
	if c.Seen != nil {
		if seen0, err = c.Seen(); err != nil {
			return s, fmt.Errorf("%s: read its counters: %w", c.Kind, err)
		}
	}
	_, wait1, err := fl.sender.SchedStat()
	if err != nil {
		return s, err
	}
	runs1, time1, err := progStats(c.Prog)
	if err != nil {
		return s, err
	}
	stack1, err := p.StackReceives()
	if err != nil {
		return s, err
	}
	c1, irq1, cpu1, t1, err := readAll(p, set.CPU)
	if err != nil {
		return s, err
	}
	time.Sleep(set.Duration)
	c2, irq2, cpu2, t2, err := readAll(p, set.CPU)
	if err != nil {
		return s, err
	}
	stack2, err := p.StackReceives()
	if err != nil {
		return s, err
	}
	runs2, time2, err := progStats(c.Prog)
	if err != nil {
		return s, err
	}
	s.ProgRuns, s.ProgTime = runs2-runs1, time2-time1
	_, wait2, err := fl.sender.SchedStat()
	if err != nil {
		return s, err
	}
	if c.Seen != nil {
		seen1, err := c.Seen()
		if err != nil {
			return s, fmt.Errorf("%s: read its counters: %w", c.Kind, err)
		}
		s.Seen = seen1 - seen0
	}
	if err := fl.sender.Running(); err != nil {
		return s, err
	}
	s.Packets = c2.RxPackets - c1.RxPackets
	s.Elapsed = t2.Sub(t1)
	s.StackPackets = stack2 - stack1
	s.SenderDropped = c2.SenderDropped - c1.SenderDropped
	for cpu := range irq2 {
		if cpu == set.CPU {
			s.NetRXOnCPU += irq2[cpu] - irq1[cpu]
		} else {
			s.NetRXElsewhere += irq2[cpu] - irq1[cpu]
		}
	}
	s.Idle, s.Steal = cpu2.shares(cpu1)
	s.Waited = float64(wait2-wait1) / float64(s.Elapsed)
	// Every packet was dropped before the IP stack: a configuration that
	// passed packets would be measured on another path. (A few may be the
	// receiver's own IPv6 neighbour discovery.)
	if s.StackPackets > 100+s.Packets/1000 {
		return s, fmt.Errorf("%s %d: the receiver's IP stack received %d of %d packets: not all dropped", c.Kind, c.N, s.StackPackets, s.Packets)
	}
	// Every packet the veth counted went through the configuration.
	if c.Seen != nil && s.Seen < s.Packets {
		return s, fmt.Errorf("%s %d: counted %d packets, the receiving veth %d: packets went elsewhere", c.Kind, c.N, s.Seen, s.Packets)
	}
	return s, nil
}

// cpuTimes are one CPU's times from /proc/stat, in clock ticks.
type cpuTimes struct{ total, idle, steal uint64 }

// shares are the idle and steal shares of the time since an earlier
// reading.
func (c cpuTimes) shares(earlier cpuTimes) (idle, steal float64) {
	total := float64(c.total - earlier.total)
	if total == 0 {
		return 0, 0
	}
	return float64(c.idle-earlier.idle) / total, float64(c.steal-earlier.steal) / total
}

func readAll(p *Pair, cpu int) (Counters, []uint64, cpuTimes, time.Time, error) {
	c, err := p.Read()
	t := time.Now()
	if err != nil {
		return c, nil, cpuTimes{}, t, err
	}
	irq, err := netRXSoftirqs()
	if err != nil {
		return c, nil, cpuTimes{}, t, err
	}
	times, err := readCPUTimes(cpu)
	return c, irq, times, t, err
}

// netRXSoftirqs reads the NET_RX softirq count of each CPU.
func netRXSoftirqs() ([]uint64, error) {
	data, err := os.ReadFile("/proc/softirqs")
	if err != nil {
		return nil, fmt.Errorf("read softirq counts: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "NET_RX:" {
			continue
		}
		out := make([]uint64, 0, len(fields)-1)
		for _, f := range fields[1:] {
			n, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("parse /proc/softirqs: %w", err)
			}
			out = append(out, n)
		}
		return out, nil
	}
	return nil, errors.New("/proc/softirqs has no NET_RX line")
}

// readCPUTimes reads one CPU's line of /proc/stat.
func readCPUTimes(cpu int) (cpuTimes, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, fmt.Errorf("read CPU times: %w", err)
	}
	name := fmt.Sprintf("cpu%d", cpu)
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 9 || fields[0] != name {
			continue
		}
		// user nice system idle iowait irq softirq steal ...
		var v [8]uint64
		for i := range v {
			if v[i], err = strconv.ParseUint(fields[1+i], 10, 64); err != nil {
				return cpuTimes{}, fmt.Errorf("parse /proc/stat: %w", err)
			}
		}
		var t cpuTimes
		for _, x := range v {
			t.total += x
		}
		t.idle, t.steal = v[3]+v[4], v[7]
		return t, nil
	}
	return cpuTimes{}, fmt.Errorf("/proc/stat has no line for %s", name)
}
