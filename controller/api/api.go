package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/files"
	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/ratelog"
	"github.com/duet-dm/duet/pkg/store"
)

var metricAPIRequests = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_api_requests_total",
	Help: "REST API requests by route and status code.",
}, []string{"route", "code"})

// Server serves /api/v1.
type Server struct {
	o       Options
	stop    chan struct{}
	once    sync.Once
	store   *store.Store
	log     *slog.Logger
	mux     *http.ServeMux
	handler http.Handler
	// patterns lists every route registered, for the OpenAPI check.
	patterns []string
	secrets  controller.SecretNames
	// searches holds a token per device search running.
	searches chan struct{}
	devices  *controller.Devices
	params   *controller.Parameters
	creds    *controller.Credentials
}

// Options configure New.
type Options struct {
	// Store is required.
	Store *store.Store
	// Tokens authenticates requests; default Store.
	Tokens controller.TokenFinder
	// Tasks serves the task routes; without it they are not offered.
	Tasks *controller.TaskQueue
	// Bulk runs task batches (POST /api/v1/tasks); without it (and with
	// Tasks) the batch routes answer 503.
	Bulk *controller.BulkRunner
	// Bus feeds GET /api/v1/events (Server-Sent Events) and gets rollout
	// progress events of operator actions.
	Bus *bus.Bus
	// PolicyEnv is what management policies need to know of this
	// installation (the USP endpoint ID), for previews.
	PolicyEnv policy.Env
	// SSEBuffer is how many events a streaming client may fall behind
	// before it is disconnected. Default 256.
	SSEBuffer int
	// CredentialKey seals connection-request passwords; without it the
	// credentials routes answer 503.
	CredentialKey *store.CredentialKey
	// Enrolments runs automatic CWMP credential enrolment; without it
	// POST …/credentials/enrolment answers 503.
	Enrolments *controller.Enrolments
	// CWMPRealm is the Digest realm the ACS challenges with; stored HA1s
	// are computed for it. Default "Duet".
	CWMPRealm string
	// SearchConcurrency bounds the device searches (GET /api/v1/devices)
	// running at once, so costly ones cannot take every connection of the
	// pool; past it a search waits up to 5 s, then gets 503. Default 4.
	SearchConcurrency int
	// SecretParams are parameter-name endings whose values are secrets,
	// besides DefaultSecretParams: the API shows them as "***".
	SecretParams []string
	// Files is the file repository (issue 14); without it the file routes
	// are not offered.
	Files  *files.Repository
	Logger *slog.Logger
}

// New builds the REST API handler. Every route needs a bearer token.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Tokens == nil {
		o.Tokens = o.Store
	}
	if o.SSEBuffer <= 0 {
		o.SSEBuffer = 256
	}
	a := &Server{o: o, stop: make(chan struct{}), store: o.Store, log: o.Logger.With("component", "api"), mux: http.NewServeMux(),
		secrets: controller.NewSecretNames(o.SecretParams), devices: controller.NewDevices(o.Store)}
	a.params = controller.NewParameters(controller.ParametersOptions{Store: o.Store, Tasks: o.Tasks, Secrets: a.secrets, Logger: a.log})
	a.creds = controller.NewCredentials(controller.CredentialsOptions{Store: o.Store, Key: o.CredentialKey, Realm: o.CWMPRealm, Logger: a.log})
	if o.SearchConcurrency <= 0 {
		o.SearchConcurrency = 4
	}
	a.searches = make(chan struct{}, o.SearchConcurrency)
	a.handler = rejectNUL(ratelog.New(a.log, 0, 0), authenticate(o.Tokens, a.mux))
	a.route("GET /api/v1/devices", a.listDevices)
	a.route("GET /api/v1/devices/{id}", a.getDevice)
	a.route("GET /api/v1/devices/{id}/events", a.listEvents)
	a.route("GET /api/v1/devices/{id}/parameters", a.listParameters)
	a.route("GET /api/v1/devices/{id}/diagnostics", a.listDiagnostics)
	a.route("POST /api/v1/devices/{id}/tags/{tag}", a.addTag)
	a.route("DELETE /api/v1/devices/{id}/tags/{tag}", a.removeTag)
	a.route("GET /api/v1/events", a.streamEvents)
	a.route("PUT /api/v1/devices/{id}/credentials", a.putCredentials)
	a.route("GET /api/v1/devices/{id}/credentials", a.getCredentials)
	a.route("DELETE /api/v1/devices/{id}/credentials", a.deleteCredentials)
	a.route("GET /api/v1/devices/{id}/credentials/enrolment", a.getEnrolment)
	a.route("POST /api/v1/devices/{id}/credentials/enrolment", a.retryEnrolment)
	a.registerUSPAgentRoutes() // uspagents_api.go
	if o.Tasks != nil {
		a.route("POST /api/v1/devices/{id}/tasks", a.createTask)
		a.route("GET /api/v1/devices/{id}/tasks", a.listTasks)
		a.route("GET /api/v1/tasks/{id}", a.getTask)
		a.route("DELETE /api/v1/tasks/{id}", a.cancelTask)
		a.route("POST /api/v1/tasks/{id}/retry", a.retryTask)
		a.route("POST /api/v1/tasks", a.createTaskBatch)
		a.route("GET /api/v1/task-batches", a.listTaskBatches)
		a.route("GET /api/v1/task-batches/{id}", a.getTaskBatch)
		a.route("DELETE /api/v1/task-batches/{id}", a.cancelTaskBatch)
	}
	a.registerFileRoutes()
	// Groups, policies (validate, preview) and the audit log (issue 6).
	RegisterGroupRoutes(a.mux, GroupRoutesOptions{Store: a.store, Bus: o.Bus, Env: o.PolicyEnv, Secrets: a.secrets, Logger: a.log}, a.route)
	a.route("GET /api/v1/openapi.json", func(w http.ResponseWriter, r *http.Request) (int, error) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(openAPIDocument)
		return http.StatusOK, nil
	})
	a.mux.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, devicemodel.Errorf(devicemodel.CodeNotFound, "no route %s %s", r.Method, r.URL.Path))
	})
	return a
}

