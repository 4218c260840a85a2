package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"sigs.k8s.io/yaml"
)

// DecodeRuleSets decodes one or more rule documents. The input is JSON (one
// object, or several concatenated) or YAML (one document, or several
// separated by "---"). Decoding is strict: an unknown field, a field in the
// wrong case, a duplicate key or a value of the wrong type is an error that
// names the field, e.g. `rules[2]: unknown field "dstport"`. Input holding
// no document at all is an error too, so that an empty or truncated file
// can never stand for "no rules".
//
// DecodeRuleSets does not validate; call Validate on each result.
func DecodeRuleSets(data []byte) ([]RuleSet, error) {
	docs, err := splitDocuments(data)
	if err != nil {
		return nil, err
	}
	if len(docs) == 0 {
		return nil, errors.New("no rule set in input")
	}
	out := make([]RuleSet, 0, len(docs))
	for i, doc := range docs {
		rs, err := decodeDocument(doc)
		if err != nil {
			if len(docs) > 1 {
				return nil, fmt.Errorf("document %d: %w", i+1, err)
			}
			return nil, err
		}
		out = append(out, rs)
	}
	return out, nil
}

// DecodeRuleSet is DecodeRuleSets for input that must hold exactly one
// rule document.
func DecodeRuleSet(data []byte) (RuleSet, error) {
	sets, err := DecodeRuleSets(data)
	if err != nil {
		return RuleSet{}, err
	}
	if len(sets) != 1 {
		return RuleSet{}, fmt.Errorf("input holds %d rule sets, want exactly one", len(sets))
	}
	return sets[0], nil
}

// EffectiveEnforcement returns the set's enforcement with the default
// applied: an empty field means enforce. The document itself is left as
// written so that it round-trips unchanged.
func (rs *RuleSet) EffectiveEnforcement() Enforcement {
	if rs.Enforcement == "" {
		return EnforcementEnforce
	}
	return rs.Enforcement
}

var utf8BOM = []byte("\xef\xbb\xbf")

// splitDocuments turns the input into one JSON text per non-empty document.
func splitDocuments(data []byte) ([][]byte, error) {
	data = bytes.TrimPrefix(data, utf8BOM)
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] == '{' {
		docs, jsonErr := splitJSON(data)
		if jsonErr == nil {
			return docs, nil
		}
		// A YAML flow mapping also starts with '{'. If the input is not
		// YAML either, the JSON error is the one the author needs.
		if docs, err := splitYAML(data); err == nil {
			return docs, nil
		}
		return nil, jsonErr
	}
	return splitYAML(data)
}

func splitJSON(data []byte) ([][]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var docs [][]byte
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if err == io.EOF {
			return docs, nil
		}
		if err != nil {
			return nil, jsonSyntaxError(data, err)
		}
		if string(raw) == "null" {
			continue
		}
		docs = append(docs, raw)
	}
}

// jsonSyntaxError adds a line and column to encoding/json's byte offset.
func jsonSyntaxError(data []byte, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		before := data[:min(int(se.Offset), len(data))]
		line := bytes.Count(before, []byte("\n")) + 1
		// Offset counts the offending byte, so it is the last one of before.
		col := len(before) - bytes.LastIndexByte(before, '\n') - 1
		return fmt.Errorf("json: line %d, column %d: %w", line, col, err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("json: unexpected end of input: %w", err)
	}
	return fmt.Errorf("json: %w", err)
}

