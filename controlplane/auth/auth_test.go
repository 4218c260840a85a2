package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xdpfw/xdpfw/proto"
)

func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

const good = `
tokens:
  - name: alice
    role: admin
    token: alice-secret-0123456789
  - name: ci
    role: operator
    sha256: %s
  - {name: dash, role: viewer, token: "viewer secret with spaces inside"}
`

func TestParseAndAuthenticate(t *testing.T) {
	toks, err := Parse([]byte(strings.Replace(good, "%s", hash("ci-secret-abcdef"), 1)))
	if err != nil {
		t.Fatal(err)
	}
	if toks.Len() != 3 {
		t.Fatalf("%d tokens, want 3", toks.Len())
	}
	tests := []struct {
		token string
		want  Identity
		ok    bool
	}{
		{"alice-secret-0123456789", Identity{"alice", proto.RoleAdmin}, true},
		{"ci-secret-abcdef", Identity{"ci", proto.RoleOperator}, true},
		{"viewer secret with spaces inside", Identity{"dash", proto.RoleViewer}, true},
		{hash("ci-secret-abcdef"), Identity{}, false}, // the hash is not the token
		{"alice-secret-012345678", Identity{}, false},
		{"alice-secret-0123456789 ", Identity{}, false},
		{"", Identity{}, false},
	}
	for _, tt := range tests {
		got, ok := toks.Authenticate(tt.token)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Authenticate(%q) = %+v, %v; want %+v, %v", tt.token, got, ok, tt.want, tt.ok)
		}
	}
	var nilTokens *Tokens
	if _, ok := nilTokens.Authenticate("x"); ok {
		t.Error("nil Tokens authenticated a token")
	}
}

func TestParseJSON(t *testing.T) {
	toks, err := Parse([]byte(`{"tokens": [{"name": "a", "role": "viewer", "token": "t1-0123456789abcdefghijkl"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := toks.Authenticate("t1-0123456789abcdefghijkl"); !ok || id.Name != "a" {
		t.Fatalf("Authenticate = %+v %v", id, ok)
	}
}

func TestParseRefuses(t *testing.T) {
	tests := []struct {
		name, file string
		want       []string
	}{
		{"empty file", ``, []string{"no tokens"}},
		{"empty list", `tokens: []`, []string{"no tokens"}},
		{"not yaml", "tokens: [", []string{"tokens file:"}},
		{"unknown field", "tokens: [{name: a, role: admin, tokn: x}]", []string{`unknown field "tokn"`}},
		{"unknown top-level field", "tokenz: []", []string{`unknown field "tokenz"`}},
		{"unknown role", "tokens: [{name: a, role: root, token: x}]", []string{`tokens[0] (a): unknown role "root": want viewer, operator or admin`}},
		{"role case", "tokens: [{name: a, role: Admin, token: x}]", []string{`unknown role "Admin"`}},
		{"missing role", "tokens: [{name: a, token: x}]", []string{`unknown role ""`}},
		{"duplicate name", "tokens: [{name: a, role: admin, token: t1}, {name: a, role: viewer, token: t2}]",
			[]string{"tokens[1] (a): duplicate name, also tokens[0]"}},
		{"duplicate token", "tokens: [{name: a, role: admin, token: same-0123456789abcdefghijkl}, {name: b, role: viewer, token: same-0123456789abcdefghijkl}]",
			[]string{"tokens[1] (b): the same token as tokens[0]"}},
		{"duplicate token as a hash", "tokens: [{name: a, role: admin, token: same-0123456789abcdefghijkl}, {name: b, role: viewer, sha256: " + hash("same-0123456789abcdefghijkl") + "}]",
			[]string{"tokens[1] (b): the same token as tokens[0]"}},
		{"duplicate hash in other case", "tokens: [{name: a, role: admin, sha256: " + hash("x") + "}, {name: b, role: viewer, sha256: " + strings.ToUpper(hash("x")) + "}]",
			[]string{"tokens[1] (b): the same token as tokens[0]"}},
		{"no name", "tokens: [{role: admin, token: x}]", []string{"tokens[0]: name is required"}},
		{"no token", "tokens: [{name: a, role: admin}]", []string{"tokens[0] (a): no token"}},
		{"both", "tokens: [{name: a, role: admin, token: x, sha256: " + hash("x") + "}]", []string{"both token and sha256"}},
		{"short hash", "tokens: [{name: a, role: admin, sha256: abcd}]", []string{"sha256 must be 64 hex digits"}},
		{"bad hex", "tokens: [{name: a, role: admin, sha256: " + strings.Repeat("zz", 32) + "}]", []string{"sha256 must be 64 hex digits"}},
		{"white space", "tokens: [{name: a, role: admin, token: ' x'}]", []string{"white space"}},
		{"under 128 bits", "tokens: [{name: a, role: admin, token: s3cret-of-21-chars-xx}]", []string{"tokens[0] (a): the token is 21 characters, under 22"}},
		{"every problem", "tokens: [{name: a, role: root, token: x}, {name: a, role: admin}]",
			[]string{`tokens[0] (a): unknown role "root"`, "tokens[1] (a): duplicate name", "tokens[1] (a): no token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			toks, err := Parse([]byte(tt.file))
			if err == nil {
				t.Fatalf("accepted, %d tokens", toks.Len())
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			for _, secret := range []string{"same", " x"} {
				if strings.Contains(err.Error(), "token: "+secret) || strings.Contains(err.Error(), `"`+secret+`"`) {
					t.Errorf("error %q shows a token", err)
				}
			}
		})
	}
}

func TestAllows(t *testing.T) {
	roles := []string{proto.RoleViewer, proto.RoleOperator, proto.RoleAdmin}
	for i, have := range roles {
		for j, need := range roles {
			if got := Allows(have, need); got != (i >= j) {
				t.Errorf("Allows(%s, %s) = %v", have, need, got)
			}
		}
		if Allows("", have) || Allows("root", have) {
			t.Errorf("an unknown role is allowed %s", have)
		}
	}
}

func TestFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("tokens: [{name: a, role: admin, token: one-0123456789abcdefghijkl}]")
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Authenticate("one-0123456789abcdefghijkl"); !ok {
		t.Fatal("token one refused")
	}
	write("tokens: [{name: a, role: viewer, token: two-0123456789abcdefghijkl}]")
	if err := f.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Authenticate("one-0123456789abcdefghijkl"); ok {
		t.Fatal("token one still accepted after the reload")
	}
	if id, ok := f.Authenticate("two-0123456789abcdefghijkl"); !ok || id.Role != proto.RoleViewer {
		t.Fatalf("token two: %+v %v", id, ok)
	}
	// A bad file keeps the tokens in use.
	write("tokens: [{name: a, role: wizard, token: three-0123456789abcdefghijkl}]")
	if err := f.Reload(); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "wizard") {
		t.Fatalf("Reload of a bad file: %v, want an error naming the file and the role", err)
	}
	if _, ok := f.Authenticate("two-0123456789abcdefghijkl"); !ok {
		t.Fatal("a failed reload dropped the tokens in use")
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("Load of a missing file: %v", err)
	}
}
