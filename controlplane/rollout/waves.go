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
	ordered := orderHosts(id, hosts)
	sizes := waveSizes(waves, len(ordered))
	out := make(map[string]int, len(ordered))
	w := 0
	for i, h := range ordered {
		for w < len(sizes) && i >= sizes[w] {
			w++
		}
		out[h] = w
	}
	return out
}
