package rollout

import (
	"crypto/sha256"
	"sort"
)

// orderHosts returns hosts in the order a rollout takes them: by
// sha256(rolloutID + "/" + host), then by name. The order of two hosts
// never depends on the others, so a host that joins during a rollout
// lands among the others without moving them relative to each other.
func orderHosts(id string, hosts []string) []string {
	type keyed struct {
		host string
		sum  [sha256.Size]byte
	}
	ks := make([]keyed, len(hosts))
	for i, h := range hosts {
		ks[i] = keyed{host: h, sum: sha256.Sum256([]byte(id + "/" + h))}
	}
	sort.Slice(ks, func(i, j int) bool {
		if ks[i].sum != ks[j].sum {
			return string(ks[i].sum[:]) < string(ks[j].sum[:])
		}
		return ks[i].host < ks[j].host
	})
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.host
	}
	return out
}

// waveSizes returns how many of n selected hosts waves 0..k cover, for
// each wave k: a count N covers min(N, n), a percentage P covers
// ceil(P*n/100); a wave never covers fewer hosts than the one before.
func waveSizes(waves []wave, n int) []int {
	out := make([]int, len(waves))
	prev := 0
	for i, w := range waves {
		c := w.count
		if w.percent > 0 {
			c = (w.percent*n + 99) / 100
		}
		c = max(min(c, n), prev)
		out[i] = c
		prev = c
	}
	return out
}

// assignWaves maps each selected host to its wave by its place in
// orderHosts: the first wave whose size exceeds the place. Hosts that no
// wave covers (a last wave under 100%) get len(waves).
func assignWaves(id string, hosts []string, waves []wave) map[string]int {
	return assignWavesKeeping(id, hosts, waves, nil)
}

// assignWavesKeeping is assignWaves for a rollout under way: the hosts it
// has touched keep their wave (kept), and count against its size, and the
// others fill what is left of each wave in orderHosts order. Without it,
// a host that joins mid-rollout could take an early place in the order,
// land in a wave that has already started and make it bigger than its
// size. Wave sizes are taken over the selected and the touched hosts; the
// map holds the selected hosts only.
func assignWavesKeeping(id string, hosts []string, waves []wave, kept map[string]int) map[string]int {
	all := append([]string(nil), hosts...)
	selected := make(map[string]bool, len(hosts))
	for _, h := range hosts {
		selected[h] = true
	}
	for h := range kept {
		if !selected[h] {
			all = append(all, h)
		}
	}
	sizes := waveSizes(waves, len(all))
	filled := make([]int, len(waves)+1) // hosts placed in each wave
	for _, w := range kept {
		filled[min(w, len(waves))]++
	}
	out := make(map[string]int, len(hosts))
	for _, h := range orderHosts(id, hosts) {
		if w, ok := kept[h]; ok {
			out[h] = w
			continue
		}
		// The first wave with room: hosts in waves up to w fewer than
		// the hosts waves up to w cover.
		w, placed := 0, filled[0]
		for w < len(sizes) && placed >= sizes[w] {
			w++
			placed += filled[w]
		}
		out[h] = w
		filled[w]++
	}
	return out
}
