package etcdstore

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestOnlyTheGatewayImportsEtcd keeps etcd access in this package: no other
// package's non-test code imports etcd's client or API (the embedded server,
// controlplane/etcdserver, and the test helper etcdtest aside).
func TestOnlyTheGatewayImportsEtcd(t *testing.T) {
	allowed := map[string]bool{"etcdstore": true, "controlplane/etcdserver": true, "controlplane/etcdserver/etcdtest": true}
	root := ".."
	found := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") && path != root || d.Name() == "node_modules" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			if !strings.HasPrefix(p, "go.etcd.io/etcd/client/") && !strings.HasPrefix(p, "go.etcd.io/etcd/api/") {
				continue
			}
			found++
			if !allowed[filepath.ToSlash(rel)] {
				t.Errorf("%s imports %s: reach etcd through etcdstore", path, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found == 0 {
		t.Fatal("no file imports etcd's client: the walk looked in the wrong place")
	}
}
