package proto

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestParsePortSpec(t *testing.T) {
	tests := []struct {
		in      PortSpec
		lo, hi  uint16
		wantErr string
	}{
		{in: "22", lo: 22, hi: 22},
		{in: "0", lo: 0, hi: 0},
		{in: "65535", lo: 65535, hi: 65535},
		{in: "0-65535", lo: 0, hi: 65535},
		{in: "1000-2000", lo: 1000, hi: 2000},
		{in: "80-80", lo: 80, hi: 80},
		{in: "", wantErr: "empty port"},
		{in: "ssh", wantErr: `"ssh" is not a port or port range`},
		{in: "65536", wantErr: "port 65536 is out of range 0..65535"},
		{in: "1-99999", wantErr: "port 99999 is out of range 0..65535"},
		{in: "-1", wantErr: `"-1" is not a port or port range`},
		{in: "90-80", wantErr: "range 90-80 is empty"},
		{in: "1-", wantErr: `"1-" is not a port or port range`},
		{in: "1-2-3", wantErr: `"1-2-3" is not a port or port range`},
		{in: " 22", wantErr: `" 22" is not a port or port range`},
		{in: "+22", wantErr: `"+22" is not a port or port range`},
	}
	for _, tt := range tests {
		lo, hi, err := ParsePortSpec(tt.in)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("ParsePortSpec(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || lo != tt.lo || hi != tt.hi {
			t.Errorf("ParsePortSpec(%q) = %d, %d, %v; want %d, %d", tt.in, lo, hi, err, tt.lo, tt.hi)
		}
	}
}

func TestParseTCPFlags(t *testing.T) {
	tests := []struct {
		in          string
		value, mask uint8
		wantErr     string
	}{
		{in: "syn", value: TCPFlagSYN, mask: TCPFlagSYN},
		{in: "syn,ack", value: TCPFlagSYN | TCPFlagACK, mask: TCPFlagSYN | TCPFlagACK},
		{in: "SYN/SYN,ACK", value: TCPFlagSYN, mask: TCPFlagSYN | TCPFlagACK},
		{in: "syn/syn,ack,rst,fin", value: 0x02, mask: 0x17},
		{in: "/syn,ack", value: 0, mask: 0x12},
		{in: "none/rst", value: 0, mask: TCPFlagRST},
		{in: "fin,syn,rst,psh,ack,urg,ece,cwr", value: 0xff, mask: 0xff},
		{in: "psh, urg / psh , urg,ece", value: 0x28, mask: 0x68},
		{in: "cwr/cwr,ece", value: TCPFlagCWR, mask: TCPFlagCWR | TCPFlagECE},
		{in: "", wantErr: `"": mask: empty flag list`},
		{in: "syn/", wantErr: `"syn/": mask: empty flag list`},
		{in: "none", wantErr: `"none": mask: "none" is only allowed as the value`},
		{in: "syn/none", wantErr: `"syn/none": mask: "none" is only allowed as the value`},
		{in: "syn,bogus", wantErr: `"syn,bogus": mask: unknown tcp flag "bogus" (want fin, syn, rst, psh, ack, urg, ece, cwr)`},
		{in: "syn,,ack", wantErr: `"syn,,ack": mask: unknown tcp flag "" (want fin, syn, rst, psh, ack, urg, ece, cwr)`},
		{in: "syn,ack/syn", wantErr: `"syn,ack/syn": value flags ack are not in the mask`},
		{in: "syn/ack/rst", wantErr: `"syn/ack/rst": more than one '/'`},
	}
	for _, tt := range tests {
		value, mask, err := ParseTCPFlags(tt.in)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("ParseTCPFlags(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || value != tt.value || mask != tt.mask {
			t.Errorf("ParseTCPFlags(%q) = %#x, %#x, %v; want %#x, %#x", tt.in, value, mask, err, tt.value, tt.mask)
		}
	}
}

func TestTCPFlagBits(t *testing.T) {
	// Byte 13 of the TCP header, RFC 9293 and RFC 3168.
	got := []uint8{TCPFlagFIN, TCPFlagSYN, TCPFlagRST, TCPFlagPSH, TCPFlagACK, TCPFlagURG, TCPFlagECE, TCPFlagCWR}
	want := []uint8{0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("flag bits = %#x, want %#x", got, want)
	}
}