// splitYAML cuts the input at "---" lines (as a YAML stream does) and
// converts each document to JSON. sigs.k8s.io/yaml only handles single
// documents, and cutting by hand keeps line numbers in errors absolute.
func splitYAML(data []byte) ([][]byte, error) {
	type chunk struct {
		line int // first line of the chunk, 1-based
		text []byte
	}
	var chunks []chunk
	start, startLine := 0, 1
	for off, line := 0, 1; off < len(data); line++ {
		end := bytes.IndexByte(data[off:], '\n')
		next := len(data)
		if end >= 0 {
			next = off + end + 1
		}
		if l := bytes.TrimRight(data[off:next], "\r\n"); isDocMarker(l, "---") {
			// The marker starts the next document; yaml.v2 accepts it
			// there, and content after it on the same line stays in place.
			chunks = append(chunks, chunk{startLine, data[start:off]})
			start, startLine = off, line
		}
		off = next
	}
	chunks = append(chunks, chunk{startLine, data[start:]})

	var docs [][]byte
	for _, c := range chunks {
		if yamlChunkEmpty(c.text) {
			continue
		}
		j, err := yaml.YAMLToJSONStrict(c.text)
		if err != nil {
			return nil, yamlError(err, c.line)
		}
		if string(j) == "null" {
			continue
		}
		docs = append(docs, j)
	}
	return docs, nil
}

func isDocMarker(line []byte, marker string) bool {
	return bytes.HasPrefix(line, []byte(marker)) &&
		(len(line) == len(marker) || line[len(marker)] == ' ' || line[len(marker)] == '\t')
}

// yamlChunkEmpty reports whether a chunk holds only blank lines, comments,
// directives and document markers: there is no document in it, and handing
// a lone "%YAML 1.2" to the parser would be an error.
func yamlChunkEmpty(text []byte) bool {
	for l := range bytes.Lines(text) {
		l = bytes.TrimSpace(l)
		if isDocMarker(l, "---") || isDocMarker(l, "...") {
			l = bytes.TrimSpace(l[3:])
		}
		if len(l) != 0 && l[0] != '#' && l[0] != '%' {
			return false
		}
	}
	return true
}

var yamlLineRE = regexp.MustCompile(`\bline (\d+)`)

// yamlError flattens yaml.v2's multi-line errors and shifts their line
// numbers from the chunk to the whole input.
func yamlError(err error, firstLine int) error {
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "yaml: unmarshal errors:\n"); ok {
		lines := strings.Split(rest, "\n")
		for i := range lines {
			lines[i] = strings.TrimSpace(lines[i])
		}
		msg = "yaml: " + strings.Join(lines, "; ")
	}
	msg = yamlLineRE.ReplaceAllStringFunc(msg, func(m string) string {
		n, err := strconv.Atoi(m[len("line "):])
		if err != nil {
			return m
		}
		return "line " + strconv.Itoa(n+firstLine-1)
	})
	return &wrappedError{msg: msg, err: err}
}

// wrappedError carries a rewritten message while keeping the original
// error reachable for errors.Is and errors.As.
type wrappedError struct {
	msg string
	err error
}

func (e *wrappedError) Error() string { return e.msg }
func (e *wrappedError) Unwrap() error { return e.err }

func decodeDocument(doc []byte) (RuleSet, error) {
	// First pass: check the shape against the Go types, with paths in the
	// errors. encoding/json reports neither duplicate keys nor where an
	// unknown field sits, and matches field names case-insensitively.
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	if err := checkValue(dec, "", reflect.TypeFor[RuleSet]()); err != nil {
		return RuleSet{}, err
	}
	// Second pass: the actual decoding, still strict in case the two
	// passes ever disagree.
	var rs RuleSet
	dec = json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rs); err != nil {
		return RuleSet{}, fmt.Errorf("decode rule set: %w", err)
	}
	return rs, nil
}

// shapeError is a decoding problem at a path in the document.
type shapeError struct {
	path, msg string
}

func (e *shapeError) Error() string {
	if e.path == "" {
		return e.msg
	}
	return e.path + ": " + e.msg
}

func errAt(path, format string, args ...any) error {
	return &shapeError{path: path, msg: fmt.Sprintf(format, args...)}
}

var (
	portSpecType  = reflect.TypeFor[PortSpec]()
	prefixSetType = reflect.TypeFor[PrefixSet]()
)

