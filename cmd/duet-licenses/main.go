// Command duet-licenses writes THIRD_PARTY.md: every module go.mod requires
// (direct and indirect: with Go's pruned module graphs these are every
// module the build can use), its version and the licence found in its
// LICENSE file in the module cache, and whether that licence lets it ship
// with Apache-2.0 code.
//
//	go run ./cmd/duet-licenses > THIRD_PARTY.md
//
// It also lists the browser packages the web console vendors
// (controller/console/static/vendor/manifest.json, written by make
// web-vendor), with the licence read from the LICENSE file copied beside
// them.
//
// It exits 1 when a licence is unknown or not compatible, so a new
// dependency is looked at by a person. TestThirdPartyUpToDate fails when
// THIRD_PARTY.md is not what this prints.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

func main() {
	mods, err := load()
	if err != nil {
		fmt.Fprintln(os.Stderr, "duet-licenses:", err)
		os.Exit(2)
	}
	web, err := loadVendored(vendorDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "duet-licenses:", err)
		os.Exit(2)
	}
	render(os.Stdout, mods)
	renderVendored(os.Stdout, web)
	bad := false
	for _, m := range append(mods, web...) {
		if !m.Compatible {
			fmt.Fprintf(os.Stderr, "duet-licenses: %s %s: licence %q is not known to be compatible with Apache-2.0\n", m.Path, m.Version, m.License)
			bad = true
		}
	}
	if bad {
		os.Exit(1)
	}
}

// Module is one dependency and what its licence file says.
type Module struct {
	Path, Version string
	Indirect      bool
	License       string // SPDX expression, or "unknown"
	Compatible    bool   // may be distributed with Apache-2.0 code
	File          string // the file the licence was read from
}

// load asks the go command for go.mod's requirements and their directories
// in the module cache. `go mod download` fetches the requirements a build
// never needed (a fresh machine's cache lacks them, and their licence files
// with them) and prints each module's directory.
func load() ([]Module, error) {
	out, err := exec.Command("go", "mod", "edit", "-json").Output()
	if err != nil {
		return nil, fmt.Errorf("go mod edit -json: %v", err)
	}
	var gomod struct {
		Require []struct {
			Path, Version string
			Indirect      bool
		}
	}
	if err := json.Unmarshal(out, &gomod); err != nil {
		return nil, err
	}
	args := []string{"mod", "download", "-json"}
	for _, r := range gomod.Require {
		args = append(args, r.Path+"@"+r.Version)
	}
	cmd := exec.Command("go", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err = cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go mod download: %v: %s", err, stderr.String())
	}
	dirs := map[string]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var m struct{ Path, Version, Dir string }
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return nil, err
		}
		dirs[m.Path] = m.Dir
	}
	var mods []Module
	for _, r := range gomod.Require {
		m := Module{Path: r.Path, Version: r.Version, Indirect: r.Indirect, License: "unknown"}
		if dir := dirs[r.Path]; dir != "" {
			m.License, m.File = classifyDir(dir)
		}
		m.Compatible = compatible(m.License)
		mods = append(mods, m)
	}
	return mods, nil
}

var licenseFile = regexp.MustCompile(`(?i)^(licen[cs]e|copying)(\.(md|txt))?$`)

// classifyDir reads the module's top-level licence file.
func classifyDir(dir string) (spdx, file string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "unknown", ""
	}
	for _, e := range entries {
		if e.IsDir() || !licenseFile.MatchString(e.Name()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if l := classify(string(b)); l != "unknown" {
			return l, e.Name()
		}
	}
	return "unknown", ""
}

// classify names the licence(s) a licence file holds by their distinctive
// sentences. A file holding two (go.yaml.in/yaml/v3: MIT for some files,
// Apache-2.0 for the rest) gets both, joined by AND.
func classify(text string) string {
	t := strings.Join(strings.Fields(text), " ") // one space everywhere
	has := func(s string) bool { return strings.Contains(t, s) }
	switch {
	case has("Eclipse Public License") && has("Eclipse Distribution License"):
		// Dual-licensed: the EDL-1.0 is the 3-clause BSD licence.
		return "EPL-2.0 OR BSD-3-Clause"
	case has("Zero-Clause BSD") || has("BSD Zero Clause License"):
		// Its grant is ISC's without the notice condition.
		return "0BSD"
	case has("GNU AFFERO GENERAL PUBLIC LICENSE"):
		return "AGPL"
	case has("GNU LESSER GENERAL PUBLIC LICENSE"):
		return "LGPL"
	case has("GNU GENERAL PUBLIC LICENSE"):
		return "GPL"
	}
	var found []string
	if has("Permission is hereby granted, free of charge") {
		found = append(found, "MIT")
	}
	if has("Redistribution and use in source and binary forms") {
		if has("Neither the name") || has("names of its contributors may be used") {
			found = append(found, "BSD-3-Clause")
		} else {
			found = append(found, "BSD-2-Clause")
		}
	}
	if has("Permission to use, copy, modify, and/or distribute this software for any purpose") ||
		has("Permission to use, copy, modify, and distribute this software for any purpose with or without fee") {
		found = append(found, "ISC")
	}
	if has("Mozilla Public License Version 2.0") || has("Mozilla Public License, version 2.0") {
		found = append(found, "MPL-2.0")
	}
	if has("Apache License") && (has("Version 2.0") || has("LICENSE-2.0")) {
		found = append(found, "Apache-2.0")
	}
	if len(found) == 0 {
		return "unknown"
	}
	return strings.Join(found, " AND ")
}

