package console

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// Policies (issue 13 item 4, "Groups and policies"): a list with each
// policy's statuses counted, a page to write one (a JSON spec checked as
// it is typed, rows of path and value for the parameters kind), its
// preview per device before saving, enabling with a rollout strategy
// after a confirmation, and the rollout's progress, live. Every change
// goes through controller.Policies, as the REST API's do, under the
// user's name (route puts it in the context).

// policyRoutes registers the pages of groups, policies and rollouts, and
// builds the service they share with the REST API.
func (c *Console) policyRoutes() {
	c.pol = controller.NewPolicies(controller.PoliciesOptions{Store: c.st, Bus: c.o.Bus, Env: c.o.PolicyEnv, Logger: c.log})
	c.route("GET /groups", store.RoleViewer, c.groups)
	c.route("GET /groups/new", store.RoleOperator, c.newGroup)
	c.route("GET /groups/check", store.RoleOperator, c.checkFilter)
	c.route("POST /groups", store.RoleOperator, c.createGroup)
	c.route("GET /groups/{id}", store.RoleViewer, c.group)
	c.route("GET /groups/{id}/count", store.RoleViewer, c.groupCount)
	c.route("GET /groups/{id}/members", store.RoleViewer, c.groupMembers)
	c.route("POST /groups/{id}", store.RoleOperator, c.updateGroup)
	c.route("POST /groups/{id}/delete", store.RoleOperator, c.deleteGroup)
	c.route("GET /policies", store.RoleViewer, c.policies)
	c.route("GET /policies/new", store.RoleOperator, c.newPolicy)
	c.route("GET /policies/param-row", store.RoleOperator, c.paramRow)
	c.route("POST /policies/check", store.RoleOperator, c.checkPolicy)
	c.route("POST /policies/preview", store.RoleOperator, c.previewPolicy)
	c.route("POST /policies", store.RoleOperator, c.createPolicy)
	c.route("GET /policies/{id}", store.RoleViewer, c.policy)
	c.route("POST /policies/{id}", store.RoleOperator, c.updatePolicy)
	c.route("POST /policies/{id}/delete", store.RoleOperator, c.deletePolicy)
	c.route("GET /policies/{id}/enable", store.RoleOperator, c.enableForm)
	c.route("POST /policies/{id}/enable", store.RoleOperator, c.enablePolicy)
	c.route("GET /policies/{id}/rollout", store.RoleViewer, c.rollout)
	c.route("POST /policies/{id}/rollout/{action}", store.RoleOperator, c.rolloutAction)
	c.route("GET /policies/{id}/devices", store.RoleViewer, c.policyDevices)
}

// statusNames are the per-device statuses in the order pages show them.
var statusNames = []string{store.StatusCompliant, store.StatusPending, store.StatusApplying, store.StatusFailed, store.StatusConflicting}

type policyRow struct {
	store.PolicyListing
	Counts map[string]int
}

type policiesData struct {
	Policies []policyRow
	Statuses []string
	Next     string
	This     string
}

func (c *Console) policies(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	cursor := r.URL.Query().Get("cursor")
	after, err := pageAfter(cursor, "open the list again")
	if err != nil {
		return err
	}
	ps, next, err := c.st.ListPolicies(r.Context(), store.PageFilter{Limit: 50, After: after})
	if err != nil {
		return err
	}
	counts, err := c.st.PolicyStatusCounts(r.Context())
	if err != nil {
		return err
	}
	d := policiesData{Statuses: statusNames, Next: next, This: cursor}
	for _, p := range ps {
		d.Policies = append(d.Policies, policyRow{PolicyListing: p, Counts: counts[p.ID]})
	}
	c.render(w, r, sess, http.StatusOK, "policy-list", "Policies", d)
	return nil
}

// paramForm is one row of the parameters kind's form.
type paramForm struct {
	Path, Value string
	Expr        bool
}

// policyForm is the policy editor's form as the user filled it.
type policyForm struct {
	ID, GroupID, Name, Priority, Kind string
	// Mode is "rows" (the parameters kind's rows) or "json" (the spec).
	Mode string
	Rows []paramForm
	Spec string
}

// policyKinds are the kinds the editor offers, with their words.
var policyKinds = []struct{ Kind, Words string }{
	{policy.KindParameters, "parameters: values to hold"},
	{policy.KindObjects, "objects: table instances to hold"},
	{policy.KindManagement, "management: inform interval and notifications"},
	{policy.KindFirmware, "firmware: a software version to run"},
}