// checkValue reads one JSON value from dec and checks it against t.
func checkValue(dec *json.Decoder, path string, t reflect.Type) error {
	tok, err := dec.Token()
	if err != nil {
		// The input was checked as JSON already; this is defensive.
		return fmt.Errorf("read json: %w", err)
	}
	return checkToken(dec, tok, path, t)
}

// checkToken checks the value that starts with tok. It stops at the first
// problem: the rest of the input is not read, and the decoder is dropped.
func checkToken(dec *json.Decoder, tok json.Token, path string, t reflect.Type) error {
	if tok == nil {
		// null leaves the field at its zero value, as in encoding/json,
		// and as YAML's "key:" with nothing after it means.
		return nil
	}
	switch t {
	case portSpecType:
		if _, ok := tok.(string); ok {
			return nil
		}
		if n, ok := tok.(json.Number); ok && isIntegerLiteral([]byte(n)) {
			return nil
		}
		return errAt(path, "expected a port or port range (string or integer), got %s", describe(tok))
	case prefixSetType:
		switch tok {
		case json.Delim('['):
			return checkElems(dec, path, reflect.TypeFor[string]())
		case json.Delim('{'):
			return checkFileObject(dec, path)
		}
		return errAt(path, "expected a list of prefixes or {file: PATH}, got %s", describe(tok))
	}

	switch t.Kind() {
	case reflect.String:
		if _, ok := tok.(string); ok {
			return nil
		}
		if _, ok := tok.(json.Delim); !ok {
			return errAt(path, "expected a string, got %s (quote it)", describe(tok))
		}
		return errAt(path, "expected a string, got %s", describe(tok))
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := tok.(json.Number)
		if !ok {
			return errAt(path, "expected an integer, got %s", describe(tok))
		}
		if _, err := strconv.ParseInt(string(n), 10, t.Bits()); err != nil {
			return numberError(path, n, err)
		}
		return nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := tok.(json.Number)
		if !ok {
			return errAt(path, "expected a non-negative integer, got %s", describe(tok))
		}
		if strings.HasPrefix(string(n), "-") {
			return errAt(path, "expected a non-negative integer, got number %s", n)
		}
		if _, err := strconv.ParseUint(string(n), 10, t.Bits()); err != nil {
			return numberError(path, n, err)
		}
		return nil
	case reflect.Bool:
		if _, ok := tok.(bool); ok {
			return nil
		}
		return errAt(path, "expected true or false, got %s", describe(tok))
	case reflect.Pointer:
		return checkToken(dec, tok, path, t.Elem())
	case reflect.Slice:
		if tok != json.Delim('[') {
			return errAt(path, "expected a list, got %s", describe(tok))
		}
		return checkElems(dec, path, t.Elem())
	case reflect.Map:
		if tok != json.Delim('{') {
			return errAt(path, "expected an object, got %s", describe(tok))
		}
		return checkMap(dec, path, t.Elem())
	case reflect.Struct:
		if tok != json.Delim('{') {
			return errAt(path, "expected an object, got %s", describe(tok))
		}
		return checkStruct(dec, path, t)
	}
	// Only reachable if a field of a type this walker does not know is
	// added to the document types.
	return errAt(path, "cannot check a value of Go type %s", t)
}

func numberError(path string, n json.Number, err error) error {
	if errors.Is(err, strconv.ErrRange) {
		return errAt(path, "number %s is out of range", n)
	}
	return errAt(path, "expected an integer, got number %s", n)
}

func checkElems(dec *json.Decoder, path string, elem reflect.Type) error {
	for i := 0; dec.More(); i++ {
		if err := checkValue(dec, fmt.Sprintf("%s[%d]", path, i), elem); err != nil {
			return err
		}
	}
	_, err := dec.Token() // ']'
	return err
}

