package main

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite THIRD_PARTY.md")

// THIRD_PARTY.md lists every module go.mod requires, with the licence its
// LICENSE file holds, and every licence is compatible with Apache-2.0: a
// new dependency fails this test until the file is regenerated and the
// licence recognised.
func TestThirdPartyUpToDate(t *testing.T) {
	mods, err := load()
	if err != nil {
		t.Fatal(err)
	}
	const path = "../../THIRD_PARTY.md"
	b, err := os.ReadFile(path)
	if err != nil && !*update {
		t.Fatal(err)
	}
	for _, m := range mods {
		if !strings.Contains(string(b), "| `"+m.Path+"` | "+m.Version+" |") {
			t.Errorf("go.mod requires %s %s, which THIRD_PARTY.md does not list", m.Path, m.Version)
		}
		if !m.Compatible {
			t.Errorf("%s %s: licence %q is not known to be compatible with Apache-2.0 (file %q)", m.Path, m.Version, m.License, m.File)
		}
	}
	web, err := loadVendored("../../" + vendorDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(web) == 0 {
		t.Error("no vendored browser packages found (controller/console/static/vendor/manifest.json)")
	}
	for _, m := range web {
		if !m.Compatible {
			t.Errorf("vendored %s %s: licence %q is not known to be compatible with Apache-2.0 (file %q)", m.Path, m.Version, m.License, m.File)
		}
	}
	var want bytes.Buffer
	render(&want, mods)
	renderVendored(&want, web)
	if want.String() == string(b) {
		return
	}
	if *update {
		if err := os.WriteFile(path, want.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("THIRD_PARTY.md is stale; run: go run ./cmd/duet-licenses > THIRD_PARTY.md")
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		text, want string
		ok         bool
	}{
		{"Permission is hereby granted, free of charge, to any person", "MIT", true},
		{"Redistribution and use in source and binary forms ... Neither the name of Google", "BSD-3-Clause", true},
		{"Redistribution and use in source and binary\n  forms, with or without", "BSD-2-Clause", true},
		{"Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee", "ISC", true},
		{"Mozilla Public License Version 2.0", "MPL-2.0", true},
		{"Zero-Clause BSD\n=====\nPermission to use, copy, modify, and/or distribute this software for any purpose with or without fee", "0BSD", true},
		{"Apache License\n Version 2.0, January 2004", "Apache-2.0", true},
		{"GNU GENERAL PUBLIC LICENSE Version 3", "GPL", false},
		{"GNU AFFERO GENERAL PUBLIC LICENSE", "AGPL", false},
		{"GNU LESSER GENERAL PUBLIC LICENSE", "LGPL", false},
		{"Eclipse Public License - v 2.0 ... Eclipse Distribution License v1.0", "EPL-2.0 OR BSD-3-Clause", true},
		{"All rights reserved.", "unknown", false},
	} {
		got := classify(c.text)
		if got != c.want || compatible(got) != c.ok {
			t.Errorf("%.40q: %q compatible=%v, want %q %v", c.text, got, compatible(got), c.want, c.ok)
		}
	}
}
