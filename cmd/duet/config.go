package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/console"
	"github.com/duet-dm/duet/pkg/store"
)

// setting is one configuration knob: a flag, a DUET_* variable and a key of
// the settings file (--config), all three with the same name. The flag wins
// over the variable, the variable over the file, the file over the default.
type setting struct {
	flag, env, def, help string
	value                string
	set                  bool   // given by flag, environment or file
	source               string // where value came from: default, file, environment, flag
	// secret settings can also be read from a file (--x-file, DUET_X_FILE,
	// x-file:), and are never echoed in errors or by `duet config`.
	secret bool
}

// settings is every knob of `duet serve`, in the order the README's table
// lists them.
type settings struct {
	list   []*setting
	byFlag map[string]*setting
}

func newSettings() *settings {
	s := &settings{byFlag: map[string]*setting{}}
	add := func(flag, env, def, help string) {
		st := &setting{flag: flag, env: env, def: def, help: help}
		s.list = append(s.list, st)
		s.byFlag[flag] = st
	}
	// Core
	add("database-url", "DUET_DATABASE_URL", "postgres://127.0.0.1:5432/duet?sslmode=disable", "PostgreSQL connection URL")
	add("nats-url", "DUET_NATS_URL", "", "external NATS server URL; empty embeds a NATS server with JetStream")
	add("nats-host", "DUET_NATS_HOST", "127.0.0.1", "listen host of the embedded NATS server")
	add("nats-port", "DUET_NATS_PORT", "4222", "listen port of the embedded NATS server")
	add("nats-replicas", "DUET_NATS_REPLICAS", "1", "copies JetStream keeps of Duet's streams on a clustered external NATS (1 to 5, at most the cluster's size; 3 survives the loss of one node); 1 with the embedded server")
	add("nats-credentials", "DUET_NATS_CREDENTIALS", "", "file authenticating Duet to DUET_NATS_URL: a NATS .creds file (user JWT and NKey seed) or an NKey seed file; the embedded bus writes one per role in <data-dir>/bus/ (controller.nk, cwmp.nk, usp.nk, integrator.nk)")
	add("nats-user", "DUET_NATS_USER", "", "NATS user for DUET_NATS_URL (or user:password@ in the URL)")
	add("nats-password", "DUET_NATS_PASSWORD", "", "NATS password for DUET_NATS_USER")
	add("nats-tls-ca", "DUET_NATS_TLS_CA", "", "PEM CA bundle the NATS servers' certificates are verified against (tls:// in DUET_NATS_URL, or a server that requires TLS); without it, the system's roots")
	add("nats-tls-cert", "DUET_NATS_TLS_CERT", "", "PEM certificate: with DUET_NATS_URL, Duet's client certificate (mutual TLS); without it, the embedded NATS server's certificate, and TLS is then required of network clients")
	add("nats-tls-key", "DUET_NATS_TLS_KEY", "", "PEM key file for nats-tls-cert")
	add("bus-seal-key", "DUET_BUS_SEAL_KEY", "", "base64 of 32 random bytes (openssl rand -base64 32) sealing the secrets that cross the bus (device HA1, connection-request passwords); the controller and every CWMP adapter need the same; unset: <data-dir>/bus/seal.key, created on first start")
	add("http-addr", "DUET_HTTP_ADDR", ":8080", "address of the REST API, /healthz, /readyz and /metrics")
	add("http-tls-cert", "DUET_HTTP_TLS_CERT", "", "PEM certificate file; enables HTTPS on the API, /healthz, /readyz and /metrics (reloaded when it changes or on SIGHUP)")
	add("http-tls-key", "DUET_HTTP_TLS_KEY", "", "PEM key file for http-tls-cert")
	add("data-dir", "DUET_DATA_DIR", "duet-data", "directory for embedded NATS (JetStream) data, and (bus/, mode 0700) the embedded bus's NKeys and the bus seal key")
	add("log-level", "DUET_LOG_LEVEL", "info", "debug, info, warn or error")
	add("log-format", "DUET_LOG_FORMAT", "auto", "text, json, or auto (text on a terminal, JSON otherwise)")
	add("only", "DUET_ONLY", "", "comma list of components to run: controller, cwmp, usp-mqtt, usp-stomp, usp-ws (default: all)")
	add("event-retention", "DUET_EVENT_RETENTION", "168h", "how long the event stream keeps device events")
	add("event-history-retention", "DUET_EVENT_HISTORY_RETENTION", "720h", "how long device history (GET /api/v1/devices/{id}/events) is kept in PostgreSQL")
	add("event-history-kinds", "DUET_EVENT_HISTORY_KINDS", controller.DefaultHistoryKinds, "per event kind, how long its history is kept instead (kind=duration, comma separated, or none); 0 stores none: Informs are then only counted on the device (informs_total, last_inform_at)")
	add("event-stream-latest-only", "DUET_EVENT_STREAM_LATEST_ONLY", controller.DefaultLatestOnlyKinds, "event kinds of which the event stream keeps only each device's newest (comma list; none keeps every event for DUET_EVENT_RETENTION)")
	add("bulk-rate", "DUET_BULK_RATE", "50", "tasks per second a task batch (POST /api/v1/tasks) creates when its request names no rate (at most 1000)")
	add("policy-sweep", "DUET_POLICY_SWEEP", "10m", "how often every device is checked against the enabled policies even without a change (changes and device events are checked at once)")
	add("http-read-timeout", "DUET_HTTP_READ_TIMEOUT", "30s", "longest time to read a request (headers and body) on the API and the USP WebSocket upgrade")
	add("http-write-timeout", "DUET_HTTP_WRITE_TIMEOUT", "150s", "longest time to answer an API request (above the 120 s a task may wait; event streams are exempt)")
	add("http-idle-timeout", "DUET_HTTP_IDLE_TIMEOUT", "30s", "an idle keep-alive connection of the API or the WebSocket server is closed after this")
	add("http-max-conns-per-ip", "DUET_HTTP_MAX_CONNS_PER_IP", "64", "connections one source address may hold open to the API (0 = no limit)")
	add("api-db-conns", "DUET_API_DB_CONNS", "8", "PostgreSQL connections of the API's own pool, apart from the event, task and token-check pool")
	add("api-query-timeout", "DUET_API_QUERY_TIMEOUT", "10s", "PostgreSQL cancels an API query running longer (503); searches take at most 16 param conditions")
	add("api-search-concurrency", "DUET_API_SEARCH_CONCURRENCY", "4", "device searches (GET /api/v1/devices) run at once; more wait up to 5 s, then 429")
	add("search-paths", "DUET_SEARCH_PATHS", store.DefaultSearchPaths, "comma list of parameters device searches (param=) find through an index of their own, each costing a little on every write of its value (docs/search.md); none for no index: conditions on other paths probe the parameter cache device by device")
	add("secret-params", "DUET_SECRET_PARAMS", "", "comma list of parameter-name endings whose values the API shows as *** (besides Password, Passphrase, KeyPassphrase, PreSharedKey, Secret, WEPKey)")
	add("reboot-timeout", "DUET_REBOOT_TIMEOUT", "10m", "a reboot or factory reset task fails with timeout when the device is not back (USP Boot!, CWMP 1 BOOT) within this")
	add("transfer-timeout", "DUET_TRANSFER_TIMEOUT", "1h", "a download or upload the device accepted for later (Status 1) fails with timeout when no TransferComplete comes within this")
	add("operation-timeout", "DUET_OPERATION_TIMEOUT", "1h", "an asynchronous command (USP OperationComplete, CWMP diagnostics) fails with timeout when its completion does not come within this")
	add("pprof-addr", "DUET_PPROF_ADDR", "", "loopback address (127.0.0.1:6060) serving Go's /debug/pprof profiles, for measuring Duet; empty is off, and any other host is refused")
	// Files (issue 14): the repository and the listener devices fetch from.
	add("file-addr", "DUET_FILE_ADDR", "", "listen address of the file listener devices download files from and upload to (:7548); empty runs none, and file operations (firmware_upgrade, backup_config, restore_config) are refused")
	add("file-url", "DUET_FILE_URL", "", "base URL devices reach the file listener at (http://acs.example.net:7548); empty: http(s)://127.0.0.1 and the listener's port, only right for a lab")
	add("file-tls-cert", "DUET_FILE_TLS_CERT", "", "PEM certificate file; enables HTTPS on the file listener")
	add("file-tls-key", "DUET_FILE_TLS_KEY", "", "PEM key file for file-tls-cert")
	add("file-max-size", "DUET_FILE_MAX_SIZE", "2147483648", "largest file (bytes) the repository takes, from the API or a device upload")
	add("file-url-ttl", "DUET_FILE_URL_TTL", "24h", "how long a signed transfer URL stays valid from the moment its task is dispatched to the device (cover the transfer and its resumptions)")
	add("admin-token", "DUET_ADMIN_TOKEN", "", "API admin bearer token to create at start (at least 24 characters); unset, the first start generates one and prints it once")
	add("console-idle-timeout", "DUET_CONSOLE_IDLE_TIMEOUT", "30m", "a web console session unused this long ends and its user logs in again (at least 1m)")
	add("console-session-lifetime", "DUET_CONSOLE_SESSION_LIFETIME", "12h", "a web console session ends this long after its login, used or not (at least console-idle-timeout)")
	// CWMP
	add("cwmp-addr", "DUET_CWMP_ADDR", ":7547", "listen address of the CWMP ACS")
	add("cwmp-path", "DUET_CWMP_PATH", "/", "URL path of the CWMP ACS")
	add("cwmp-auth", "DUET_CWMP_AUTH", "", "CPE authentication: none, shared or per-device (required when the cwmp component runs)")
	add("cwmp-username", "DUET_CWMP_USERNAME", "", "CPE username in shared mode")
	add("cwmp-password", "DUET_CWMP_PASSWORD", "", "CPE password in shared mode: at least 12 characters, at least 5 of them distinct")
	add("cwmp-enrol", "DUET_CWMP_ENROL", "auto", "automatic per-device CPE credentials (docs/guide-cwmp.md, Enrolment): auto is on in the shared mode when DUET_CREDENTIALS_KEY is set; on (needs both); off")
	add("cwmp-enrol-old-sessions", "DUET_CWMP_ENROL_OLD_SESSIONS", "3", "an enrolment is rolled back (the CPE stays on the shared credentials) when the CPE, after accepting its new password, opens this many sessions with the old one")
	add("cwmp-enrol-window", "DUET_CWMP_ENROL_WINDOW", "24h", "an enrolment is also rolled back when the CPE opens a session with its old password this long after accepting the new one")
	add("cwmp-realm", "DUET_CWMP_REALM", "Duet", "HTTP Digest realm of the ACS; per-device credentials are stored for it, so set it before storing them")
	add("credentials-key", "DUET_CREDENTIALS_KEY", "", "base64 of 32 random bytes (openssl rand -base64 32) encrypting per-device connection-request passwords; unset, the device credentials API answers 503 and per-device auth finds no credentials")
	add("cwmp-tls-cert", "DUET_CWMP_TLS_CERT", "", "PEM certificate file; enables HTTPS on the ACS")
	add("cwmp-tls-key", "DUET_CWMP_TLS_KEY", "", "PEM key file for cwmp-tls-cert")
	add("cwmp-allow-digest-without-qop", "DUET_CWMP_ALLOW_DIGEST_WITHOUT_QOP", "false", "accept Digest without qop (RFC 2069 form, for legacy CPEs); a captured header can then be replayed while its nonce lives (5 min)")
	add("cwmp-tls-client-ca", "DUET_CWMP_TLS_CLIENT_CA", "", "PEM CA bundle; set, every CPE must present a client certificate it signs (TLS client authentication, on top of DUET_CWMP_AUTH; needs cwmp-tls-cert)")
	add("cwmp-allow-basic-http", "DUET_CWMP_ALLOW_BASIC_HTTP", "false", "accept Basic auth over plain HTTP (for CPEs that can do nothing else)")
	add("cwmp-connreq-username", "DUET_CWMP_CONNREQ_USERNAME", "", "shared connection-request username, sent to every CPE Duet holds no per-device credentials for (its ManagementServer.ConnectionRequestUsername)")
	add("cwmp-connreq-password", "DUET_CWMP_CONNREQ_PASSWORD", "", "shared connection-request password, with cwmp-connreq-username")
	add("cwmp-connreq-allow", "DUET_CWMP_CONNREQ_ALLOW", "", "comma list of networks (CIDR) connection requests may go to even if refused otherwise; by default loopback, link-local (169.254.169.254), unspecified and multicast addresses are refused")
	add("cwmp-connreq-refuse", "DUET_CWMP_CONNREQ_REFUSE", "", "comma list of further networks (CIDR) connection requests never go to (0.0.0.0/0,::/0 with an allow list: only the listed networks)")
	add("cwmp-max-sessions", "DUET_CWMP_MAX_SESSIONS", "1000", "concurrent CWMP sessions before new ones get 503")
	add("cwmp-max-backlog", "DUET_CWMP_MAX_BACKLOG", "100000", "new CWMP sessions get 503 (Retry-After) while the controllers have more device events than this yet to apply, so devices wait instead of the registry falling behind without bound (0 = off)")
	add("cwmp-offline-tolerance", "DUET_CWMP_OFFLINE_TOLERANCE", "2.5", "a CPE is offline (reason inform_overdue) when no session came for its PeriodicInformInterval times this, plus DUET_CWMP_OFFLINE_GRACE (at least 1)")
	add("cwmp-offline-grace", "DUET_CWMP_OFFLINE_GRACE", "1m", "added to every CPE's inform deadline")
	add("cwmp-offline-after", "DUET_CWMP_OFFLINE_AFTER", "24h", "inform deadline of a CPE whose PeriodicInformInterval Duet has not learned (from the parameter cache: an Inform, a get, a set)")
	add("cwmp-offline-sweep", "DUET_CWMP_OFFLINE_SWEEP", "15s", "how often the controller looks for CPEs past their inform deadline")
	add("cwmp-max-sessions-per-device", "DUET_CWMP_MAX_SESSIONS_PER_DEVICE", "2", "open CWMP sessions one device identity may hold; its further Informs get 503 (a CPE has one session at a time)")
	add("cwmp-allow-sources", "DUET_CWMP_ALLOW_SOURCES", "", "comma list of networks (CIDR) CPEs may connect from; others get 403, counted in duet_cwmp_source_refused_total (empty = any source)")
	add("cwmp-inform-rate-device", "DUET_CWMP_INFORM_RATE_DEVICE", "20", "new sessions per minute one device identity may start on average, past DUET_CWMP_INFORM_BURST_DEVICE at once; more get 503 + Retry-After (0 = off)")
	add("cwmp-inform-burst-device", "DUET_CWMP_INFORM_BURST_DEVICE", "20", "new sessions one device identity may start at once")
	add("cwmp-inform-rate-source", "DUET_CWMP_INFORM_RATE_SOURCE", "3000", "Informs per minute from one source address on average (CPEs behind one NAT share it; a simulated fleet on one host may need 0 = off); more get 503 + Retry-After")
	add("cwmp-inform-burst-source", "DUET_CWMP_INFORM_BURST_SOURCE", "1000", "Informs one source address may send at once")
	add("cwmp-min-inform-interval", "DUET_CWMP_MIN_INFORM_INTERVAL", "0s", "a device informing more often than this gets 503 (0 = off)")
	// USP
	add("usp-endpoint-id", "DUET_USP_ENDPOINT_ID", "self::duet-controller", "the controller's USP endpoint ID")
	add("usp-valuechange", "DUET_USP_VALUECHANGE", "Device.DeviceInfo.SoftwareVersion", "comma list of parameters every agent gets a ValueChange subscription for at onboarding")
	add("usp-keepalive", "DUET_USP_KEEPALIVE", "10m", "an agent silent this long is probed; no answer takes it offline (0 = off)")
	add("mqtt-url", "DUET_MQTT_URL", "", "external MQTT broker URL (mqtt://host:1883); empty embeds a broker")
	add("mqtt-host", "DUET_MQTT_HOST", "127.0.0.1", "listen host of the embedded MQTT broker; 0.0.0.0 (every interface) turns agent authentication on (usp-agent-auth)")
	add("mqtt-port", "DUET_MQTT_PORT", "1883", "listen port of the embedded MQTT broker")
	add("mqtt-tls-port", "DUET_MQTT_TLS_PORT", "8883", "MQTTS port of the embedded broker, opened when usp-broker-tls-cert is set")
	add("mqtt-topic", "DUET_MQTT_TOPIC", "", "controller topic (default usp/controller/<endpoint id>)")
	add("mqtt-username", "DUET_MQTT_USERNAME", "", "MQTT username")
	add("mqtt-password", "DUET_MQTT_PASSWORD", "", "MQTT password")
	add("mqtt-tls-ca", "DUET_MQTT_TLS_CA", "", "PEM CA bundle the external broker's certificate is verified against (DUET_MQTT_URL tls://, ssl://, mqtts:// or wss://); without it, the system's roots")
	add("mqtt-tls-cert", "DUET_MQTT_TLS_CERT", "", "PEM client certificate Duet presents to the external MQTT broker (mutual TLS)")
	add("mqtt-tls-key", "DUET_MQTT_TLS_KEY", "", "PEM key file for mqtt-tls-cert")
	add("mqtt-shared-group", "DUET_MQTT_SHARED_GROUP", "", "MQTT 5 shared subscription group, to spread agents over several adapters")
	add("stomp-addr", "DUET_STOMP_ADDR", "", "external STOMP broker host:port; empty embeds a broker")
	add("stomp-host", "DUET_STOMP_HOST", "127.0.0.1", "listen host of the embedded STOMP broker; 0.0.0.0 (every interface) turns agent authentication on (usp-agent-auth)")
	add("stomp-port", "DUET_STOMP_PORT", "61613", "listen port of the embedded STOMP broker")
	add("stomp-tls-port", "DUET_STOMP_TLS_PORT", "61614", "STOMP-over-TLS port of the embedded broker, opened when usp-broker-tls-cert is set")
	add("stomp-destination", "DUET_STOMP_DESTINATION", "", "controller destination (default /queue/usp.controller)")
	add("stomp-login", "DUET_STOMP_LOGIN", "", "STOMP login")
	add("stomp-passcode", "DUET_STOMP_PASSCODE", "", "STOMP passcode")
	add("stomp-vhost", "DUET_STOMP_VHOST", "", "STOMP virtual host")
	add("stomp-tls", "DUET_STOMP_TLS", "false", "connect to the external STOMP broker (DUET_STOMP_ADDR) over TLS; on when a stomp-tls-* file is set")
	add("stomp-tls-ca", "DUET_STOMP_TLS_CA", "", "PEM CA bundle the external STOMP broker's certificate is verified against; without it, the system's roots")
	add("stomp-tls-cert", "DUET_STOMP_TLS_CERT", "", "PEM client certificate Duet presents to the external STOMP broker (mutual TLS)")
	add("stomp-tls-key", "DUET_STOMP_TLS_KEY", "", "PEM key file for stomp-tls-cert")
	add("ws-addr", "DUET_WS_ADDR", ":8081", "listen address of the USP WebSocket server")
	add("ws-path", "DUET_WS_PATH", "/usp", "URL path of the USP WebSocket server")
	add("ws-tls-cert", "DUET_WS_TLS_CERT", "", "PEM certificate file; enables wss://")
	add("ws-tls-key", "DUET_WS_TLS_KEY", "", "PEM key file for ws-tls-cert")
	add("ws-max-conns", "DUET_WS_MAX_CONNS", "10000", "WebSocket connections one usp-ws process holds at once before new upgrades get 503 (each needs a file descriptor: keep it below ulimit -n)")
	add("usp-agent-auth", "DUET_USP_AGENT_AUTH", "auto", "USP agents log in to the embedded brokers and the WebSocket server with their endpoint ID and secret (or a client certificate): on, off, or auto (on for each of them not listening on loopback only)")
	add("usp-broker-tls-cert", "DUET_USP_BROKER_TLS_CERT", "", "PEM certificate file; adds MQTTS (mqtt-tls-port) and STOMP over TLS (stomp-tls-port) to the embedded brokers")
	add("usp-broker-tls-key", "DUET_USP_BROKER_TLS_KEY", "", "PEM key file for usp-broker-tls-cert")
	add("usp-client-ca", "DUET_USP_CLIENT_CA", "", "PEM CA file: an agent presenting a certificate of this CA naming urn:bbf:usp:id:<endpoint ID> is authenticated without a secret (embedded brokers over TLS, wss://)")
	add("usp-agent-topic", "DUET_USP_AGENT_TOPIC", "usp/agent/{endpoint}", "with agent authentication, the only MQTT topic an agent of the embedded broker may subscribe to and give as reply topic ({endpoint} is its endpoint ID)")
	add("usp-agent-destination", "DUET_USP_AGENT_DESTINATION", "/queue/agent-{endpoint}", "with agent authentication, the only STOMP destination an agent of the embedded broker may subscribe to and give as reply-to-dest")
	add("usp-reply-topic-pattern", "DUET_USP_REPLY_TOPIC_PATTERN", "", "the MQTT reply topic every agent must give ({endpoint} is its endpoint ID, e.g. usp/agent/{endpoint}); a record naming another is dropped. Set it with an external broker; the embedded one with authentication uses usp-agent-topic")
	add("usp-reply-destination-pattern", "DUET_USP_REPLY_DESTINATION_PATTERN", "", "the STOMP reply-to-dest every agent must give ({endpoint} is its endpoint ID); set it with an external broker")
	add("usp-admission", "DUET_USP_ADMISSION", "accept", "unknown USP endpoint IDs (no device, no secret, no approval): accept, hold (listed for approval at /api/v1/usp/admission) or refuse")
	add("usp-admission-allow", "DUET_USP_ADMISSION_ALLOW", "", "comma list of endpoint-ID patterns ('*' wildcard, e.g. os::00256D-*) admitted in every admission mode")
	add("ws-max-conns-per-ip", "DUET_WS_MAX_CONNS_PER_IP", "256", "WebSocket connections one source address may hold (agents behind one NAT share it; 0 = no limit)")

	// Secrets: each also reads from a file (x-file / DUET_X_FILE), for
	// Docker and Kubernetes secrets mounted as files.
	for _, f := range []string{"database-url", "admin-token", "cwmp-password", "cwmp-connreq-password", "credentials-key", "mqtt-password", "stomp-passcode", "nats-password", "bus-seal-key"} {
		s.byFlag[f].secret = true
	}
	return s
}

