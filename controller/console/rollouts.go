package console

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// Enabling a policy with a rollout strategy, after a confirmation that
// says how many devices it touches, and following the rollout live: the
// progress part of the policy page polls GET /policies/{id}/rollout.

// rolloutData is a rollout's progress as the page shows it.
type rolloutData struct {
	PolicyID string
	controller.RolloutProgress
	Strategy *controller.RolloutStrategy
	// Total devices with a status; Compliant of them.
	Total, Compliant int
	// Batches is about how many batches the rollout takes.
	Batches int
	// Rate is the failed share of finished admitted devices, what the
	// automatic stop judges (RolloutCounts.AdmittedFailureRate).
	Rate     float64
	Finished int
	// CanOperate: the user may pause, resume and abort it.
	CanOperate bool
}

// Live: the rollout can still move, by itself or by another operator's
// hand, so the page keeps it current.
func (d rolloutData) Live() bool { return d.State != store.RolloutAborted }

// CanPause, CanResume, CanRetry, CanAbort: the actions the state allows
// (controller.Policies.ChangeRollout).
func (d rolloutData) CanPause() bool { return d.State == store.RolloutRunning }
func (d rolloutData) CanResume() bool {
	return d.State == store.RolloutPaused || d.State == store.RolloutStopped
}
func (d rolloutData) CanRetry() bool {
	return d.Counts.Failed > 0 && (d.CanResume() || d.State == store.RolloutCompleted)
}
func (d rolloutData) CanAbort() bool { return d.State != store.RolloutAborted }

// StateWords says where the rollout stands.
func (d rolloutData) StateWords() string {
	switch d.State {
	case store.RolloutRunning:
		if d.NextWindow != nil && d.Strategy != nil && !d.Strategy.InWindow(time.Now()) {
			return "running; waiting for the maintenance window"
		}
		return "running"
	case store.RolloutPaused:
		return "paused"
	case store.RolloutStopped:
		return "stopped by itself"
	case store.RolloutCompleted:
		return "completed"
	case store.RolloutAborted:
		return "aborted; the policy is disabled"
	}
	return d.State
}

// RateWords compares the failure rate with the threshold.
func (d rolloutData) RateWords() string {
	if d.Strategy == nil {
		return ""
	}
	t := *d.Strategy.FailureThreshold
	if d.Finished == 0 {
		return fmt.Sprintf("No admitted device has finished yet; the rollout stops itself above %s failed (judged once %d have finished).", percent(t), d.Strategy.MinFinished)
	}
	return fmt.Sprintf("%s of %d finished devices failed; the rollout stops itself above %s (judged once %d have finished).",
		percent(d.Rate), d.Finished, percent(t), d.Strategy.MinFinished)
}

// OverThreshold: the failure rate is above the threshold.
func (d rolloutData) OverThreshold() bool {
	return d.Strategy != nil && d.Finished > 0 && d.Rate > *d.Strategy.FailureThreshold
}

func percent(f float64) string {
	return strconv.FormatFloat(math.Round(f*1000)/10, 'f', -1, 64) + " %"
}

// Status is a count by status, for the template.
func (d rolloutData) Status(s string) int { return d.Counts.ByStatus[s] }

