package rollout

import (
	"errors"
	"reflect"
	"testing"

	"github.com/xdpfw/xdpfw/proto"
)

func TestCheckSpec(t *testing.T) {
	good := proto.RolloutSpec{RuleSet: "edge", Version: 2}
	tests := []struct {
		name string
		spec func(s *proto.RolloutSpec)
		want []proto.Problem
	}{
		{"defaults", func(*proto.RolloutSpec) {}, nil},
		{"waves count then percentages", func(s *proto.RolloutSpec) { s.Waves = []string{"1", "10%", "50%", "100%"} }, nil},
		{"waves counts", func(s *proto.RolloutSpec) { s.Waves = []string{"1", "5", "20"} }, nil},
		{"durations and tolerance", func(s *proto.RolloutSpec) {
			s.Pause, s.Deadline, s.MaxErrorHosts = "30s", "5m", 3
		}, nil},
		{"selector", func(s *proto.RolloutSpec) { s.Selector = map[string]string{"role": "edge", "dc/zone": "eu-1.a"} }, nil},

		{"no rule set", func(s *proto.RolloutSpec) { s.RuleSet = "" }, []proto.Problem{{Path: "ruleset", Message: "required"}}},
		{"bad rule set name", func(s *proto.RolloutSpec) { s.RuleSet = "Edge/x" },
			[]proto.Problem{{Path: "ruleset", Message: `"Edge/x" is not a valid rule set name (a lowercase RFC 1123 label)`}}},
		{"version 0", func(s *proto.RolloutSpec) { s.Version = 0 }, []proto.Problem{{Path: "version", Message: "must be 1 or more, not 0"}}},
		{"percentage over 100", func(s *proto.RolloutSpec) { s.Waves = []string{"1", "150%"} },
			[]proto.Problem{{Path: "waves[1]", Message: `"150%" is not a count or a percentage of 1-100%`}}},
		{"not a number", func(s *proto.RolloutSpec) { s.Waves = []string{"ten"} },
			[]proto.Problem{{Path: "waves[0]", Message: `"ten" is not a count or a percentage of 1-100%`}}},
		{"zero count", func(s *proto.RolloutSpec) { s.Waves = []string{"0", "100%"} },
			[]proto.Problem{{Path: "waves[0]", Message: `"0" is not a count or a percentage of 1-100%`}}},
		{"zero percent", func(s *proto.RolloutSpec) { s.Waves = []string{"0%"} },
			[]proto.Problem{{Path: "waves[0]", Message: `"0%" is not a count or a percentage of 1-100%`}}},
		{"fraction", func(s *proto.RolloutSpec) { s.Waves = []string{"2.5%"} },
			[]proto.Problem{{Path: "waves[0]", Message: `"2.5%" is not a count or a percentage of 1-100%`}}},
		{"leading zero", func(s *proto.RolloutSpec) { s.Waves = []string{"05"} },
			[]proto.Problem{{Path: "waves[0]", Message: `"05" is not a count or a percentage of 1-100%`}}},
		{"equal percentages", func(s *proto.RolloutSpec) { s.Waves = []string{"50%", "50%"} },
			[]proto.Problem{{Path: "waves[1]", Message: `"50%" does not add hosts to the previous wave "50%" (waves are cumulative: each must be larger)`}}},
		{"decreasing counts", func(s *proto.RolloutSpec) { s.Waves = []string{"5", "3"} },
			[]proto.Problem{{Path: "waves[1]", Message: `"3" does not add hosts to the previous wave "5" (waves are cumulative: each must be larger)`}}},
		{"count after percentage", func(s *proto.RolloutSpec) { s.Waves = []string{"10%", "20"} },
			[]proto.Problem{{Path: "waves[1]", Message: `a count ("20") after a percentage ("10%") is smaller than it in a large fleet: use a percentage`}}},
		{"after 100%", func(s *proto.RolloutSpec) { s.Waves = []string{"100%", "100%"} },
			[]proto.Problem{{Path: "waves[1]", Message: `"100%" does not add hosts to the previous wave "100%" (waves are cumulative: each must be larger)`}}},
		{"bad pause", func(s *proto.RolloutSpec) { s.Pause = "10" },
			[]proto.Problem{{Path: "pause", Message: `"10" is not a duration (e.g. "30s", "5m")`}}},
		{"negative pause", func(s *proto.RolloutSpec) { s.Pause = "-1s" }, []proto.Problem{{Path: "pause", Message: `"-1s" is negative`}}},
		{"zero deadline", func(s *proto.RolloutSpec) { s.Deadline = "0s" },
			[]proto.Problem{{Path: "deadline", Message: `"0s": a host needs some time to apply the version (want more than 0)`}}},
		{"negative tolerance", func(s *proto.RolloutSpec) { s.MaxErrorHosts = -1 },
			[]proto.Problem{{Path: "maxErrorHosts", Message: "must be 0 or more, not -1"}}},
		{"bad selector", func(s *proto.RolloutSpec) { s.Selector = map[string]string{"": "x", "role": "edge server"} },
			[]proto.Problem{
				{Path: "selector", Message: `invalid key "" (letters, digits, '.', '_', '/' and '-', at most 63 characters)`},
				{Path: "selector.role", Message: `invalid value "edge server" (letters, digits, '.', '_', '/' and '-', at most 63 characters)`},
			}},
		{"every problem at once", func(s *proto.RolloutSpec) {
			*s = proto.RolloutSpec{RuleSet: "", Version: -1, Waves: []string{"x", "150%"}, Pause: "soon", Deadline: "-2m", MaxErrorHosts: -3}
		}, []proto.Problem{
			{Path: "ruleset", Message: "required"},
			{Path: "version", Message: "must be 1 or more, not -1"},
			{Path: "waves[0]", Message: `"x" is not a count or a percentage of 1-100%`},
			{Path: "waves[1]", Message: `"150%" is not a count or a percentage of 1-100%`},
			{Path: "pause", Message: `"soon" is not a duration (e.g. "30s", "5m")`},
			{Path: "deadline", Message: `"-2m": a host needs some time to apply the version (want more than 0)`},
			{Path: "maxErrorHosts", Message: "must be 0 or more, not -3"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := good
			tt.spec(&spec)
			_, _, got := checkSpec(spec)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("problems:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestCheckSpecDefaults(t *testing.T) {
	norm, p, problems := checkSpec(proto.RolloutSpec{RuleSet: "edge", Version: 2, Selector: map[string]string{}})
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	want := proto.RolloutSpec{RuleSet: "edge", Version: 2, Waves: []string{"100%"}, Pause: "0s", Deadline: "2m0s"}
	if !reflect.DeepEqual(norm, want) {
		t.Fatalf("normalized spec = %+v, want %+v", norm, want)
	}
	if p.deadline != DefaultDeadline || p.pause != 0 || len(p.waves) != 1 || p.waves[0].percent != 100 {
		t.Fatalf("plan = %+v", p)
	}
}

// TestCreateValidation: what needs etcd (the rule set and the version
// exist) and the error's shape: ErrInvalid wrapping a
// *proto.ValidationError with every problem.
func TestCreateValidation(t *testing.T) {
	e := newEnv(t)
	e.putVersions("edge", nil, 2)
	tests := []struct {
		name string
		spec proto.RolloutSpec
		want []proto.Problem
	}{
		{"unknown rule set", proto.RolloutSpec{RuleSet: "core", Version: 1},
			[]proto.Problem{{Path: "ruleset", Message: `rule set "core" does not exist (no /xdpfw-test/rulesets/core/head)`}}},
		{"unknown version", proto.RolloutSpec{RuleSet: "edge", Version: 3},
			[]proto.Problem{{Path: "version", Message: "rule set edge has no version 3 (no /xdpfw-test/rulesets/edge/versions/3; the latest is 2)"}}},
		{"spec problems and the version", proto.RolloutSpec{RuleSet: "edge", Version: 7, Waves: []string{"1", "150%"}},
			[]proto.Problem{
				{Path: "waves[1]", Message: `"150%" is not a count or a percentage of 1-100%`},
				{Path: "version", Message: "rule set edge has no version 7 (no /xdpfw-test/rulesets/edge/versions/7; the latest is 2)"},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.mgr.Create(testCtx(t), tt.spec, "tester", nil)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Create = %v, want ErrInvalid", err)
			}
			var verr *proto.ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("Create = %v, want a *proto.ValidationError in it", err)
			}
			if !reflect.DeepEqual(verr.Problems, tt.want) {
				t.Fatalf("problems:\n got %q\nwant %q", verr.Problems, tt.want)
			}
		})
	}
	list, err := e.mgr.List(testCtx(t))
	if err != nil || len(list) != 0 {
		t.Fatalf("after refused creations: List = %v, %v; want nothing written", list, err)
	}
}
