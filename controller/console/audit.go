package console

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

type auditData struct {
	Form    url.Values
	Entries []store.AuditEntry
	Next    string
	Error   string
}

// auditFilter reads the audit page's form: actor, entity (type and ID),
// device, and a time range (the browser's datetime-local, taken as UTC).
func auditFilter(q url.Values) (store.AuditFilter, error) {
	f := store.AuditFilter{Actor: strings.TrimSpace(q.Get("actor")), ObjectType: strings.TrimSpace(q.Get("type")),
		ObjectID: strings.TrimSpace(q.Get("id")), DeviceID: strings.TrimSpace(q.Get("device")), Limit: 50}
	for name, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(name); v != "" {
			t, err := time.Parse("2006-01-02T15:04", v)
			if err != nil {
				return f, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s: %q is not a date and time (YYYY-MM-DDTHH:MM, UTC)", name, v)
			}
			*dst = t
		}
	}
	if v := q.Get("cursor"); v != "" {
		raw, err := store.DecodeCursor(v)
		n, perr := strconv.ParseInt(raw, 10, 64)
		if err != nil || perr != nil {
			return f, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the page link is stale; filter again")
		}
		f.Before = n
	}
	return f, nil
}

func (c *Console) audit(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	q := r.URL.Query()
	d := auditData{Form: q}
	f, err := auditFilter(q)
	if err != nil {
		d.Error = devicemodel.ErrorMessage(err)
		c.render(w, r, sess, http.StatusBadRequest, "audit", "Audit log", d)
		return nil
	}
	if d.Entries, d.Next, err = c.st.FindAudit(r.Context(), f); err != nil {
		return err
	}
	c.secrets.RedactAudit(d.Entries)
	c.render(w, r, sess, http.StatusOK, "audit", "Audit log", d)
	return nil
}
