package rollout

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/xdpfw/xdpfw/proto"
)

// Defaults and limits of a RolloutSpec.
const (
	DefaultDeadline = 2 * time.Minute
	// MaxWaves bounds the waves of one rollout.
	MaxWaves = 100
)

// DefaultWaves is the waves of a spec that names none: every selected
// host at once.
var DefaultWaves = []string{"100%"}

// wave is one parsed entry of RolloutSpec.Waves: a cumulative count of
// hosts (count > 0) or a percentage of the selected hosts (percent > 0).
type wave struct {
	count   int
	percent int
}

func (w wave) String() string {
	if w.percent > 0 {
		return strconv.Itoa(w.percent) + "%"
	}
	return strconv.Itoa(w.count)
}

// plan is a RolloutSpec parsed: what the controller works from.
type plan struct {
	ruleSet  string
	version  int64
	selector map[string]string
	waves    []wave
	pause    time.Duration
	deadline time.Duration
	maxError int
}

func (p plan) ref() proto.RuleSetRef { return proto.RuleSetRef{Name: p.ruleSet, Version: p.version} }

// parseWave reads "N" (N >= 1) or "P%" (P from 1 to 100).
func parseWave(s string) (wave, bool) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 100 || strconv.Itoa(n) != p {
			return wave{}, false
		}
		return wave{percent: n}, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || strconv.Itoa(n) != s {
		return wave{}, false
	}
	return wave{count: n}, true
}

// checkSpec checks what a spec says by itself (not whether its rule set
// exists) and returns it with the defaults filled in (durations in Go's
// canonical form), its plan, and every problem with its path.
func checkSpec(spec proto.RolloutSpec) (proto.RolloutSpec, plan, []proto.Problem) {
	var problems []proto.Problem
	add := func(path, format string, args ...any) {
		problems = append(problems, proto.Problem{Path: path, Message: fmt.Sprintf(format, args...)})
	}
	out := spec
	p := plan{ruleSet: spec.RuleSet, version: spec.Version, selector: spec.Selector, maxError: spec.MaxErrorHosts}

	switch {
	case spec.RuleSet == "":
		add("ruleset", "required")
	case !validRuleSetName(spec.RuleSet):
		add("ruleset", "%q is not a valid rule set name (a lowercase RFC 1123 label)", spec.RuleSet)
	}
	if spec.Version < 1 {
		add("version", "must be 1 or more, not %d", spec.Version)
	}

	if len(spec.Waves) == 0 {
		out.Waves = append([]string(nil), DefaultWaves...)
	} else {
		out.Waves = append([]string(nil), spec.Waves...)
	}
	if len(out.Waves) > MaxWaves {
		add("waves", "%d waves, the limit is %d", len(out.Waves), MaxWaves)
	}
	var prev *wave
	for i, s := range out.Waves {
		path := fmt.Sprintf("waves[%d]", i)
		w, ok := parseWave(s)
		if !ok {
			add(path, "%q is not a count or a percentage of 1-100%%", s)
			prev = nil
			continue
		}
		if prev != nil {
			switch {
			case w.count > 0 && prev.count > 0 && w.count <= prev.count:
				add(path, "%q does not add hosts to the previous wave %q (waves are cumulative: each must be larger)", s, prev.String())
			case w.percent > 0 && prev.percent > 0 && w.percent <= prev.percent:
				add(path, "%q does not add hosts to the previous wave %q (waves are cumulative: each must be larger)", s, prev.String())
			case w.count > 0 && prev.percent > 0:
				add(path, "a count (%q) after a percentage (%q) is smaller than it in a large fleet: use a percentage", s, prev.String())
			}
		}
		p.waves = append(p.waves, w)
		prev = &w
	}

	p.pause = 0
	if spec.Pause != "" {
		d, err := time.ParseDuration(spec.Pause)
		switch {
		case err != nil:
			add("pause", "%q is not a duration (e.g. \"30s\", \"5m\")", spec.Pause)
		case d < 0:
			add("pause", "%q is negative", spec.Pause)
		default:
			p.pause = d
		}
	}
	out.Pause = p.pause.String()

	p.deadline = DefaultDeadline
	if spec.Deadline != "" {
		d, err := time.ParseDuration(spec.Deadline)
		switch {
		case err != nil:
			add("deadline", "%q is not a duration (e.g. \"30s\", \"5m\")", spec.Deadline)
		case d <= 0:
			add("deadline", "%q: a host needs some time to apply the version (want more than 0)", spec.Deadline)
		default:
			p.deadline = d
		}
	}
	out.Deadline = p.deadline.String()

	if spec.MaxErrorHosts < 0 {
		add("maxErrorHosts", "must be 0 or more, not %d", spec.MaxErrorHosts)
	}

	keys := make([]string, 0, len(spec.Selector))
	for k := range spec.Selector {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !validLabel(k) || k == "" {
			add("selector", "invalid key %q (%s)", k, labelRules)
			continue
		}
		if v := spec.Selector[k]; !validLabel(v) {
			add("selector."+k, "invalid value %q (%s)", v, labelRules)
		}
	}
	if len(spec.Selector) == 0 {
		out.Selector = nil
	}
	return out, p, problems
}

// parsePlan parses a stored spec; a spec that Create accepted always
// parses.
func parsePlan(spec proto.RolloutSpec) (plan, error) {
	_, p, problems := checkSpec(spec)
	if len(problems) > 0 {
		return plan{}, &proto.ValidationError{Problems: problems}
	}
	return p, nil
}

// The label rules of proto's rule-set selector (proto.RuleSet.Validate):
// a rollout's selector is checked the same way.
const labelRules = "letters, digits, '.', '_', '/' and '-', at most 63 characters"

func validLabel(s string) bool {
	if len(s) > proto.MaxNameLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && !strings.ContainsRune("._/-", rune(c)) {
			return false
		}
	}
	return true
}

// validRuleSetName accepts the names proto accepts for rule sets (it
// relies on the key parser, which accepts only those).
func validRuleSetName(name string) bool {
	k := proto.NewKeys("/")
	_, _, ok := k.ParseRuleSetVersion(k.RuleSetVersion(name, 1))
	return ok
}
