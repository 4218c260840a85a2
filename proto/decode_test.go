package proto

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// designExample is the design's first example rule set, verbatim: every field
// of docs/architecture.md, "Rule semantics", with its comments.
const designExample = `apiVersion: xdpfw/v1
kind: RuleSet
name: edge
priority: 100                # rule sets on one host are merged in priority order
selector: {role: edge}        # host labels; empty = all hosts
mode: deny                    # deny: default pass (blacklist); allow: default drop (whitelist)
enforcement: enforce          # or dry-run: count what would be dropped, drop nothing
sets:                         # named prefix sets, large (up to 1M prefixes), v4 and v6
  bad-actors: [203.0.113.0/24, "2001:db8:bad::/48"]
rules:                        # ordered, first match wins
  - id: ssh-office
    action: pass              # pass | drop | rate-limit
    src: [198.51.100.0/24]
    protocol: tcp
    dstPorts: ["22"]
  - id: threat-intel
    action: drop
    src: [set:bad-actors]
  - id: dns-flood
    action: rate-limit
    protocol: udp
    dstPorts: ["53"]
    rateLimit: {pps: 10000, burst: 20000, per: source}
`

// designExampleJSON is the same document as JSON, with ports as numbers.
const designExampleJSON = `{
  "apiVersion": "xdpfw/v1",
  "kind": "RuleSet",
  "name": "edge",
  "priority": 100,
  "selector": {"role": "edge"},
  "mode": "deny",
  "enforcement": "enforce",
  "sets": {"bad-actors": ["203.0.113.0/24", "2001:db8:bad::/48"]},
  "rules": [
    {"id": "ssh-office", "action": "pass", "src": ["198.51.100.0/24"], "protocol": "tcp", "dstPorts": [22]},
    {"id": "threat-intel", "action": "drop", "src": ["set:bad-actors"]},
    {"id": "dns-flood", "action": "rate-limit", "protocol": "udp", "dstPorts": [53],
     "rateLimit": {"pps": 10000, "burst": 20000, "per": "source"}}
  ]
}`

func designExampleWant() RuleSet {
	return RuleSet{
		APIVersion:  APIVersion,
		Kind:        KindRuleSet,
		Name:        "edge",
		Priority:    100,
		Selector:    map[string]string{"role": "edge"},
		Mode:        ModeDeny,
		Enforcement: EnforcementEnforce,
		Sets: map[string]PrefixSet{
			"bad-actors": {Prefixes: []string{"203.0.113.0/24", "2001:db8:bad::/48"}},
		},
		Rules: []Rule{
			{ID: "ssh-office", Action: ActionPass, Src: []string{"198.51.100.0/24"}, Protocol: ProtoTCP, DstPorts: []PortSpec{"22"}},
			{ID: "threat-intel", Action: ActionDrop, Src: []string{"set:bad-actors"}},
			{ID: "dns-flood", Action: ActionRateLimit, Protocol: ProtoUDP, DstPorts: []PortSpec{"53"},
				RateLimit: &RateLimit{PPS: 10000, Burst: 20000, Per: "source"}},
		},
	}
}