// specExamples start the JSON editor of each kind.
var specExamples = map[string]string{
	policy.KindParameters: `{"parameters": [{"path": "Device.ManagementServer.PeriodicInformInterval", "value": "300"}]}`,
	policy.KindObjects:    `{"objects": [{"table": "Device.NAT.PortMapping.", "key": {"Alias": "web"}, "parameters": {"Enable": "true"}}]}`,
	policy.KindManagement: `{"periodic_inform_interval": 300}`,
	policy.KindFirmware:   `{"file_id": "", "version": ""}`,
}

// blankRows is how many empty rows the parameters form offers.
const blankRows = 2

// formOfPolicy fills the editor from a saved policy.
func formOfPolicy(p store.Policy) policyForm {
	f := policyForm{ID: p.ID, GroupID: p.GroupID, Name: p.Name, Priority: strconv.Itoa(p.Priority), Kind: p.Kind, Mode: "json", Spec: indentJSON(p.Spec)}
	if rows, ok := rowsOfSpec(p.Kind, p.Spec); ok {
		f.Mode, f.Rows = "rows", rows
	}
	return f.withBlankRows()
}

func (f policyForm) withBlankRows() policyForm {
	for range blankRows {
		f.Rows = append(f.Rows, paramForm{})
	}
	return f
}

func indentJSON(raw []byte) string {
	var b bytes.Buffer
	if json.Indent(&b, raw, "", "  ") != nil {
		return string(raw)
	}
	return b.String()
}

// rowsOfSpec reads a parameters spec as rows; ok is false for another
// kind or a spec the rows cannot hold.
func rowsOfSpec(kind string, spec []byte) ([]paramForm, bool) {
	if kind != policy.KindParameters {
		return nil, false
	}
	var ps policy.ParameterSpec
	dec := json.NewDecoder(bytes.NewReader(spec))
	dec.DisallowUnknownFields()
	if dec.Decode(&ps) != nil {
		return nil, false
	}
	rows := make([]paramForm, 0, len(ps.Parameters))
	for _, p := range ps.Parameters {
		switch {
		case p.Expr != "":
			rows = append(rows, paramForm{Path: p.Path, Value: p.Expr, Expr: true})
		case p.Value != nil:
			rows = append(rows, paramForm{Path: p.Path, Value: *p.Value})
		}
	}
	return rows, true
}

// readPolicyForm reads the editor's form: the spec is the JSON editor's,
// or, for the parameters kind in rows mode, made from the rows (empty
// rows skipped).
func readPolicyForm(r *http.Request) policyForm {
	// A form that cannot be read leaves every field empty, which the
	// checks then refuse in words.
	_ = r.ParseForm()
	f := policyForm{ID: r.PostFormValue("id"), GroupID: r.PostFormValue("group_id"), Name: strings.TrimSpace(r.PostFormValue("name")),
		Priority: strings.TrimSpace(r.PostFormValue("priority")), Kind: r.PostFormValue("kind"), Mode: r.PostFormValue("mode"),
		Spec: r.PostFormValue("spec")}
	// Each row sends a path, a value and what the value is, so the three
	// lists line up.
	paths, values, as := r.PostForm["path"], r.PostForm["value"], r.PostForm["as"]
	for i, p := range paths {
		row := paramForm{Path: strings.TrimSpace(p), Expr: i < len(as) && as[i] == "expr"}
		if i < len(values) {
			row.Value = values[i]
		}
		if row.Path != "" || row.Value != "" {
			f.Rows = append(f.Rows, row)
		}
	}
	if f.Kind == policy.KindParameters && f.Mode == "rows" {
		f.Spec = specOfRows(f.Rows)
	}
	return f
}

// specOfRows writes the rows as a parameters spec.
func specOfRows(rows []paramForm) string {
	type entry struct {
		Path  string  `json:"path"`
		Value *string `json:"value,omitempty"`
		Expr  string  `json:"expr,omitempty"`
	}
	out := struct {
		Parameters []entry `json:"parameters"`
	}{Parameters: []entry{}}
	for _, r := range rows {
		e := entry{Path: r.Path}
		if r.Expr {
			e.Expr = r.Value
		} else {
			v := r.Value
			e.Value = &v
		}
		out.Parameters = append(out.Parameters, e)
	}
	b, _ := json.MarshalIndent(out, "", "  ")
	return string(b)
}

