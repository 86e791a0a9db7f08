package store

import (
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
)

// storable makes s fit PostgreSQL text: a NUL byte (which text cannot hold)
// or invalid UTF-8 becomes U+FFFD. The adapters already refuse such texts
// (bus.SanitizeEvent); this is the last line for anything else on the bus,
// so one event cannot fail the batch it came in (issue 15 §1).
func storable(s string) string {
	if strings.IndexByte(s, 0) < 0 && utf8.ValidString(s) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// sanitizeObservations returns obs with every registry text storable, copying only
// the observations that need it.
func sanitizeObservations(obs []Observation) []Observation {
	out := obs
	copied := false
	for i := range obs {
		o := obs[i]
		d := &o.Device
		changed := false
		for _, f := range []*string{&o.EventID, &o.Kind, &d.Manufacturer, &d.OUI, &d.ProductClass, &d.SerialNumber,
			&d.ModelName, &d.SoftwareVersion, &d.HardwareVersion, &d.ProvisioningCode, &d.DataModel,
			&d.Transport, &d.Address, &d.ConnectionRequestURL} {
			if c := storable(*f); c != *f {
				*f, changed = c, true
			}
		}
		// Parameters are made storable where they are written
		// (upsertParametersStatement).
		if !changed {
			continue
		}
		if !copied {
			out = append([]Observation(nil), obs...)
			copied = true
		}
		out[i] = o
	}
	return out
}

// IsQueryTimeout reports a statement PostgreSQL cancelled because it ran
// past statement_timeout (SQLSTATE 57014, query_canceled).
func IsQueryTimeout(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "57014"
}

// IsTransient reports a failure that says nothing about the data: the
// connection, the server's resources, a deadlock or serialization
// conflict, an administrator's cancel (SQLSTATE classes 08, 40, 53, 57P,
// and a cancelled statement), or no PostgreSQL error at all. Retrying
// such a failure may succeed; the controller never dead-letters for one.
func IsTransient(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return true
	}
	c := pe.Code
	return strings.HasPrefix(c, "08") || strings.HasPrefix(c, "40") || strings.HasPrefix(c, "53") ||
		strings.HasPrefix(c, "57P") || c == "57014"
}
