package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/xdpfw/xdpfw/proto"
)

// Commands over the control plane's API (see api.go).

func runApply(args []string, stdout, stderr io.Writer) error {
	var file string
	var ifMatch int64
	c, af, rest, cancel, err := apiCommand("apply", args, stderr, "table, json, yaml", func(fs *flag.FlagSet) {
		fs.StringVar(&file, "f", "", "rules file, YAML or JSON, one or more RuleSet documents (- for stdin); feed files are read relative to it")
		fs.Int64Var(&ifMatch, "if-match", -1, "the version the change is based on: refused (exit 3) if the rule set moved on; 0: a new rule set; -1: any")
	})
	if err != nil {
		return err
	}
	defer cancel()
	if len(rest) > 0 {
		return usageError(fmt.Sprintf("unexpected argument %q", rest[0]))
	}
	if file == "" {
		return usageError("-f is required")
	}
	sets, err := readRuleSets(file)
	if err != nil {
		return err
	}
	// Check every document before writing any.
	for _, rs := range sets {
		if err := rs.Validate(); err != nil {
			return fmt.Errorf("%s: rule set %q:\n%w", file, rs.Name, err)
		}
	}
	var writes []proto.RuleSetWrite
	for _, rs := range sets {
		hdr := map[string]string{}
		if ifMatch >= 0 {
			hdr["If-Match"] = strconv.FormatInt(ifMatch, 10)
		}
		var w proto.RuleSetWrite
		if err := c.call("PUT", "/v1/rulesets/"+url.PathEscape(rs.Name), rs, hdr, &w); err != nil {
			if len(writes) > 0 {
				fmt.Fprintf(stderr, "xdpfwctl: written before the failure: %s\n", writtenList(writes))
			}
			return fmt.Errorf("apply %s: %w", rs.Name, err)
		}
		writes = append(writes, w)
	}
	switch af.output {
	case "json":
		return writeJSON(stdout, writes)
	case "yaml":
		return writeYAML(stdout, writes)
	}
	for _, w := range writes {
		if w.Version == 1 {
			fmt.Fprintf(stdout, "%s: version 1 (new rule set, revision %d)\n", w.Name, w.Revision)
			continue
		}
		fmt.Fprintf(stdout, "%s: version %d (revision %d)\n", w.Name, w.Version, w.Revision)
		if w.Diff != nil {
			printDiff(stdout, *w.Diff, "  ")
		}
	}
	return nil
}

func writtenList(ws []proto.RuleSetWrite) string {
	parts := make([]string, len(ws))
	for i, w := range ws {
		parts[i] = fmt.Sprintf("%s@%d", w.Name, w.Version)
	}
	return strings.Join(parts, ", ")
}

