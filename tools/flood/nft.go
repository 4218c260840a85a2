package flood

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// Nft is nftables in the receiver's namespace: interval sets loaded once,
// and an ingress chain on the receiving veth added for a measurement and
// deleted after it (the sets stay).
type Nft struct {
	p *Pair
	// table is "netdev floodIPv4" or the like: the netdev family, whose
	// ingress hook sees packets before the IP stack (the closest nftables
	// gets to XDP), a table per family so that two suites can coexist.
	table string
}

// NewNft creates the (empty) table of a family.
func NewNft(p *Pair, f Family) (*Nft, error) {
	n := &Nft{p: p, table: "netdev flood" + f.String()}
	if err := n.run("add table " + n.table + "\n"); err != nil {
		return nil, fmt.Errorf("create nftables table: %w", err)
	}
	return n, nil
}

// run feeds a script to nft in the receiver's namespace (one transaction).
func (n *Nft) run(script string) error {
	cmd := exec.Command("ip", "netns", "exec", n.p.ReceiverNS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if len(out) > 2000 {
			out = out[:2000]
		}
		return fmt.Errorf("nft: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// AddSet loads an interval set (auto-merge: nftables merges overlapping
// and adjacent prefixes, as a user loading a feed would have it do).
func (n *Nft) AddSet(name string, f Family, prefixes []netip.Prefix) error {
	typ := "ipv4_addr"
	if f == IPv6 {
		typ = "ipv6_addr"
	}
	var b strings.Builder
	w := bufio.NewWriter(&b)
	fmt.Fprintf(w, "add set %s %s { type %s; flags interval; auto-merge; }\n", n.table, name, typ)
	fmt.Fprintf(w, "add element %s %s { ", n.table, name)
	for i, p := range prefixes {
		if i > 0 {
			w.WriteString(", ")
		}
		w.WriteString(p.String())
	}
	w.WriteString(" }\n")
	w.Flush()
	if err := n.run(b.String()); err != nil {
		return fmt.Errorf("load nftables set %s of %d prefixes: %w", name, len(prefixes), err)
	}
	return nil
}

// Enable adds the ingress chain on the receiving veth: drop members of
// the set, then drop the rest. No counters: the rules as a user would
// write them, at their cheapest. (Reading counters would cost more than a
// measurement besides: nft 1.0 fetches every set element of the table
// before it lists anything, 3 s at a million prefixes.) No XDP program
// may be attached meanwhile.
func (n *Nft) Enable(set string, f Family) error {
	match := "ip saddr"
	if f == IPv6 {
		match = "ip6 saddr"
	}
	script := fmt.Sprintf(`add chain %[1]s in { type filter hook ingress device %[2]q priority 0; policy accept; }
add rule %[1]s in %[3]s @%[4]s drop
add rule %[1]s in drop
`, n.table, ReceiverIface, match, set)
	if err := n.run(script); err != nil {
		return fmt.Errorf("add nftables ingress chain on %s for set %s: %w", ReceiverIface, set, err)
	}
	return nil
}

// Disable deletes the ingress chain (its rules first: nft refuses to
// delete a chain that has any).
func (n *Nft) Disable() error {
	if err := n.run("flush chain " + n.table + " in\ndelete chain " + n.table + " in\n"); err != nil {
		return fmt.Errorf("delete nftables ingress chain: %w", err)
	}
	return nil
}

// Close deletes the table and its sets.
func (n *Nft) Close() error {
	if err := n.run("delete table " + n.table + "\n"); err != nil {
		return fmt.Errorf("delete nftables table: %w", err)
	}
	return nil
}