// rolloutOf is a policy's rollout, nil if it was never enabled.
func (c *Console) rolloutOf(r *http.Request, sess *store.Session, id string) (*rolloutData, error) {
	v, err := c.pol.Rollout(r.Context(), id)
	if devicemodel.ErrorCode(err) == devicemodel.CodeNotFound {
		if _, ferr := c.st.FindPolicyByID(r.Context(), id); ferr != nil {
			return nil, ferr
		}
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	d := &rolloutData{PolicyID: id, RolloutProgress: v, Compliant: v.Counts.ByStatus[store.StatusCompliant],
		CanOperate: sess != nil && roleAtLeast(sess.User.Role, store.RoleOperator)}
	for _, n := range v.Counts.ByStatus {
		d.Total += n
	}
	d.Rate, d.Finished = v.Counts.AdmittedFailureRate()
	if s, err := controller.ParseRolloutStrategy(v.Strategy); err == nil {
		d.Strategy = s
		if d.Total > 0 {
			d.Batches = int(math.Ceil(float64(d.Total) / float64(s.BatchFor(d.Total))))
		}
	}
	d.Batches = max(d.Batches, d.Batch)
	return d, nil
}

// rollout is the progress part, which the page polls while the rollout
// runs.
func (c *Console) rollout(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	d, err := c.rolloutOf(r, sess, r.PathValue("id"))
	if err != nil {
		return err
	}
	if d == nil {
		return devicemodel.Errorf(devicemodel.CodeNotFound, "this policy was never enabled")
	}
	c.writeData(w, http.StatusOK, "policy", "rollout", d)
	return nil
}

// rolloutAction pauses, resumes, aborts, or resumes retrying the failed
// devices.
func (c *Console) rolloutAction(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	id := r.PathValue("id")
	action, retry := controller.RolloutAction(r.PathValue("action")), false
	switch action {
	case controller.RolloutPause, controller.RolloutResume, controller.RolloutAbort:
	case "retry":
		action, retry = controller.RolloutResume, true
	default:
		return devicemodel.Errorf(devicemodel.CodeNotFound, "there is no rollout action %q", action)
	}
	if _, err := c.pol.ChangeRollout(r.Context(), store.ActorFrom(r.Context()), id, action, strings.TrimSpace(r.PostFormValue("reason")), retry); err != nil {
		return err
	}
	if r.Header.Get("HX-Request") == "true" {
		return c.rollout(w, r, sess)
	}
	http.Redirect(w, r, "/policies/"+url.PathEscape(id), http.StatusSeeOther)
	return nil
}

// statusesData is a page of a policy's per-device statuses.
type statusesData struct {
	PolicyID string
	Filter   string
	Statuses []store.PolicyStatus
	Names    []string
	Next     string
	This     string
}

func (c *Console) statuses(r *http.Request, id, status, cursor string) (statusesData, error) {
	d := statusesData{PolicyID: id, Filter: status, Names: statusNames, This: cursor}
	if status != "" && !controller.ValidPolicyStatus(status) {
		return d, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "status must be one of compliant, pending, applying, failed, conflicting")
	}
	after, err := pageAfter(cursor, "filter again")
	if err != nil {
		return d, err
	}
	d.Statuses, d.Next, err = c.st.FindStatuses(r.Context(), store.StatusFilter{PolicyID: id, Status: status, Limit: 50, After: after})
	return d, err
}

// policyDevices is the per-device statuses part: filtered by status,
// paged.
func (c *Console) policyDevices(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	id := r.PathValue("id")
	if _, err := c.st.FindPolicyByID(r.Context(), id); err != nil {
		return err
	}
	q := r.URL.Query()
	d, err := c.statuses(r, id, q.Get("status"), q.Get("cursor"))
	if err != nil {
		return err
	}
	c.writeData(w, http.StatusOK, "policy", "statuses", d)
	return nil
}

// strategyForm is the rollout strategy form as the user filled it.
type strategyForm struct {
	BatchMode, Batch, MaxInFlight, Pause       string
	WindowCron, WindowDuration, WindowTimezone string
	Threshold, MinFinished                     string
}

func readStrategyForm(v url.Values) strategyForm {
	get := func(k string) string { return strings.TrimSpace(v.Get(k)) }
	f := strategyForm{BatchMode: get("batch_mode"), Batch: get("batch"), MaxInFlight: get("max_in_flight"), Pause: get("pause"),
		WindowCron: get("window_cron"), WindowDuration: get("window_duration"), WindowTimezone: get("window_timezone"),
		Threshold: get("failure_threshold"), MinFinished: get("min_finished")}
	if f.BatchMode != "size" {
		f.BatchMode = "percent"
	}
	return f
}

// defaultStrategyForm is the form's start: the strategy's defaults.
var defaultStrategyForm = strategyForm{BatchMode: "percent", Batch: "10", Threshold: "10", MinFinished: "10"}