func (a *Server) route(pattern string, h func(http.ResponseWriter, *http.Request) (int, error)) {
	a.patterns = append(a.patterns, pattern)
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if !authorize(w, r, pattern) {
			metricAPIRequests.WithLabelValues(pattern, strconv.Itoa(http.StatusForbidden)).Inc()
			return
		}
		code, err := h(w, r)
		if err != nil && store.IsQueryTimeout(err) {
			// PostgreSQL cancelled it (Options: the API's pool has a
			// statement timeout): a 503 that says so, not an internal error.
			metricAPIRefused.WithLabelValues("query_timeout").Inc()
			a.log.Warn("api query cancelled by the statement timeout", "method", r.Method, "path", r.URL.Path)
			w.Header().Set("Retry-After", "5")
			code, err = http.StatusServiceUnavailable, nil
			writeError(w, code, devicemodel.Errorf(devicemodel.CodeUnavailable, "the query ran longer than the API allows (DUET_API_QUERY_TIMEOUT); narrow the filter"))
		}
		if err != nil {
			code = StatusOf(err)
			if code >= 500 {
				a.log.Error("api request failed", "method", r.Method, "path", r.URL.Path, "err", err)
				// Don't leak internals to clients.
				err = devicemodel.Errorf(devicemodel.CodeInternal, "internal error")
			}
			writeError(w, code, err)
		}
		metricAPIRequests.WithLabelValues(pattern, strconv.Itoa(code)).Inc()
	})
}

// Close ends the event streams, which would otherwise hold an HTTP
// server's graceful shutdown open. Safe to call twice.
func (a *Server) Close() { a.once.Do(func() { close(a.stop) }) }

func (a *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.handler.ServeHTTP(w, r) }

// DeviceJSON is the API's representation of a device.
type DeviceJSON struct {
	ID               string    `json:"id"`
	Protocol         string    `json:"protocol"`
	Manufacturer     string    `json:"manufacturer"`
	OUI              string    `json:"oui"`
	ProductClass     string    `json:"product_class"`
	SerialNumber     string    `json:"serial_number"`
	ModelName        string    `json:"model_name"`
	SoftwareVersion  string    `json:"software_version"`
	HardwareVersion  string    `json:"hardware_version"`
	ProvisioningCode string    `json:"provisioning_code"`
	DataModel        string    `json:"data_model"`
	FirstSeen        time.Time `json:"first_seen"`
	LastSeen         time.Time `json:"last_seen"`
	// Online: reachable now (false while rebooting).
	Online bool `json:"online"`
	// State is online, offline or rebooting: a reboot or factory reset
	// was accepted and the device has not announced it is back.
	State                string `json:"state"`
	Transport            string `json:"transport"`
	Address              string `json:"address"`
	ConnectionRequestURL string `json:"connection_request_url,omitempty"`
	// InformsTotal and LastInformAt count the device's routine reports
	// (CWMP Informs, USP Periodic!), which history does not keep a row
	// each of by default (DUET_EVENT_HISTORY_KINDS).
	InformsTotal int64      `json:"informs_total"`
	LastInformAt *time.Time `json:"last_inform_at,omitempty"`
	// Tags are the operator's labels, sorted.
	Tags []string `json:"tags"`
}