// input is the form as the service takes it.
func (f policyForm) input() (controller.PolicyInput, error) {
	in := controller.PolicyInput{GroupID: f.GroupID, Name: f.Name, Kind: f.Kind, Spec: json.RawMessage(f.Spec)}
	if f.Priority != "" {
		n, err := strconv.Atoi(f.Priority)
		if err != nil {
			return in, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the priority must be a whole number")
		}
		in.Priority = n
	}
	if strings.TrimSpace(f.Spec) == "" || !json.Valid([]byte(f.Spec)) {
		return in, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the spec is not a JSON document")
	}
	return in, nil
}

type policyData struct {
	Form   policyForm
	Policy *store.Policy
	Group  store.Group
	Groups []store.Group
	Kinds  []struct{ Kind, Words string }
	// Examples of a spec per kind, as a JSON object for the editor.
	Examples map[string]string
	Error    string
	Check    specCheck
	Rollout  *rolloutData
	Statuses statusesData
}

func (c *Console) newPolicy(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	f := policyForm{GroupID: r.URL.Query().Get("group"), Kind: policy.KindParameters, Mode: "rows", Priority: "0",
		Spec: specExamples[policy.KindParameters]}
	return c.showPolicy(w, r, sess, http.StatusOK, policyData{Form: f.withBlankRows()})
}

func (c *Console) policy(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	p, err := c.st.FindPolicyByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return c.showPolicy(w, r, sess, http.StatusOK, policyData{Form: formOfPolicy(p), Policy: &p})
}

// showPolicy renders the policy page: the editor, and for a saved policy
// its rollout and per-device statuses.
func (c *Console) showPolicy(w http.ResponseWriter, r *http.Request, sess *store.Session, code int, d policyData) error {
	d.Kinds, d.Examples = policyKinds, specExamples
	if d.Policy != nil || d.Error != "" {
		// A new, untouched form is not judged yet.
		d.Check = checkSpec(d.Form)
	}
	if d.Policy == nil {
		// A new policy picks its group.
		gs, _, err := c.st.FindGroups(r.Context(), store.PageFilter{Limit: store.MaxPageSize})
		if err != nil {
			return err
		}
		d.Groups = gs
		c.render(w, r, sess, code, "policy", "New policy", d)
		return nil
	}
	g, err := c.st.FindGroupByID(r.Context(), d.Policy.GroupID)
	if err != nil {
		return err
	}
	d.Group = g
	if d.Rollout, err = c.rolloutOf(r, sess, d.Policy.ID); err != nil {
		return err
	}
	if d.Statuses, err = c.statuses(r, d.Policy.ID, "", ""); err != nil {
		return err
	}
	c.render(w, r, sess, code, "policy", "Policy "+d.Policy.Name, d)
	return nil
}

// specCheck is what the editor shows under the spec.
type specCheck struct {
	OK    string
	Error string
}

// checkSpec validates the form's kind and spec as the service will.
func checkSpec(f policyForm) specCheck {
	in, err := f.input()
	if err == nil {
		var s *policy.CheckedSpec
		if s, err = policy.ValidateSpec(in.Kind, in.Spec); err == nil {
			return specCheck{OK: specWords(s)}
		}
	}
	return specCheck{Error: sentence(devicemodel.ErrorMessage(err))}
}

