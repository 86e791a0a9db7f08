// Package console is Duet's operator web console (issue 13): server-rendered
// html/template pages, with htmx and its SSE extension for partial updates
// and live data. Like the REST API it is a thin HTTP layer over the
// controller's services and the store; nothing below the HTTP layer
// imports it. Users log in with a password (store.Login) and hold a
// session cookie; their role is the API tokens' (viewer < operator <
// admin) and is checked on the server for every request, whatever the
// page showed.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/ratelog"
	"github.com/duet-dm/duet/pkg/store"
)

//go:embed templates/*.html templates/parts/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

var metricRequests = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_console_requests_total",
	Help: "Web console requests by route and status code.",
}, []string{"route", "code"})

var metricLogins = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_console_logins_total",
	Help: "Web console login attempts by outcome (ok, refused, rate_limited).",
}, []string{"outcome"})

// Options configure New.
type Options struct {
	// Store is required: users, sessions, devices, the audit log.
	Store *store.Store
	// Tasks creates the tasks of the console's actions (reboot, set);
	// without it those actions answer "not available".
	Tasks *controller.TaskQueue
	// Bulk creates task batches (the device list's selection or filter);
	// without it the batch actions answer "not available".
	Bulk *controller.BulkRunner
	// Credentials stores CWMP devices' credentials (the API's service);
	// without it the device page's credentials form answers "not
	// available".
	Credentials *controller.Credentials
	// Settings are the effective configuration the settings page shows,
	// secrets already masked by the caller (cmd/duet).
	Settings []Setting
	// IdleTimeout ends a session unused this long. Default 30 min.
	IdleTimeout time.Duration
	// SessionLifetime ends a session this long after login, used or not.
	// Default 12 h.
	SessionLifetime time.Duration
	// LoginLimit bounds failed logins (default store.DefaultLoginLimit).
	LoginLimit store.LoginLimit
	// OpenAPI is the REST API's OpenAPI document, shown on the API
	// documentation page.
	OpenAPI []byte
	// SecretParams are parameter-name endings whose values are secrets,
	// besides controller.DefaultSecretParams (the API's setting): the
	// console never shows them.
	SecretParams []string
	// ActivityInterval is how often the overview's activity chart is
	// sampled. Default 1 min, the chart's resolution.
	ActivityInterval time.Duration
	// LiveInterval is how often live parts of pages (the overview) are
	// refreshed over Server-Sent Events. Default 5 s.
	LiveInterval time.Duration
	// Bus gets the rollout progress events of the console's rollout
	// actions, as the API's (nil: none); PolicyEnv is the API's, for
	// policy previews.
	Bus       *bus.Bus
	PolicyEnv policy.Env
	Logger    *slog.Logger
}

// Console serves the web console at "/".
type Console struct {
	o        Options
	st       *store.Store
	log      *slog.Logger
	rl       *ratelog.Logger
	mux      *http.ServeMux
	pages    map[string]*template.Template
	stop     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
	secrets  controller.SecretNames
	registry *controller.Devices
	params   *controller.Parameters
	creds    *controller.Credentials
	pol      *controller.Policies

	overviewMu sync.Mutex
	overview   overviewData // the last figures computed (overviewData)

	chartsMu   sync.Mutex
	chartsData chartsData // the last chart data computed (charts.go)
	chartsAt   time.Time
}

// New builds the console; a bad option is an error naming it.
func New(o Options) (*Console, error) {
	if o.Store == nil {
		return nil, errors.New("console: Options.Store is required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 30 * time.Minute
	}
	if o.SessionLifetime == 0 {
		o.SessionLifetime = 12 * time.Hour
	}
	if o.IdleTimeout < time.Minute || o.SessionLifetime < o.IdleTimeout {
		return nil, fmt.Errorf("console: IdleTimeout %s must be at least 1m and at most SessionLifetime %s", o.IdleTimeout, o.SessionLifetime)
	}
	if o.LoginLimit.Failures <= 0 {
		o.LoginLimit = store.DefaultLoginLimit
	}
	if o.LiveInterval <= 0 {
		o.LiveInterval = 5 * time.Second
	}
	if o.ActivityInterval <= 0 {
		o.ActivityInterval = time.Minute
	}
	log := o.Logger.With("component", "console")
	secrets := controller.NewSecretNames(o.SecretParams)
	c := &Console{o: o, st: o.Store, log: log, rl: ratelog.New(log, 0, 0), mux: http.NewServeMux(), stop: make(chan struct{}),
		secrets: secrets, registry: controller.NewDevices(o.Store),
		params: controller.NewParameters(controller.ParametersOptions{Store: o.Store, Tasks: o.Tasks, Secrets: secrets, Logger: log})}
	c.creds = o.Credentials
	if c.creds == nil {
		c.creds = controller.NewCredentials(controller.CredentialsOptions{Store: o.Store, Logger: log})
	}
	if err := c.parseTemplates(); err != nil {
		return nil, err
	}
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	files := http.FileServerFS(static)
	c.mux.Handle("GET /static/", http.StripPrefix("/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The files change only with the binary; an hour keeps a reload
		// quick and an upgrade visible soon.
		w.Header().Set("Cache-Control", "public, max-age=3600")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		files.ServeHTTP(w, r)
	})))
	c.mux.HandleFunc("GET /login", c.loginPage)
	c.mux.HandleFunc("POST /login", c.login)
	c.route("POST /logout", store.RoleViewer, c.logout)
	c.route("GET /{$}", store.RoleViewer, c.overviewPage)
	c.route("GET /live/overview", store.RoleViewer, c.overviewLive)
	c.route("GET /devices", store.RoleViewer, c.devices)
	c.route("GET /devices/count", store.RoleViewer, c.deviceCount)
	c.route("GET /devices/{id}", store.RoleViewer, c.device)
	c.route("POST /devices/{id}/reboot", store.RoleOperator, c.deviceOperate("reboot"))
	c.route("POST /devices/{id}/factory-reset", store.RoleOperator, c.deviceOperate("factory_reset"))
	c.route("POST /devices/{id}/parameters/set", store.RoleOperator, c.setParameter)
	c.route("GET /devices/{id}/parameters/row", store.RoleViewer, c.parameterRow)
	c.route("POST /devices/{id}/parameters/read", store.RoleOperator, c.readLive)
	c.route("GET /users", store.RoleAdmin, c.users)
	c.route("POST /users", store.RoleAdmin, c.createUser)
	c.route("POST /users/{name}", store.RoleAdmin, c.updateUser)
	c.route("GET /audit", store.RoleViewer, c.audit)
	c.route("GET /tokens", store.RoleAdmin, c.tokens)
	c.route("POST /tokens", store.RoleAdmin, c.createToken)
	c.route("POST /tokens/{id}/revoke", store.RoleAdmin, c.revokeToken)
	c.registerOps() // ops.go
	c.policyRoutes()
	c.route("GET /api-docs", store.RoleViewer, c.apiDocs)
	c.route("GET /api-docs/openapi.json", store.RoleViewer, c.openAPI)
	c.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, nil, devicemodel.Errorf(devicemodel.CodeNotFound, "there is no page %s", r.URL.Path))
	})
	c.wg.Add(1)
	go c.sampleActivity() // charts.go
	return c, nil
}