func deviceJSON(d controller.TaggedDevice) DeviceJSON {
	var lastInform *time.Time
	if !d.LastInformAt.IsZero() {
		t := d.LastInformAt.UTC()
		lastInform = &t
	}
	return DeviceJSON{
		InformsTotal: d.InformsTotal, LastInformAt: lastInform,
		ID: d.ID, Protocol: string(d.Protocol), Manufacturer: d.Manufacturer, OUI: d.OUI,
		ProductClass: d.ProductClass, SerialNumber: d.SerialNumber, ModelName: d.ModelName,
		SoftwareVersion: d.SoftwareVersion, HardwareVersion: d.HardwareVersion,
		ProvisioningCode: d.ProvisioningCode, DataModel: d.DataModel,
		FirstSeen: d.FirstSeen.UTC(), LastSeen: d.LastSeen.UTC(), Online: d.Online && !d.Rebooting,
		State: controller.DeviceState(d.Device), Transport: d.Transport, Address: d.Address, ConnectionRequestURL: d.ConnectionRequestURL,
		Tags: d.Tags,
	}
}

// DeviceList is the body of GET /api/v1/devices.
type DeviceList struct {
	Devices    []DeviceJSON `json:"devices"`
	NextCursor string       `json:"next_cursor,omitempty"`
	// Count is the number of matching devices, with count=true.
	Count *int64 `json:"count,omitempty"`
	// Unknown, with param conditions, counts per condition path the
	// devices matching the other filters whose cache holds no value for
	// it: they match no condition on it, for want of a value, not
	// because of it (on the first page only).
	Unknown map[string]int64 `json:"unknown,omitempty"`
}

// listDevices serves GET /api/v1/devices: filters (each also a key of a
// bulk task filter), free text q, repeatable param conditions, sort, and
// keyset paging that follows the sort.
func (a *Server) listDevices(w http.ResponseWriter, r *http.Request) (int, error) {
	// pageParamsMulti refuses unknown and repeated parameters; the search
	// itself is read by the parser the console shares.
	q, multi, _, _, err := pageParamsMulti(r, []string{"param"}, controller.DeviceSearchKeys...)
	if err != nil {
		return 0, err
	}
	vals := url.Values{"param": multi["param"]}
	for k, v := range q {
		vals.Set(k, v)
	}
	s, err := controller.ParseDeviceSearch(vals)
	if err != nil {
		return 0, err
	}
	f := s.Filter
	var count int64
	if s.Count {
		f.Count = &count
	}
	release, err := a.acquireSearch(r)
	if err != nil {
		return 0, err
	}
	page, err := a.devices.Search(r.Context(), f)
	release()
	if err != nil {
		return 0, err
	}
	out := DeviceList{Devices: make([]DeviceJSON, 0, len(page.Devices)), NextCursor: page.Next, Count: f.Count, Unknown: page.Unknown}
	for _, d := range page.Devices {
		out.Devices = append(out.Devices, deviceJSON(d))
	}
	return writeJSON(w, http.StatusOK, out), nil
}

func (a *Server) getDevice(w http.ResponseWriter, r *http.Request) (int, error) {
	id := r.PathValue("id")
	if err := devicemodel.ValidateDeviceID(id); err != nil {
		return 0, badParam("id", devicemodel.ErrorMessage(err))
	}
	d, err := a.devices.Get(r.Context(), id)
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, deviceJSON(d)), nil
}

var errSearchBusy = devicemodel.Errorf(devicemodel.CodeResourcesExceeded, "too many device searches at once; retry shortly")

// acquireSearch takes a search slot, waiting at most 5 s.
func (a *Server) acquireSearch(r *http.Request) (func(), error) {
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case a.searches <- struct{}{}:
		return func() { <-a.searches }, nil
	case <-t.C:
		metricAPIRefused.WithLabelValues("search_busy").Inc()
		return nil, errSearchBusy
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
}

