package console

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// Groups (issue 13 item 4, "Groups and policies"): a list with each
// group's member count, and a page to write a group's CEL filter with
// its errors and its member count shown as it is typed. Every change
// goes through controller.Policies, as the REST API's do.

// countBudget bounds the devices one member count evaluates (a count is
// asked for on every pause in typing): past it the count is a lower
// bound, and says so. A count is not cheap: 4.5 s (p95 6.3 s) for a
// filter reading a cached parameter over 100k devices on a shared 2-core
// machine at load 44 (BenchmarkConsolePolicyPages/group-count); the
// editor's requests replace each other (hx-sync), and an abandoned one
// stops at its next page of devices (the request's context).
const countBudget = 200_000

// filterCheck is what the filter editor shows under the filter: its
// first error, marked, or how many devices it selects.
type filterCheck struct {
	Error string
	// Line and Caret mark the error: the filter's line at fault and a
	// caret under its column (Line is "" without a position).
	Line, Caret string
	LineNo      int
	Count       policy.MemberCount
	Counted     bool
	// Pending: the filter is valid and its count loads after the page.
	Pending bool
}

// compileFilter compiles a filter; its error, marked, is in the check.
func compileFilter(src string) (*policy.Filter, filterCheck, error) {
	f, err := policy.CompileFilter(src)
	if err != nil {
		if statusOf(err) >= 500 {
			return nil, filterCheck{}, err
		}
		fc := filterCheck{Error: sentence(devicemodel.ErrorMessage(err))}
		if line, col, ok := policy.ErrorPosition(err); ok {
			fc.LineNo = line
			fc.Line, fc.Caret = caretUnder(src, line, col)
		}
		return nil, fc, nil
	}
	return f, filterCheck{}, nil
}

// checkFilterSource compiles a filter and, when it is valid, counts its
// members. Only a store failure is an error.
func (c *Console) checkFilterSource(r *http.Request, src string) (filterCheck, error) {
	f, fc, err := compileFilter(src)
	if err != nil || f == nil {
		return fc, err
	}
	n, err := policy.CountMembers(r.Context(), c.st, f, countBudget)
	if err != nil {
		return filterCheck{}, err
	}
	return filterCheck{Count: n, Counted: true}, nil
}

// caretUnder returns line (1-based) of src and a line with a caret under
// its col (1-based, in characters); tabs are kept so the caret lines up.
func caretUnder(src string, line, col int) (string, string) {
	lines := strings.Split(src, "\n")
	if line < 1 || line > len(lines) {
		return "", ""
	}
	text := []rune(strings.TrimRight(lines[line-1], "\r"))
	var caret strings.Builder
	for i := 0; i < col-1 && i < len(text); i++ {
		if text[i] == '\t' {
			caret.WriteByte('\t')
		} else {
			caret.WriteByte(' ')
		}
	}
	for i := len(text); i < col-1; i++ {
		caret.WriteByte(' ')
	}
	caret.WriteByte('^')
	return string(text), caret.String()
}

// checkFilter answers the editor's request as the filter is typed: the
// "filter-check" fragment.
func (c *Console) checkFilter(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	fc, err := c.checkFilterSource(r, r.URL.Query().Get("filter"))
	if err != nil {
		return err
	}
	c.writeData(w, http.StatusOK, "groups-edit", "filter-check", fc)
	return nil
}

type groupsData struct {
	Groups []store.Group
	Next   string
	This   string
}

func (c *Console) groups(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	cursor := r.URL.Query().Get("cursor")
	after, err := pageAfter(cursor, "open the list again")
	if err != nil {
		return err
	}
	gs, next, err := c.st.FindGroups(r.Context(), store.PageFilter{Limit: 50, After: after})
	if err != nil {
		return err
	}
	c.render(w, r, sess, http.StatusOK, "groups", "Groups", groupsData{Groups: gs, Next: next, This: cursor})
	return nil
}

// groupCount is a group's member count, loaded by the list after itself.
func (c *Console) groupCount(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	g, err := c.st.FindGroupByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	fc, err := c.checkFilterSource(r, g.Filter)
	if err != nil {
		return err
	}
	c.writeData(w, http.StatusOK, "groups-edit", "member-count", fc)
	return nil
}

type groupData struct {
	Group    store.Group
	Check    filterCheck
	Policies []store.Policy
	Error    string
}

// New says whether the page makes a group rather than edits one.
func (d groupData) New() bool { return d.Group.ID == "" }