// specWords says what a valid spec holds.
func specWords(s *policy.CheckedSpec) string {
	switch s.Kind {
	case policy.KindParameters:
		return plural(len(s.Parameters), "parameter value", "parameter values") + " to hold."
	case policy.KindObjects:
		return plural(len(s.Objects), "table instance", "table instances") + " to hold."
	}
	return "The spec is valid."
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// checkPolicy answers the editor as the spec is typed.
func (c *Console) checkPolicy(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	c.writeData(w, http.StatusOK, "policy", "spec-check-result", checkSpec(readPolicyForm(r)))
	return nil
}

// paramRow is one more empty row of the parameters form.
func (c *Console) paramRow(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	c.writeData(w, http.StatusOK, "policy", "param-form-row", paramForm{})
	return nil
}

func (c *Console) createPolicy(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	f := readPolicyForm(r)
	in, err := f.input()
	if err == nil {
		var p store.Policy
		if p, err = c.pol.CreatePolicy(r.Context(), store.ActorFrom(r.Context()), in); err == nil {
			http.Redirect(w, r, "/policies/"+url.PathEscape(p.ID), http.StatusSeeOther)
			return nil
		}
	}
	return saveFailed(err, func(code int, msg string) error {
		return c.showPolicy(w, r, sess, code, policyData{Form: f.withBlankRows(), Error: msg})
	})
}

func (c *Console) updatePolicy(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	id := r.PathValue("id")
	f := readPolicyForm(r)
	f.ID = id
	in, err := f.input()
	if err == nil {
		if _, err = c.pol.UpdatePolicy(r.Context(), store.ActorFrom(r.Context()), id, in); err == nil {
			http.Redirect(w, r, "/policies/"+url.PathEscape(id)+"?saved=1", http.StatusSeeOther)
			return nil
		}
	}
	return saveFailed(err, func(code int, msg string) error {
		p, ferr := c.st.FindPolicyByID(r.Context(), id)
		if ferr != nil {
			return ferr
		}
		return c.showPolicy(w, r, sess, code, policyData{Form: f.withBlankRows(), Policy: &p, Error: msg})
	})
}

func (c *Console) deletePolicy(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	id := r.PathValue("id")
	if err := c.st.DeletePolicy(r.Context(), store.ActorFrom(r.Context()), id); err != nil {
		return err
	}
	http.Redirect(w, r, "/policies", http.StatusSeeOther)
	return nil
}

// previewRow is one device of a preview in words.
type previewRow struct {
	policy.DevicePreview
	// Other lists the plan's operations besides values set.
	Other []string
}

type previewData struct {
	Rows        []previewRow
	Next        string
	Scanned     int
	Unevaluable int
	Error       string
	First       bool
}

// previewPolicy previews the policy as the form holds it (saved or not),
// a page of member devices at a time, with the API's preview service.
func (c *Console) previewPolicy(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	f := readPolicyForm(r)
	cursor := r.PostFormValue("cursor")
	d := previewData{First: cursor == ""}
	in, err := f.input()
	if err == nil && in.GroupID == "" {
		err = devicemodel.Errorf(devicemodel.CodeInvalidArgument, "choose the group first")
	}
	if err == nil {
		_, err = pageAfter(cursor, "preview again")
	}
	var page policy.PreviewPage
	if err == nil {
		page, err = c.pol.PreviewUnsaved(r.Context(), in, cursor, 25)
	}
	if err != nil {
		if statusOf(err) >= 500 {
			return err
		}
		d.Error = sentence(devicemodel.ErrorMessage(err))
		c.writeData(w, http.StatusOK, "policy", "preview", d)
		return nil
	}
	for _, dp := range page.Devices {
		d.Rows = append(d.Rows, previewRow{DevicePreview: dp, Other: planWords(dp.Plan)})
	}
	d.Next, d.Scanned, d.Unevaluable = page.NextCursor, page.Scanned, page.Unevaluable
	c.writeData(w, http.StatusOK, "policy", "preview", d)
	return nil
}

// planWords says what a plan does besides setting values: what the task
// sent would be.
func planWords(p *policy.Plan) []string {
	if p == nil {
		return nil
	}
	var out []string
	for _, a := range p.Add {
		keys := make([]string, 0, len(a.Params))
		for k, v := range a.Params {
			keys = append(keys, k+"="+v)
		}
		sort.Strings(keys)
		out = append(out, "add an instance of "+a.Table+" ("+strings.Join(keys, ", ")+")")
	}
	for _, d := range p.Delete {
		out = append(out, "delete "+d)
	}
	for _, a := range p.Attributes {
		out = append(out, "set the notification of "+a.Path+" to "+notificationWords(a.Notification))
	}
	for _, t := range p.Refresh {
		out = append(out, "read "+t+" first (Duet has no complete listing of it)")
	}
	for _, t := range p.Undecided {
		out = append(out, "cannot decide on "+t+": reading it failed")
	}
	for _, m := range p.Missing {
		out = append(out, m+" is missing and may not be created: the device cannot comply")
	}
	if fw := p.Firmware; fw != nil {
		out = append(out, "install version "+fw.Version+" (runs "+orWord(fw.Current, "an unknown version")+")")
	}
	return out
}

// notificationWords names a TR-069 Notification attribute value
// (TR-069 §A.3.2.4: 0 off, 1 passive, 2 active).
func notificationWords(n int) string {
	switch n {
	case 0:
		return "off"
	case 1:
		return "passive"
	case 2:
		return "active"
	}
	return strconv.Itoa(n)
}

func orWord(s, dflt string) string {
	if s == "" {
		return dflt
	}
	return s
}
