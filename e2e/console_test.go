package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// The console's end-to-end tests drive Debian's chromium (installed by
// scripts/services.sh) from Go with chromedp: no Node.js at test time, and
// the tests are ordinary `go test` tests beside the other e2e tests.

// browser starts a headless Chromium with a fresh profile. The flags keep
// it from reaching out to the network (updates, sync, field trials),
// which this machine's closed network refuses.
func browser(t *testing.T) context.Context {
	t.Helper()
	exe, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed; run scripts/services.sh chromium (make test does): %v", err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	// Confirmation dialogs (hx-confirm) are accepted, as an operator who
	// clicked OK would.
	chromedp.ListenTarget(ctx, func(ev any) {
		if _, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			go func() { _ = chromedp.Run(ctx, page.HandleJavaScriptDialog(true)) }()
		}
	})
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// run runs browser actions with a generous deadline (a loaded machine is
// slow, never wrong).
func run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Run(tctx, actions...); err != nil {
		screenshot(t, ctx, "failed-"+what)
		t.Fatalf("%s: %v", what, err)
	}
}

// screenshot saves the page as a test artifact under e2e/artifacts/
// (gitignored), or DUET_TEST_ARTIFACTS.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("DUET_TEST_ARTIFACTS")
	if dir == "" {
		dir = "artifacts"
	}
	dir = filepath.Join(dir, t.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	var png []byte
	sctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := chromedp.Run(sctx, chromedp.FullScreenshot(&png, 100)); err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	_ = os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
}

var firstAdminRE = regexp.MustCompile(`user "admin" \(role admin\) was created\. Its password is shown only now:\s+(\S+)`)

// firstAdminPassword reads the one-time password the first start printed.
func (d *duet) firstAdminPassword() string {
	d.t.Helper()
	var pw string
	bustest.CheckFor(d.t, 30*time.Second, 50*time.Millisecond, func() error {
		m := firstAdminRE.FindStringSubmatch(d.out.String())
		if m == nil {
			return fmt.Errorf("no first admin password printed yet")
		}
		pw = m[1]
		return nil
	})
	return pw
}

func login(t *testing.T, ctx context.Context, base, name, password string) {
	t.Helper()
	run(t, ctx, "log in as "+name,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible("#password", chromedp.ByID),
		chromedp.SendKeys("#name", name, chromedp.ByID),
		chromedp.SendKeys("#password", password, chromedp.ByID),
		chromedp.Click("#login", chromedp.ByID),
		chromedp.WaitVisible("#logout", chromedp.ByID),
	)
}

