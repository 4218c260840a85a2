package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/proto"
)

// localCommands work on this host's pinned maps directly: no agent, no etcd.
var localCommands = map[string]command{
	"apply":    {runLocalApply, "load and attach if needed, then apply rule sets atomically"},
	"stats":    {runLocalStats, "counters per rule and per action"},
	"show":     {runLocalShow, "what is attached, its mode, the active rule set and its digest"},
	"detach":   {runLocalDetach, "detach the program and unpin everything"},
	"set":      {runLocalSet, "add, remove or load the prefixes of one set of the applied rule sets"},
	"drops":    {runLocalDrops, "stream samples of dropped packets, or write them to a pcap file"},
	"sampling": {runLocalSampling, "show or set an interface's drop sampling (1 in N, cap per second)"},
}

func runLocal(args []string, stdout, stderr io.Writer) error {
	return dispatch("xdpfwctl local", localCommands, args, stdout, stderr)
}

// commonFlags are the flags of every local command.
type commonFlags struct {
	iface   string
	pinPath string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.iface, "iface", "", "network interface (required)")
	fs.StringVar(&c.pinPath, "pin-path", bpf.DefaultPinPath, "bpffs directory holding one directory per interface")
}

func (c *commonFlags) options() (bpf.Options, error) {
	if c.iface == "" {
		return bpf.Options{}, usageError("--iface is required")
	}
	return bpf.Options{PinPath: c.pinPath, Interface: c.iface}, nil
}

func runLocalApply(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("local apply", stderr)
	var common commonFlags
	common.register(fs)
	file := fs.String("f", "", "rules file, YAML or JSON, one or more RuleSet documents (- for stdin)")
	mode := fs.String("mode", "auto", "attach mode: native, generic or auto (native, else generic)")
	parseErrors := fs.String("parse-errors", "pass", "what to do with frames the parser cannot read: pass or drop")
	nonIP := fs.String("non-ip", "pass", "what to do with non-IP frames (ARP, LLDP): pass or drop")
	sourceBuckets := fs.Int("source-buckets", bpf.DefaultSourceBuckets, "per-source rate-limit buckets (LRU) of the interface, fixed when its maps are first created")
	sketchLines := fs.Int("source-sketch-lines", bpf.DefaultSourceSketchLines, "lines (64 bytes each) of the sketch per-source limits count every packet in, fixed when the interface's maps are first created")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	opts, err := common.options()
	if err != nil {
		return err
	}
	opts.SourceBuckets, opts.SourceSketchLines = *sourceBuckets, *sketchLines
	if *file == "" {
		return usageError("-f is required")
	}
	attachMode, err := bpf.ParseAttachMode(*mode)
	if err != nil {
		return usageError(err.Error())
	}
	dropParse, err := passOrDrop("--parse-errors", *parseErrors)
	if err != nil {
		return err
	}
	dropNonIP, err := passOrDrop("--non-ip", *nonIP)
	if err != nil {
		return err
	}

	// Everything that can fail on bad input happens before the maps are
	// touched: a bad file changes nothing already applied.
	sets, err := readRuleSets(*file)
	if err != nil {
		return err
	}
	compiled, err := bpf.Compile(sets, opts.Interface)
	if err != nil {
		return fmt.Errorf("compile %s: %w", *file, err)
	}

	fw, err := bpf.Open(opts)
	if err != nil {
		return err
	}
	defer fw.Close()
	if flagSet(fs, "parse-errors") || flagSet(fs, "non-ip") {
		if err := fw.SetPolicy(dropParse, dropNonIP); err != nil {
			return err
		}
	}
	rep, err := fw.Apply(compiled)
	if err != nil {
		return fmt.Errorf("apply to %s: %w", opts.Interface, err)
	}
	used, err := fw.Attach(attachMode)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: applied %d rule(s) from %d rule set(s) in %s mode, generation %d, %d map write(s), digest %x\n",
		opts.Interface, rep.Rules, len(compiled.RuleSets), used, rep.Generation, rep.TotalWrites(), rep.Digest[:6])
	if flagSet(fs, "source-buckets") && fw.SourceBuckets() != *sourceBuckets {
		fmt.Fprintf(stderr, "%s: keeping the pinned %d source buckets (--source-buckets %d takes effect after `xdpfwctl local detach`)\n",
			opts.Interface, fw.SourceBuckets(), *sourceBuckets)
	}
	if flagSet(fs, "source-sketch-lines") && fw.SourceSketchLines() != *sketchLines {
		fmt.Fprintf(stderr, "%s: keeping the pinned sketch of %d lines (--source-sketch-lines %d takes effect after `xdpfwctl local detach`)\n",
			opts.Interface, fw.SourceSketchLines(), *sketchLines)
	}
	return nil
}

func passOrDrop(flagName, v string) (bool, error) {
	switch v {
	case "pass":
		return false, nil
	case "drop":
		return true, nil
	}
	return false, usageError(fmt.Sprintf("%s: %q is not pass or drop", flagName, v))
}

