package agent

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/xdpfw/xdpfw/proto"
)

// The watch brings only the host's desired state and versions of the rule
// sets it enforces: writes of any other rule set cost the host nothing,
// and a rule set it is given is followed from then on.
func TestAgentFollowsOnlyTheRuleSetsItEnforces(t *testing.T) {
	f := newFixture(t)
	f.putRuleSet("edge", 1, 22)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})
	a, _ := f.start()
	f.waitStatus("edge@1 applied", applied(proto.RuleSetRef{Name: "edge", Version: 1}))
	events := func() float64 { return counterValue(t, a.metrics.watchEvents) }
	waitEvents := func(what string, min float64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); events() < min; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v watch events, want at least %v", what, events(), min)
			}
		}
	}

	before := events()
	for v := int64(1); v <= 5; v++ {
		f.putRuleSet("other", v, 80)
	}
	f.putRuleSet("edge", 2, 23) // followed: brought ahead of its rollout
	waitEvents("edge@2 written", before+1)
	time.Sleep(300 * time.Millisecond) // let anything else arrive
	if got := events() - before; got != 1 {
		t.Fatalf("%v watch events for five versions of a rule set the host does not enforce and one of one it does, want 1", got)
	}
	if counterValue(t, a.metrics.docsAhead) < 1 {
		t.Fatal("edge@2 was not decoded ahead of its rollout")
	}

	// Given other@5, the host follows other too.
	f.desire(proto.RuleSetRef{Name: "edge", Version: 2}, proto.RuleSetRef{Name: "other", Version: 5})
	f.waitStatus("edge@2 and other@5 applied", applied(proto.RuleSetRef{Name: "edge", Version: 2}, proto.RuleSetRef{Name: "other", Version: 5}))
	before = events()
	f.putRuleSet("other", 6, 81)
	waitEvents("other@6 written", before+1)
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