// Close ends the live streams (which would hold a graceful shutdown
// open) and the activity sampler. Safe to call twice.
func (c *Console) Close() {
	c.once.Do(func() { close(c.stop) })
	c.wg.Wait()
}

func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// The console loads nothing from elsewhere (issue 13 item 1), which
	// the browser is told to enforce; no framing (clickjacking).
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Content-Type-Options", "nosniff")
	c.mux.ServeHTTP(w, r)
}

// roleAtLeast is the controller's role order (viewer < operator <
// admin), the same for the console as for the REST API.
func roleAtLeast(have, need store.Role) bool { return controller.RoleAtLeast(have, need) }

// route registers a page that needs a session whose user has at least
// role need; a POST also needs the session's CSRF token. The user's name
// is the actor of every change the handler makes (audit log, tasks).
func (c *Console) route(pattern string, need store.Role, h func(http.ResponseWriter, *http.Request, *store.Session) error) {
	c.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		defer func() { metricRequests.WithLabelValues(pattern, fmt.Sprint(rec.code)).Inc() }()
		sess, ok := c.session(rec, r)
		if !ok {
			return
		}
		if r.Method == http.MethodPost && !c.checkCSRF(r, sess) {
			c.fail(rec, r, sess, devicemodel.Errorf(devicemodel.CodeDenied, "the form was not sent by this console session (a missing or stale CSRF token); reload the page and try again"))
			return
		}
		if !roleAtLeast(sess.User.Role, need) {
			c.fail(rec, r, sess, devicemodel.Errorf(devicemodel.CodeDenied, "your role (%s) may not do this; it needs %s", sess.User.Role, need))
			return
		}
		ctx := store.ContextWithActor(r.Context(), store.UserActor(sess.User.Name))
		if err := h(rec, r.WithContext(ctx), sess); err != nil {
			c.fail(rec, r, sess, err)
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach Flush for the live streams.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// statusOf maps a domain error to an HTTP status (CONTRIBUTING.md, habit 2).
func statusOf(err error) int {
	if errors.Is(err, context.Canceled) {
		return 499 // the browser went away
	}
	return api.StatusOf(err)
}

// fail answers a failed request with a page (or, for an htmx request, a
// fragment) that says what went wrong in words: never a Go error, which
// goes to the log instead.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, sess *store.Session, err error) {
	code := statusOf(err)
	msg := devicemodel.ErrorMessage(err)
	if store.IsQueryTimeout(err) {
		code, msg = http.StatusServiceUnavailable, "The database took too long to answer; narrow the search and try again."
	} else if code == http.StatusInternalServerError {
		// A bug or an untyped error: the words are for the log only. A
		// typed unavailable or timeout (503, 504) says what to do.
		c.rl.Log(r.Context(), slog.LevelError, "console request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		msg = "Something went wrong on the server; the controller's log has the details."
	}
	if code == 499 {
		return // the browser left
	}
	if msg != "" {
		msg = strings.ToUpper(msg[:1]) + msg[1:]
	}
	if r.Header.Get("HX-Request") == "true" {
		// htmx swaps error answers only when told to (static/app.js).
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(code)
		_ = c.pages["error"].ExecuteTemplate(w, "message", layout{Data: map[string]any{"Error": msg}})
		return
	}
	c.render(w, r, sess, code, "error", "Error", map[string]any{"Error": msg, "Status": code, "StatusText": http.StatusText(code)})
}

// clientAddress is the address a login is rate-limited by: the
// connection's peer (a proxy in front of Duet counts as one address, which
// errs on the side of refusing).
func clientAddress(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
