package proto

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

func FuzzDecodeRuleSet(f *testing.F) {
	f.Add([]byte(designExample))
	f.Add([]byte(designExampleJSON))
	valid, err := json.Marshal(validRuleSet())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte("apiVersion: xdpfw/v1\nkind: RuleSet\nname: a\nmode: allow\nrules: []\n"))
	f.Add([]byte("apiVersion: xdpfw/v1\nkind: RuleSet\nname: a\nmode: deny\nsets: {s: {file: f.txt}}\nrules:\n- {id: x, action: drop, dst: [set:s], protocol: tcp, dstPorts: [1, 2-3], tcpFlags: syn/syn,ack}\n"))
	f.Add([]byte("a: 1\n---\nb: [\n"))
	f.Add([]byte(`{"rules": [{"icmpType": 3, "protocol": "icmp", "src": ["0.0.0.0/0"]}]}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := DecodeRuleSet(data)
		if err != nil {
			return
		}
		if rs.Validate() != nil {
			return
		}
		out, err := json.Marshal(rs)
		if err != nil {
			t.Fatalf("marshal of a valid document: %v", err)
		}
		again, err := DecodeRuleSet(out)
		if err != nil {
			t.Fatalf("decode of marshalled document: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(normalize(rs), normalize(again)) {
			t.Fatalf("round trip changed the document\nfirst  %#v\nsecond %#v", rs, again)
		}
		if err := again.Validate(); err != nil {
			t.Fatalf("round trip made the document invalid: %v", err)
		}
		out2, err := json.Marshal(again)
		if err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("marshal is not stable:\n%s\n%s", out, out2)
		}
	})
}

// normalize maps the empty forms JSON cannot tell apart after omitempty
// (nil and empty slices and maps) to nil, so that DeepEqual compares what
// a document says rather than how it was spelled.
func normalize(rs RuleSet) RuleSet {
	if len(rs.Selector) == 0 {
		rs.Selector = nil
	}
	if len(rs.Interfaces) == 0 {
		rs.Interfaces = nil
	}
	if len(rs.Sets) == 0 {
		rs.Sets = nil
	}
	rules := make([]Rule, len(rs.Rules))
	for i, r := range rs.Rules {
		if len(r.Src) == 0 {
			r.Src = nil
		}
		if len(r.Dst) == 0 {
			r.Dst = nil
		}
		if len(r.SrcPorts) == 0 {
			r.SrcPorts = nil
		}
		if len(r.DstPorts) == 0 {
			r.DstPorts = nil
		}
		rules[i] = r
	}
	if rs.Rules != nil {
		rs.Rules = rules
	}
	return rs
}

func FuzzParseFeed(f *testing.F) {
	f.Add([]byte("; Spamhaus DROP\n1.10.16.0/20 ; SBL256894\n1.19.0.0/16 ; SBL434604\n"))
	f.Add([]byte("# firehol\n0.0.0.0/8\n192.0.2.5\n2001:db8::/32\n"))
	f.Add([]byte("1.2.3.4/24\n"))
	f.Add([]byte("::ffff:1.2.3.4\r\nfe80::1%eth0\n"))
	f.Add([]byte("\n\n  10.0.0.0/8 # x\n10.0.0.0/8\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := ParseFeed(bytes.NewReader(data), "fuzz.txt")
		if err != nil {
			return
		}
		for i, p := range got {
			if !p.IsValid() || p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				t.Fatalf("prefix %d = %v is not canonical", i, p)
			}
			if i > 0 && p.Compare(got[i-1]) <= 0 {
				t.Fatalf("prefixes %v, %v are not sorted and distinct", got[i-1], p)
			}
			// Canonical text parses back to the same prefix.
			if back, err := ParsePrefix(p.String()); err != nil || back != p {
				t.Fatalf("ParsePrefix(%q) = %v, %v", p.String(), back, err)
			}
		}
	})
}
