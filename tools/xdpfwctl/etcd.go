package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// etcdCommands read and write the documents in etcd directly, through the
// same gateway (etcdstore) and versioned transactions as the control
// plane: the break-glass tool for when the API is down, and the way to run
// agents with etcd alone. They bypass the API's tokens, audit trail and
// rollouts (`desire` writes a host's desired state at once, and the next
// rollout's controller may write it again), so an operator with the API
// uses the API.
var etcdCommands = map[string]command{
	"put":       {runEtcdPut, "store each rule set of a file as its next version"},
	"get":       {runEtcdGet, "print a version of a rule set (the head by default)"},
	"versions":  {runEtcdVersions, "list the versions of a rule set"},
	"desire":    {runEtcdDesire, "set the rule-set versions a host must enforce"},
	"status":    {runEtcdStatus, "what a host's agent reports it enforces"},
	"telemetry": {runEtcdTelemetry, "a host's counters per action and its busiest rules"},
	"hosts":     {runEtcdHosts, "every host etcd knows of, with what it enforces"},
}

// EnvEtcdEndpoints is the environment variable --endpoints defaults to.
const EnvEtcdEndpoints = "XDPFW_ETCD_ENDPOINTS"

const defaultEtcdEndpoint = "127.0.0.1:2379"

func runEtcd(args []string, stdout, stderr io.Writer) error {
	return dispatch("xdpfwctl etcd", etcdCommands, args, stdout, stderr)
}

// etcdFlags are the flags of every etcd command.
type etcdFlags struct {
	endpoints string
	cert      string
	key       string
	cacert    string
	prefix    string
	timeout   time.Duration
}

func (f *etcdFlags) register(fs *flag.FlagSet) {
	def := os.Getenv(EnvEtcdEndpoints)
	if def == "" {
		def = defaultEtcdEndpoint
	}
	fs.StringVar(&f.endpoints, "endpoints", def, "comma-separated etcd endpoints (default from $"+EnvEtcdEndpoints+")")
	fs.StringVar(&f.cert, "cert", "", "client certificate for etcd (TLS)")
	fs.StringVar(&f.key, "key", "", "client key for etcd (TLS)")
	fs.StringVar(&f.cacert, "cacert", "", "CA certificate that signed etcd's (TLS)")
	fs.StringVar(&f.prefix, "prefix", proto.DefaultKeyPrefix, "key prefix of xdpfw's documents")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Second, "give up when etcd has not answered after this long")
}

// etcdSession is a store over a client and the context of one command,
// which ends --timeout after it began.
type etcdSession struct {
	store     *etcdstore.Store
	ctx       context.Context
	cancel    context.CancelFunc
	endpoints []string
	timeout   time.Duration
}

