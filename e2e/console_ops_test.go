package e2e

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestConsoleOps: in a real browser against the real duet, an operator's
// work beyond one device (issue 13 item 4): the overview's counts are the
// API's and its charts draw; two ticked devices become a task batch after a confirmation
// that counts them; the tasks page shows the batch's tasks ending, live;
// the settings page shows the configuration without a secret.
func TestConsoleOps(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	// A secret setting the settings page must not show (besides the admin
	// token every harness start has).
	const credKey = "c2VjcmV0LWtleS1mb3ItdGhlLWNvbnNvbGUtb3BzLTE="
	env["DUET_CREDENTIALS_KEY"] = credKey
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	pw := d.firstAdminPassword()
	var cwmp []string
	for _, serial := range []string{"OPS1", "OPS2", "OPS3"} {
		c := startCPE(t, "http://"+env["DUET_CWMP_ADDR"]+"/", serial)
		cwmp = append(cwmp, c.DeviceID())
	}
	a, _ := startAgent(t, env, "UOPS1")
	for _, id := range append(cwmp, a.EndpointID()) {
		d.waitOnline(id, true)
	}

	ctx := browser(t)
	login(t, ctx, d.HTTP, "admin", pw)
	bustest.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		var total, online string
		if err := chromedp.Run(ctx, chromedp.Navigate(d.HTTP+"/"), chromedp.Text("#count-total", &total, chromedp.ByID),
			chromedp.Text("#count-online", &online, chromedp.ByID)); err != nil {
			return err
		}
		if want := []int{d.apiCount(""), d.apiCount("online=true")}; total != strconv.Itoa(want[0]) || online != strconv.Itoa(want[1]) || want[0] != 4 {
			return fmt.Errorf("overview total/online %s/%s, API %v", total, online, want)
		}
		return nil
	})
	// The charts draw (uPlot, vendored) from the console's own data.
	run(t, ctx, "overview charts", chromedp.Navigate(d.HTTP+"/"),
		chromedp.WaitVisible(`#charts[data-loaded="true"] #chart-task_outcomes canvas`, chromedp.ByQuery))
	screenshot(t, ctx, "overview")

	// Tick the first two CWMP devices; read their device info as a batch.
	var scope, count string
	run(t, ctx, "select two devices",
		chromedp.Navigate(d.HTTP+"/devices?protocol=cwmp"),
		chromedp.WaitVisible(`#devices input[value="`+cwmp[0]+`"]`, chromedp.ByQuery),
		chromedp.Click(`#devices input[value="`+cwmp[0]+`"]`, chromedp.ByQuery),
		chromedp.Click(`#devices input[value="`+cwmp[1]+`"]`, chromedp.ByQuery),
	)
	screenshot(t, ctx, "devices-selected")
	run(t, ctx, "action form",
		chromedp.Click("#act-selection", chromedp.ByID),
		chromedp.WaitVisible("#action-form", chromedp.ByID),
		chromedp.Text("#batch-scope", &scope, chromedp.ByID),
		chromedp.SetValue("#operation", "get", chromedp.ByID),
		chromedp.SendKeys("#paths", "Device.DeviceInfo.", chromedp.ByID),
		chromedp.SendKeys("#rate", "20", chromedp.ByID),
	)
	screenshot(t, ctx, "batch-action")
	run(t, ctx, "confirmation",
		chromedp.Click("#review", chromedp.ByID),
		chromedp.WaitVisible("#confirm-count", chromedp.ByID),
		chromedp.Text("#confirm-count", &count, chromedp.ByID),
	)
	screenshot(t, ctx, "batch-confirm")
	if !strings.Contains(scope, "2 selected devices") || count != "2" {
		t.Fatalf("selection %q, confirmation count %q, want 2", scope, count)
	}
	var loc string
	run(t, ctx, "create the batch",
		chromedp.Click("#confirm", chromedp.ByID),
		chromedp.WaitVisible("#batch-progress", chromedp.ByID),
		chromedp.Location(&loc),
	)
	batchID := loc[strings.LastIndex(loc, "/")+1:]
	// The tasks page, filtered by the batch, shows both tasks ending
	// without a reload (its rows poll).
	run(t, ctx, "the batch's tasks",
		chromedp.Navigate(d.HTTP+"/tasks?batch="+url.QueryEscape(batchID)),
		chromedp.WaitVisible("#task-rows", chromedp.ByID),
		chromedp.Evaluate(`document.body.dataset.loaded = "once"`, nil),
	)
	run(t, ctx, "the batch's tasks succeed",
		chromedp.WaitVisible(`body[data-loaded="once"] tr[data-device="`+cwmp[0]+`"][data-state="succeeded"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`body[data-loaded="once"] tr[data-device="`+cwmp[1]+`"][data-state="succeeded"]`, chromedp.ByQuery),
	)
	screenshot(t, ctx, "tasks-of-batch")
	var rows int
	run(t, ctx, "count rows", chromedp.Evaluate(`document.querySelectorAll("#task-rows tr[data-task]").length`, &rows))
	if rows != 2 {
		t.Fatalf("the batch has %d tasks, want 2", rows)
	}
	code, body := d.get("/api/v1/task-batches/" + url.PathEscape(batchID))
	if code != 200 || !strings.Contains(body, `"state":"done"`) || !strings.Contains(body, `"created_tasks":2`) || !strings.Contains(body, `"actor":"admin (user)"`) {
		t.Fatalf("the batch in the API: %d %s", code, body)
	}
	run(t, ctx, "batches page", chromedp.Navigate(d.HTTP+"/batches"), chromedp.WaitVisible(`tr[data-batch="`+batchID+`"]`, chromedp.ByQuery))
	screenshot(t, ctx, "batches")
	run(t, ctx, "the batch's page", chromedp.Click(`a[href="/batches/`+batchID+`"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#batch-progress[data-state="done"]`, chromedp.ByQuery))
	screenshot(t, ctx, "batch")
	run(t, ctx, "a task's page", chromedp.Click(`#task-rows a[href^="/tasks/"]`, chromedp.ByQuery), chromedp.WaitVisible("#task-history", chromedp.ByID))
	screenshot(t, ctx, "task")

	// Settings: every setting with its source; no secret.
	var text string
	run(t, ctx, "settings",
		chromedp.Navigate(d.HTTP+"/settings"),
		chromedp.WaitVisible(`tr[data-setting="credentials-key"]`, chromedp.ByQuery),
		chromedp.Text("#settings", &text, chromedp.ByID),
	)
	screenshot(t, ctx, "settings")
	if strings.Contains(text, credKey) || strings.Contains(text, testAdminToken) || !strings.Contains(text, "(secret, set)") {
		t.Fatalf("the settings page shows a secret:\n%s", text)
	}
}
