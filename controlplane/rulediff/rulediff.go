// Package rulediff compares two rule sets: the header fields, the rules
// by id (added, removed, changed, moved) and the named prefix sets (added,
// removed, or changed with how many prefixes came and went). It is pure:
// no etcd, no I/O.
package rulediff

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"

	"github.com/xdpfw/xdpfw/proto"
)

// Diff returns what changed from version from (a) to version to (b) of
// rule set name. Changes come in document order: header fields,
// selector keys, interfaces, sets by name, then rules in b's order
// followed by the rules b removed in a's order. Changes is empty, not
// nil, when the documents are equivalent.
//
// A rule is "changed" when its content differs (From and To hold the
// whole rule) and "moved" when its place among the rules both versions
// keep changed (From and To hold its old and new index). A rule whose
// content and place both changed has both entries. Inserting or removing
// a rule shifts the indexes of the rules after it but moves none of them.
func Diff(name string, from, to int64, a, b proto.RuleSet) proto.RuleSetDiff {
	return proto.RuleSetDiff{Name: name, From: from, To: to, Changes: Changes(a, b)}
}

// Changes is Diff's list of changes on its own.
func Changes(a, b proto.RuleSet) []proto.DiffChange {
	d := &differ{changes: []proto.DiffChange{}}
	d.field("apiVersion", a.APIVersion, b.APIVersion)
	d.field("kind", a.Kind, b.Kind)
	d.field("name", a.Name, b.Name)
	d.field("priority", a.Priority, b.Priority)
	d.selector(a.Selector, b.Selector)
	if !slices.Equal(a.Interfaces, b.Interfaces) {
		d.add(proto.DiffChange{Kind: kindOf(len(a.Interfaces) > 0, len(b.Interfaces) > 0), Path: "interfaces",
			From: nilIfEmpty(a.Interfaces), To: nilIfEmpty(b.Interfaces)})
	}
	d.field("mode", string(a.Mode), string(b.Mode))
	// An empty enforcement means enforce: writing it out changes nothing.
	d.field("enforcement", string(a.EffectiveEnforcement()), string(b.EffectiveEnforcement()))
	d.sets(a.Sets, b.Sets)
	d.rules(a.Rules, b.Rules)
	return d.changes
}

type differ struct {
	changes []proto.DiffChange
}

func (d *differ) add(c proto.DiffChange) { d.changes = append(d.changes, c) }

// field compares a scalar header field; the zero value counts as absent.
func (d *differ) field(path string, a, b any) {
	if a == b {
		return
	}
	zeroA, zeroB := reflect.ValueOf(a).IsZero(), reflect.ValueOf(b).IsZero()
	c := proto.DiffChange{Kind: kindOf(!zeroA, !zeroB), Path: path}
	if !zeroA {
		c.From = a
	}
	if !zeroB {
		c.To = b
	}
	d.add(c)
}

func kindOf(inA, inB bool) string {
	switch {
	case !inA:
		return proto.DiffAdded
	case !inB:
		return proto.DiffRemoved
	}
	return proto.DiffChanged
}

func nilIfEmpty(s []string) any {
	if len(s) == 0 {
		return nil
	}
	return s
}

func (d *differ) selector(a, b map[string]string) {
	for _, k := range unionKeys(a, b) {
		va, inA := a[k]
		vb, inB := b[k]
		if inA && inB && va == vb {
			continue
		}
		c := proto.DiffChange{Kind: kindOf(inA, inB), Path: mapPath("selector", k)}
		if inA {
			c.From = va
		}
		if inB {
			c.To = vb
		}
		d.add(c)
	}
}

func (d *differ) sets(a, b map[string]proto.PrefixSet) {
	for _, name := range unionKeys(a, b) {
		sa, inA := a[name]
		sb, inB := b[name]
		path := mapPath("sets", name)
		switch {
		case !inA:
			d.add(proto.DiffChange{Kind: proto.DiffAdded, Path: path, Added: len(prefixSet(sb))})
		case !inB:
			d.add(proto.DiffChange{Kind: proto.DiffRemoved, Path: path, Removed: len(prefixSet(sa))})
		default:
			pa, pb := prefixSet(sa), prefixSet(sb)
			added, removed := 0, 0
			for p := range pb {
				if _, ok := pa[p]; !ok {
					added++
				}
			}
			for p := range pa {
				if _, ok := pb[p]; !ok {
					removed++
				}
			}
			fileChanged := sa.File != sb.File
			if added == 0 && removed == 0 && !fileChanged {
				continue
			}
			c := proto.DiffChange{Kind: proto.DiffChanged, Path: path, Added: added, Removed: removed}
			if fileChanged {
				// Stored documents never name feed files; documents
				// being checked before their feeds are read may.
				c.From, c.To = fileOf(sa), fileOf(sb)
			}
			d.add(c)
		}
	}
}

