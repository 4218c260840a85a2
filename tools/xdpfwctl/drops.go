package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/bpf/pcap"
)

// dropRecord is a sample as `local drops -o json` prints it: one JSON
// object a line.
type dropRecord struct {
	bpf.Sample
	Interface string       `json:"interface"`
	Packet    pcap.Summary `json:"packet"`
}

func runLocalDrops(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("local drops", stderr)
	var common commonFlags
	common.register(fs)
	rule := fs.String("rule", "", "only this rule's drops: ruleset/rule-id, or a rule id that names one rule")
	duration := fs.Duration("duration", 0, "stop after this long (default: until interrupted, or --count)")
	count := fs.Int("count", 0, "stop after this many samples (default: no limit)")
	file := fs.String("w", "", "write the samples to this pcap file (tcpdump -r, Wireshark) instead of listing them")
	output := fs.String("o", "table", "output: table or json (one object a line)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	opts, err := common.options()
	if err != nil {
		return err
	}
	if *output != "table" && *output != "json" {
		return usageError(fmt.Sprintf("-o %q: want table or json", *output))
	}
	if *duration < 0 || *count < 0 {
		return usageError("--duration and --count must not be negative")
	}
	fw, err := bpf.OpenPinned(opts)
	if err != nil {
		return err
	}
	defer fw.Close()

	var pw *pcap.Writer
	var pcapFile *os.File
	var pcapBuf *bufio.Writer
	if *file != "" {
		if pcapFile, err = os.Create(*file); err != nil {
			return fmt.Errorf("create %s: %w", *file, err)
		}
		defer pcapFile.Close() // on the error paths; closed and checked below
		pcapBuf = bufio.NewWriter(pcapFile)
		if pw, err = pcap.NewWriter(pcapBuf, uint32(bpf.SampleBytes)); err != nil {
			return fmt.Errorf("%s: %w", *file, err)
		}
	}

	r, err := fw.ReadDrops(*rule)
	if err != nil {
		return err
	}
	defer r.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}

	// A stream is read as it comes: fixed columns, one line at a time.
	const row = "%-15s  %-28s  %-12s  %-50s  %s\n"
	if pw == nil && *output == "table" {
		fmt.Fprintf(stdout, row, "TIME", "RULE", "REASON", "PACKET", "LEN")
	}
	n := 0
	for *count == 0 || n < *count {
		// Short waits, so a signal or the duration ends the loop soon.
		r.SetDeadline(time.Now().Add(200 * time.Millisecond))
		s, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("read drop samples of %s: %w", opts.Interface, err)
		}
		n++
		switch {
		case pw != nil:
			if err := pw.WritePacket(s.Time, s.FrameLen, s.Data); err != nil {
				return fmt.Errorf("write %s: %w", *file, err)
			}
		case *output == "json":
			b, err := json.Marshal(dropRecord{Sample: s, Interface: opts.Interface, Packet: pcap.Decode(s.Data)})
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s\n", b)
		default:
			fmt.Fprintf(stdout, row, s.Time.Format("15:04:05.000000"), ruleLabel(s), reasonLabel(s),
				pcap.Decode(s.Data), fmt.Sprint(s.FrameLen))
		}
	}
	dest := ""
	if pw != nil {
		if err := pcapBuf.Flush(); err != nil {
			return fmt.Errorf("write %s: %w", *file, err)
		}
		if err := pcapFile.Close(); err != nil {
			return fmt.Errorf("write %s: %w", *file, err)
		}
		dest = " to " + *file
	}
	st, err := fw.Sampling()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "%s: %d sample(s)%s; interface totals: %d sent, %d over the %s/s cap, %d lost to a full buffer\n",
		opts.Interface, n, dest, st.Frames.Sent, st.Frames.Capped, capLabel(st.MaxPerSecond), st.Frames.Lost)
	return nil
}

func ruleLabel(s bpf.Sample) string {
	if s.Rule == "" {
		return "-"
	}
	return s.Rule
}

func reasonLabel(s bpf.Sample) string {
	if s.WouldDrop {
		return "would-drop (" + s.Reason + ")"
	}
	return s.Reason
}

func capLabel(n uint32) string {
	if n == 0 {
		return fmt.Sprint(bpf.DefaultSamplesPerSecond)
	}
	return fmt.Sprint(n)
}

func runLocalSampling(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("local sampling", stderr)
	var common commonFlags
	common.register(fs)
	every := fs.Uint("every", 1, "sample one drop in this many")
	maxPerSec := fs.Uint("max-per-second", uint(bpf.DefaultSamplesPerSecond), "at most this many samples a second")
	wouldDrop := fs.Bool("would-drop", false, "sample dry-run sets' would-drops too")
	off := fs.Bool("off", false, "send no samples at all")
	output := fs.String("o", "table", "output: table or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	opts, err := common.options()
	if err != nil {
		return err
	}
	if *every == 0 || *every > 1<<31 || *maxPerSec == 0 || *maxPerSec > 1<<31 {
		return usageError("--every and --max-per-second must be between 1 and 2^31")
	}
	if *output != "table" && *output != "json" {
		return usageError(fmt.Sprintf("-o %q: want table or json", *output))
	}
	fw, err := bpf.OpenPinned(opts)
	if err != nil {
		return err
	}
	defer fw.Close()
	if fs.NFlag() > countSet(fs, "iface", "pin-path", "o") {
		// Flags not given keep their current values.
		st, err := fw.Sampling()
		if err != nil {
			return err
		}
		cfg := st.SamplingConfig
		if flagSet(fs, "every") {
			cfg.Every = uint32(*every)
		}
		if flagSet(fs, "max-per-second") {
			cfg.MaxPerSecond = uint32(*maxPerSec)
		}
		if flagSet(fs, "would-drop") {
			cfg.WouldDrop = *wouldDrop
		}
		if flagSet(fs, "off") {
			cfg.Off = *off
		}
		if err := fw.SetSampling(cfg); err != nil {
			return err
		}
	}
	st, err := fw.Sampling()
	if err != nil {
		return err
	}
	if *output == "json" {
		return writeJSON(stdout, st)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	state := "on"
	if st.Off {
		state = "off"
	}
	everyN := max(st.Every, 1)
	fmt.Fprintf(tw, "interface:\t%s\n", opts.Interface)
	fmt.Fprintf(tw, "sampling:\t%s, 1 drop in %d, at most %s a second, would-drops %v\n", state, everyN, capLabel(st.MaxPerSecond), st.WouldDrop)
	for _, c := range []struct {
		what   string
		counts bpf.SampleCounts
	}{{"frames (local drops)", st.Frames}, {"sources (agent)", st.Sources}} {
		reader := "no reader, nothing sent"
		if c.counts.ReaderPID != 0 {
			reader = fmt.Sprintf("read by pid %d", c.counts.ReaderPID)
		}
		fmt.Fprintf(tw, "%s:\t%s; %d sent, %d over the cap, %d lost to a full buffer\n", c.what, reader,
			c.counts.Sent, c.counts.Capped, c.counts.Lost)
	}
	return tw.Flush()
}

// countSet counts how many of the named flags were given.
func countSet(fs *flag.FlagSet, names ...string) int {
	n := 0
	for _, name := range names {
		if flagSet(fs, name) {
			n++
		}
	}
	return n
}