func checkMap(dec *json.Decoder, path string, elem reflect.Type) error {
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key := tok.(string) // object keys are always strings
		if seen[key] {
			return errAt(path, "duplicate key %q", key)
		}
		seen[key] = true
		if err := checkValue(dec, mapPath(path, key), elem); err != nil {
			return err
		}
	}
	_, err := dec.Token() // '}'
	return err
}

func checkStruct(dec *json.Decoder, path string, t reflect.Type) error {
	fields := jsonFields(t)
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key := tok.(string)
		ft, ok := fields[key]
		if !ok {
			return errAt(path, "unknown field %q%s", key, suggestField(key, fields))
		}
		if seen[key] {
			return errAt(path, "duplicate field %q", key)
		}
		seen[key] = true
		if err := checkValue(dec, joinPath(path, key), ft); err != nil {
			return err
		}
	}
	_, err := dec.Token() // '}'
	return err
}

// checkFileObject checks the object forms of a PrefixSet: {"file": PATH}
// (a feed, in a rules file) or {"chunks": [SHA256...], "count": N} (a big
// set as stored in etcd).
func checkFileObject(dec *json.Decoder, path string) error {
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key := tok.(string)
		if seen[key] {
			return errAt(path, "duplicate field %q", key)
		}
		seen[key] = true
		switch key {
		case "file":
			v, err := dec.Token()
			if err != nil {
				return err
			}
			if s, ok := v.(string); !ok || s == "" {
				return errAt(joinPath(path, "file"), "expected a non-empty path, got %s", describe(v))
			}
		case "chunks":
			// Read whole: a big set names hundreds of chunks, and
			// Token costs microseconds per element.
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return err
			}
			v := decodeAny(raw)
			hashes, ok := v.([]any)
			if !ok {
				return errAt(joinPath(path, "chunks"), "expected a list of chunk hashes, got %s", describe(jsonToken(v)))
			}
			for i, v := range hashes {
				if s, ok := v.(string); !ok || !ValidChunkHash(s) {
					return errAt(fmt.Sprintf("%s.chunks[%d]", path, i), "expected a sha256 in hex, got %s", describe(jsonToken(v)))
				}
			}
		case "count":
			v, err := dec.Token()
			if err != nil {
				return err
			}
			n, ok := v.(json.Number)
			if i, err := n.Int64(); !ok || err != nil || i < 0 {
				return errAt(joinPath(path, "count"), "expected a count of prefixes, got %s", describe(v))
			}
		default:
			return errAt(path, "unknown field %q (a set is a list of prefixes or {file: PATH})", key)
		}
	}
	switch {
	case seen["file"] && (seen["chunks"] || seen["count"]):
		return errAt(path, "a set has a file or chunks, not both")
	case seen["chunks"] != seen["count"]:
		return errAt(path, "chunks and count go together")
	case !seen["file"] && !seen["chunks"]:
		return errAt(path, "missing field \"file\" (a set is a list of prefixes or {file: PATH})")
	}
	_, err := dec.Token() // '}'
	return err
}

var fieldCache sync.Map // reflect.Type -> map[string]reflect.Type

// jsonFields maps the JSON names of t's fields to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := make(map[string]reflect.Type)
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		m[name] = f.Type
	}
	fieldCache.Store(t, m)
	return m
}

