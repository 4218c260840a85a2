package auth

import (
	"encoding/json"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// FuzzParse: a tokens file never panics the control plane; an accepted
// file's tokens authenticate as their entries, and no error quotes a
// token (errors reach logs and stderr).
func FuzzParse(f *testing.F) {
	f.Add([]byte("tokens:\n  - {name: a, role: admin, token: abcdefghijklmnopqrstuvwxyz}\n"))
	f.Add([]byte("tokens:\n  - {name: a, role: viewer, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}\n"))
	f.Add([]byte("tokens: [{name: a, role: root, token: short}]\n"))
	f.Add([]byte("tokens: [{name: a, role: admin, token: 12345678901234567890123}, {name: a, role: admin, token: 12345678901234567890123}]"))
	f.Add([]byte("{tokens: 1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		toks, err := Parse(data)
		if err != nil {
			for _, tok := range secrets(data) {
				if strings.Contains(err.Error(), tok) {
					t.Fatalf("the error quotes token %q: %v", tok, err)
				}
			}
			return
		}
		if toks.Len() == 0 {
			t.Fatal("a file with no tokens was accepted")
		}
	})
}

// secrets are the token values of a tokens file of 8 characters or more
// that appear nowhere else in it as a name or a role (a name shown in an
// error is not a leak of a token that happens to equal it). For a file
// that does not parse, whatever follows "token:" stands in.
func secrets(data []byte) []string {
	var f file
	if j, err := yaml.YAMLToJSON(data); err == nil && json.Unmarshal(j, &f) == nil {
		public := map[string]bool{}
		for _, e := range f.Tokens {
			public[strings.TrimSpace(e.Name)], public[e.Role] = true, true
		}
		var out []string
		for _, e := range f.Tokens {
			if len(e.Token) >= 8 && !public[e.Token] {
				out = append(out, e.Token)
			}
		}
		return out
	}
	var out []string
	for _, line := range strings.Split(string(data), "token:")[1:] {
		fields := strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == '}' || r == '\n' })
		if len(fields) == 0 {
			continue
		}
		if tok := strings.Trim(strings.TrimSpace(fields[0]), `"'`); len(tok) >= 8 {
			out = append(out, tok)
		}
	}
	return out
}
