package main

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// notesOutsideTheRepo matches citations of documents that are not in this
// repository: comments cite a specification (TR-069 section, TR-369
// requirement) or a page of docs/ (CONTRIBUTING.md, habit 13).
var notesOutsideTheRepo = regexp.MustCompile(`(^|[^A-Za-z0-9_-])(usp|cwmp|services|STYLE|ARCHITECTURE)\.md|\.\./shared/`)

// TestNoCitationsOutsideTheRepository fails on a file tracked by git that
// cites a note a reader of the repository cannot open.
func TestNoCitationsOutsideTheRepository(t *testing.T) {
	out, err := exec.Command("git", "-C", "../..", "ls-files").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	var bad []string
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "testdata/") {
			continue // device wire samples, not prose
		}
		b, err := os.ReadFile("../../" + f)
		if err != nil {
			continue // deleted in the work tree
		}
		for i, line := range strings.Split(string(b), "\n") {
			if notesOutsideTheRepo.MatchString(line) {
				bad = append(bad, f+":"+strconv.Itoa(i+1)+": "+strings.TrimSpace(line))
			}
		}
	}
	if len(bad) > 0 {
		t.Fatalf("%d lines cite notes that are not in the repository:\n%s", len(bad), strings.Join(bad, "\n"))
	}
}