// bodyTooLargeError is a request body over its route's limit: 413.
type bodyTooLargeError struct{ err *devicemodel.Error }

func (e *bodyTooLargeError) Error() string { return e.err.Error() }
func (e *bodyTooLargeError) Unwrap() error { return e.err }

func errBodyTooLarge(limit int64) error {
	return &bodyTooLargeError{&devicemodel.Error{Code: devicemodel.CodeInvalidArgument,
		Message: fmt.Sprintf("request body is larger than %d bytes", limit)}}
}

// parseQuery is url.ParseQuery without its silent dropping of malformed
// pairs: a bad escape is a 400 that names the parameter.
func parseQuery(raw string) (url.Values, error) {
	q := url.Values{}
	for _, pair := range strings.Split(raw, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		key, err := url.QueryUnescape(k)
		if err != nil {
			return nil, badParam(k, "malformed escape in the name")
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			return nil, badParam(key, "malformed escape in the value")
		}
		q[key] = append(q[key], val)
	}
	return q, nil
}

// pageParams parses a list route's query: limit (1 to MaxPageSize) and
// cursor, plus the names in extra; an unknown or repeated parameter is a
// 400 naming it. Decoding the cursor is the caller's (each list has its
// own).
func pageParams(r *http.Request, extra ...string) (q map[string]string, limit int, cursor string, err error) {
	q, _, limit, cursor, err = pageParamsMulti(r, nil, extra...)
	return q, limit, cursor, err
}

// pageParamsMulti is pageParams where the names in repeatable may be given
// any number of times; their values are in multi, in query order.
func pageParamsMulti(r *http.Request, repeatable []string, extra ...string) (q map[string]string, multi map[string][]string, limit int, cursor string, err error) {
	raw, err := parseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, nil, 0, "", err
	}
	known := map[string]bool{"limit": true, "cursor": true}
	for _, k := range extra {
		known[k] = true
	}
	multi = map[string][]string{}
	for _, k := range repeatable {
		if vs, ok := raw[k]; ok {
			multi[k] = vs
			delete(raw, k)
		}
	}
	q = map[string]string{}
	for k, vs := range raw {
		if !known[k] {
			return nil, nil, 0, "", badParam(k, "unknown parameter")
		}
		if len(vs) > 1 {
			return nil, nil, 0, "", badParam(k, "given more than once")
		}
		q[k] = vs[0]
	}
	if v := q["limit"]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxPageSize {
			return nil, nil, 0, "", badParam("limit", "must be an integer from 1 to "+strconv.Itoa(store.MaxPageSize))
		}
		limit = n
	}
	return q, multi, limit, q["cursor"], nil
}

// ErrorJSON is the body of every API error.
type ErrorJSON struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func badParam(name, why string) error {
	return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "query parameter %q: %s", name, why)
}

// StatusOf is the HTTP status of an error of the services: one mapping of
// devicemodel codes for every HTTP surface (the REST API and the console).
func StatusOf(err error) int {
	var tl *bodyTooLargeError
	if errors.As(err, &tl) {
		return http.StatusRequestEntityTooLarge
	}
	var e *devicemodel.Error
	if !errors.As(err, &e) {
		return http.StatusInternalServerError
	}
	switch e.Code {
	case devicemodel.CodeInvalidArgument, devicemodel.CodeInvalidPath, devicemodel.CodeInvalidValue, devicemodel.CodeInvalidType:
		return http.StatusBadRequest
	case devicemodel.CodeNotFound:
		return http.StatusNotFound
	case devicemodel.CodeUnauthenticated:
		return http.StatusUnauthorized
	case devicemodel.CodeDenied:
		return http.StatusForbidden
	case devicemodel.CodeConflict:
		return http.StatusConflict
	case devicemodel.CodeUnavailable:
		return http.StatusServiceUnavailable
	case devicemodel.CodeTimeout:
		return http.StatusGatewayTimeout
	case devicemodel.CodeResourcesExceeded:
		return http.StatusTooManyRequests
	case devicemodel.CodeUnsupported:
		return http.StatusNotImplemented
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, ErrorJSON{Code: devicemodel.ErrorCode(err).String(), Message: devicemodel.ErrorMessage(err)})
}

func writeJSON(w http.ResponseWriter, status int, v any) int {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
	return status
}
