// Package auth checks the bearer tokens of the control plane's API
// against a tokens file and says what each token's role may do.
//
// The file is YAML (or JSON):
//
//	tokens:
//	  - name: alice
//	    role: admin
//	    token: "a long random string"
//	  - name: ci
//	    role: operator
//	    sha256: 6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b
//
// An entry holds the token itself or, so that the file need not hold
// secrets, the hex SHA-256 of it. Roles are viewer < operator < admin
// (proto.Role*). A file with an unknown field or role, a duplicate name or
// token, or no tokens at all is refused whole.
package auth

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"

	"sigs.k8s.io/yaml"

	"github.com/xdpfw/xdpfw/proto"
)

// Identity is who a token belongs to.
type Identity struct {
	Name string
	Role string
}

// rank orders the roles: a role may do what every lower role may.
var rank = map[string]int{
	proto.RoleViewer:   1,
	proto.RoleOperator: 2,
	proto.RoleAdmin:    3,
}

// ValidRole reports whether role is one of proto.Role*.
func ValidRole(role string) bool { return rank[role] > 0 }

// Allows reports whether role may do what needs the role need: viewer <
// operator < admin. An unknown role allows nothing.
func Allows(role, need string) bool {
	have, ok := rank[role]
	return ok && have >= rank[need]
}

// MinTokenLength is the shortest token a tokens file may hold: 128 bits
// written in base64 take 22 characters. (A token given as its sha256
// cannot be checked: the one who hashed it vouches for it.)
const MinTokenLength = 22

// Tokens is a parsed tokens file. It is immutable and safe for
// concurrent use.
type Tokens struct {
	entries []entry
}

type entry struct {
	id     Identity
	digest [sha256.Size]byte
}

// fileEntry is one entry of the file as written.
type fileEntry struct {
	Name   string `json:"name"`
	Role   string `json:"role"`
	Token  string `json:"token,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
}

type file struct {
	Tokens []fileEntry `json:"tokens"`
}

// Errors show a name or a role only when it looks like one, so that a
// token pasted into the wrong field is not echoed into logs.
var (
	shownName = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,64}$`)
	shownRole = regexp.MustCompile(`^[A-Za-z]{0,16}$`)
)

// yamlLine finds the line numbers a YAML parser's message names.
var yamlLine = regexp.MustCompile(`line \d+`)

// Parse reads a tokens file's content. Errors name the entry at fault
// ("tokens[2] (bob): ...") and never include a token.
func Parse(data []byte) (*Tokens, error) {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		// The YAML parser's message can quote or print the text it could
		// not read, which may be a token: say where, not what.
		where := ""
		if lines := yamlLine.FindAllString(err.Error(), 3); len(lines) > 0 {
			where = " at " + strings.Join(lines, ", ")
		}
		return nil, fmt.Errorf("tokens file: not valid YAML%s (check indentation and quoting; the parser's message is not shown, as it can quote a token)", where)
	}
	var f file
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("tokens file: %w (want tokens: [{name: NAME, role: viewer|operator|admin, token: \"SECRET\" or sha256: HEX}]; quote tokens that YAML could read as numbers or booleans)", err)
	}
	if len(f.Tokens) == 0 {
		return nil, errors.New("tokens file: no tokens: nobody could use the API; add at least one under \"tokens\"")
	}
	var problems []string
	bad := func(i int, name, format string, args ...any) {
		where := fmt.Sprintf("tokens[%d]", i)
		if shownName.MatchString(name) {
			where += " (" + name + ")"
		}
		problems = append(problems, where+": "+fmt.Sprintf(format, args...))
	}
	t := &Tokens{}
	names := map[string]int{}
	digests := map[[sha256.Size]byte]int{}
	for i, fe := range f.Tokens {
		name := strings.TrimSpace(fe.Name)
		if name == "" {
			bad(i, "", "name is required (it is who the audit trail says wrote)")
		} else if j, dup := names[name]; dup {
			bad(i, name, "duplicate name, also tokens[%d]: give each token its own name", j)
		} else {
			names[name] = i
		}
		if !ValidRole(fe.Role) {
			role := "(not shown: not a word)" // a token pasted in the wrong field stays out of logs
			if shownRole.MatchString(fe.Role) {
				role = strconv.Quote(fe.Role)
			}
			bad(i, name, "unknown role %s: want %s, %s or %s", role, proto.RoleViewer, proto.RoleOperator, proto.RoleAdmin)
		}
		var digest [sha256.Size]byte
		switch {
		case fe.Token != "" && fe.SHA256 != "":
			bad(i, name, "both token and sha256 given: keep one (sha256 keeps the secret out of the file)")
			continue
		case fe.Token != "":
			if strings.TrimSpace(fe.Token) != fe.Token {
				bad(i, name, "the token starts or ends with white space, which a bearer header cannot carry")
				continue
			}
			if len(fe.Token) < MinTokenLength {
				bad(i, name, "the token is %d characters, under %d: a token must carry at least 128 random bits (head -c 24 /dev/urandom | base64)", len(fe.Token), MinTokenLength)
				continue
			}
			digest = sha256.Sum256([]byte(fe.Token))
		case fe.SHA256 != "":
			raw, err := hex.DecodeString(fe.SHA256)
			if err != nil || len(raw) != sha256.Size {
				bad(i, name, "sha256 must be %d hex digits (as printed by sha256sum)", 2*sha256.Size)
				continue
			}
			copy(digest[:], raw)
		default:
			bad(i, name, "no token: give token or sha256")
			continue
		}
		if j, dup := digests[digest]; dup {
			bad(i, name, "the same token as tokens[%d]: every token must be unique so that it names one identity", j)
			continue
		}
		digests[digest] = i
		t.entries = append(t.entries, entry{id: Identity{Name: name, Role: fe.Role}, digest: digest})
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("tokens file: %s", strings.Join(problems, "; "))
	}
	return t, nil
}

// Authenticate returns the identity of a token. It compares the token's
// SHA-256 with every entry's in constant time, so that neither how much
// of a token matched nor which entry it matched shows in the time taken.
func (t *Tokens) Authenticate(token string) (Identity, bool) {
	if t == nil || token == "" {
		return Identity{}, false
	}
	digest := sha256.Sum256([]byte(token))
	found := -1
	for i := range t.entries {
		if subtle.ConstantTimeCompare(digest[:], t.entries[i].digest[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Identity{}, false
	}
	return t.entries[found].id, true
}

// Len returns how many tokens there are.
func (t *Tokens) Len() int { return len(t.entries) }

// File is a tokens file that can be read again (on SIGHUP, say) while
// requests are being authenticated.
type File struct {
	path string
	cur  atomic.Pointer[Tokens]
}

// Load reads a tokens file.
func Load(path string) (*File, error) {
	f := &File{path: path}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Path returns the file's path.
func (f *File) Path() string { return f.path }

// Reload reads the file again. On an error the tokens in use stay as
// they were.
func (f *File) Reload() error {
	data, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("read tokens file: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return fmt.Errorf("%s: %w", f.path, err)
	}
	f.cur.Store(t)
	return nil
}

// Tokens returns the tokens in use.
func (f *File) Tokens() *Tokens { return f.cur.Load() }

// Authenticate is Tokens().Authenticate.
func (f *File) Authenticate(token string) (Identity, bool) {
	return f.cur.Load().Authenticate(token)
}
