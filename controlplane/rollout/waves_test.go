package rollout

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"
)

func mustWaves(t *testing.T, specs ...string) []wave {
	t.Helper()
	var out []wave
	for _, s := range specs {
		w, ok := parseWave(s)
		if !ok {
			t.Fatalf("parseWave(%q) failed", s)
		}
		out = append(out, w)
	}
	return out
}

func TestWaveSizes(t *testing.T) {
	tests := []struct {
		waves []string
		n     int
		want  []int
	}{
		{[]string{"1", "50%", "100%"}, 10, []int{1, 5, 10}},
		{[]string{"1", "50%", "100%"}, 1, []int{1, 1, 1}},
		{[]string{"1", "50%", "100%"}, 0, []int{0, 0, 0}},
		{[]string{"1", "50%", "100%"}, 3, []int{1, 2, 3}},
		// A count larger than the fleet is the fleet; a percentage
		// rounds up; a wave never shrinks below the one before.
		{[]string{"5", "10%", "100%"}, 3, []int{3, 3, 3}},
		{[]string{"2", "10%", "100%"}, 45, []int{2, 5, 45}},
		{[]string{"10", "5%", "100%"}, 100, []int{10, 10, 100}},
		{[]string{"33%", "66%"}, 10, []int{4, 7}},
		{[]string{"100%"}, 7, []int{7}},
	}
	for _, tt := range tests {
		got := waveSizes(mustWaves(t, tt.waves...), tt.n)
		if !slices.Equal(got, tt.want) {
			t.Errorf("waveSizes(%v, %d) = %v, want %v", tt.waves, tt.n, got, tt.want)
		}
	}
}

func TestAssignWaves(t *testing.T) {
	var hosts []string
	for i := range 10 {
		hosts = append(hosts, fmt.Sprintf("h%d", i))
	}
	waves := mustWaves(t, "1", "50%", "100%")
	got := assignWaves("r-1", hosts, waves)
	order := orderHosts("r-1", hosts)
	for i, h := range order {
		want := 2
		switch {
		case i < 1:
			want = 0
		case i < 5:
			want = 1
		}
		if got[h] != want {
			t.Errorf("host %s at place %d: wave %d, want %d", h, i, got[h], want)
		}
	}
	// The order is the rollout's own, and does not depend on the input's.
	if other := orderHosts("r-2", hosts); slices.Equal(other, order) {
		t.Errorf("two rollouts order 10 hosts the same way: %v", order)
	}
	rev := slices.Clone(hosts)
	slices.Reverse(rev)
	if again := orderHosts("r-1", rev); !slices.Equal(again, order) {
		t.Errorf("order depends on the input order: %v and %v", again, order)
	}
	// A host that joins keeps the others' relative order.
	joined := orderHosts("r-1", append(slices.Clone(hosts), "late"))
	if without := slices.DeleteFunc(joined, func(h string) bool { return h == "late" }); !slices.Equal(without, order) {
		t.Errorf("joining moved the others: %v, was %v", without, order)
	}
	// A last wave under 100% leaves hosts to the release.
	part := assignWaves("r-1", hosts, mustWaves(t, "2", "50%"))
	beyond := 0
	for _, w := range part {
		if w == 2 {
			beyond++
		}
	}
	if beyond != 5 {
		t.Errorf("waves [2 50%%] of 10 hosts: %d hosts past the last wave, want 5", beyond)
	}
}

func TestNextID(t *testing.T) {
	at := time.Date(2026, 12, 2, 3, 15, 0, 500, time.UTC)
	tests := []struct {
		newest, want string
	}{
		{"", "r-20261202T031500Z-0001"},
		{"r-20261202T031459Z-0007", "r-20261202T031500Z-0001"},
		{"r-20261202T031500Z-0001", "r-20261202T031500Z-0002"},
		// A clock behind the newest ID borrows its time.
		{"r-20261202T031510Z-0003", "r-20261202T031510Z-0004"},
		{"r-20261202T031500Z-9999", "r-20261202T031501Z-0001"},
		{"imported-by-hand", "r-20261202T031500Z-0001"},
	}
	for _, tt := range tests {
		got := nextID(at, tt.newest)
		if got != tt.want {
			t.Errorf("nextID(after %q) = %q, want %q", tt.newest, got, tt.want)
		}
		if tt.newest != "" && got <= tt.newest && tt.newest[0] == 'r' {
			t.Errorf("nextID(after %q) = %q does not sort after it", tt.newest, got)
		}
		if !validID(got) {
			t.Errorf("nextID made an invalid ID %q", got)
		}
	}
}

// Hosts that join a rollout under way fill what is left of each wave: a
// wave never grows past its size because the newcomers took early places
// in the order.
func TestAssignWavesKeepsTouchedHosts(t *testing.T) {
	waves := mustWaves(t, "1", "50%", "100%")
	var hosts []string
	for i := range 10 {
		hosts = append(hosts, fmt.Sprintf("h%d", i))
	}
	// The rollout started when one host, the last in its order, was
	// there: that host is wave 0.
	order := orderHosts("r-1", hosts)
	first := order[len(order)-1]
	if w := assignWaves("r-1", []string{first}, waves); w[first] != 0 {
		t.Fatalf("the only host is in wave %d", w[first])
	}
	got := assignWavesKeeping("r-1", hosts, waves, map[string]int{first: 0})
	count := map[int]int{}
	for _, w := range got {
		count[w]++
	}
	if got[first] != 0 || count[0] != 1 || count[1] != 4 || count[2] != 5 {
		t.Fatalf("after 9 hosts joined: %s in wave %d, hosts per wave %v; want it alone in wave 0, then 4 and 5", first, got[first], count)
	}
	// A touched host that is gone still takes its place: 9 selected
	// hosts and the lost one make 10, so the waves keep their sizes.
	lost := order[0]
	rest := slices.DeleteFunc(slices.Clone(hosts), func(h string) bool { return h == lost })
	got = assignWavesKeeping("r-1", rest, waves, map[string]int{first: 0, lost: 1})
	if _, ok := got[lost]; ok {
		t.Fatal("a host that is not selected got a wave")
	}
	count = map[int]int{}
	for _, w := range got {
		count[w]++
	}
	if count[0] != 1 || count[1] != 3 || count[2] != 5 {
		t.Fatalf("with a lost host of wave 1: hosts per wave %v, want 1, 3 (and the lost one), 5", count)
	}
	// Nothing kept: the same as assignWaves.
	if a, b := assignWavesKeeping("r-1", hosts, waves, nil), assignWaves("r-1", hosts, waves); !maps.Equal(a, b) {
		t.Fatalf("assignWavesKeeping without kept hosts differs: %v vs %v", a, b)
	}
}
