package proto

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
)

// maxFeedLine bounds one feed line. Real lines are short; the bound only
// makes a binary file fail fast instead of growing a buffer without end.
const maxFeedLine = 1 << 20

// ParseFeed reads a prefix feed: one prefix or bare address per line.
// Text after '#' or ';' is a comment, and blank lines and surrounding
// whitespace are skipped, which covers plain lists, FireHOL netsets and
// Spamhaus DROP ("1.10.16.0/20 ; SBL256894"). Each entry follows the rules
// of ParsePrefix; the first bad line is an error naming name and the line
// number ("feeds/drop.txt:12: ..."). The result is deduplicated and sorted
// like RuleSet.SetPrefixes.
func ParseFeed(r io.Reader, name string) ([]netip.Prefix, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxFeedLine)
	// Prefixes collect in chunks that are joined once at the end: growing
	// one slice by append would copy a million-entry feed about ten times.
	var chunks [][]netip.Prefix
	cur := make([]netip.Prefix, 0, 256)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Bytes()
		if i := bytes.IndexAny(text, "#;"); i >= 0 {
			text = text[:i]
		}
		text = bytes.TrimSpace(text)
		if len(text) == 0 {
			continue
		}
		p, err := ParsePrefix(string(text))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		if len(cur) == cap(cur) {
			chunks = append(chunks, cur)
			cur = make([]netip.Prefix, 0, min(2*cap(cur), 1<<16))
		}
		cur = append(cur, p)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%s:%d: line longer than %d bytes: %w", name, line+1, maxFeedLine, err)
		}
		return nil, fmt.Errorf("read feed %s: %w", name, err)
	}
	if len(chunks) == 0 {
		if len(cur) == 0 {
			return nil, nil
		}
		return sortPrefixes(cur), nil
	}
	return sortPrefixes(slices.Concat(append(chunks, cur)...)), nil
}

// ResolveFiles replaces every set that names a feed file with the file's
// prefixes, in canonical form, so that the document can be stored and sent
// to hosts (which never see the rules file's directory). Relative paths are
// taken from baseDir, the directory of the rules file. Either every set is
// resolved or, on error, the document is left unchanged; the error names
// each failing set and file.
func (rs *RuleSet) ResolveFiles(baseDir string) error {
	resolved := make(map[string]PrefixSet)
	var errs []error
	for _, name := range sortedKeys(rs.Sets) {
		set := rs.Sets[name]
		if set.File == "" {
			continue
		}
		path := mapPath("sets", name)
		if len(set.Prefixes) > 0 {
			errs = append(errs, fmt.Errorf("%s: has both a feed file (%s) and prefixes", path, set.File))
			continue
		}
		prefixes, err := readFeed(baseDir, set.File)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
			continue
		}
		strs := make([]string, len(prefixes))
		for i, p := range prefixes {
			strs[i] = p.String()
		}
		resolved[name] = PrefixSet{Prefixes: strs}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for name, set := range resolved {
		rs.Sets[name] = set
	}
	return nil
}

func readFeed(baseDir, file string) ([]netip.Prefix, error) {
	path := file
	if !filepath.IsAbs(path) {
		path = filepath.Join(baseDir, path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read feed: %w", err)
	}
	defer f.Close()
	// Errors name the file as the document does, which is what the
	// author can find in the rules file.
	return ParseFeed(f, file)
}