// readRuleSets reads rule sets from a file (or stdin) and resolves feed
// files relative to it.
func readRuleSets(path string) ([]proto.RuleSet, error) {
	var data []byte
	var err error
	base := "."
	if path == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(path)
		base = filepath.Dir(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read rules: %w", err)
	}
	sets, err := proto.DecodeRuleSets(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i := range sets {
		if err := sets[i].ResolveFiles(base); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return sets, nil
}

func runLocalStats(args []string, stdout, stderr io.Writer) error {
	fw, output, err := openForReading("local stats", args, stderr)
	if err != nil {
		return err
	}
	defer fw.Close()
	st, err := fw.Stats()
	if err != nil {
		return err
	}
	if output == "json" {
		return writeJSON(stdout, st)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tRULESET\tRULE\tACTION\tPACKETS\tBYTES\tOVER LIMIT")
	for _, r := range st.Rules {
		action := r.Action
		if r.DryRun {
			action += " (dry-run)"
		}
		limited := "-"
		if r.Action == "rate-limit" {
			limited = fmt.Sprint(r.Limited.Packets)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%s\n", r.Index, r.RuleSet, r.ID, action, r.Packets, r.Bytes, limited)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OUTCOME\tPACKETS\tBYTES")
	names := make([]string, 0, len(st.Actions))
	for n := range st.Actions {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := st.Actions[n]
		fmt.Fprintf(tw, "%s\t%d\t%d\n", n, c.Packets, c.Bytes)
	}
	return tw.Flush()
}

func runLocalShow(args []string, stdout, stderr io.Writer) error {
	fw, output, err := openForReading("local show", args, stderr)
	if err != nil {
		return err
	}
	defer fw.Close()
	s, err := fw.State()
	if err != nil {
		return err
	}
	if output == "json" {
		return writeJSON(stdout, s)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "interface:\t%s\n", s.Interface)
	fmt.Fprintf(tw, "pinned at:\t%s\n", s.PinDir)
	if s.Attached {
		fmt.Fprintf(tw, "attached:\tyes, program %d, %s mode\n", s.ProgramID, s.Mode)
	} else {
		fmt.Fprintf(tw, "attached:\tno (maps pinned, nothing filtering)\n")
	}
	if s.Generation < 0 {
		fmt.Fprintf(tw, "rule set:\tnone applied\n")
		return tw.Flush()
	}
	fmt.Fprintf(tw, "rule sets:\t%v\n", s.RuleSets)
	fmt.Fprintf(tw, "rules:\t%d\n", s.Rules)
	fmt.Fprintf(tw, "digest:\t%s\n", s.Digest)
	if len(s.Tables) > 0 {
		var tables []string
		for _, f := range []string{"src4", "src6", "dst4", "dst6"} {
			if t, ok := s.Tables[f]; ok {
				tables = append(tables, f+" "+t)
			}
		}
		fmt.Fprintf(tw, "prefix tables:\t%s\n", strings.Join(tables, ", "))
	}
	fmt.Fprintf(tw, "generation:\t%d (apply #%d at %s)\n", s.Generation, s.Seq, s.AppliedAt.Format("2006-01-02T15:04:05Z"))
	fmt.Fprintf(tw, "rate limits:\t%d source buckets\n", s.SourceBuckets)
	if sp := s.Sampling; sp != nil {
		state := "on"
		if sp.Off {
			state = "off"
		}
		fmt.Fprintf(tw, "drop sampling:\t%s, 1 in %d, at most %s a second; readers: frames %s, sources %s\n", state, max(sp.Every, 1),
			capLabel(sp.MaxPerSecond), pidLabel(sp.Frames.ReaderPID), pidLabel(sp.Sources.ReaderPID))
	}
	return tw.Flush()
}

// openForReading parses the flags of a read-only command (--iface,
// --pin-path, -o) and opens the pinned firewall without taking the lock.
func openForReading(name string, args []string, stderr io.Writer) (*bpf.Firewall, string, error) {
	fs := newFlagSet(name, stderr)
	var common commonFlags
	common.register(fs)
	output := fs.String("o", "table", "output: table or json")
	if err := parseFlags(fs, args); err != nil {
		return nil, "", err
	}
	opts, err := common.options()
	if err != nil {
		return nil, "", err
	}
	if *output != "table" && *output != "json" {
		return nil, "", usageError(fmt.Sprintf("-o %q: want table or json", *output))
	}
	fw, err := bpf.OpenPinned(opts)
	if err != nil {
		return nil, "", err
	}
	return fw, *output, nil
}

func runLocalDetach(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("local detach", stderr)
	var common commonFlags
	common.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	opts, err := common.options()
	if err != nil {
		return err
	}
	if err := bpf.Detach(opts); err != nil {
		if errors.Is(err, bpf.ErrNotPinned) {
			return fmt.Errorf("%w (nothing to detach)", err)
		}
		return err
	}
	fmt.Fprintf(stdout, "%s: detached and unpinned\n", opts.Interface)
	return nil
}

func pidLabel(pid int) string {
	if pid == 0 {
		return "none"
	}
	return fmt.Sprintf("pid %d", pid)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
