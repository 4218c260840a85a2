package proto

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func TestParseFeed(t *testing.T) {
	tests := []struct {
		name, in string
		want     []netip.Prefix
		wantErr  string
	}{
		{
			name: "spamhaus drop",
			in: "; Spamhaus DROP List 2024/05/01 - (c) 2024 The Spamhaus Project SLU\n" +
				"; https://www.spamhaus.org/drop/drop.txt\n" +
				"; Last-Modified: Wed, 01 May 2024 12:00:00 GMT\n" +
				"; Expires: Wed, 01 May 2024 13:00:00 GMT\n" +
				"1.10.16.0/20 ; SBL256894\n" +
				"1.19.0.0/16 ; SBL434604\r\n" +
				"1.32.128.0/18 ; SBL286275\n",
			want: prefixes("1.10.16.0/20", "1.19.0.0/16", "1.32.128.0/18"),
		},
		{
			name: "firehol netset",
			in: "#\n# firehol_level1\n#\n# Maintainer      : FireHOL\n#\n" +
				"0.0.0.0/8\n1.10.16.0/20\n5.134.128.0/19\n192.0.2.5\n",
			want: prefixes("0.0.0.0/8", "1.10.16.0/20", "5.134.128.0/19", "192.0.2.5/32"),
		},
		{
			name: "whitespace, comments, v6, duplicates, unsorted",
			in: "  2001:db8::/32   # docs\n\n\t10.0.0.0/8\n10.0.0.0/8 ; again\n" +
				"# 9.9.9.9\n2001:db8::1\n::/0\n0.0.0.0/0\n10.0.0.0/16",
			want: prefixes("0.0.0.0/0", "10.0.0.0/8", "10.0.0.0/16", "::/0", "2001:db8::/32", "2001:db8::1/128"),
		},
		{name: "empty", in: "", want: nil},
		{name: "only comments", in: "# a\n; b\n\n", want: nil},
		{
			name:    "bad prefix length",
			in:      strings.Repeat("10.0.0.0/8\n", 11) + "1.2.3.4/33\n",
			wantErr: `feeds/drop.txt:12: "1.2.3.4/33": prefix length 33 is out of range 0..32`,
		},
		{
			name:    "host bits",
			in:      "# header\n1.2.3.4/24 ; SBL1\n",
			wantErr: "feeds/drop.txt:2: 1.2.3.4/24 has host bits set (did you mean 1.2.3.0/24?)",
		},
		{
			name:    "trailing text without comment marker",
			in:      "1.2.3.0/24 SBL1\n",
			wantErr: `feeds/drop.txt:1: "1.2.3.0/24 SBL1": bad prefix length "24 SBL1"`,
		},
		{
			name:    "mapped",
			in:      "::ffff:1.2.3.4\n",
			wantErr: `feeds/drop.txt:1: "::ffff:1.2.3.4": IPv4-mapped IPv6 address (write 1.2.3.4/32)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFeed(strings.NewReader(tt.in), "feeds/drop.txt")
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseFeedLongLine(t *testing.T) {
	in := "10.0.0.0/8\n# " + strings.Repeat("x", maxFeedLine+1) + "\n"
	_, err := ParseFeed(strings.NewReader(in), "big.txt")
	if err == nil || !strings.HasPrefix(err.Error(), "big.txt:2: line longer than") {
		t.Fatalf("error = %v, want a too-long error at line 2", err)
	}
}

// feedLines writes n distinct /32s, shuffled so that the sort is exercised.
func feedLines(n int) []byte {
	var b bytes.Buffer
	b.Grow(n * 24)
	for i := range n {
		j := uint32(i) * 2654435761 // a bijection on uint32: distinct, unsorted
		fmt.Fprintf(&b, "%d.%d.%d.%d ; SBL%d\n", j>>24, (j>>16)&0xff, (j>>8)&0xff, j&0xff, i)
	}
	return b.Bytes()
}

func TestParseFeedMillionLines(t *testing.T) {
	if testing.Short() {
		t.Skip("large feed")
	}
	data := feedLines(1_000_000)
	got, err := ParseFeed(bytes.NewReader(data), "big.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1_000_000 {
		t.Fatalf("%d prefixes, want 1000000", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i-1].Addr().Compare(got[i].Addr()) >= 0 {
			t.Fatalf("result not sorted at %d: %v, %v", i, got[i-1], got[i])
		}
	}
	// Speed is measured by BenchmarkParseFeed (make bench), not here.
}

func BenchmarkParseFeed(b *testing.B) {
	data := feedLines(1_000_000)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := ParseFeed(bytes.NewReader(data), "big.txt"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestResolveFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "feeds"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	write("feeds/drop.txt", "; header\n1.10.16.0/20 ; SBL256894\n2001:DB8::/32\n1.10.16.0/20\n")
	abs := write("v6.txt", "2001:db8:bad::/48\n")

	rs := validRuleSet()
	rs.Sets["drop"] = PrefixSet{File: "feeds/drop.txt"}
	rs.Sets["v6"] = PrefixSet{File: abs}
	if err := rs.ValidateWith(ValidateOptions{AllowFiles: true}); err != nil {
		t.Fatalf("ValidateWith(AllowFiles) before resolving: %v", err)
	}
	if err := rs.ResolveFiles(dir); err != nil {
		t.Fatalf("ResolveFiles: %v", err)
	}
	if got, want := rs.Sets["drop"], (PrefixSet{Prefixes: []string{"1.10.16.0/20", "2001:db8::/32"}}); !reflect.DeepEqual(got, want) {
		t.Errorf("drop = %#v, want %#v", got, want)
	}
	if got, want := rs.Sets["v6"], (PrefixSet{Prefixes: []string{"2001:db8:bad::/48"}}); !reflect.DeepEqual(got, want) {
		t.Errorf("v6 = %#v, want %#v", got, want)
	}
	if err := rs.Validate(); err != nil {
		t.Errorf("Validate after ResolveFiles: %v", err)
	}

	// A failure anywhere leaves every set as it was.
	write("feeds/bad.txt", "10.0.0.0/8\n10.0.0.1/8\n")
	rs = validRuleSet()
	rs.Sets["good"] = PrefixSet{File: "feeds/drop.txt"}
	rs.Sets["bad"] = PrefixSet{File: "feeds/bad.txt"}
	rs.Sets["gone"] = PrefixSet{File: "feeds/missing.txt"}
	err := rs.ResolveFiles(dir)
	if err == nil {
		t.Fatal("ResolveFiles succeeded with a bad and a missing feed")
	}
	wantLines := []string{
		"sets.bad: feeds/bad.txt:2: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)",
		"sets.gone: read feed: open " + filepath.Join(dir, "feeds/missing.txt") + ": no such file or directory",
	}
	if got := err.Error(); got != strings.Join(wantLines, "\n") {
		t.Errorf("error =\n%s\nwant\n%s", got, strings.Join(wantLines, "\n"))
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error does not wrap fs.ErrNotExist: %v", err)
	}
	if rs.Sets["good"].File != "feeds/drop.txt" || rs.Sets["good"].Prefixes != nil {
		t.Errorf("a failed ResolveFiles changed the document: %#v", rs.Sets["good"])
	}
}