func (f *etcdFlags) open() (*etcdSession, error) {
	var eps []string
	for _, ep := range strings.Split(f.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	if len(eps) == 0 {
		return nil, usageError("--endpoints: no endpoint given")
	}
	if f.timeout <= 0 {
		return nil, usageError(fmt.Sprintf("--timeout %s: want more than 0", f.timeout))
	}
	st, err := etcdstore.Open(etcdstore.ClientConfig{
		Endpoints: eps, CertFile: f.cert, KeyFile: f.key, CAFile: f.cacert, DialTimeout: f.timeout,
	}, proto.NewKeys(f.prefix))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	return &etcdSession{
		store:     st,
		ctx:       ctx,
		cancel:    cancel,
		endpoints: eps,
		timeout:   f.timeout,
	}, nil
}

func (s *etcdSession) close() {
	s.cancel()
	s.store.Close()
}

// wrap names the endpoints when etcd did not answer: the client waits for
// a reachable member until the deadline, so that is how an unreachable
// or quorum-less etcd shows.
func (s *etcdSession) wrap(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || s.ctx.Err() != nil {
		return fmt.Errorf("etcd at %s did not answer within %s: %w", strings.Join(s.endpoints, ","), s.timeout, err)
	}
	return err
}

// parseEtcdArgs parses flags that may come before, between or after the
// positional arguments (`get web --version 2`), and returns the latter.
func parseEtcdArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			rest = append(rest, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // Parse reports it
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	if err := parseFlags(fs, flags); err != nil {
		return nil, err
	}
	return rest, nil
}

func runEtcdPut(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("etcd put", stderr)
	var ef etcdFlags
	ef.register(fs)
	file := fs.String("f", "", "rules file, YAML or JSON, one or more RuleSet documents (- for stdin); feed files are read relative to it")
	ifMatch := fs.Int64("if-match", -1, "version the change is based on: -1 any, 0 a new rule set, N the current head")
	rest, err := parseEtcdArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageError(fmt.Sprintf("unexpected argument %q (the rules file goes after -f)", rest[0]))
	}
	if *file == "" {
		return usageError("-f is required")
	}
	if *ifMatch < -1 {
		return usageError(fmt.Sprintf("--if-match %d: want -1 (any), 0 (a new rule set) or a version", *ifMatch))
	}

	// Every document is checked before the first is written, so that a
	// bad file writes nothing.
	sets, err := readRuleSets(*file)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for i := range sets {
		if err := sets[i].Validate(); err != nil {
			return fmt.Errorf("%s: rule set %q: %w", *file, sets[i].Name, err)
		}
		if seen[sets[i].Name] {
			return fmt.Errorf("%s: rule set %s appears more than once", *file, sets[i].Name)
		}
		seen[sets[i].Name] = true
	}

	sess, err := ef.open()
	if err != nil {
		return err
	}
	defer sess.close()
	for _, rs := range sets {
		v, rev, err := sess.store.PutRuleSet(sess.ctx, rs, *ifMatch)
		if err != nil {
			return sess.wrap(err)
		}
		fmt.Fprintf(stdout, "%s: version %d (revision %d)\n", rs.Name, v, rev)
	}
	return nil
}

func runEtcdGet(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("etcd get", stderr)
	var ef etcdFlags
	ef.register(fs)
	version := fs.Int64("version", 0, "version to print (0: the head)")
	output := fs.String("o", "yaml", "output: yaml or json")
	rest, err := parseEtcdArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usageError("get takes one rule set name")
	}
	if *output != "yaml" && *output != "json" {
		return usageError(fmt.Sprintf("-o %q: want yaml or json", *output))
	}
	if *version < 0 {
		return usageError(fmt.Sprintf("--version %d: want 0 (the head) or more", *version))
	}
	sess, err := ef.open()
	if err != nil {
		return err
	}
	defer sess.close()
	rs, v, err := sess.store.GetRuleSet(sess.ctx, rest[0], *version)
	if err != nil {
		return sess.wrap(err)
	}
	if *output == "json" {
		return writeJSON(stdout, rs)
	}
	data, err := json.Marshal(rs)
	if err != nil {
		return fmt.Errorf("encode rule set %s: %w", rs.Name, err)
	}
	y, err := yaml.JSONToYAML(data)
	if err != nil {
		return fmt.Errorf("encode rule set %s: %w", rs.Name, err)
	}
	// The comment says what was read; `put` ignores it.
	fmt.Fprintf(stdout, "# rule set %s, version %d\n", rs.Name, v)
	_, err = stdout.Write(y)
	return err
}

func runEtcdVersions(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("etcd versions", stderr)
	var ef etcdFlags
	ef.register(fs)
	rest, err := parseEtcdArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usageError("versions takes one rule set name")
	}
	sess, err := ef.open()
	if err != nil {
		return err
	}
	defer sess.close()
	versions, err := sess.store.Versions(sess.ctx, rest[0])
	if err != nil {
		return sess.wrap(err)
	}
	for _, v := range versions {
		fmt.Fprintln(stdout, v)
	}
	return nil
}

// parseRef reads NAME or NAME@VERSION; a bare name means the head.
func parseRef(s string) (proto.RuleSetRef, error) {
	name, v, found := strings.Cut(s, "@")
	if name == "" {
		return proto.RuleSetRef{}, usageError(fmt.Sprintf("%q: want NAME or NAME@VERSION", s))
	}
	if !found {
		return proto.RuleSetRef{Name: name}, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return proto.RuleSetRef{}, usageError(fmt.Sprintf("%q: the version after @ must be a number from 1", s))
	}
	return proto.RuleSetRef{Name: name, Version: n}, nil
}