// apiCount is the count of GET /api/v1/devices with a filter.
func (d *duet) apiCount(filter string) int {
	d.t.Helper()
	code, body := d.get("/api/v1/devices?count=true&limit=1&" + filter)
	var out struct {
		Count int `json:"count"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &out) != nil {
		d.t.Fatalf("devices %s: %d %s", filter, code, body)
	}
	return out.Count
}

// TestConsole: an admin logs in with the password the first start
// printed; the overview's counts are the API's; a search by a parameter
// condition finds the device; a reboot from the device page ends with the
// task succeeded and the device back online; every page's screenshot is
// kept (issue 13, "Done when").
func TestConsole(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	if !strings.Contains(d.out.String(), "web console") {
		t.Fatalf("serve does not print the console's URL:\n%s", d.out.String())
	}
	pw := d.firstAdminPassword()
	cpeA := startCPE(t, "http://"+env["DUET_CWMP_ADDR"]+"/", "CONS1")
	cwmpDev := cpeA.DeviceID()
	a, _ := startAgent(t, env, "UCONS1")
	uspDev := a.EndpointID()
	d.waitOnline(cwmpDev, true)
	d.waitOnline(uspDev, true)

	ctx := browser(t)
	login(t, ctx, d.HTTP, "admin", pw)
	screenshot(t, ctx, "overview")

	// The overview's figures are the API's.
	bustest.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		var total, online, offline string
		if err := chromedp.Run(ctx, chromedp.Navigate(d.HTTP+"/"), chromedp.Text("#count-total", &total, chromedp.ByID),
			chromedp.Text("#count-online", &online, chromedp.ByID), chromedp.Text("#count-offline", &offline, chromedp.ByID)); err != nil {
			return err
		}
		want := []int{d.apiCount(""), d.apiCount("online=true"), d.apiCount("online=false")}
		got := []string{total, online, offline}
		for i := range want {
			if strings.TrimSpace(got[i]) != strconv.Itoa(want[i]) {
				return fmt.Errorf("overview total/online/offline %v, API %v", got, want)
			}
		}
		if want[0] != 2 {
			return fmt.Errorf("API counts %d devices, want 2", want[0])
		}
		return nil
	})

	// Search by a parameter condition: the CWMP device's connection request URL (unique to it).
	code, body := d.get("/api/v1/devices/" + url.PathEscape(cwmpDev) + "/parameters")
	var params struct {
		Parameters []struct{ Path, Value string } `json:"parameters"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &params) != nil {
		t.Fatalf("parameters: %d %s", code, body)
	}
	cond := ""
	for _, p := range params.Parameters {
		if strings.HasSuffix(p.Path, "ManagementServer.ConnectionRequestURL") {
			cond = p.Path + ":eq:" + p.Value
		}
	}
	if cond == "" {
		t.Fatalf("no cached serial number among %s", body)
	}
	var count, rows string
	run(t, ctx, "search by parameter",
		chromedp.Navigate(d.HTTP+"/devices"),
		chromedp.WaitVisible("#param", chromedp.ByID),
		chromedp.SendKeys("#param", cond, chromedp.ByID),
		// Marks this page, to know when the results' page replaced it.
		chromedp.Evaluate(`document.body.dataset.before = "search"`, nil),
		chromedp.Click("#search-button", chromedp.ByID),
		chromedp.WaitVisible(`body:not([data-before]) #device-count strong`, chromedp.ByQuery),
		chromedp.Text("#device-count strong", &count, chromedp.ByQuery),
		chromedp.Text("#devices tbody", &rows, chromedp.ByQuery),
	)
	screenshot(t, ctx, "devices-search")
	if count != "1" || !strings.Contains(rows, cwmpDev) || strings.Contains(rows, uspDev) {
		t.Fatalf("search %q: count %q, rows %q", cond, count, rows)
	}
	run(t, ctx, "open the device found",
		chromedp.Click(`#devices a[href="/devices/`+url.PathEscape(cwmpDev)+`"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#tasks", chromedp.ByID))

	// Inline edit on each protocol: the new value, read back from the
	// device, shows in place.
	editParameter(t, ctx, d.HTTP, cwmpDev, "Device.WiFi.SSID.1.SSID", "console-cwmp")
	editParameter(t, ctx, d.HTTP, uspDev, "Device.WiFi.SSID.1.SSID", "console-usp")
	if v, _ := a.Parameter("Device.WiFi.SSID.1.SSID"); v != "console-usp" {
		t.Fatalf("the agent's SSID is %q after the console's set", v)
	}

	// Reboot from the device page: confirmed, then the task's progress shows
	// in place until it succeeded, and the device is online again.
	run(t, ctx, "open the device",
		chromedp.Navigate(d.HTTP+"/devices/"+url.PathEscape(cwmpDev)),
		chromedp.WaitVisible("#reboot", chromedp.ByID),
	)
	screenshot(t, ctx, "device")
	run(t, ctx, "reboot", chromedp.Click("#reboot", chromedp.ByID),
		chromedp.WaitVisible(`#tasks tr[data-operation="reboot"]`, chromedp.ByQuery))
	run(t, ctx, "reboot succeeds", chromedp.WaitVisible(`#tasks tr[data-operation="reboot"][data-state="succeeded"]`, chromedp.ByQuery))
	screenshot(t, ctx, "device-rebooted")
	d.waitOnline(cwmpDev, true)
	// The audit log names the user.
	code, body = d.get("/api/v1/audit?device=" + url.QueryEscape(cwmpDev))
	if code != 200 || !strings.Contains(body, `"actor":"admin (user)"`) {
		t.Fatalf("audit of the console's reboot: %d %s", code, body)
	}

	// The API documentation renders (vendored Redoc, no network).
	run(t, ctx, "API docs", chromedp.Navigate(d.HTTP+"/api-docs"), chromedp.WaitVisible(`#redoc h1`, chromedp.ByQuery))
	screenshot(t, ctx, "api-docs")
}

// consoleClient logs in over plain HTTP (as a script would) and returns
// the client, with its session cookie, and the session's CSRF token.
func consoleClient(t *testing.T, base, name, password string) (*http.Client, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	res, err := c.Get(base + "/login")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(string(b))
	if m == nil {
		t.Fatalf("login page has no CSRF token:\n%s", b)
	}
	res, err = c.PostForm(base+"/login", url.Values{"name": {name}, "password": {password}, "csrf": {m[1]}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(res.Body)
	res.Body.Close()
	m = regexp.MustCompile(`<meta name="csrf-token" content="([^"]+)">`).FindStringSubmatch(string(b))
	if res.StatusCode != 200 || m == nil {
		t.Fatalf("login as %s: %d\n%s", name, res.StatusCode, b)
	}
	return c, m[1]
}

// TestConsoleViewerAndLogin: a viewer sees no button that changes
// anything and a forged POST with the viewer's own session and CSRF token
// is refused (403); a wrong password is refused and, past the limit,
// every login for that name is refused for a while (issue 13, "Done
// when").
func TestConsoleViewerAndLogin(t *testing.T) {
	dbURL := storetest.NewDatabase(t)
	env := baseEnv(t, dbURL)
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	cpeA := startCPE(t, "http://"+env["DUET_CWMP_ADDR"]+"/", "VIEW1")
	dev := cpeA.DeviceID()
	d.waitOnline(dev, true)

	mk := startDuet(t, map[string]string{"DUET_DATABASE_URL": dbURL, "DUET_LOG_FORMAT": "json"}, "user", "create", "--name", "val", "--role", "viewer")
	if code := mk.wait(30 * time.Second); code != 0 {
		t.Fatalf("duet user create: exit %d\n%s", code, mk.out.String())
	}
	m := regexp.MustCompile(`shown only now:\n(\S+)`).FindStringSubmatch(mk.out.String())
	if m == nil {
		t.Fatalf("user create printed no password:\n%s", mk.out.String())
	}
	viewerPW := m[1]

	ctx := browser(t)
	login(t, ctx, d.HTTP, "val", viewerPW)
	var buttons int
	run(t, ctx, "viewer's device page",
		chromedp.Navigate(d.HTTP+"/devices/"+url.PathEscape(dev)),
		chromedp.WaitVisible("#tasks", chromedp.ByID),
		chromedp.Evaluate(`document.querySelectorAll("#reboot, #factory-reset, #actions").length`, &buttons),
	)
	screenshot(t, ctx, "viewer-device")
	if buttons != 0 {
		t.Fatalf("the viewer's device page shows %d change controls", buttons)
	}
	var nav string
	run(t, ctx, "viewer's menu", chromedp.Text("header nav", &nav, chromedp.ByQuery))
	if strings.Contains(nav, "Users") {
		t.Fatalf("the viewer's menu offers Users: %q", nav)
	}

	// A hand-made POST, with the viewer's session and a valid CSRF token.
	c, csrf := consoleClient(t, d.HTTP, "val", viewerPW)
	for _, path := range []string{"/devices/" + url.PathEscape(dev) + "/reboot", "/users"} {
		res, err := c.PostForm(d.HTTP+path, url.Values{"csrf": {csrf}, "name": {"mallory"}, "role": {"admin"}})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusForbidden || !strings.Contains(string(b), "role (viewer) may not") {
			t.Fatalf("viewer POST %s: %d\n%s", path, res.StatusCode, b)
		}
	}
	// Without the CSRF token even an admin's POST is refused.
	adminC, _ := consoleClient(t, d.HTTP, "admin", d.firstAdminPassword())
	res, err := adminC.PostForm(d.HTTP+"/devices/"+url.PathEscape(dev)+"/reboot", url.Values{})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("POST without CSRF token: %d", res.StatusCode)
	}
	if code, body := d.get("/api/v1/devices/" + url.PathEscape(dev) + "/tasks"); code != 200 || strings.Contains(body, "reboot") {
		t.Fatalf("a refused POST made a task: %d %s", code, body)
	}

	// A wrong password: refused, and after 5 failures refused even when right.
	bctx := browser(t)
	var msg string
	for i := range 5 {
		run(t, bctx, "wrong password "+strconv.Itoa(i),
			chromedp.Navigate(d.HTTP+"/login"),
			chromedp.WaitVisible("#password", chromedp.ByID),
			chromedp.SendKeys("#name", "val", chromedp.ByID),
			chromedp.SendKeys("#password", "not the password", chromedp.ByID),
			chromedp.Click("#login", chromedp.ByID),
			chromedp.WaitVisible("#login-error", chromedp.ByID),
			chromedp.Text("#login-error", &msg, chromedp.ByID),
		)
		if msg != "Wrong user name or password." {
			t.Fatalf("wrong password %d: %q", i, msg)
		}
	}
	screenshot(t, bctx, "wrong-password")
	run(t, bctx, "rate limited",
		chromedp.Navigate(d.HTTP+"/login"),
		chromedp.WaitVisible("#password", chromedp.ByID),
		chromedp.SendKeys("#name", "val", chromedp.ByID),
		chromedp.SendKeys("#password", viewerPW, chromedp.ByID),
		chromedp.Click("#login", chromedp.ByID),
		chromedp.WaitVisible("#login-error", chromedp.ByID),
		chromedp.Text("#login-error", &msg, chromedp.ByID),
	)
	screenshot(t, bctx, "rate-limited")
	if !strings.Contains(msg, "Too many failed logins") {
		t.Fatalf("after 5 failures: %q", msg)
	}
}

// editParameter reads path live on the device page, edits it inline and
// waits until the row shows value, read back from the device.
func editParameter(t *testing.T, ctx context.Context, base, dev, path, value string) {
	t.Helper()
	row := `tr[data-path="` + path + `"]`
	run(t, ctx, "read "+path+" of "+dev,
		chromedp.Navigate(base+"/devices/"+url.PathEscape(dev)+"?prefix="+url.QueryEscape(path)),
		chromedp.WaitVisible("#read-live", chromedp.ByID),
		chromedp.Click("#read-live", chromedp.ByID),
		chromedp.WaitVisible(row+" summary", chromedp.ByQuery),
		chromedp.Click(row+" summary", chromedp.ByQuery),
		chromedp.WaitVisible(row+` input[name="value"]`, chromedp.ByQuery),
		chromedp.SetValue(row+` input[name="value"]`, value, chromedp.ByQuery),
		chromedp.Click(row+` button[type="submit"]`, chromedp.ByQuery),
	)
	bustest.CheckFor(t, 60*time.Second, 250*time.Millisecond, func() error {
		var shown string
		var pending bool
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := chromedp.Run(tctx, chromedp.Text(row+" span.v", &shown, chromedp.ByQuery),
			chromedp.Evaluate(`!!document.querySelector('`+row+`.pending, `+row+` .error')`, &pending)); err != nil {
			return err
		}
		if shown != value || pending {
			return fmt.Errorf("%s of %s shows %q (pending or failed: %v), want %q", path, dev, shown, pending, value)
		}
		return nil
	})
	screenshot(t, ctx, "edited-"+strings.ReplaceAll(dev, ":", "_"))
}