// strategy is the form as a RolloutStrategy document (the API's
// "rollout"), checked by the service's parser.
func (f strategyForm) strategy() (json.RawMessage, *controller.RolloutStrategy, error) {
	m := map[string]any{}
	number := func(words, v string, whole bool) (float64, error) {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil || (whole && n != math.Trunc(n)) || math.IsNaN(n) || math.IsInf(n, 0) {
			kind := "a number"
			if whole {
				kind = "a whole number"
			}
			return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s must be %s", words, kind)
		}
		return n, nil
	}
	type field struct {
		key, words, v string
		whole         bool
		scale         float64
	}
	batchKey, batchWhole := "batch_percent", false
	if f.BatchMode == "size" {
		batchKey, batchWhole = "batch_size", true
	}
	for _, x := range []field{
		{batchKey, "the batch", f.Batch, batchWhole, 1},
		{"max_in_flight", "the devices at a time", f.MaxInFlight, true, 1},
		{"failure_threshold", "the failure threshold", f.Threshold, false, 0.01},
		{"min_finished", "the devices finished before judging", f.MinFinished, true, 1},
	} {
		if x.v == "" {
			continue
		}
		n, err := number(x.words, x.v, x.whole)
		if err != nil {
			return nil, nil, err
		}
		m[x.key] = n * x.scale
	}
	if f.Pause != "" {
		m["pause"] = f.Pause
	}
	if f.WindowCron != "" || f.WindowDuration != "" || f.WindowTimezone != "" {
		m["maintenance_window"] = controller.MaintenanceWindow{Cron: f.WindowCron, Duration: f.WindowDuration, Timezone: f.WindowTimezone}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, nil, err
	}
	s, err := controller.ParseRolloutStrategy(raw)
	if err != nil {
		return nil, nil, err
	}
	return raw, s, nil
}

type enableData struct {
	Policy store.Policy
	Group  store.Group
	Form   strategyForm
	Error  string
	// Confirm: the strategy is valid; the page asks for a confirmation.
	Confirm bool
	Members policy.MemberCount
	// BatchSize is the first batch's size at today's membership.
	BatchSize, Batches int
	Strategy           *controller.RolloutStrategy
}

// ThresholdWords is the strategy's failure threshold in per cent.
func (d enableData) ThresholdWords() string { return percent(*d.Strategy.FailureThreshold) }

// enableForm shows the strategy form and, once filled in (review=1), what
// enabling will do and a button to confirm it.
func (c *Console) enableForm(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	p, err := c.st.FindPolicyByID(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	g, err := c.st.FindGroupByID(r.Context(), p.GroupID)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	d := enableData{Policy: p, Group: g, Form: defaultStrategyForm}
	if q.Get("batch") != "" {
		d.Form = readStrategyForm(q)
	}
	if q.Get("review") != "" {
		if err := c.review(r, &d); err != nil {
			return err
		}
	}
	code := http.StatusOK
	if d.Error != "" {
		code = http.StatusBadRequest
	}
	c.render(w, r, sess, code, "policy-enable", "Enable "+p.Name, d)
	return nil
}

// review checks the strategy and counts the devices enabling touches.
func (c *Console) review(r *http.Request, d *enableData) error {
	_, s, err := d.Form.strategy()
	if err != nil {
		return saveFailed(err, func(_ int, msg string) error { d.Error = msg; return nil })
	}
	if p := d.Policy; p.Enabled {
		d.Error = "The policy is already enabled; pause, resume or abort its rollout on its page."
		return nil
	}
	f, err := policy.CompileFilter(d.Group.Filter)
	if err != nil {
		return saveFailed(err, func(_ int, msg string) error { d.Error = "The group's filter: " + msg; return nil })
	}
	if d.Members, err = policy.CountMembers(r.Context(), c.st, f, countBudget); err != nil {
		return err
	}
	d.Strategy, d.Confirm = s, true
	if d.Members.Members > 0 {
		d.BatchSize = s.BatchFor(d.Members.Members)
		d.Batches = int(math.Ceil(float64(d.Members.Members) / float64(d.BatchSize)))
	}
	return nil
}

func (c *Console) enablePolicy(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	id := r.PathValue("id")
	if err := r.ParseForm(); err != nil {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "the form could not be read")
	}
	f := readStrategyForm(r.PostForm)
	raw, _, err := f.strategy()
	if err == nil {
		_, err = c.pol.EnablePolicy(r.Context(), store.ActorFrom(r.Context()), id, raw)
	}
	if err != nil {
		return saveFailed(err, func(code int, msg string) error {
			p, ferr := c.st.FindPolicyByID(r.Context(), id)
			if ferr != nil {
				return ferr
			}
			g, ferr := c.st.FindGroupByID(r.Context(), p.GroupID)
			if ferr != nil {
				return ferr
			}
			c.render(w, r, sess, code, "policy-enable", "Enable "+p.Name, enableData{Policy: p, Group: g, Form: f, Error: msg})
			return nil
		})
	}
	http.Redirect(w, r, "/policies/"+url.PathEscape(id), http.StatusSeeOther)
	return nil
}
