package console

import (
	"bytes"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// layout is what every page's frame needs.
type layout struct {
	Title   string
	Page    string
	User    *store.User
	CSRF    string
	Data    any
	Version string
}

// CanOperate and IsAdmin decide which controls a page shows; the server
// checks the role again on every request (route).
func (l layout) CanOperate() bool {
	return l.User != nil && roleAtLeast(l.User.Role, store.RoleOperator)
}
func (l layout) IsAdmin() bool { return l.User != nil && roleAtLeast(l.User.Role, store.RoleAdmin) }

var funcs = template.FuncMap{
	// ago says how old a time is in words an operator reads at a glance.
	"ago": func(t time.Time) string {
		if t.IsZero() || t.Year() < 2000 {
			return "never"
		}
		d := time.Since(t)
		switch {
		case d < 0:
			return "just now"
		case d < time.Minute:
			return fmt.Sprintf("%d s ago", int(d.Seconds()))
		case d < time.Hour:
			return fmt.Sprintf("%d min ago", int(d.Minutes()))
		case d < 48*time.Hour:
			return fmt.Sprintf("%d h ago", int(d.Hours()))
		}
		return fmt.Sprintf("%d days ago", int(d.Hours()/24))
	},
	"stamp": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"words":        func(s string) string { return strings.ReplaceAll(s, "_", " ") },
	"protocolName": protocolName,
	"list":         func(v ...string) []string { return v },
	"pageQuery":    pageQuery,
	// withData is the page's frame with other data, for a part shared by
	// pages (templates/parts) that reads .Data.
	"withData": func(l layout, d any) layout { l.Data = d; return l },
}

// pageQuery is a list form's query with another cursor.
// pageAfter decodes a list page's cursor ("" for the first page); a
// stale or forged one is an invalid argument that says what to do again.
func pageAfter(cursor, again string) (string, error) {
	if cursor == "" {
		return "", nil
	}
	after, err := store.DecodeCursor(cursor)
	if err != nil {
		return "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the page link is stale; %s", again)
	}
	return after, nil
}

func pageQuery(q url.Values, cursor string) string {
	out := url.Values{}
	for k, v := range q {
		if k != "cursor" && k != "part" && len(v) > 0 && v[0] != "" {
			out[k] = v
		}
	}
	if cursor != "" {
		out.Set("cursor", cursor)
	}
	return out.Encode()
}

// parseTemplates pairs each page template with the frame (base.html).
func (c *Console) parseTemplates() error {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return err
	}
	c.pages = map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(path.Base(n), ".html")
		if name == "base" {
			continue
		}
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/base.html", "templates/parts/*.html", n)
		if err != nil {
			return fmt.Errorf("console: template %s: %w", n, err)
		}
		c.pages[name] = t
	}
	return nil
}

// render writes a page in its frame. The page is rendered to a buffer
// first, so a template failure is an error page, not half a page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, sess *store.Session, code int, page, title string, data any) {
	l := layout{Title: title, Page: page, Data: data}
	if sess != nil {
		u := sess.User
		l.User, l.CSRF = &u, sess.CSRF
	}
	c.write(w, r, code, page, "base", l)
}

// fragment writes one named template of a page alone (an htmx swap).
func (c *Console) fragment(w http.ResponseWriter, r *http.Request, sess *store.Session, page, name string, data any) {
	l := layout{Page: page, Data: data}
	if sess != nil {
		u := sess.User
		l.User, l.CSRF = &u, sess.CSRF
	}
	c.write(w, r, http.StatusOK, page, name, l)
}

func (c *Console) write(w http.ResponseWriter, r *http.Request, code int, page, name string, l layout) {
	c.writeData(w, code, page, name, l)
}

// writeData executes one template of a page with any data.
func (c *Console) writeData(w http.ResponseWriter, code int, page, name string, l any) {
	var buf bytes.Buffer
	t := c.pages[page]
	if t == nil {
		c.log.Error("console: no such template", "page", page)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if err := t.ExecuteTemplate(&buf, name, l); err != nil {
		c.log.Error("console: template failed", "page", page, "template", name, "err", err)
		http.Error(w, "Something went wrong on the server; the controller's log has the details.", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}