// suggestField offers the field the author probably meant: same name in
// another case ("DstPorts") or one or two letters off ("dstport").
func suggestField(key string, fields map[string]reflect.Type) string {
	best, bestDist := "", 3
	for name := range fields {
		d := editDistance(strings.ToLower(key), strings.ToLower(name))
		if d < bestDist || (d == bestDist && name < best) {
			best, bestDist = name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of two short ASCII-ish strings.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64 // not worth comparing, and keeps fuzzed input cheap
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// decodeAny decodes one JSON value (already read whole by a decoder, so
// valid) keeping numbers as written.
func decodeAny(raw []byte) any {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	_ = dec.Decode(&v) // valid: it was read as a value
	return v
}

// jsonToken is the token a decoded value starts with, for describe.
func jsonToken(v any) json.Token {
	switch v.(type) {
	case map[string]any:
		return json.Delim('{')
	case []any:
		return json.Delim('[')
	}
	return v
}

func describe(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case string:
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		return "string " + strconv.Quote(v)
	case json.Number:
		return "number " + string(v)
	case bool:
		return "boolean " + strconv.FormatBool(v)
	case json.Delim:
		if v == '[' {
			return "a list"
		}
		return "an object"
	}
	return fmt.Sprintf("%v", tok)
}

// joinPath appends a struct field to a path: "rules[2]" + "id".
func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// mapPath appends a map key to a path: "sets" + "bad-actors" gives
// "sets.bad-actors"; keys that would make the path ambiguous are quoted,
// as in `selector["a b"]`.
func mapPath(path, key string) string {
	plain := key != ""
	for i := 0; i < len(key) && plain; i++ {
		c := key[i]
		plain = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == '/'
	}
	if plain {
		return joinPath(path, key)
	}
	return path + "[" + strconv.Quote(key) + "]"
}

// isIntegerLiteral reports whether b is a JSON integer: an optional minus
// and digits, no fraction or exponent.
func isIntegerLiteral(b []byte) bool {
	b = bytes.TrimPrefix(b, []byte("-"))
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// UnmarshalJSON accepts a list of prefixes or {"file": PATH}; nothing else,
// and no other key in the object. An empty list decodes to a nil Prefixes
// so that documents compare equal after a round trip.
func (ps *PrefixSet) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if string(data) == "null" {
		return nil
	}
	if len(data) > 0 && data[0] == '[' {
		var list []string
		if err := json.Unmarshal(data, &list); err != nil {
			return fmt.Errorf("decode prefix set: %w", err)
		}
		*ps = PrefixSet{Prefixes: list}
		if len(list) == 0 {
			ps.Prefixes = nil
		}
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := checkValue(dec, "", prefixSetType); err != nil {
		return fmt.Errorf("decode prefix set: %w", err)
	}
	var f struct {
		File   string   `json:"file"`
		Chunks []string `json:"chunks"`
		Count  int      `json:"count"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return fmt.Errorf("decode prefix set: %w", err)
	}
	*ps = PrefixSet{File: f.File, Chunks: f.Chunks, Count: f.Count}
	return nil
}

// MarshalJSON writes the list form, or {"file": PATH} for an unresolved
// feed. A set holding both cannot be written without losing one of them.
func (ps PrefixSet) MarshalJSON() ([]byte, error) {
	switch {
	case ps.File != "" && len(ps.Prefixes) > 0:
		return nil, fmt.Errorf("prefix set has both a file (%s) and prefixes", ps.File)
	case len(ps.Chunks) > 0 && (ps.File != "" || len(ps.Prefixes) > 0):
		return nil, errors.New("prefix set has chunks and a file or prefixes")
	case len(ps.Chunks) > 0:
		return json.Marshal(struct {
			Chunks []string `json:"chunks"`
			Count  int      `json:"count"`
		}{ps.Chunks, ps.Count})
	case ps.File != "":
		return json.Marshal(struct {
			File string `json:"file"`
		}{ps.File})
	case ps.Prefixes == nil:
		return []byte("[]"), nil
	}
	return json.Marshal(ps.Prefixes)
}

// UnmarshalJSON accepts a string ("22", "1000-2000") or an integer (22),
// because YAML authors write `dstPorts: [22]`. Its syntax is checked by
// Validate, not here, so that all problems are reported together.
// PortSpec marshals as a plain string.
func (p *PortSpec) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	switch {
	case string(data) == "null":
		return nil
	case len(data) > 0 && data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Errorf("decode port: %w", err)
		}
		*p = PortSpec(s)
		return nil
	case isIntegerLiteral(data):
		*p = PortSpec(data)
		return nil
	}
	return fmt.Errorf("decode port: expected a string or an integer, got %.40s", data)
}