// compatible reports whether code under the licence may ship in an
// Apache-2.0 program: the permissive licences, and MPL-2.0 (file-level
// copyleft: its files stay under MPL, which Apache-2.0 code may use).
// The GPL family is not (Apache-2.0 code cannot be relicensed under it
// without changing Duet's licence), nor is anything unrecognised.
func compatible(spdx string) bool {
	ok := map[string]bool{"MIT": true, "0BSD": true, "BSD-2-Clause": true, "BSD-3-Clause": true, "ISC": true,
		"Apache-2.0": true, "MPL-2.0": true}
	if strings.Contains(spdx, " OR ") { // a choice: one compatible option suffices
		for _, p := range strings.Split(spdx, " OR ") {
			if ok[p] {
				return true
			}
		}
		return false
	}
	for _, p := range strings.Split(spdx, " AND ") { // all apply
		if !ok[p] {
			return false
		}
	}
	return true
}

func render(w io.Writer, mods []Module) {
	fmt.Fprint(w, `# Third-party software

<!-- Generated by "go run ./cmd/duet-licenses > THIRD_PARTY.md"; do not edit.
     TestThirdPartyUpToDate fails when go.mod and this file disagree. -->

Duet is licensed under the Apache License 2.0 (see LICENSE). It is built
with the Go modules below: every module go.mod requires, direct and
indirect, with the licence read from the LICENSE file of that version in
the module cache. "Compatible" means the licence allows shipping the module
inside an Apache-2.0 program; the tool refuses anything else or anything it
cannot recognise. The Go standard library and toolchain are BSD-3-Clause.

| module | version | required | licence | compatible with Apache-2.0 |
|---|---|---|---|---|
`)
	for _, m := range mods {
		kind := "direct"
		if m.Indirect {
			kind = "indirect"
		}
		c := "yes"
		if !m.Compatible {
			c = "**NO — review**"
		}
		fmt.Fprintf(w, "| `%s` | %s | %s | %s | %s |\n", m.Path, m.Version, kind, m.License, c)
	}
}

// vendorDir is where make web-vendor puts the console's browser packages,
// relative to the repository root (where go run runs).
const vendorDir = "controller/console/static/vendor"

// loadVendored reads the vendored packages' manifest and classifies the
// licence file copied beside each.
func loadVendored(dir string) ([]Module, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var man struct {
		Packages []struct {
			Name, Version, Dir string
			LicenseFile        string `json:"license_file"`
		}
	}
	if err := json.Unmarshal(b, &man); err != nil {
		return nil, fmt.Errorf("%s/manifest.json: %v", dir, err)
	}
	var out []Module
	for _, p := range man.Packages {
		m := Module{Path: p.Name, Version: p.Version, License: "unknown", File: filepath.Join(p.Dir, p.LicenseFile)}
		if t, err := os.ReadFile(filepath.Join(dir, p.Dir, p.LicenseFile)); err == nil {
			m.License = classify(string(t))
		}
		m.Compatible = compatible(m.License)
		out = append(out, m)
	}
	return out, nil
}

func renderVendored(w io.Writer, web []Module) {
	if len(web) == 0 {
		return
	}
	fmt.Fprint(w, `
## Browser packages of the web console

Vendored from the npm registry by `+"`make web-vendor`"+` (scripts/web-vendor.sh,
pinned versions and sha512 integrity) into controller/console/static/vendor/,
each with its licence file, and embedded in the duet binary.

| package | version | licence | compatible with Apache-2.0 |
|---|---|---|---|
`)
	for _, m := range web {
		c := "yes"
		if !m.Compatible {
			c = "**NO — review**"
		}
		fmt.Fprintf(w, "| `%s` | %s | %s | %s |\n", m.Path, m.Version, m.License, c)
	}
}