func TestDecodeDesignExample(t *testing.T) {
	for name, in := range map[string]string{"yaml": designExample, "json": designExampleJSON} {
		t.Run(name, func(t *testing.T) {
			rs, err := DecodeRuleSet([]byte(in))
			if err != nil {
				t.Fatalf("DecodeRuleSet: %v", err)
			}
			if want := designExampleWant(); !reflect.DeepEqual(rs, want) {
				t.Fatalf("decoded\n%#v\nwant\n%#v", rs, want)
			}
			if err := rs.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestDecodeStrictErrors(t *testing.T) {
	const head = "apiVersion: xdpfw/v1\nkind: RuleSet\nname: edge\nmode: deny\n"
	tests := []struct {
		name, in, want string
	}{
		{"unknown rule field", head + "rules:\n- id: a\n  action: drop\n- id: b\n  action: drop\n- id: c\n  dstport: [22]\n",
			`rules[2]: unknown field "dstport" (did you mean "dstPorts"?)`},
		{"unknown top field", head + "rule: []\n", `unknown field "rule" (did you mean "rules"?)`},
		{"unknown field no suggestion", head + "colour: red\n", `unknown field "colour"`},
		{"wrong case", `{"apiVersion": "xdpfw/v1", "Mode": "deny"}`, `unknown field "Mode" (did you mean "mode"?)`},
		{"unknown rateLimit field", head + "rules: [{id: a, rateLimit: {pps: 1, ppss: 2}}]\n",
			`rules[0].rateLimit: unknown field "ppss" (did you mean "pps"?)`},
		{"duplicate yaml key", head + "mode: allow\n", `yaml: line 5: key "mode" already set in map`},
		{"duplicate json key", `{"name": "a", "name": "b"}`, `duplicate field "name"`},
		{"duplicate json key nested", `{"rules": [{"id": "a", "src": [], "id": "b"}]}`, `rules[0]: duplicate field "id"`},
		{"duplicate json map key", `{"selector": {"a": "1", "a": "2"}}`, `selector: duplicate key "a"`},
		{"duplicate json set", `{"sets": {"x": [], "x": []}}`, `sets: duplicate key "x"`},
		{"number for string", head + "rules: [{id: 2024}]\n", `rules[0].id: expected a string, got number 2024 (quote it)`},
		{"list for string", `{"name": ["a"]}`, `name: expected a string, got a list`},
		{"string for int", `{"priority": "1"}`, `priority: expected an integer, got string "1"`},
		{"float for int", `{"priority": 1.5}`, `priority: expected an integer, got number 1.5`},
		{"int overflow", `{"priority": 99999999999999999999}`, `priority: number 99999999999999999999 is out of range`},
		{"negative uint", `{"rules": [{"rateLimit": {"pps": -1}}]}`, `rules[0].rateLimit.pps: expected a non-negative integer, got number -1`},
		{"object for list", `{"rules": {"id": "a"}}`, `rules: expected a list, got an object`},
		{"port float", `{"rules": [{"dstPorts": [22.5]}]}`,
			`rules[0].dstPorts[0]: expected a port or port range (string or integer), got number 22.5`},
		{"port bool", `{"rules": [{"srcPorts": ["1", true]}]}`,
			`rules[0].srcPorts[1]: expected a port or port range (string or integer), got boolean true`},
		{"set extra key", `{"sets": {"feed": {"file": "a.txt", "format": "x"}}}`,
			`sets.feed: unknown field "format" (a set is a list of prefixes or {file: PATH})`},
		{"set duplicate file", `{"sets": {"feed": {"file": "a.txt", "file": "b.txt"}}}`, `sets.feed: duplicate field "file"`},
		{"set empty object", `{"sets": {"feed": {}}}`, `sets.feed: missing field "file" (a set is a list of prefixes or {file: PATH})`},
		{"set empty file", `{"sets": {"feed": {"file": ""}}}`, `sets.feed.file: expected a non-empty path, got string ""`},
		{"set scalar", `{"sets": {"feed": "a.txt"}}`, `sets.feed: expected a list of prefixes or {file: PATH}, got string "a.txt"`},
		{"set member number", `{"sets": {"feed": ["1.2.3.4", 5]}}`, `sets.feed[1]: expected a string, got number 5 (quote it)`},
		{"chunks not a list", `{"sets": {"big": {"chunks": "abc", "count": 1}}}`,
			`sets.big.chunks: expected a list of chunk hashes, got string "abc"`},
		{"chunks object", `{"sets": {"big": {"chunks": {"a": 1}, "count": 1}}}`,
			`sets.big.chunks: expected a list of chunk hashes, got an object`},
		{"chunk hash number", `{"sets": {"big": {"chunks": ["abababababababababababababababababababababababababababababababab", 7], "count": 1}}}`,
			`sets.big.chunks[1]: expected a sha256 in hex, got number 7`},
		{"chunk hash short", `{"sets": {"big": {"chunks": ["abc"], "count": 1}}}`,
			`sets.big.chunks[0]: expected a sha256 in hex, got string "abc"`},
		{"chunk hash upper case", `{"sets": {"big": {"chunks": ["ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB"], "count": 1}}}`,
			`sets.big.chunks[0]: expected a sha256 in hex, got string "ABABABABABABABABABABABABABABABABABABABAB..."`},
		{"chunks duplicate", `{"sets": {"big": {"chunks": [], "chunks": [], "count": 0}}}`, `sets.big: duplicate field "chunks"`},
		{"top-level list", `[1, 2]`, `expected an object, got a list`},
		{"top-level scalar", "just words\n", `expected an object, got string "just words"`},
		{"empty input", "", `no rule set in input`},
		{"only comments", "# nothing here\n---\n# nor here\n", `no rule set in input`},
		{"json syntax first line", `{"name" "a"}`, `json: line 1, column 9: invalid character '"' after object key`},
		{"json syntax", "{\n  \"name\": \"a\"\n  \"mode\": \"deny\"\n}", `json: line 3, column 3: invalid character '"' after object key:value pair`},
		{"yaml syntax", head + "rules: [\n", `yaml: line 5: did not find expected node content`},
		{"multi-doc error names document", head + "---\n" + head + "rules: [{id: a, bogus: 1}]\n",
			`document 2: rules[0]: unknown field "bogus"`},
		{"multi-doc yaml line is absolute", head + "---\n" + head + "mode: allow\n",
			`yaml: line 10: key "mode" already set in map`},
		{"exactly one", head + "---\n" + head, `input holds 2 rule sets, want exactly one`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeRuleSet([]byte(tt.in))
			if err == nil {
				t.Fatalf("DecodeRuleSet succeeded, want error %q", tt.want)
			}
			if err.Error() != tt.want {
				t.Fatalf("error\n  %q\nwant\n  %q", err, tt.want)
			}
		})
	}
}

func TestDecodeMultiDocument(t *testing.T) {
	in := "\xef\xbb\xbf# leading comment\n" +
		"%YAML 1.1\n" +
		"---\n" +
		"apiVersion: xdpfw/v1\nkind: RuleSet\nname: one\nmode: deny\n" +
		"--- # a comment after the marker\n" +
		"apiVersion: xdpfw/v1\r\nkind: RuleSet\r\nname: two\r\nmode: allow\r\n" +
		"---\n" +
		"# an empty document is skipped\n" +
		"---\n" +
		"{apiVersion: xdpfw/v1, kind: RuleSet, name: three, mode: deny, rules: []}\n" +
		"...\n"
	sets, err := DecodeRuleSets([]byte(in))
	if err != nil {
		t.Fatalf("DecodeRuleSets: %v", err)
	}
	var names []string
	for _, rs := range sets {
		names = append(names, rs.Name)
	}
	if want := []string{"one", "two", "three"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("names = %q, want %q", names, want)
	}
	if sets[1].Mode != ModeAllow || sets[2].Rules == nil {
		t.Errorf("documents decoded wrongly: %+v", sets)
	}

	// A JSON stream of objects is several documents too.
	stream := `{"name": "a"} {"name": "b"}` + "\n" + `{"name": "c"}`
	sets, err = DecodeRuleSets([]byte(stream))
	if err != nil {
		t.Fatalf("DecodeRuleSets(json stream): %v", err)
	}
	if len(sets) != 3 || sets[2].Name != "c" {
		t.Fatalf("json stream decoded to %+v", sets)
	}

	// A "---" inside a value is not a document marker.
	one := "apiVersion: xdpfw/v1\nkind: RuleSet\nname: x\nmode: deny\nselector: {note: a---b}\n"
	rs, err := DecodeRuleSet([]byte(one))
	if err != nil || rs.Selector["note"] != "a---b" {
		t.Fatalf("DecodeRuleSet = %+v, %v", rs, err)
	}
}

func TestDecodeYAMLFlowMappingFallback(t *testing.T) {
	// Starts like JSON but is YAML; must still decode.
	rs, err := DecodeRuleSet([]byte("{apiVersion: xdpfw/v1, kind: RuleSet, name: edge, mode: deny}"))
	if err != nil {
		t.Fatalf("DecodeRuleSet: %v", err)
	}
	if rs.Name != "edge" || rs.Mode != ModeDeny {
		t.Fatalf("decoded %+v", rs)
	}
}

func TestDecodeNullMeansAbsent(t *testing.T) {
	rs, err := DecodeRuleSet([]byte("name: edge\nenforcement:\nsets:\n  a:\nrules:\n- id: x\n  icmpType:\n"))
	if err != nil {
		t.Fatalf("DecodeRuleSet: %v", err)
	}
	if rs.Enforcement != "" || rs.Rules[0].ICMPType != nil {
		t.Fatalf("null fields not left empty: %+v", rs)
	}
	if set, ok := rs.Sets["a"]; !ok || set.File != "" || set.Prefixes != nil {
		t.Fatalf("null set = %+v, %v; want present and empty", set, ok)
	}
}

func TestPortSpecJSON(t *testing.T) {
	tests := []struct {
		in      string
		want    PortSpec
		wantErr bool
	}{
		{`"22"`, "22", false},
		{`22`, "22", false},
		{`0`, "0", false},
		{`65535`, "65535", false},
		{`"1000-2000"`, "1000-2000", false},
		{`70000`, "70000", false}, // syntax is Validate's job
		{`-1`, "-1", false},
		{`22.0`, "", true},
		{`1e3`, "", true},
		{`true`, "", true},
		{`[22]`, "", true},
	}
	for _, tt := range tests {
		var p PortSpec
		err := json.Unmarshal([]byte(tt.in), &p)
		if (err != nil) != tt.wantErr || p != tt.want {
			t.Errorf("Unmarshal(%s) = %q, %v; want %q, error %v", tt.in, p, err, tt.want, tt.wantErr)
		}
	}
	b, err := json.Marshal([]PortSpec{"22", "1000-2000"})
	if err != nil || string(b) != `["22","1000-2000"]` {
		t.Errorf("Marshal = %s, %v; want strings", b, err)
	}
	// YAML integers become strings too.
	rs, err := DecodeRuleSet([]byte("rules: [{id: a, dstPorts: [22, 0x50, \"443\"]}]"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rs.Rules[0].DstPorts, []PortSpec{"22", "80", "443"}; !reflect.DeepEqual(got, want) {
		t.Errorf("DstPorts = %q, want %q", got, want)
	}
}

func TestPrefixSetJSON(t *testing.T) {
	tests := []struct {
		in      string
		want    PrefixSet
		wantErr string
	}{
		{`["10.0.0.0/8", "::/0"]`, PrefixSet{Prefixes: []string{"10.0.0.0/8", "::/0"}}, ""},
		{`[]`, PrefixSet{}, ""},
		{`{"file": "feeds/drop.txt"}`, PrefixSet{File: "feeds/drop.txt"}, ""},
		{`{"file": "a", "extra": 1}`, PrefixSet{}, `decode prefix set: unknown field "extra" (a set is a list of prefixes or {file: PATH})`},
		{`{"file": "a", "file": "b"}`, PrefixSet{}, `decode prefix set: duplicate field "file"`},
		{`"a"`, PrefixSet{}, `decode prefix set: expected a list of prefixes or {file: PATH}, got string "a"`},
	}
	for _, tt := range tests {
		var ps PrefixSet
		err := json.Unmarshal([]byte(tt.in), &ps)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("Unmarshal(%s) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(ps, tt.want) {
			t.Errorf("Unmarshal(%s) = %#v, %v; want %#v", tt.in, ps, err, tt.want)
		}
	}

	marshal := []struct {
		in      PrefixSet
		want    string
		wantErr bool
	}{
		{PrefixSet{Prefixes: []string{"10.0.0.0/8"}}, `["10.0.0.0/8"]`, false},
		{PrefixSet{}, `[]`, false},
		{PrefixSet{File: "feeds/drop.txt"}, `{"file":"feeds/drop.txt"}`, false},
		{PrefixSet{File: "a", Prefixes: []string{"10.0.0.0/8"}}, "", true},
	}
	for _, tt := range marshal {
		b, err := json.Marshal(tt.in)
		if (err != nil) != tt.wantErr || string(b) != tt.want {
			t.Errorf("Marshal(%#v) = %s, %v; want %s, error %v", tt.in, b, err, tt.want, tt.wantErr)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	orig, err := DecodeRuleSet([]byte(designExample))
	if err != nil {
		t.Fatal(err)
	}
	orig.Sets["feed"] = PrefixSet{File: "feeds/drop.txt"}
	orig.Sets["empty"] = PrefixSet{}
	orig.Interfaces = []string{"eth0"}
	icmp := 8
	orig.Rules = append(orig.Rules, Rule{ID: "ping", Action: ActionPass, Protocol: ProtoICMP, ICMPType: &icmp,
		Dst: []string{"192.0.2.1"}, TCPFlags: ""})

	j, err := json.Marshal(orig)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	y, err := yaml.Marshal(orig)
	if err != nil {
		t.Fatalf("yaml.Marshal: %v", err)
	}
	for name, data := range map[string][]byte{"json": j, "yaml": y} {
		got, err := DecodeRuleSet(data)
		if err != nil {
			t.Fatalf("%s: decode of marshalled document: %v\n%s", name, err, data)
		}
		if !reflect.DeepEqual(got, orig) {
			t.Errorf("%s: round trip changed the document\n got %#v\nwant %#v", name, got, orig)
		}
	}
	if !strings.Contains(string(j), `"dstPorts":["22"]`) || !strings.Contains(string(j), `"feed":{"file":"feeds/drop.txt"}`) {
		t.Errorf("unexpected JSON form: %s", j)
	}
}

func TestEffectiveEnforcement(t *testing.T) {
	for in, want := range map[Enforcement]Enforcement{
		"":                 EnforcementEnforce,
		EnforcementEnforce: EnforcementEnforce,
		EnforcementDryRun:  EnforcementDryRun,
	} {
		rs := RuleSet{Enforcement: in}
		if got := rs.EffectiveEnforcement(); got != want {
			t.Errorf("EffectiveEnforcement(%q) = %q, want %q", in, got, want)
		}
		if rs.Enforcement != in {
			t.Errorf("EffectiveEnforcement rewrote the document")
		}
	}
}

func TestYAMLErrorUnwraps(t *testing.T) {
	_, err := DecodeRuleSet([]byte("a: 1\na: 2\n"))
	var we *wrappedError
	if !errors.As(err, &we) || errors.Unwrap(err) == nil {
		t.Fatalf("error %v does not wrap the yaml error", err)
	}
}