func TestParseAddrMatch(t *testing.T) {
	tests := []struct {
		in      string
		want    AddrMatch
		wantErr string
	}{
		{in: "198.51.100.0/24", want: AddrMatch{Prefix: netip.MustParsePrefix("198.51.100.0/24")}},
		{in: "2001:db8::/32", want: AddrMatch{Prefix: netip.MustParsePrefix("2001:db8::/32")}},
		{in: "192.0.2.1", want: AddrMatch{Prefix: netip.MustParsePrefix("192.0.2.1/32")}},
		{in: "2001:db8::1", want: AddrMatch{Prefix: netip.MustParsePrefix("2001:db8::1/128")}},
		{in: "0.0.0.0/0", want: AddrMatch{Prefix: netip.MustParsePrefix("0.0.0.0/0")}},
		{in: "::/0", want: AddrMatch{Prefix: netip.MustParsePrefix("::/0")}},
		{in: "192.0.2.1/32", want: AddrMatch{Prefix: netip.MustParsePrefix("192.0.2.1/32")}},
		{in: "2001:db8::1/128", want: AddrMatch{Prefix: netip.MustParsePrefix("2001:db8::1/128")}},
		{in: "2001:DB8::/32", want: AddrMatch{Prefix: netip.MustParsePrefix("2001:db8::/32")}},
		{in: "set:bad-actors", want: AddrMatch{Set: "bad-actors"}},
		{in: "set:", wantErr: `"set:": empty set name`},
		{in: "set:bad actors", wantErr: `"set:bad actors": not a valid set name (letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63 characters)`},
		{in: "", wantErr: "empty address or prefix"},
		{in: "198.51.100.1/24", wantErr: "198.51.100.1/24 has host bits set (did you mean 198.51.100.0/24?)"},
		{in: "2001:db8::1/32", wantErr: "2001:db8::1/32 has host bits set (did you mean 2001:db8::/32?)"},
		{in: "1.2.3.4/0", wantErr: "1.2.3.4/0 has host bits set (did you mean 0.0.0.0/0?)"},
		{in: "1.2.3.4/33", wantErr: `"1.2.3.4/33": prefix length 33 is out of range 0..32`},
		{in: "2001:db8::/129", wantErr: `"2001:db8::/129": prefix length 129 is out of range 0..128`},
		{in: "1.2.3.0/024", wantErr: `"1.2.3.0/024": bad prefix length "024"`},
		{in: "1.2.3.0/-1", wantErr: `"1.2.3.0/-1": bad prefix length "-1"`},
		{in: "1.2.3.0/", wantErr: `"1.2.3.0/": missing prefix length after '/'`},
		{in: "1.2.3.0/24/8", wantErr: `"1.2.3.0/24/8": bad prefix length "24/8"`},
		{in: "1.2.3.256", wantErr: `"1.2.3.256": not an IP address or prefix: IPv4 field has value >255`},
		{in: "example.com", wantErr: `"example.com": not an IP address or prefix: unexpected character (at "example.com")`},
		{in: "::ffff:192.0.2.1", wantErr: `"::ffff:192.0.2.1": IPv4-mapped IPv6 address (write 192.0.2.1/32)`},
		{in: "::ffff:192.0.2.0/120", wantErr: `"::ffff:192.0.2.0/120": IPv4-mapped IPv6 address (write 192.0.2.0/24)`},
		{in: "::ffff:0.0.0.0/80", wantErr: `"::ffff:0.0.0.0/80": IPv4-mapped IPv6 address (use IPv4 notation)`},
		{in: "fe80::1%eth0", wantErr: `"fe80::1%eth0": zones are not allowed`},
		{in: "fe80::%eth0/64", wantErr: `"fe80::%eth0/64": zones are not allowed`},
	}
	for _, tt := range tests {
		got, err := ParseAddrMatch(tt.in)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("ParseAddrMatch(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseAddrMatch(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParsePrefixRejectsSetReference(t *testing.T) {
	if p, err := ParsePrefix("set:bad-actors"); err == nil {
		t.Fatalf("ParsePrefix(set:...) = %v, want error", p)
	}
}

func TestAddrMatchString(t *testing.T) {
	for _, in := range []string{"set:x", "10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32"} {
		m, err := ParseAddrMatch(in)
		if err != nil {
			t.Fatal(err)
		}
		if m.String() != in {
			t.Errorf("String() = %q, want %q", m.String(), in)
		}
	}
}

func TestProtocolNumber(t *testing.T) {
	tests := []struct {
		in  Protocol
		num uint8
		any bool
	}{
		{"", 0, true},
		{ProtoAny, 0, true},
		{ProtoTCP, 6, false},
		{ProtoUDP, 17, false},
		{ProtoICMP, 1, false},
		{ProtoICMPv6, 58, false},
		{"sctp", 0, false},
	}
	for _, tt := range tests {
		num, any := ProtocolNumber(tt.in)
		if num != tt.num || any != tt.any {
			t.Errorf("ProtocolNumber(%q) = %d, %v; want %d, %v", tt.in, num, any, tt.num, tt.any)
		}
	}
}

func TestSetPrefixes(t *testing.T) {
	rs := RuleSet{Sets: map[string]PrefixSet{
		"mixed": {Prefixes: []string{
			"2001:db8::/32", "10.0.0.0/8", "192.0.2.1", "10.0.0.0/16", "192.0.2.1/32",
			"::/0", "10.0.0.0/8", "0.0.0.0/0", "2001:db8::/48",
		}},
		"empty": {},
		"bad":   {Prefixes: []string{"10.0.0.0/8", "10.0.0.1/8"}},
		"feed":  {File: "feeds/drop.txt"},
	}}
	got, err := rs.SetPrefixes("mixed")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/0"),
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("10.0.0.0/16"),
		netip.MustParsePrefix("192.0.2.1/32"),
		netip.MustParsePrefix("::/0"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("2001:db8::/48"),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("SetPrefixes = %v, want %v", got, want)
	}
	if got, err := rs.SetPrefixes("empty"); err != nil || len(got) != 0 {
		t.Errorf("SetPrefixes(empty) = %v, %v", got, err)
	}
	for name, wantErr := range map[string]string{
		"bad":     "sets.bad[1]: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)",
		"feed":    `set "feed": feed file feeds/drop.txt not resolved`,
		"missing": `unknown set "missing"`,
	} {
		if _, err := rs.SetPrefixes(name); err == nil || err.Error() != wantErr {
			t.Errorf("SetPrefixes(%s) error = %v, want %q", name, err, wantErr)
		}
	}
}

func TestParseLimitScope(t *testing.T) {
	tests := []struct {
		in      string
		want    LimitScope
		wantErr string
	}{
		{"", LimitScope{}, ""},
		{"rule", LimitScope{}, ""},
		{"source", LimitScope{PerSource: true, Bits4: 32, Bits6: 128}, ""},
		{"source/24", LimitScope{PerSource: true, Bits4: 24, Bits6: 24}, ""},
		{"source/64", LimitScope{PerSource: true, Bits4: 32, Bits6: 64}, ""},
		{"source/0", LimitScope{PerSource: true, Bits4: 0, Bits6: 0}, ""},
		{"source/24/56", LimitScope{PerSource: true, Bits4: 24, Bits6: 56}, ""},
		{"source/129", LimitScope{}, `"source/129": prefix length 129 is out of range 0..128`},
		{"source/024", LimitScope{}, `"source/024": bad prefix length "024"`},
		{"source/", LimitScope{}, `"source/": missing prefix length after '/'`},
		{"source/24/", LimitScope{}, `"source/24/": IPv6 missing prefix length after '/'`},
		{"sources", LimitScope{}, `"sources": want rule, source, source/N or source/N4/N6`},
	}
	for _, tt := range tests {
		got, err := ParseLimitScope(tt.in)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("ParseLimitScope(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseLimitScope(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestRateLimitDefaults(t *testing.T) {
	if got := (RateLimit{PPS: 10000}).EffectiveBurst(); got != 1000 {
		t.Errorf("EffectiveBurst(pps 10000) = %d, want 1000", got)
	}
	if got := (RateLimit{PPS: 5}).EffectiveBurst(); got != 1 {
		t.Errorf("EffectiveBurst(pps 5) = %d, want 1", got)
	}
	if got := (RateLimit{PPS: 5, Burst: 7}).EffectiveBurst(); got != 7 {
		t.Errorf("EffectiveBurst(burst 7) = %d, want 7", got)
	}
	if got := (RateLimit{BPS: 8_000_000}).EffectiveBurstBytes(); got != 100_000 {
		t.Errorf("EffectiveBurstBytes(8 Mbit/s) = %d, want 100000", got)
	}
}
