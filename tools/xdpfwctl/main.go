// Command xdpfwctl is the operator CLI of xdpfw. `xdpfwctl local ...`
// works on this host's pinned BPF maps directly, with no agent and no etcd.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed; nothing half-applied
	exitUsage = 2 // bad flags or arguments
)

type command struct {
	run  func(args []string, stdout, stderr io.Writer) error
	help string
}

var topCommands = map[string]command{
	"local":    {runLocal, "work on this host's pinned maps (no agent, no etcd)"},
	"apply":    {runApply, "store each rule set of a file as its next version; shows the diff"},
	"get":      {runGet, "list rule sets, hosts or rollouts, or show one"},
	"history":  {runHistory, "the versions of a rule set"},
	"diff":     {runDiff, "what changed between two versions of a rule set"},
	"rollback": {runRollback, "make a new version equal to an earlier one"},
	"rollout":  {runRollout, "roll a version out in waves; pause, resume, abort"},
	"stats":    {runStats, "fleet counters per outcome and per rule (per host with --host)"},
	"top":      {runTop, "a live view of the busiest rules fleet-wide"},
	"hosts":    {runHosts, "enroll a host (its etcd identity and labels) or revoke it"},
	"etcd":     {runEtcd, "break-glass: read and write rule sets and host documents in etcd directly, bypassing the API"},
}

// errUsage marks an error in how the command was called.
type errUsage struct{ msg string }

func (e errUsage) Error() string { return e.msg }

func usageError(msg string) error { return errUsage{msg} }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	err := dispatch("xdpfwctl", topCommands, args, stdout, stderr)
	var u errUsage
	var coded exitCoder
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &u):
		fmt.Fprintf(stderr, "xdpfwctl: %v (see --help)\n", err)
		return exitUsage
	case errors.As(err, &coded):
		fmt.Fprintf(stderr, "xdpfwctl: %v\n", err)
		return coded.ExitCode()
	default:
		fmt.Fprintf(stderr, "xdpfwctl: %v\n", err)
		return exitError
	}
}

func dispatch(prefix string, cmds map[string]command, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintf(stderr, "usage: %s COMMAND [flags]\n\ncommands:\n", prefix)
		names := make([]string, 0, len(cmds))
		for n := range cmds {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(stderr, "  %-10s %s\n", n, cmds[n].help)
		}
		if len(args) == 0 {
			return usageError("no command given")
		}
		return flag.ErrHelp
	}
	c, ok := cmds[args[0]]
	if !ok {
		return usageError(fmt.Sprintf("%s: unknown command %q", prefix, args[0]))
	}
	return c.run(args[1:], stdout, stderr)
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("xdpfwctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// flagSet reports whether a flag was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			found = true
		}
	})
	return found
}

// parseFlags parses a command's flags; a bad flag is a usage error.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError(err.Error())
	}
	if fs.NArg() > 0 {
		return usageError(fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	return nil
}
