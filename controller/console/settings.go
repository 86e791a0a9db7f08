package console

import (
	"net/http"

	"github.com/duet-dm/duet/pkg/store"
)

// Setting is one setting of the effective configuration as the settings
// page shows it. The caller (cmd/duet, which owns the settings list)
// masks secrets before they get here: the console never holds them.
type Setting struct {
	Name, Env, Value string
	// Source is where the value came from: default, file, environment
	// or flag.
	Source string
}

// settings shows the effective configuration, read-only. Viewers see it
// too: nothing secret is in it.
func (c *Console) settings(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	c.render(w, r, sess, http.StatusOK, "settings", "Settings", c.o.Settings)
	return nil
}
