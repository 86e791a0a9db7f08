// Package migrations holds Duet's numbered SQL migrations, embedded in the
// binary. Files are named NNNN_description.sql and applied in order, each in
// its own transaction, by pkg/store. A migration, once released, is never
// edited: add a new one.
package migrations

import "embed"

// FS holds every *.sql migration.
//
//go:embed *.sql
var FS embed.FS
