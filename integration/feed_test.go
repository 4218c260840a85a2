package integration

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFeed writes a feed file of n prefixes as operators get them
// (Spamhaus DROP style: "prefix ; id" lines, comments, blank lines): random
// documentation-free public prefixes, plus the extra lines given.
func writeFeed(t testing.TB, dir string, n int, extra ...string) string {
	t.Helper()
	path := filepath.Join(dir, "drop.txt")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "; Spamhaus-style DROP list, %d entries\n\n", n)
	r := rand.New(rand.NewPCG(7, 7))
	seen := map[netip.Prefix]bool{}
	for len(seen) < n {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], r.Uint32())
		if a[0] == 198 || a[0] == 0 || a[0] >= 224 {
			continue // keep clear of the test hosts' 198.18.0.0/15
		}
		p, _ := netip.AddrFrom4(a).Prefix(16 + r.IntN(17))
		if seen[p] {
			continue
		}
		seen[p] = true
		fmt.Fprintf(w, "%s ; SBL%d\n", p, len(seen))
	}
	for _, line := range extra {
		fmt.Fprintln(w, line)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestFeedOf100kPrefixesDropsSenderUntilRemoved: a rule set takes its
// blocklist from a 100,000-line feed file that lists the client; the
// client's traffic is dropped. `xdpfwctl local set del` takes the client's
// prefix out (it passes again), `local set add` puts it back.
func TestFeedOf100kPrefixesDropsSenderUntilRemoved(t *testing.T) {
	t.Parallel()
	client, server := newPair(t)
	dir := t.TempDir()
	writeFeed(t, dir, 100_000, "198.18.0.1   # the test client")
	rules := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte(`
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
mode: deny
sets:
  spamhaus-drop: {file: drop.txt}
rules:
  - id: drop-feed
    action: drop
    src: [set:spamhaus-drop]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := server.local("apply", "-f", rules); r.code != 0 {
		t.Fatalf("apply: %s", r)
	}
	blockedFlows := map[flow]outcome{
		tcp4(client, server, 80): blocked,
		udp4(client, server, 53): blocked,
		ping4(client, server):    blocked,
		tcp6(client, server, 80): passes, // the feed lists the client's IPv4 address only
	}
	expectFlows(t, blockedFlows)
	// 100,000 IPv4 prefixes: above the threshold, the range table.
	if st := server.show(t); st.Tables["src4"] != "range" {
		t.Errorf("show says the IPv4 sources use %q, want range", st.Tables["src4"])
	}

	// The v4 entry was written as a bare address: the set holds it as /32.
	r := server.local("set", "del", "spamhaus-drop", "198.18.0.1/32")
	if r.code != 0 {
		t.Fatalf("set del: %s", r)
	}
	if !strings.Contains(r.stdout, "100001 -> 100000 prefixes") {
		t.Errorf("set del printed %q, want the set to shrink from 100001 to 100000", r.stdout)
	}
	expectFlows(t, map[flow]outcome{
		tcp4(client, server, 80): passes,
		udp4(client, server, 53): passes,
		ping4(client, server):    passes,
		tcp6(client, server, 80): passes,
	})

	// Deleting what is not there changes nothing and says so.
	if r := server.local("set", "del", "spamhaus-drop", "198.18.0.1/32"); r.code == 0 || !strings.Contains(r.stderr, "does not hold") {
		t.Errorf("deleting a prefix twice: %s; want an error that the set does not hold it", r)
	}
	if r := server.local("set", "add", "spamhaus-drop", "198.18.0.0/24"); r.code != 0 {
		t.Fatalf("set add: %s", r)
	}
	expectFlows(t, blockedFlows)

	// The counter of the feed rule saw the dropped packets.
	if s := server.stats(t); s.rule(t, "drop-feed").Packets == 0 {
		t.Error("drop-feed counted no packets")
	}

	// A new edition of the feed, without the client, replaces the set.
	next := filepath.Join(t.TempDir(), "drop-next.txt")
	if err := os.WriteFile(next, []byte("; next edition\n203.0.113.0/24 ; SBL1\n192.0.2.7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = server.local("set", "load", "spamhaus-drop", "-f", next)
	if r.code != 0 {
		t.Fatalf("set load: %s", r)
	}
	if !strings.Contains(r.stdout, "-> 2 prefixes") {
		t.Errorf("set load printed %q, want the set to hold 2 prefixes", r.stdout)
	}
	expectFlows(t, map[flow]outcome{
		tcp4(client, server, 80): passes,
		ping4(client, server):    passes,
	})
	if st := server.show(t); st.Tables["src4"] != "lpm" {
		t.Errorf("with 2 prefixes show says the IPv4 sources use %q, want lpm", st.Tables["src4"])
	}
	// A feed with a bad line changes nothing.
	bad := filepath.Join(t.TempDir(), "bad.txt")
	if err := os.WriteFile(bad, []byte("198.18.0.1\n10.0.0.300/8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := server.local("set", "load", "spamhaus-drop", "-f", bad); r.code == 0 || !strings.Contains(r.stderr, "bad.txt:2") {
		t.Errorf("set load of a bad feed: %s; want an error naming bad.txt:2", r)
	}
	expectFlows(t, map[flow]outcome{tcp4(client, server, 80): passes})
}
