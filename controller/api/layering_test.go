package api_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// httpLayers are the packages of the HTTP layer (docs/architecture.md,
// "Two rooms"): the REST API and the web console. They are thin layers
// over the services of package controller.
var httpLayers = []string{"controller/api", "controller/console"}

// TestNothingBelowTheHTTPLayerImportsIt: only the binaries (cmd/...), the
// whole-system tests (e2e) and the HTTP layer itself import the HTTP
// layer's packages; the services, adapters and pkg/ never do, tests
// included. It reads every Go file's imports, so it needs no build.
func TestNothingBelowTheHTTPLayerImportsIt(t *testing.T) {
	root, module := moduleRoot(t)
	within := func(rel, dir string) bool { return rel == dir || strings.HasPrefix(rel, dir+"/") }
	isHTTP := func(rel string) bool {
		for _, l := range httpLayers {
			if within(rel, l) {
				return true
			}
		}
		return false
	}
	fset := token.NewFileSet()
	seen := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			target, ok := strings.CutPrefix(p, module+"/")
			if !ok || !isHTTP(target) {
				continue
			}
			seen++
			if within(rel, "cmd") || within(rel, "e2e") || isHTTP(rel) {
				continue
			}
			t.Errorf("%s imports %s: only cmd/..., e2e and the HTTP layer may; move what it needs into package controller (a service)",
				filepath.ToSlash(strings.TrimPrefix(path, root+string(filepath.Separator))), p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen == 0 {
		t.Fatal("no file imports the HTTP layer; the check is not seeing the repository (cmd/duet should)")
	}
}

// moduleRoot finds the directory of go.mod above this package, and the
// module path it declares.
func moduleRoot(t *testing.T) (dir, module string) {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if m, ok := strings.CutPrefix(strings.TrimSpace(line), "module "); ok {
					return dir, strings.TrimSpace(m)
				}
			}
			t.Fatal("go.mod declares no module")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the package")
		}
		dir = parent
	}
}
