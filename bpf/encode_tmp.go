package bpf

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/xdpfw/xdpfw/proto"
)

// encode sets the stored document and the digest from the state.
func (c *Compiled) encode() error {
	inc := c.inc
	d := inc.header
	d.RuleSets = slices.Clone(d.RuleSets)
	for i := range d.RuleSets {
		if d.RuleSets[i].Sets != nil {
			sets := make(map[string]proto.PrefixSet, len(d.RuleSets[i].Sets))
			for k, v := range d.RuleSets[i].Sets {
				sets[k] = v
			}
			d.RuleSets[i].Sets = sets
		}
	}
	for _, m := range inc.members {
		ps := make([]string, 0, m.count())
		for _, k := range m.v4 {
			ps = append(ps, key4Prefix(k).String())
		}
		for _, k := range m.v6 {
			ps = append(ps, k.prefix().String())
		}
		d.RuleSets[m.ruleSet].Sets[m.set] = proto.PrefixSet{Prefixes: ps}
	}
	var err error
	c.doc, err = json.Marshal(d)
	if err != nil {
		return fmt.Errorf("encode compiled rule sets: %w", err)
	}
	c.Digest = sha256.Sum256(c.doc)
	return nil
}
