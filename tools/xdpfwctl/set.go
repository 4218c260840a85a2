package main

import (
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/proto"
)

// setCommands change one named prefix set of the rule sets applied to an
// interface, through the same atomic swap as apply: for scripts that feed
// blocklists continuously.
var setCommands = map[string]command{
	"add":  {func(a []string, o, e io.Writer) error { return runSet("add", a, o, e) }, "add prefixes to a set"},
	"del":  {func(a []string, o, e io.Writer) error { return runSet("del", a, o, e) }, "remove prefixes from a set"},
	"load": {func(a []string, o, e io.Writer) error { return runSet("load", a, o, e) }, "replace a set's prefixes with a feed file's"},
}

func runLocalSet(args []string, stdout, stderr io.Writer) error {
	// The subcommand is the first argument that is neither a flag nor a
	// flag's value, so `local set --iface eth0 add ...` works too.
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "-") && a != "-" && a != "--" {
			if !strings.Contains(a, "=") && !isHelp(a) {
				i++ // every flag of the set commands takes a value
			}
			continue
		}
		rest := append(append([]string{a}, args[:i]...), args[i+1:]...)
		return dispatch("xdpfwctl local set", setCommands, rest, stdout, stderr)
	}
	return dispatch("xdpfwctl local set", setCommands, args, stdout, stderr)
}

func isHelp(a string) bool { return a == "-h" || a == "--help" || a == "-help" }

func runSet(op string, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("local set "+op, stderr)
	var common commonFlags
	common.register(fs)
	ruleSet := fs.String("ruleset", "", "rule set holding the set (needed when several have a set of that name)")
	file := fs.String("f", "", "feed file: one prefix per line, '#' and ';' start comments (load only)")
	// Flags may follow the set name and prefixes: parse them out first.
	flagArgs, rest := splitFlags(fs, args)
	if err := parseFlags(fs, flagArgs); err != nil {
		return err
	}
	opts, err := common.options()
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		return usageError("the set name is required")
	}
	setName, items := rest[0], rest[1:]
	var prefixes []netip.Prefix
	switch op {
	case "load":
		if *file == "" || len(items) > 0 {
			return usageError("load takes a set name and -f FILE")
		}
		f, err := os.Open(*file)
		if err != nil {
			return fmt.Errorf("read feed: %w", err)
		}
		prefixes, err = proto.ParseFeed(f, *file)
		f.Close()
		if err != nil {
			return err
		}
	default:
		if len(items) == 0 {
			return usageError(op + " takes a set name and at least one prefix")
		}
		for _, item := range items {
			p, err := proto.ParsePrefix(item)
			if err != nil {
				return usageError(fmt.Sprintf("%q: %v", item, err))
			}
			prefixes = append(prefixes, p)
		}
	}

	fw, err := bpf.Open(opts)
	if err != nil {
		return err
	}
	defer fw.Close()
	sets, compileOpts, err := fw.AppliedRuleSets()
	if err != nil {
		return fmt.Errorf("%s: read the applied rule sets: %w", opts.Interface, err)
	}
	rs, err := findSet(sets, *ruleSet, setName)
	if err != nil {
		return err
	}
	before := len(rs.Sets[setName].Prefixes)
	changed, err := changeSet(rs, setName, op, prefixes)
	if err != nil {
		return err
	}
	compiled, err := bpf.CompileWith(sets, opts.Interface, compileOpts)
	if err != nil {
		return fmt.Errorf("compile: %w", err)
	}
	rep, err := fw.Apply(compiled)
	if err != nil {
		return fmt.Errorf("apply to %s: %w", opts.Interface, err)
	}
	fmt.Fprintf(stdout, "%s: set %s/%s: %d -> %d prefixes (%d changed), generation %d, %d map write(s)\n",
		opts.Interface, rs.Name, setName, before, len(rs.Sets[setName].Prefixes), changed, rep.Generation, rep.TotalWrites())
	return nil
}

// splitFlags separates flags (and their values) from positional arguments,
// so that `set add SET 192.0.2.0/24 --iface eth0` works as well as flags
// first. Every flag of these commands takes a value.
func splitFlags(fs *flag.FlagSet, args []string) (flags, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return flags, append(rest, args[i+1:]...)
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			rest = append(rest, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if !strings.Contains(name, "=") && fs.Lookup(name) != nil && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return flags, rest
}

// findSet picks the rule set holding a set of that name.
func findSet(sets []proto.RuleSet, ruleSet, setName string) (*proto.RuleSet, error) {
	var found []*proto.RuleSet
	for i := range sets {
		if ruleSet != "" && sets[i].Name != ruleSet {
			continue
		}
		if _, ok := sets[i].Sets[setName]; ok {
			found = append(found, &sets[i])
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		if ruleSet != "" {
			return nil, fmt.Errorf("rule set %q has no set %q", ruleSet, setName)
		}
		return nil, fmt.Errorf("no applied rule set has a set %q", setName)
	}
	var names []string
	for _, rs := range found {
		names = append(names, rs.Name)
	}
	return nil, usageError(fmt.Sprintf("set %q is in rule sets %s: say which with --ruleset", setName, strings.Join(names, ", ")))
}

// changeSet applies add, del or load to a set and says how many prefixes
// changed. Deleting a prefix the set does not hold is an error.
func changeSet(rs *proto.RuleSet, setName, op string, prefixes []netip.Prefix) (int, error) {
	cur, err := rs.SetPrefixes(setName)
	if err != nil {
		return 0, err
	}
	have := make(map[netip.Prefix]bool, len(cur))
	for _, p := range cur {
		have[p] = true
	}
	changed := 0
	switch op {
	case "add":
		for _, p := range prefixes {
			if !have[p] {
				have[p] = true
				changed++
			}
		}
	case "del":
		var missing []string
		for _, p := range prefixes {
			if !have[p] {
				missing = append(missing, p.String())
				continue
			}
			delete(have, p)
			changed++
		}
		if len(missing) > 0 {
			return 0, fmt.Errorf("set %s/%s does not hold %s: nothing changed", rs.Name, setName, strings.Join(missing, ", "))
		}
	case "load":
		next := make(map[netip.Prefix]bool, len(prefixes))
		for _, p := range prefixes {
			next[p] = true
			if !have[p] {
				changed++
			}
		}
		for p := range have {
			if !next[p] {
				changed++
			}
		}
		have = next
	}
	out := make([]netip.Prefix, 0, len(have))
	for p := range have {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr().Compare(out[j].Addr()); c != 0 {
			return c < 0
		}
		return out[i].Bits() < out[j].Bits()
	})
	strs := make([]string, len(out))
	for i, p := range out {
		strs[i] = p.String()
	}
	rs.Sets[setName] = proto.PrefixSet{Prefixes: strs}
	if err := rs.Validate(); err != nil {
		return 0, fmt.Errorf("rule set %s after the change: %w", rs.Name, err)
	}
	return changed, nil
}
