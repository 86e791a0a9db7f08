// Command testprogress reads `go test -json` on stdin and prints a line per
// finished top-level test and per package, so a long package (e2e, several
// minutes) does not look hung in CI (CONTRIBUTING.md). A failing test's
// whole output is printed; so is the output of a package that fails
// outside any test (a build error, a panic in TestMain). It exits 1 when
// anything failed, 0 otherwise.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
	// ImportPath names the package of a build-output event.
	ImportPath string
}

func main() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	// Output so far per package and per test, kept until it ends.
	buf := map[string]*strings.Builder{}
	add := func(key, s string) {
		b := buf[key]
		if b == nil {
			b = &strings.Builder{}
			buf[key] = b
		}
		b.WriteString(s)
	}
	failed := false
	start := time.Now()
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			// Not JSON (go vet or build output): pass it through.
			fmt.Fprintln(out, sc.Text())
			out.Flush()
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "output":
			add(key, e.Output)
		case "build-output":
			fmt.Fprint(out, e.Output)
		case "pass", "skip":
			if e.Test == "" {
				fmt.Fprintf(out, "[%4.0fs] ok    %s (%.1fs)\n", time.Since(start).Seconds(), e.Package, e.Elapsed)
			} else if !strings.Contains(e.Test, "/") {
				fmt.Fprintf(out, "[%4.0fs]   %s %s %s (%.1fs)\n", time.Since(start).Seconds(), strings.ToUpper(e.Action), shortPkg(e.Package), e.Test, e.Elapsed)
			}
			delete(buf, key)
		case "fail":
			failed = true
			if e.Test == "" {
				fmt.Fprintf(out, "[%4.0fs] FAIL  %s (%.1fs)\n", time.Since(start).Seconds(), e.Package, e.Elapsed)
				// What the package printed outside a test, and what tests
				// still running printed (a panic or a timeout ends them
				// without an event of their own).
				for k, b := range buf {
					if strings.HasPrefix(k, e.Package+" ") {
						out.WriteString(b.String())
						delete(buf, k)
					}
				}
			} else {
				fmt.Fprintf(out, "[%4.0fs]   FAIL %s %s (%.1fs)\n", time.Since(start).Seconds(), shortPkg(e.Package), e.Test, e.Elapsed)
				if b := buf[key]; b != nil {
					out.WriteString(b.String())
				}
			}
			delete(buf, key)
		}
		out.Flush()
	}
	if failed {
		os.Exit(1)
	}
}

func shortPkg(p string) string {
	return strings.TrimPrefix(p, "github.com/duet-dm/duet/")
}
