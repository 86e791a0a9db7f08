package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestConsolePolicy: in the browser, an admin makes a group by a filter
// (its error marked as it is typed, then its members counted), a
// parameters policy from rows of path and value, previews it (each
// member's current → desired value), enables it in batches of 25 % after
// a confirmation that counts the devices, and watches the rollout's
// progress on the page until every member is compliant; on the devices
// themselves the value is set. A viewer sees the pages without a control
// that changes anything, and a forged POST of theirs is refused (issue
// 13, "Done when").
func TestConsolePolicy(t *testing.T) {
	dbURL := storetest.NewDatabase(t)
	env := baseEnv(t, dbURL)
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	pw := d.firstAdminPassword()
	const perProtocol = 4
	f := startPolicyFleet(t, env, "CPOL", perProtocol)
	// A device outside the group, which the policy must leave alone.
	outsider, _ := startAgent(t, env, "OUTCPOL1")
	d.waitRegistered(append(f.ids(), outsider.EndpointID()), 120*time.Second)

	ctx := browser(t)
	login(t, ctx, d.HTTP, "admin", pw)

	// The group: the filter's error is marked while it is unfinished, and
	// the members are counted once it is valid.
	var caret string
	run(t, ctx, "type an unfinished filter",
		chromedp.Navigate(d.HTTP+"/groups/new"),
		chromedp.WaitVisible("#filter", chromedp.ByID),
		chromedp.SendKeys("#group-name", "console fleet", chromedp.ByID),
		chromedp.SendKeys("#filter", `serial_number.startsWith("CPOL"`, chromedp.ByID),
		chromedp.WaitVisible("#filter-caret mark", chromedp.ByQuery),
		chromedp.Text("#filter-caret mark", &caret, chromedp.ByQuery),
	)
	screenshot(t, ctx, "group-filter-error")
	if strings.TrimSpace(caret) != "^" {
		t.Fatalf("the error is not marked with a caret: %q", caret)
	}
	var count string
	run(t, ctx, "finish the filter",
		chromedp.SendKeys("#filter", `)`, chromedp.ByID),
		chromedp.WaitVisible("#filter-check .member-count strong", chromedp.ByQuery),
		chromedp.Text("#filter-check .member-count strong", &count, chromedp.ByQuery),
	)
	screenshot(t, ctx, "group-filter-count")
	if count != fmt.Sprint(2*perProtocol) {
		t.Fatalf("the filter counts %q members, want %d", count, 2*perProtocol)
	}
	run(t, ctx, "create the group",
		chromedp.Click("#save-group", chromedp.ByID),
		chromedp.WaitVisible("#members", chromedp.ByID),
	)
	screenshot(t, ctx, "group")
	run(t, ctx, "groups list", chromedp.Navigate(d.HTTP+"/groups"),
		chromedp.WaitVisible(`#groups .member-count strong`, chromedp.ByQuery))
	screenshot(t, ctx, "groups")

	// The policy, from rows, previewed before it is saved.
	const ssid = "Device.WiFi.SSID.1.SSID"
	run(t, ctx, "write the policy",
		chromedp.Navigate(d.HTTP+"/groups"),
		chromedp.Click(`#groups a[href^="/groups/"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#new-policy", chromedp.ByID),
		chromedp.Click("#new-policy", chromedp.ByID),
		chromedp.WaitVisible("#policy-name", chromedp.ByID),
		chromedp.SendKeys("#policy-name", "console ssid", chromedp.ByID),
		chromedp.SendKeys(`#param-rows tbody tr:first-child input[name="path"]`, ssid, chromedp.ByQuery),
		chromedp.SendKeys(`#param-rows tbody tr:first-child input[name="value"]`, "duet-console", chromedp.ByQuery),
		chromedp.WaitVisible("#spec-ok", chromedp.ByID),
		chromedp.Click("#preview-button", chromedp.ByID),
		chromedp.WaitVisible("#preview-table", chromedp.ByID),
	)
	var previewRows int
	var preview string
	run(t, ctx, "read the preview",
		chromedp.Evaluate(`document.querySelectorAll("#preview-table tr[data-device]").length`, &previewRows),
		chromedp.Text("#preview-table", &preview, chromedp.ByID),
	)
	screenshot(t, ctx, "policy-preview")
	if previewRows != 2*perProtocol || strings.Count(preview, "→ duet-console") != 2*perProtocol || strings.Contains(preview, outsider.EndpointID()) {
		t.Fatalf("preview: %d rows\n%s", previewRows, preview)
	}
	var loc string
	run(t, ctx, "save the policy",
		chromedp.Click("#save-policy", chromedp.ByID),
		chromedp.WaitVisible("#enable", chromedp.ByID),
		chromedp.Location(&loc),
	)
	screenshot(t, ctx, "policy")
	policyPath := strings.TrimPrefix(loc, d.HTTP)
	if !regexp.MustCompile(`^/policies/pol_[0-9a-f]+$`).MatchString(policyPath) {
		t.Fatalf("after saving, the browser is at %s", loc)
	}

	// Enabling, in batches of 25 %, after a confirmation.
	var members string
	run(t, ctx, "strategy",
		chromedp.Click("#enable", chromedp.ByID),
		chromedp.WaitVisible("#batch", chromedp.ByID),
		chromedp.SetValue("#batch", "25", chromedp.ByID),
		chromedp.Click("#review-enable", chromedp.ByID),
		chromedp.WaitVisible("#confirm-members", chromedp.ByID),
		chromedp.Text("#confirm-members", &members, chromedp.ByID),
	)
	screenshot(t, ctx, "policy-enable-confirm")
	if members != fmt.Sprint(2*perProtocol) {
		t.Fatalf("the confirmation counts %q devices, want %d", members, 2*perProtocol)
	}
	run(t, ctx, "enable", chromedp.Click("#confirm-enable", chromedp.ByID), chromedp.WaitVisible("#rollout", chromedp.ByID))
	screenshot(t, ctx, "rollout-started")

	// The page follows the rollout by itself until every member is
	// compliant.
	seen := map[string]bool{}
	bustest.CheckFor(t, 3*time.Minute, 500*time.Millisecond, func() error {
		var state, compliant, total, batch string
		tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := chromedp.Run(tctx, chromedp.Text("#rollout-state", &state, chromedp.ByID),
			chromedp.Text("#rollout-compliant", &compliant, chromedp.ByID), chromedp.Text("#rollout-total", &total, chromedp.ByID),
			chromedp.Text("#rollout-batch", &batch, chromedp.ByID)); err != nil {
			return err
		}
		if !seen[batch] && strings.HasPrefix(batch, "Batch") {
			seen[batch] = true
			screenshot(t, ctx, "rollout-progress")
		}
		if state != "completed" || compliant != fmt.Sprint(2*perProtocol) || total != fmt.Sprint(2*perProtocol) {
			return fmt.Errorf("the page shows %s, %s of %s compliant (%s)", state, compliant, total, batch)
		}
		return nil
	})
	screenshot(t, ctx, "rollout-completed")
	var batchText string
	run(t, ctx, "statuses",
		chromedp.Text("#rollout-batch", &batchText, chromedp.ByID),
		chromedp.SetValue("#status-filter", "compliant", chromedp.ByID),
		chromedp.Click("#statuses-refresh", chromedp.ByID),
	)
	if !strings.Contains(batchText, "Batch 4 of about 4") {
		t.Fatalf("after the rollout: %q", batchText)
	}
	// The statuses refresh themselves (every 5 s), filtered by status.
	bustest.CheckFor(t, time.Minute, 500*time.Millisecond, func() error {
		var rows, others int
		tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := chromedp.Run(tctx,
			chromedp.Evaluate(`document.querySelectorAll('#status-table tr[data-status="compliant"]').length`, &rows),
			chromedp.Evaluate(`document.querySelectorAll('#status-table tr[data-status]:not([data-status="compliant"])').length`, &others)); err != nil {
			return err
		}
		if rows != 2*perProtocol || others != 0 {
			return fmt.Errorf("the statuses show %d compliant devices and %d others", rows, others)
		}
		return nil
	})
	screenshot(t, ctx, "policy-statuses")

	// In a narrow window (a phone, a split screen) the pages fit: wide
	// tables scroll inside themselves, the page does not.
	for _, page := range []struct{ name, path string }{{"groups", "/groups"}, {"policies", "/policies"}, {"policy", policyPath}} {
		var overflow bool
		run(t, ctx, "narrow "+page.name, chromedp.EmulateViewport(400, 900), chromedp.Navigate(d.HTTP+page.path),
			chromedp.WaitVisible("main h1", chromedp.ByQuery),
			chromedp.Evaluate(`document.documentElement.scrollWidth > window.innerWidth + 1`, &overflow))
		screenshot(t, ctx, "narrow-"+page.name)
		if overflow {
			t.Errorf("%s is wider than a 400 px window", page.path)
		}
	}
	run(t, ctx, "wide again", chromedp.EmulateViewport(1280, 900))
	for _, id := range f.ids() {
		if v := f.value(id, ssid); v != "duet-console" {
			t.Fatalf("device %s has %s = %q", id, ssid, v)
		}
	}
	if v, _ := outsider.Parameter(ssid); v == "duet-console" {
		t.Fatal("a device outside the group was changed")
	}
	// The audit log names the user.
	code, body := d.get("/api/v1/audit?object_id=" + url.QueryEscape(strings.TrimPrefix(policyPath, "/policies/")))
	if code != 200 || !strings.Contains(body, `"actor":"admin (user)","action":"enable"`) {
		t.Fatalf("audit of the console's enable: %d %s", code, body)
	}

	// A viewer: the pages without a control that changes anything.
	mk := startDuet(t, map[string]string{"DUET_DATABASE_URL": dbURL, "DUET_LOG_FORMAT": "json"}, "user", "create", "--name", "vic", "--role", "viewer")
	if code := mk.wait(30 * time.Second); code != 0 {
		t.Fatalf("duet user create: exit %d\n%s", code, mk.out.String())
	}
	m := regexp.MustCompile(`shown only now:\n(\S+)`).FindStringSubmatch(mk.out.String())
	if m == nil {
		t.Fatalf("user create printed no password:\n%s", mk.out.String())
	}
	vctx := browser(t)
	login(t, vctx, d.HTTP, "vic", m[1])
	const controls = `#new-group, #new-policy, #group-form, #policy-form, #enable, #delete-group, #delete-policy, #rollout-pause, #rollout-resume, #rollout-abort, #rollout-retry`
	for _, page := range []string{"/groups", "/policies", policyPath} {
		var n int
		run(t, vctx, "viewer's "+page, chromedp.Navigate(d.HTTP+page), chromedp.WaitVisible("main h1", chromedp.ByQuery),
			chromedp.Evaluate(`document.querySelectorAll("`+controls+`").length`, &n))
		screenshot(t, vctx, "viewer"+strings.ReplaceAll(page, "/", "-"))
		if n != 0 {
			t.Fatalf("the viewer's %s shows %d change controls", page, n)
		}
	}
	// A hand-made POST with the viewer's session and CSRF token.
	c, csrf := consoleClient(t, d.HTTP, "vic", m[1])
	res, err := c.PostForm(d.HTTP+policyPath+"/rollout/abort", url.Values{"csrf": {csrf}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden || !strings.Contains(string(b), "role (viewer) may not") {
		t.Fatalf("viewer's abort: %d\n%s", res.StatusCode, b)
	}
	if r := d.rollout(strings.TrimPrefix(policyPath, "/policies/")); r.State != "completed" {
		t.Fatalf("after the viewer's refused abort the rollout is %s", r.State)
	}
}