func runEtcdDesire(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("etcd desire", stderr)
	var ef etcdFlags
	ef.register(fs)
	host := fs.String("host", "", "host whose desired state this is (required)")
	none := fs.Bool("none", false, "enforce nothing: the host passes all traffic")
	rest, err := parseEtcdArgs(fs, args)
	if err != nil {
		return err
	}
	if *host == "" {
		return usageError("--host is required")
	}
	switch {
	case *none && len(rest) > 0:
		return usageError("--none takes no rule sets")
	case !*none && len(rest) == 0:
		return usageError("name the rule sets to enforce (NAME for the head, or NAME@VERSION), or --none to enforce nothing")
	}
	refs := make([]proto.RuleSetRef, 0, len(rest))
	for _, a := range rest {
		r, err := parseRef(a)
		if err != nil {
			return err
		}
		refs = append(refs, r)
	}
	sess, err := ef.open()
	if err != nil {
		return err
	}
	defer sess.close()
	rev, err := sess.store.SetDesired(sess.ctx, *host, refs)
	if err != nil {
		return sess.wrap(err)
	}
	// Read back what a bare name resolved to. If someone wrote again in
	// between, print the revision only.
	d, modRev, err := sess.store.GetDesired(sess.ctx, *host)
	if err != nil || modRev != rev {
		fmt.Fprintf(stdout, "%s: revision %d\n", *host, rev)
		return nil
	}
	fmt.Fprintf(stdout, "%s: %s (revision %d)\n", *host, refList(d.RuleSets), rev)
	return nil
}

func refList(refs []proto.RuleSetRef) string {
	if len(refs) == 0 {
		return "none"
	}
	s := make([]string, len(refs))
	for i, r := range refs {
		s[i] = r.String()
	}
	return strings.Join(s, ", ")
}

// hostCommand parses the flags of status and telemetry: --host and -o.
func hostCommand(name string, args []string, stderr io.Writer) (*etcdSession, string, string, error) {
	fs := newFlagSet(name, stderr)
	var ef etcdFlags
	ef.register(fs)
	host := fs.String("host", "", "host name (required)")
	output := fs.String("o", "table", "output: table or json")
	rest, err := parseEtcdArgs(fs, args)
	if err != nil {
		return nil, "", "", err
	}
	if len(rest) > 0 {
		return nil, "", "", usageError(fmt.Sprintf("unexpected argument %q", rest[0]))
	}
	if *host == "" {
		return nil, "", "", usageError("--host is required")
	}
	if *output != "table" && *output != "json" {
		return nil, "", "", usageError(fmt.Sprintf("-o %q: want table or json", *output))
	}
	sess, err := ef.open()
	if err != nil {
		return nil, "", "", err
	}
	return sess, *host, *output, nil
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func runEtcdStatus(args []string, stdout, stderr io.Writer) error {
	sess, host, output, err := hostCommand("etcd status", args, stderr)
	if err != nil {
		return err
	}
	defer sess.close()
	st, err := sess.store.GetStatus(sess.ctx, host)
	if err != nil {
		return sess.wrap(err)
	}
	if output == "json" {
		return writeJSON(stdout, st)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "host:\t%s\n", st.Host)
	fmt.Fprintf(tw, "agent:\t%s, started %s\n", st.AgentVersion, formatTime(st.StartedAt))
	fmt.Fprintf(tw, "in sync:\t%s\n", yesNo(st.InSync))
	fmt.Fprintf(tw, "revision:\t%d\n", st.Revision)
	fmt.Fprintf(tw, "applied:\t%s\n", refList(st.Applied))
	fmt.Fprintf(tw, "updated:\t%s\n", formatTime(st.UpdatedAt))
	if e := st.LastError; e != nil {
		where := e.Document
		if e.Version > 0 {
			where += fmt.Sprintf(" (version %d)", e.Version)
		}
		fmt.Fprintf(tw, "last error:\t%s: %s (revision %d, at %s)\n", where, e.Message, e.Revision, formatTime(e.At))
	} else {
		fmt.Fprintf(tw, "last error:\tnone\n")
	}
	if e := st.DataPlaneError; e != nil {
		fmt.Fprintf(tw, "data plane:\tfailed since %s (%d attempts, next at %s): %s\n",
			formatTime(e.Since), e.Attempts, formatTime(e.NextAttemptAt), e.Message)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Interfaces) == 0 {
		fmt.Fprintln(stdout, "\nno interfaces")
		return nil
	}
	fmt.Fprintln(stdout)
	tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INTERFACE\tMODE\tATTACHED\tDIGEST\tRULES\tAPPLIED\tLAST WRITES")
	for _, i := range st.Interfaces {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\n", i.Name, i.AttachMode, yesNo(i.Attached), i.Digest, i.Rules, formatTime(i.AppliedAt), i.Writes)
	}
	return tw.Flush()
}

func runEtcdTelemetry(args []string, stdout, stderr io.Writer) error {
	sess, host, output, err := hostCommand("etcd telemetry", args, stderr)
	if err != nil {
		return err
	}
	defer sess.close()
	tel, err := sess.store.GetTelemetry(sess.ctx, host)
	if err != nil {
		return sess.wrap(err)
	}
	if output == "json" {
		return writeJSON(stdout, tel)
	}
	fmt.Fprintf(stdout, "host %s at %s, rates over %gs\n\n", tel.Host, formatTime(tel.At), tel.IntervalSeconds)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INTERFACE\tOUTCOME\tPACKETS\tBYTES\tPPS\tBPS")
	for _, i := range tel.Interfaces {
		names := make([]string, 0, len(i.Actions))
		for n := range i.Actions {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			a := i.Actions[n]
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f\t%.1f\n", i.Name, n, a.Packets, a.Bytes, a.PPS, a.BPS)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INTERFACE\tRULESET\tRULE\tACTION\tPACKETS\tBYTES\tPPS")
	omitted := 0
	for _, i := range tel.Interfaces {
		for _, r := range i.Rules {
			action := r.Action
			if r.DryRun {
				action += " (dry-run)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%.1f\n", i.Name, r.RuleSet, r.ID, action, r.Packets, r.Bytes, r.PPS)
		}
		omitted += i.RulesOmitted
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if omitted > 0 {
		fmt.Fprintf(stdout, "(%d quieter rules left out; the agent's /metrics has every rule)\n", omitted)
	}
	return nil
}

// hostSummary is one row of `etcd hosts -o json`.
type hostSummary struct {
	Host   string            `json:"host"`
	Status *proto.HostStatus `json:"status"`
}

func runEtcdHosts(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("etcd hosts", stderr)
	var ef etcdFlags
	ef.register(fs)
	output := fs.String("o", "table", "output: table or json")
	rest, err := parseEtcdArgs(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageError(fmt.Sprintf("unexpected argument %q", rest[0]))
	}
	if *output != "table" && *output != "json" {
		return usageError(fmt.Sprintf("-o %q: want table or json", *output))
	}
	sess, err := ef.open()
	if err != nil {
		return err
	}
	defer sess.close()
	hosts, err := sess.store.ListHosts(sess.ctx)
	if err != nil {
		return sess.wrap(err)
	}
	statuses, err := sess.store.GetStatuses(sess.ctx, hosts)
	if err != nil {
		return sess.wrap(err)
	}
	if *output == "json" {
		out := make([]hostSummary, len(hosts))
		for i, h := range hosts {
			out[i].Host = h
			if st, ok := statuses[h]; ok {
				out[i].Status = &st
			}
		}
		return writeJSON(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tAPPLIED\tIN SYNC\tREVISION\tUPDATED")
	for _, h := range hosts {
		st, ok := statuses[h]
		if !ok {
			// No status: the agent never ran, or its lease expired.
			fmt.Fprintf(tw, "%s\t-\tno status\t-\t-\n", h)
			continue
		}
		inSync := yesNo(st.InSync)
		if st.DataPlaneError != nil {
			inSync = "no (data plane failed)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", h, refList(st.Applied), inSync, st.Revision, formatTime(st.UpdatedAt))
	}
	return tw.Flush()
}