func writeYAML(w io.Writer, v any) error {
	data, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

// printDiff writes a diff one change a line: "+ rules[web]",
// "~ rules[ssh]: {...} -> {...}", "- sets.old (12 prefixes)".
func printDiff(w io.Writer, d proto.RuleSetDiff, indent string) {
	if len(d.Changes) == 0 {
		fmt.Fprintf(w, "%sno change from version %d\n", indent, d.From)
		return
	}
	for _, ch := range d.Changes {
		mark := map[string]string{proto.DiffAdded: "+", proto.DiffRemoved: "-", proto.DiffChanged: "~", proto.DiffMoved: ">"}[ch.Kind]
		if mark == "" {
			mark = "?"
		}
		line := indent + mark + " " + ch.Path
		switch {
		case ch.Added > 0 || ch.Removed > 0:
			line += fmt.Sprintf(": +%d -%d prefixes", ch.Added, ch.Removed)
		case ch.Kind == proto.DiffChanged || ch.Kind == proto.DiffMoved:
			line += fmt.Sprintf(": %s -> %s", compact(ch.From), compact(ch.To))
		}
		fmt.Fprintln(w, line)
	}
}

// compact renders a diff value on one line.
func compact(v any) string {
	if v == nil {
		return "none"
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(data)
}

func runGet(args []string, stdout, stderr io.Writer) error {
	var version int64
	c, af, rest, cancel, err := apiCommand("get", args, stderr, "table, json, yaml", func(fs *flag.FlagSet) {
		fs.Int64Var(&version, "version", 0, "with get ruleset NAME: the version to print (0: the head)")
	})
	if err != nil {
		return err
	}
	defer cancel()
	if len(rest) == 0 || len(rest) > 2 {
		return usageError("want get rulesets|ruleset|hosts|rollouts [NAME]")
	}
	what, name := rest[0], ""
	if len(rest) == 2 {
		name = rest[1]
	}
	switch what {
	case "rulesets", "ruleset", "rs":
		if name == "" {
			return getRuleSets(c, af, stdout)
		}
		return getRuleSet(c, af, name, version, stdout)
	case "hosts", "host":
		return getHosts(c, af, name, stdout)
	case "rollouts", "rollout":
		return getRollouts(c, af, name, stdout)
	}
	return usageError(fmt.Sprintf("get %q: want rulesets, hosts or rollouts", what))
}

func getRuleSets(c *apiClient, af *apiFlags, stdout io.Writer) error {
	var list []proto.RuleSetSummary
	if err := c.call("GET", "/v1/rulesets", nil, nil, &list); err != nil {
		return err
	}
	if done, err := structured(af, stdout, list); done {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tRELEASED\tRULES")
	for _, r := range list {
		released := "-"
		if r.Released > 0 {
			released = strconv.FormatInt(r.Released, 10)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\n", r.Name, r.Version, released, r.Rules)
	}
	return tw.Flush()
}

func getRuleSet(c *apiClient, af *apiFlags, name string, version int64, stdout io.Writer) error {
	path := "/v1/rulesets/" + url.PathEscape(name)
	if version > 0 {
		path += "/versions/" + strconv.FormatInt(version, 10)
	}
	var v proto.RuleSetVersion
	if err := c.call("GET", path, nil, nil, &v); err != nil {
		return err
	}
	if af.output == "json" {
		return writeJSON(stdout, v)
	}
	// As YAML that `apply -f` takes back.
	fmt.Fprintf(stdout, "# rule set %s, version %d\n", v.Name, v.Version)
	return writeYAML(stdout, v.RuleSet)
}

// structured writes v as JSON or YAML when -o asks for it.
func structured(af *apiFlags, w io.Writer, v any) (bool, error) {
	switch af.output {
	case "json":
		return true, writeJSON(w, v)
	case "yaml":
		return true, writeYAML(w, v)
	}
	return false, nil
}

// hostState is what the server says a host is doing, or (from an older
// server) the same worked out here.
func hostState(h proto.HostInfo) (state, reason string) {
	if h.State != "" {
		return h.State, h.Reason
	}
	return proto.HostStateOf(h)
}

// hostsPage is how many hosts xdpfwctl asks for per page.
const hostsPage = 1000

func getHosts(c *apiClient, af *apiFlags, name string, stdout io.Writer) error {
	if name != "" {
		var h proto.HostInfo
		if err := c.call("GET", "/v1/hosts/"+url.PathEscape(name), nil, nil, &h); err != nil {
			return err
		}
		if done, err := structured(af, stdout, h); done {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		state, reason := hostState(h)
		fmt.Fprintf(tw, "host:\t%s\n", h.Host)
		fmt.Fprintf(tw, "state:\t%s\n", state)
		if reason != "" {
			fmt.Fprintf(tw, "reason:\t%s\n", reason)
		}
		fmt.Fprintf(tw, "desired:\t%s\n", refList(h.Desired))
		if e := h.Enrollment; e != nil {
			fmt.Fprintf(tw, "enrolled:\tas etcd user %s by %s at %s, labels %s (these select its rule sets)\n", e.User, e.By, formatTime(e.EnrolledAt), labelList(e.Labels))
		} else {
			fmt.Fprintf(tw, "enrolled:\tno (its agent's labels select its rule sets)\n")
		}
		if st := h.Status; st != nil {
			fmt.Fprintf(tw, "applied:\t%s\n", refList(st.Applied))
			fmt.Fprintf(tw, "reported labels:\t%s\n", labelList(st.Labels))
			fmt.Fprintf(tw, "revision:\t%d\n", st.Revision)
			fmt.Fprintf(tw, "agent:\t%s, started %s\n", st.AgentVersion, formatTime(st.StartedAt))
			fmt.Fprintf(tw, "heartbeat:\t%s\n", formatTime(st.UpdatedAt))
			if e := st.LastError; e != nil {
				fmt.Fprintf(tw, "last error:\t%s: %s\n", e.Document, e.Message)
			}
			if e := st.DataPlaneError; e != nil {
				fmt.Fprintf(tw, "data plane:\tnot loaded since %s (%d attempts, next at %s): nothing new is applied; what was pinned before filters with its last rules\n",
					formatTime(e.Since), e.Attempts, formatTime(e.NextAttemptAt))
			}
			for _, i := range st.Interfaces {
				if i.Error != "" {
					fmt.Fprintf(tw, "interface %s:\tnot loaded, pinned program attached %s: %s\n", i.Name, yesNo(i.Attached), i.Error)
					continue
				}
				fmt.Fprintf(tw, "interface %s:\t%s mode, attached %s, %d rules, digest %.12s\n", i.Name, i.AttachMode, yesNo(i.Attached), i.Rules, i.Digest)
			}
		}
		return tw.Flush()
	}
	// Page by page: one answer stays small however big the fleet.
	var list []proto.HostInfo
	for path := "/v1/hosts?limit=" + strconv.Itoa(hostsPage); path != ""; path = c.next {
		var page []proto.HostInfo
		if err := c.call("GET", path, nil, nil, &page); err != nil {
			return err
		}
		list = append(list, page...)
	}
	if done, err := structured(af, stdout, list); done {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSTATE\tAPPLIED\tDESIRED\tLABELS\tHEARTBEAT\tREASON")
	for _, h := range list {
		applied, labels, beat := "-", "-", "-"
		if st := h.Status; st != nil {
			applied, labels, beat = refList(st.Applied), labelList(st.Labels), formatTime(st.UpdatedAt)
		}
		if e := h.Enrollment; e != nil {
			labels = labelList(e.Labels) + " (enrolled)"
		}
		state, reason := hostState(h)
		if reason == "" {
			reason = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Host, state, applied, refList(h.Desired), labels, beat, oneLine(reason))
	}
	return tw.Flush()
}

func labelList(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + l[k]
	}
	return strings.Join(keys, ",")
}

func getRollouts(c *apiClient, af *apiFlags, id string, stdout io.Writer) error {
	if id != "" {
		var r proto.Rollout
		if err := c.call("GET", "/v1/rollouts/"+url.PathEscape(id), nil, nil, &r); err != nil {
			return err
		}
		if done, err := structured(af, stdout, r); done {
			return err
		}
		return printRollout(stdout, r)
	}
	var list []proto.Rollout
	if err := c.call("GET", "/v1/rollouts", nil, nil, &list); err != nil {
		return err
	}
	if done, err := structured(af, stdout, list); done {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRULESET\tVERSION\tSTATE\tWAVE\tHOSTS APPLIED\tCREATED")
	for _, r := range list {
		applied, total := rolloutCounts(r)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d/%d\t%s\n", r.ID, r.Spec.RuleSet, r.Spec.Version, r.Status.State,
			waveOf(r), applied, total, formatTime(r.CreatedAt))
	}
	return tw.Flush()
}

func rolloutCounts(r proto.Rollout) (applied, total int) {
	for _, h := range r.Status.Hosts {
		total++
		if h.State == proto.HostApplied {
			applied++
		}
	}
	return applied, total
}

func waveOf(r proto.Rollout) string {
	waves := r.Spec.Waves
	if len(waves) == 0 {
		waves = []string{"100%"}
	}
	if r.Status.Wave >= len(waves) {
		return fmt.Sprintf("done (%d)", len(waves))
	}
	return fmt.Sprintf("%d/%d (%s)", r.Status.Wave+1, len(waves), waves[r.Status.Wave])
}

func printRollout(w io.Writer, r proto.Rollout) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "rollout:\t%s\n", r.ID)
	fmt.Fprintf(tw, "rule set:\t%s@%d\n", r.Spec.RuleSet, r.Spec.Version)
	fmt.Fprintf(tw, "state:\t%s (operator wants %s)\n", r.Status.State, r.Control.Want)
	fmt.Fprintf(tw, "wave:\t%s of %s\n", waveOf(r), strings.Join(r.Spec.Waves, ", "))
	if r.Status.Message != "" {
		fmt.Fprintf(tw, "message:\t%s\n", r.Status.Message)
	}
	fmt.Fprintf(tw, "created:\t%s by %s\n", formatTime(r.CreatedAt), r.CreatedBy)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Status.Hosts) == 0 {
		return nil
	}
	names := make([]string, 0, len(r.Status.Hosts))
	for n := range r.Status.Hosts {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := r.Status.Hosts[names[i]], r.Status.Hosts[names[j]]
		if a.Wave != b.Wave {
			return a.Wave < b.Wave
		}
		return names[i] < names[j]
	})
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tWAVE\tSTATE\tPREVIOUS\tERROR")
	for _, n := range names {
		h := r.Status.Hosts[n]
		prev, errText := "-", "-"
		if h.Previous > 0 {
			prev = strconv.FormatInt(h.Previous, 10)
		}
		if h.Error != "" {
			errText = h.Error
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", n, h.Wave+1, h.State, prev, errText)
	}
	return tw.Flush()
}

func runHistory(args []string, stdout, stderr io.Writer) error {
	c, af, rest, cancel, err := apiCommand("history", args, stderr, "table, json, yaml", nil)
	if err != nil {
		return err
	}
	defer cancel()
	if len(rest) != 1 {
		return usageError("want history NAME")
	}
	var list []proto.RuleSetVersionInfo
	if err := c.call("GET", "/v1/rulesets/"+url.PathEscape(rest[0])+"/versions", nil, nil, &list); err != nil {
		return err
	}
	if done, err := structured(af, stdout, list); done {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tREVISION\tRULES\tAUTHOR\tAT")
	for _, v := range list {
		author := v.Author
		if author == "" {
			author = "-"
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\n", v.Version, v.Revision, v.Rules, author, formatTime(v.At))
	}
	return tw.Flush()
}

func runDiff(args []string, stdout, stderr io.Writer) error {
	c, af, rest, cancel, err := apiCommand("diff", args, stderr, "table, json, yaml", nil)
	if err != nil {
		return err
	}
	defer cancel()
	if len(rest) != 3 {
		return usageError("want diff NAME FROM TO (versions)")
	}
	from, err1 := strconv.ParseInt(rest[1], 10, 64)
	to, err2 := strconv.ParseInt(rest[2], 10, 64)
	if err1 != nil || err2 != nil || from < 1 || to < 1 {
		return usageError(fmt.Sprintf("versions %q and %q: want numbers from 1", rest[1], rest[2]))
	}
	var d proto.RuleSetDiff
	path := fmt.Sprintf("/v1/rulesets/%s/diff?from=%d&to=%d", url.PathEscape(rest[0]), from, to)
	if err := c.call("GET", path, nil, nil, &d); err != nil {
		return err
	}
	if done, err := structured(af, stdout, d); done {
		return err
	}
	fmt.Fprintf(stdout, "%s: version %d -> %d\n", d.Name, d.From, d.To)
	printDiff(stdout, d, "  ")
	return nil
}

func runRollback(args []string, stdout, stderr io.Writer) error {
	var to int64
	c, af, rest, cancel, err := apiCommand("rollback", args, stderr, "table, json, yaml", func(fs *flag.FlagSet) {
		fs.Int64Var(&to, "to", 0, "the version to go back to (required)")
	})
	if err != nil {
		return err
	}
	defer cancel()
	if len(rest) != 1 || to < 1 {
		return usageError("want rollback NAME --to VERSION")
	}
	var w proto.RuleSetWrite
	if err := c.call("POST", "/v1/rulesets/"+url.PathEscape(rest[0])+"/rollback", map[string]int64{"to": to}, nil, &w); err != nil {
		return err
	}
	if done, err := structured(af, stdout, w); done {
		return err
	}
	fmt.Fprintf(stdout, "%s: version %d, equal to version %d (revision %d); roll it out with `xdpfwctl rollout start %s --version %d`\n",
		w.Name, w.Version, to, w.Revision, w.Name, w.Version)
	if w.Diff != nil {
		printDiff(stdout, *w.Diff, "  ")
	}
	return nil
}

var rolloutCommands = map[string]command{
	"start":  {runRolloutStart, "roll a rule-set version out to the fleet in waves"},
	"status": {runRolloutStatus, "a rollout's progress, host by host (all rollouts without an ID)"},
	"pause":  {rolloutControl("pause"), "stop advancing (hosts keep what they have)"},
	"resume": {rolloutControl("resume"), "carry on with a paused or halted rollout"},
	"abort":  {rolloutControl("abort"), "return every touched host to its previous version"},
}

func runRollout(args []string, stdout, stderr io.Writer) error {
	return dispatch("xdpfwctl rollout", rolloutCommands, args, stdout, stderr)
}

func runRolloutStart(args []string, stdout, stderr io.Writer) error {
	var spec proto.RolloutSpec
	var waves, selector string
	c, af, rest, cancel, err := apiCommand("rollout start", args, stderr, "table, json, yaml", func(fs *flag.FlagSet) {
		fs.Int64Var(&spec.Version, "version", 0, "the version to roll out (required)")
		fs.StringVar(&waves, "waves", "100%", "cumulative waves: host counts or percentages, e.g. 1,10%,100%")
		fs.StringVar(&spec.Pause, "pause", "", "how long each wave stays healthy before the next starts, e.g. 30s")
		fs.IntVar(&spec.MaxErrorHosts, "max-error-hosts", 0, "hosts that may fail before the rollout halts")
		fs.StringVar(&spec.Deadline, "deadline", "", "how long a host has to apply the version (default 2m)")
		fs.StringVar(&selector, "selector", "", "hosts by label, k=v,k2=v2 (default: the rule set's selector)")
	})
	if err != nil {
		return err
	}
	defer cancel()
	if len(rest) != 1 || spec.Version < 1 {
		return usageError("want rollout start NAME --version N")
	}
	spec.RuleSet = rest[0]
	for _, w := range strings.Split(waves, ",") {
		spec.Waves = append(spec.Waves, strings.TrimSpace(w))
	}
	if selector != "" {
		spec.Selector = map[string]string{}
		for _, kv := range strings.Split(selector, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return usageError(fmt.Sprintf("--selector %q: want k=v,k2=v2", selector))
			}
			spec.Selector[k] = v
		}
	}
	var r proto.Rollout
	if err := c.call("POST", "/v1/rollouts", spec, nil, &r); err != nil {
		return err
	}
	if done, err := structured(af, stdout, r); done {
		return err
	}
	fmt.Fprintf(stdout, "rollout %s: %s@%d in waves %s; follow it with `xdpfwctl rollout status %s`\n",
		r.ID, r.Spec.RuleSet, r.Spec.Version, strings.Join(r.Spec.Waves, ", "), r.ID)
	return nil
}

func runRolloutStatus(args []string, stdout, stderr io.Writer) error {
	c, af, rest, cancel, err := apiCommand("rollout status", args, stderr, "table, json, yaml", nil)
	if err != nil {
		return err
	}
	defer cancel()
	if len(rest) > 1 {
		return usageError("want rollout status [ID]")
	}
	id := ""
	if len(rest) == 1 {
		id = rest[0]
	}
	return getRollouts(c, af, id, stdout)
}

func rolloutControl(verb string) func(args []string, stdout, stderr io.Writer) error {
	return func(args []string, stdout, stderr io.Writer) error {
		c, af, rest, cancel, err := apiCommand("rollout "+verb, args, stderr, "table, json, yaml", nil)
		if err != nil {
			return err
		}
		defer cancel()
		if len(rest) != 1 {
			return usageError(fmt.Sprintf("want rollout %s ID", verb))
		}
		var r proto.Rollout
		if err := c.call("POST", "/v1/rollouts/"+url.PathEscape(rest[0])+"/"+verb, nil, nil, &r); err != nil {
			return err
		}
		if done, err := structured(af, stdout, r); done {
			return err
		}
		fmt.Fprintf(stdout, "rollout %s: %s (operator wants %s)\n", r.ID, r.Status.State, r.Control.Want)
		return nil
	}
}

func telemetryPath(host, ruleset string) string {
	q := url.Values{}
	if host != "" {
		q.Set("host", host)
	}
	if ruleset != "" {
		q.Set("ruleset", ruleset)
	}
	if len(q) == 0 {
		return "/v1/telemetry"
	}
	return "/v1/telemetry?" + q.Encode()
}

func runStats(args []string, stdout, stderr io.Writer) error {
	var host, ruleset string
	c, af, rest, cancel, err := apiCommand("stats", args, stderr, "table, json, yaml", func(fs *flag.FlagSet) {
		fs.StringVar(&host, "host", "", "one host only")
		fs.StringVar(&ruleset, "ruleset", "", "one rule set's rules only")
	})
	if err != nil {
		return err
	}
	defer cancel()
	if len(rest) > 0 {
		return usageError(fmt.Sprintf("unexpected argument %q", rest[0]))
	}
	var rep proto.TelemetryReport
	if err := c.call("GET", telemetryPath(host, ruleset), nil, nil, &rep); err != nil {
		return err
	}
	if done, err := structured(af, stdout, rep); done {
		return err
	}
	return printTelemetry(stdout, rep, 0)
}

// printTelemetry writes a report's outcomes and its rules (the first limit,
// all when limit is 0), busiest first.
func printTelemetry(w io.Writer, rep proto.TelemetryReport, limit int) error {
	fmt.Fprintf(w, "%d host(s), at %s\n\n", rep.Hosts, formatTime(rep.At))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OUTCOME\tPACKETS\tBYTES\tPPS\tBPS")
	names := make([]string, 0, len(rep.Actions))
	for n := range rep.Actions {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		a := rep.Actions[n]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\n", n, a.Packets, a.Bytes, a.PPS, a.BPS)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	rules := append([]proto.RuleTelemetry(nil), rep.Rules...)
	sort.SliceStable(rules, func(i, j int) bool {
		if rules[i].PPS != rules[j].PPS {
			return rules[i].PPS > rules[j].PPS
		}
		return rules[i].Packets > rules[j].Packets
	})
	if limit > 0 && len(rules) > limit {
		rules = rules[:limit]
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RULESET\tRULE\tACTION\tPACKETS\tBYTES\tPPS\tOVER LIMIT PPS\tTOP DROPPED SOURCES")
	for _, r := range rules {
		action := r.Action
		if r.DryRun {
			action += " (dry-run)"
		}
		limited := "-"
		if r.Limited != nil {
			limited = fmt.Sprintf("%.1f", r.Limited.PPS)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%.1f\t%s\t%s\n", r.RuleSet, r.ID, action, r.Packets, r.Bytes, r.PPS, limited, sourcesLabel(r.TopSources))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, h := range rep.PerHost {
		fmt.Fprintf(w, "\nhost %s at %s\n", h.Host, formatTime(h.At))
		for _, i := range h.Interfaces {
			for _, r := range i.Rules {
				fmt.Fprintf(w, "  %s %s/%s %s: %d packets, %.1f pps\n", i.Name, r.RuleSet, r.ID, r.Action, r.Packets, r.PPS)
			}
		}
	}
	return nil
}

// sourcesLabel lists dropped sources with their packets: "a (n), b (m)".
func sourcesLabel(srcs []proto.SourceCount) string {
	if len(srcs) == 0 {
		return "-"
	}
	parts := make([]string, len(srcs))
	for i, s := range srcs {
		parts[i] = fmt.Sprintf("%s (%d)", s.Src, s.Packets)
	}
	return strings.Join(parts, ", ")
}

// clearScreen moves the cursor home and clears the terminal (ANSI).
const clearScreen = "\x1b[H\x1b[2J"

func runTop(args []string, stdout, stderr io.Writer) error {
	var interval time.Duration
	var count, limit int
	var ruleset string
	c, _, rest, cancel, err := apiCommand("top", args, stderr, "", func(fs *flag.FlagSet) {
		fs.DurationVar(&interval, "interval", 2*time.Second, "time between refreshes")
		fs.IntVar(&count, "count", 0, "stop after this many refreshes (0: until interrupted)")
		fs.IntVar(&limit, "limit", 20, "rules shown")
		fs.StringVar(&ruleset, "ruleset", "", "one rule set's rules only")
	})
	if err != nil {
		return err
	}
	defer cancel()
	if len(rest) > 0 {
		return usageError(fmt.Sprintf("unexpected argument %q", rest[0]))
	}
	if interval <= 0 || limit <= 0 || count < 0 {
		return usageError("--interval and --limit must be positive, --count 0 or more")
	}
	for i := 0; count == 0 || i < count; i++ {
		if i > 0 {
			time.Sleep(interval)
		}
		var rep proto.TelemetryReport
		if err := c.call("GET", telemetryPath("", ruleset), nil, nil, &rep); err != nil {
			return err
		}
		fmt.Fprint(stdout, clearScreen)
		fmt.Fprintf(stdout, "xdpfwctl top: the busiest rules fleet-wide, every %v (Ctrl-C to stop)\n", interval)
		if err := printTelemetry(stdout, rep, limit); err != nil {
			return err
		}
	}
	return nil
}

// oneLine keeps a message on its table row.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }
