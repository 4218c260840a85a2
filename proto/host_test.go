package proto

import (
	"errors"
	"strings"
	"testing"
)

func TestKeysRoundTrip(t *testing.T) {
	k := NewKeys("/fw")
	if got := k.RuleSetVersion("edge", 12); got != "/fw/rulesets/edge/versions/12" {
		t.Fatalf("RuleSetVersion = %q", got)
	}
	name, v, ok := k.ParseRuleSetVersion("/fw/rulesets/edge/versions/12")
	if !ok || name != "edge" || v != 12 {
		t.Fatalf("ParseRuleSetVersion = %q %d %v", name, v, ok)
	}
	for _, bad := range []string{
		"/fw/rulesets/edge/head", "/fw/rulesets/edge/versions/012", "/fw/rulesets/edge/versions/0",
		"/fw/rulesets/Edge/versions/1", "/other/rulesets/edge/versions/1", "/fw/rulesets/edge/versions/1/x",
	} {
		if _, _, ok := k.ParseRuleSetVersion(bad); ok {
			t.Errorf("ParseRuleSetVersion(%q) accepted", bad)
		}
	}
	host, leaf, ok := k.ParseHostKey(k.HostStatus("h1.example"))
	if !ok || host != "h1.example" || leaf != "status" {
		t.Fatalf("ParseHostKey = %q %q %v", host, leaf, ok)
	}
	if NewKeys("").Prefix != DefaultKeyPrefix {
		t.Fatalf("default prefix = %q", NewKeys("").Prefix)
	}
}

func TestDecodeHostDesired(t *testing.T) {
	good := `{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[{"name":"edge","version":3}]}`
	d, err := DecodeHostDesired([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.RuleSets) != 1 || d.RuleSets[0] != (RuleSetRef{"edge", 3}) {
		t.Fatalf("decoded %+v", d)
	}
	for _, tc := range []struct{ doc, want string }{
		{``, "empty document"},
		{`{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[],"extra":1}`, `unknown field "extra"`},
		{`{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[]} {}`, "data after the document"},
		{`{"apiVersion":"xdpfw/v2","kind":"HostDesired"}`, "apiVersion: must be"},
		{`{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[{"name":"Edge","version":1}]}`, "ruleSets[0].name"},
		{`{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[{"name":"edge","version":0}]}`, "ruleSets[0].version: must be 1 or more"},
		{`{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[{"name":"a","version":1},{"name":"a","version":2}]}`, "already listed at ruleSets[0]"},
		{`not json`, "decode:"},
	} {
		_, err := DecodeHostDesired([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("DecodeHostDesired(%q) = %v, want an error with %q", tc.doc, err, tc.want)
		}
	}
	_, err = DecodeHostDesired([]byte(`{"apiVersion":"xdpfw/v1","kind":"HostDesired","ruleSets":[{"name":"a","version":-1},{"name":"B","version":1}]}`))
	var verr *ValidationError
	if !errors.As(err, &verr) || len(verr.Problems) != 2 {
		t.Fatalf("want both problems listed, got %v", err)
	}
}

func TestValidateHostName(t *testing.T) {
	for _, ok := range []string{"h1", "edge-7.dc1", "a"} {
		if err := ValidateHostName(ok); err != nil {
			t.Errorf("ValidateHostName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "H1", "a/b", "-a", "a..b", strings.Repeat("a", 254)} {
		if err := ValidateHostName(bad); err == nil {
			t.Errorf("ValidateHostName(%q) accepted", bad)
		}
	}
}