func fileOf(s proto.PrefixSet) any {
	if s.File == "" {
		return nil
	}
	return map[string]string{"file": s.File}
}

// prefixSet returns a set's prefixes in canonical form, so that
// "192.0.2.1" and "192.0.2.1/32" are the same entry and order or
// duplicates do not count as changes. An entry that does not parse (a
// document not validated yet) is kept as written.
func prefixSet(s proto.PrefixSet) map[string]struct{} {
	out := make(map[string]struct{}, len(s.Prefixes))
	for _, raw := range s.Prefixes {
		if p, err := proto.ParsePrefix(raw); err == nil {
			out[p.String()] = struct{}{}
			continue
		}
		out[raw] = struct{}{}
	}
	return out
}

func (d *differ) rules(a, b []proto.Rule) {
	indexA := make(map[string]int, len(a))
	for i, r := range a {
		if _, dup := indexA[r.ID]; !dup {
			indexA[r.ID] = i
		}
	}
	indexB := make(map[string]int, len(b))
	for i, r := range b {
		if _, dup := indexB[r.ID]; !dup {
			indexB[r.ID] = i
		}
	}

	// The rules both keep, in b's order, by their index in a. Those on a
	// longest increasing run kept their relative place; the others moved.
	var kept []int // indexes into b
	for j, r := range b {
		if _, ok := indexA[r.ID]; ok && indexB[r.ID] == j {
			kept = append(kept, j)
		}
	}
	stay := longestIncreasing(kept, func(j int) int { return indexA[b[j].ID] })

	for j, r := range b {
		path := rulePath(r.ID)
		i, ok := indexA[r.ID]
		if !ok || indexB[r.ID] != j {
			// A duplicate id (only in documents not validated yet) is
			// reported as an addition of its own.
			d.add(proto.DiffChange{Kind: proto.DiffAdded, Path: path, To: b[j]})
			continue
		}
		if !sameRule(a[i], r) {
			d.add(proto.DiffChange{Kind: proto.DiffChanged, Path: path, From: a[i], To: r})
		}
		if !stay[j] {
			d.add(proto.DiffChange{Kind: proto.DiffMoved, Path: path, From: i, To: j})
		}
	}
	for i, r := range a {
		if _, ok := indexB[r.ID]; ok && indexA[r.ID] == i {
			continue
		}
		d.add(proto.DiffChange{Kind: proto.DiffRemoved, Path: rulePath(r.ID), From: a[i]})
	}
}

// sameRule compares two rules as they are stored: as JSON, so that a
// missing list and an empty one, or port 22 and "22", are equal.
func sameRule(a, b proto.Rule) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	if errA != nil || errB != nil {
		return reflect.DeepEqual(a, b)
	}
	return bytes.Equal(ja, jb)
}

// longestIncreasing marks the elements of seq that form a longest
// strictly increasing subsequence of key(seq[i]) (patience sorting,
// O(n log n): a rule set may hold thousands of rules).
func longestIncreasing(seq []int, key func(int) int) map[int]bool {
	// tails[k] is the position in seq of the smallest tail of an
	// increasing run of length k+1; prev links each position to the one
	// before it in its run.
	var tails []int
	prev := make([]int, len(seq))
	for p := range seq {
		k := sort.Search(len(tails), func(i int) bool { return key(seq[tails[i]]) >= key(seq[p]) })
		if k > 0 {
			prev[p] = tails[k-1]
		} else {
			prev[p] = -1
		}
		if k == len(tails) {
			tails = append(tails, p)
		} else {
			tails[k] = p
		}
	}
	out := make(map[int]bool, len(tails))
	if len(tails) == 0 {
		return out
	}
	for p := tails[len(tails)-1]; p >= 0; p = prev[p] {
		out[seq[p]] = true
	}
	return out
}

func rulePath(id string) string { return "rules[" + id + "]" }

func unionKeys[V any](a, b map[string]V) []string {
	keys := make([]string, 0, len(a)+len(b))
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// mapPath writes a map entry's path as proto's validation does:
// "sets.bad-actors", or `selector["a b"]` for a key that would make the
// path ambiguous.
func mapPath(path, key string) string {
	plain := key != ""
	for i := 0; i < len(key) && plain; i++ {
		c := key[i]
		plain = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == '/'
	}
	if plain {
		return path + "." + key
	}
	return fmt.Sprintf("%s[%s]", path, strconv.Quote(key))
}