// parse reads the environment, then flags.
func (s *settings) parse(name string, args []string, getenv func(string) string, stderr io.Writer) error {
	rest, err := s.parseWith(name, args, getenv, stderr, nil)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("unexpected argument %q", rest[0])
	}
	return nil
}

// parseWith is parse with extra command flags, returning the positional
// arguments. Each setting is resolved, lowest first, from its default, the
// settings file (--config or DUET_CONFIG), the environment, then the flags.
func (s *settings) parseWith(name string, args []string, getenv func(string) string, stderr io.Writer, extra func(*flag.FlagSet)) ([]string, error) {
	return s.parseOnly(name, args, getenv, stderr, extra, nil)
}

// dbCommandSettings are the flags of the commands that only reach the
// database (migrate, token).
var dbCommandSettings = []string{"database-url", "log-level", "log-format"}

// parseOnly is parseWith offering only the named settings as flags (nil:
// all), so "duet migrate -h" lists what migrate uses. The others still come
// from the environment and the settings file, which may hold every setting.
func (s *settings) parseOnly(name string, args []string, getenv func(string) string, stderr io.Writer, extra func(*flag.FlagSet), only []string) ([]string, error) {
	offered := func(*setting) bool { return true }
	if only != nil {
		set := map[string]bool{}
		for _, f := range only {
			set[f] = true
		}
		offered = func(st *setting) bool { return set[st.flag] }
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	if extra != nil {
		extra(fs)
	}
	fs.SetOutput(stderr)
	var configPath string
	fs.StringVar(&configPath, "config", "", "YAML settings file (DUET_CONFIG); its keys are these flags' names, and flags and DUET_* variables override it (duet config example)")
	flags, flagFiles := map[*setting]string{}, map[*setting]string{}
	for _, st := range s.list {
		if !offered(st) {
			continue
		}
		fs.Func(st.flag, fmt.Sprintf("%s (%s, default %q)", st.help, st.env, st.def), func(v string) error {
			flags[st] = v
			return nil
		})
		if st.secret {
			fs.Func(st.flag+"-file", fmt.Sprintf("file holding --%s (%s_FILE)", st.flag, st.env), func(v string) error {
				flagFiles[st] = v
				return nil
			})
		}
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: duet %s [flags]\n\nEvery flag can also be set with its DUET_* environment variable or as a key\nof the --config file.\n\n", name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if configPath == "" {
		configPath = getenv("DUET_CONFIG")
	}
	var file map[string]string
	if configPath != "" {
		var err error
		if file, err = s.readFile(configPath); err != nil {
			return nil, err
		}
	}
	for _, st := range s.list {
		st.value, st.set, st.source = st.def, false, "default"
		envLvl := level{source: "environment", what: st.env, whatFile: st.env + "_FILE", v: getenv(st.env)}
		envLvl.ok = envLvl.v != "" // an empty variable is unset
		if st.secret {
			envLvl.vFile = getenv(st.env + "_FILE")
			envLvl.okFile = envLvl.vFile != ""
		}
		fileLvl := level{source: "file", what: configPath + ": " + st.flag, whatFile: configPath + ": " + st.flag + "-file"}
		fileLvl.v, fileLvl.ok = file[st.flag]
		fileLvl.vFile, fileLvl.okFile = file[st.flag+"-file"]
		flagLvl := level{source: "flag", what: "--" + st.flag, whatFile: "--" + st.flag + "-file"}
		flagLvl.v, flagLvl.ok = flags[st]
		flagLvl.vFile, flagLvl.okFile = flagFiles[st]
		// win is the highest level that gives the setting, lowest first.
		var win *level
		for _, l := range []level{fileLvl, envLvl, flagLvl} {
			if l.ok && l.okFile {
				return nil, fmt.Errorf("setting %s: give %s or %s, not both", st.env, l.what, l.whatFile)
			}
			if l.ok || l.okFile {
				win = &l
			}
		}
		switch {
		case win == nil:
		case win.ok:
			st.value, st.set, st.source = win.v, true, win.source
		default: // only the file that wins is read
			v, err := readSecretFile(win.vFile)
			if err != nil {
				return nil, fmt.Errorf("setting %s (%s): %v", st.env, win.whatFile, err)
			}
			st.value, st.set, st.source = v, true, win.source
		}
	}
	return fs.Args(), nil
}

// level is where one setting may be given: the file, the environment or
// the flags, each as a value or (secrets) as a file holding it.
type level struct {
	source, what, whatFile string
	v, vFile               string
	ok, okFile             bool
}

// shown is the setting's value as Duet shows it (duet config check, the
// console's settings page): a secret only as set or not, and the password
// of any URL in a value (nats://user:password@host) as ***.
func (st *setting) shown() string {
	if st.secret {
		if st.value == "" {
			return ""
		}
		return "(secret, set)"
	}
	return urlPassword.ReplaceAllString(st.value, "${1}***@")
}

// urlPassword matches the user:password@ of a URL (RFC 3986 §3.2.1), in
// a value that may list several.
var urlPassword = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s,]*:)[^@/\s,]*@`)

// consoleSettings is the effective configuration for the console's
// settings page, masked here: the console never holds a secret.
func (s *settings) consoleSettings() []console.Setting {
	out := make([]console.Setting, 0, len(s.list))
	for _, st := range s.list {
		out = append(out, console.Setting{Name: st.flag, Env: st.env, Value: st.shown(), Source: st.source})
	}
	return out
}

// readSecretFile reads a secret from a file, without the line ending most
// editors and `echo` add (Docker and Kubernetes secrets often have one).
func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	v := strings.TrimRight(string(b), "\r\n")
	if v == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return v, nil
}

func (s *settings) str(flag string) string { return s.byFlag[flag].value }

// errSetting names the setting both ways, so the operator finds it
// whichever way they configured it.
func (s *settings) errSetting(flag, format string, args ...any) error {
	st := s.byFlag[flag]
	return fmt.Errorf("setting %s (--%s): %s", st.env, st.flag, fmt.Sprintf(format, args...))
}

// float reads a number in (min, max].
func (s *settings) float(flag string, min, max float64) (float64, error) {
	v, err := strconv.ParseFloat(s.str(flag), 64)
	if err != nil {
		return 0, s.errSetting(flag, "%q is not a number", s.str(flag))
	}
	if !(v > min && v <= max) {
		return 0, s.errSetting(flag, "%v is not above %v and at most %v", v, min, max)
	}
	return v, nil
}

func (s *settings) duration(flag string, min time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(s.str(flag))
	if err != nil {
		return 0, s.errSetting(flag, "%q is not a duration (e.g. 30s, 5m, 168h)", s.str(flag))
	}
	if d < min {
		return 0, s.errSetting(flag, "%s is below the minimum %s", d, min)
	}
	return d, nil
}

func (s *settings) integer(flag string, min, max int) (int, error) {
	n, err := strconv.Atoi(s.str(flag))
	if err != nil || n < min || n > max {
		return 0, s.errSetting(flag, "%q is not an integer from %d to %d", s.str(flag), min, max)
	}
	return n, nil
}

func (s *settings) boolean(flag string) (bool, error) {
	b, err := strconv.ParseBool(s.str(flag))
	if err != nil {
		return false, s.errSetting(flag, "%q is not true or false", s.str(flag))
	}
	return b, nil
}

func (s *settings) port(flag string) (int, error) { return s.integer(flag, 1, 65535) }

func (s *settings) addr(flag string) (string, error) {
	v := s.str(flag)
	if _, p, err := net.SplitHostPort(v); err != nil || p == "" {
		return "", s.errSetting(flag, "%q is not host:port (e.g. :8080 or 127.0.0.1:8080)", v)
	}
	return v, nil
}

// loopbackAddr checks an optional host:port whose host must be a loopback
// address: what it serves is for whoever is on the machine, never the
// network.
func (s *settings) loopbackAddr(flag string) (string, error) {
	v := s.str(flag)
	if v == "" {
		return "", nil
	}
	h, p, err := net.SplitHostPort(v)
	if err != nil || p == "" {
		return "", s.errSetting(flag, "%q is not host:port (e.g. 127.0.0.1:6060)", v)
	}
	if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return "", s.errSetting(flag, "%q: the host must be a loopback address (127.0.0.1, ::1 or localhost)", v)
	}
	return v, nil
}

func (s *settings) oneOf(flag string, allowed ...string) (string, error) {
	v := s.str(flag)
	for _, a := range allowed {
		if v == a {
			return v, nil
		}
	}
	return "", s.errSetting(flag, "%q is not one of %s", v, strings.Join(allowed, ", "))
}

// realm checks the Digest realm: it goes into a quoted challenge header.
func (s *settings) realm() (string, error) {
	v := s.str("cwmp-realm")
	if v == "" || len(v) > 128 || strings.ContainsAny(v, "\"\\") || strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return "", s.errSetting("cwmp-realm", "%q must be 1 to 128 printable characters without quotes or backslashes", v)
	}
	return v, nil
}

// components parses --only.
var allComponents = []string{"controller", "cwmp", "usp-mqtt", "usp-stomp", "usp-ws"}

func (s *settings) components() (map[string]bool, error) {
	out := map[string]bool{}
	v := strings.TrimSpace(s.str("only"))
	if v == "" {
		for _, c := range allComponents {
			out[c] = true
		}
		return out, nil
	}
	known := map[string]bool{}
	for _, c := range allComponents {
		known[c] = true
	}
	for _, c := range strings.Split(v, ",") {
		c = strings.TrimSpace(c)
		if c == "usp" { // shorthand for every USP transport
			out["usp-mqtt"], out["usp-stomp"], out["usp-ws"] = true, true, true
			continue
		}
		if !known[c] {
			return nil, s.errSetting("only", "unknown component %q (known: %s, usp)", c, strings.Join(allComponents, ", "))
		}
		out[c] = true
	}
	return out, nil
}

// markdownTable renders the settings for the README (kept true by a test).
func (s *settings) markdownTable() string {
	var b strings.Builder
	b.WriteString("| variable | flag | default | meaning |\n|---|---|---|---|\n")
	for _, st := range s.list {
		def := st.def
		if def == "" {
			def = "—"
		} else {
			def = "`" + def + "`"
		}
		fmt.Fprintf(&b, "| `%s` | `--%s` | %s | %s |\n", st.env, st.flag, def, st.help)
	}
	return b.String()
}