func (c *Console) newGroup(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	c.render(w, r, sess, http.StatusOK, "groups-edit", "New group", groupData{})
	return nil
}

func (c *Console) group(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	g, err := c.st.FindGroupByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return c.showGroup(w, r, sess, http.StatusOK, groupData{Group: g})
}

// showGroup renders a group's page: its filter checked and its policies.
// The member count and the members, which evaluate the filter over the
// registry, load after the page (checkFilter, groupCount, groupMembers).
func (c *Console) showGroup(w http.ResponseWriter, r *http.Request, sess *store.Session, code int, d groupData) error {
	var err error
	if d.New() && d.Group.Filter == "" {
		// Nothing typed yet: nothing to judge.
	} else if _, d.Check, err = compileFilter(d.Group.Filter); err != nil {
		return err
	} else {
		d.Check.Pending = d.Check.Error == ""
	}
	if !d.New() {
		if d.Policies, err = c.st.FindPolicies(r.Context(), d.Group.ID); err != nil {
			return err
		}
	}
	title := "New group"
	if !d.New() {
		title = "Group " + d.Group.Name
	}
	c.render(w, r, sess, code, "groups-edit", title, d)
	return nil
}

// saveFailed shows a refused change on the page it came from, with the
// reason in words; a server failure stays an error.
func saveFailed(err error, show func(code int, msg string) error) error {
	if statusOf(err) >= 500 {
		return err
	}
	return show(statusOf(err), sentence(devicemodel.ErrorMessage(err)))
}

// sentence starts a message with a capital letter.
func sentence(msg string) string {
	if msg == "" {
		return msg
	}
	return strings.ToUpper(msg[:1]) + msg[1:]
}

func (c *Console) createGroup(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	name, filter := strings.TrimSpace(r.PostFormValue("name")), r.PostFormValue("filter")
	g, err := c.pol.CreateGroup(r.Context(), store.ActorFrom(r.Context()), name, filter)
	if err != nil {
		return saveFailed(err, func(code int, msg string) error {
			return c.showGroup(w, r, sess, code, groupData{Group: store.Group{Name: name, Filter: filter}, Error: msg})
		})
	}
	http.Redirect(w, r, "/groups/"+url.PathEscape(g.ID), http.StatusSeeOther)
	return nil
}

func (c *Console) updateGroup(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	id, name, filter := r.PathValue("id"), strings.TrimSpace(r.PostFormValue("name")), r.PostFormValue("filter")
	if _, err := c.pol.UpdateGroup(r.Context(), store.ActorFrom(r.Context()), id, name, filter); err != nil {
		return saveFailed(err, func(code int, msg string) error {
			return c.showGroup(w, r, sess, code, groupData{Group: store.Group{ID: id, Name: name, Filter: filter}, Error: msg})
		})
	}
	http.Redirect(w, r, "/groups/"+url.PathEscape(id)+"?saved=1", http.StatusSeeOther)
	return nil
}

// deleteGroup deletes a group (the page asked for a confirmation); one
// its policies still use is refused, which its page says.
func (c *Console) deleteGroup(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	id := r.PathValue("id")
	if err := c.st.DeleteGroup(r.Context(), store.ActorFrom(r.Context()), id); err != nil {
		return saveFailed(err, func(code int, msg string) error {
			g, ferr := c.st.FindGroupByID(r.Context(), id)
			if ferr != nil {
				return err
			}
			return c.showGroup(w, r, sess, code, groupData{Group: g, Error: msg})
		})
	}
	http.Redirect(w, r, "/groups", http.StatusSeeOther)
	return nil
}

type membersData struct {
	GroupID     string
	IDs         []string
	Next, This  string
	Scanned     int
	Unevaluable int
}

// groupMembers is a page of a group's members (policy.Members, the API's
// GET /api/v1/groups/{id}/devices): a page can hold fewer devices than
// asked and still have a next one, as each evaluates a bounded slice of
// the registry.
func (c *Console) groupMembers(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	g, err := c.st.FindGroupByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	cursor := r.URL.Query().Get("cursor")
	if _, err := pageAfter(cursor, "open the group again"); err != nil {
		return err
	}
	p, err := policy.Members(r.Context(), c.st, g, cursor, 50)
	if err != nil {
		return err
	}
	c.writeData(w, http.StatusOK, "groups-edit", "members", membersData{GroupID: g.ID, IDs: p.IDs, Next: p.Next, This: cursor,
		Scanned: p.Scanned, Unevaluable: p.Unevaluable})
	return nil
}
