package main

import (
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	cwmpadapter "github.com/duet-dm/duet/adapters/cwmp"
	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/netguard"
	"github.com/duet-dm/duet/pkg/store"
)

// serveConfig is every setting of `duet serve`, checked. checkServe builds
// it before anything starts, so a bad value of any component stops start-up
// before a migration runs, a server listens or a token is made. A new
// setting is parsed here, not where it is used (TestBadSettingStartsNothing).
type serveConfig struct {
	comps            map[string]bool
	retention        time.Duration
	historyRetention time.Duration
	history          controller.HistoryOptions // issue 12 item 5
	latestOnly       []string
	httpAddr         string
	pprofAddr        string // "" when off
	realm            string
	credKey          *store.CredentialKey
	natsPort         int // embedded NATS only
	natsReplicas     int
	policySweep      time.Duration
	bulkRate         float64
	awaitTimeouts    [3]time.Duration // reboot, transfer, operation
	fileAddr         string           // "" runs no file listener
	fileURL          string
	fileMaxSize      int64
	fileURLTTL       time.Duration

	// The API and its HTTP server (issue 15 §8, §9).
	httpRead, httpWrite, httpIdle time.Duration
	httpPerIP                     int
	apiDBConns                    int
	apiQueryTimeout               time.Duration
	apiSearches                   int
	secretParams                  []string
	searchPaths                   []string
	consoleIdle, consoleLifetime  time.Duration
	wsPerIP                       int
	wsMaxConns                    int

	cwmp cwmpadapter.Options // without Bus and Logger
	// enrol: automatic per-device CPE credentials (DUET_CWMP_ENROL).
	enrol      bool
	enrolRules store.EnrolmentRules

	tls *tlsConfig // every TLS surface (serve_tls.go)

	uspKeepAlive   time.Duration // -1 is off
	uspValueChange []string
	mqttPort       int // embedded broker only
	stompPort      int // embedded broker only
	wsAddr         string
	uspSec         uspSecurity // serve_usp_security.go
}

func (s *settings) checkServe() (*serveConfig, error) {
	c := &serveConfig{}
	var err error
	if c.comps, err = s.components(); err != nil {
		return nil, err
	}
	if c.retention, err = s.duration("event-retention", time.Minute); err != nil {
		return nil, err
	}
	if c.historyRetention, err = s.duration("event-history-retention", time.Minute); err != nil {
		return nil, err
	}
	historyKinds, err := controller.ParseHistoryKinds(s.str("event-history-kinds"))
	if err != nil {
		return nil, s.errSetting("event-history-kinds", "%v", err)
	}
	c.history = controller.HistoryOptions{Retention: c.historyRetention, ByKind: historyKinds, TombstoneRetention: c.retention}
	if c.latestOnly, err = controller.ParseEventKinds(s.str("event-stream-latest-only")); err != nil {
		return nil, s.errSetting("event-stream-latest-only", "%v", err)
	}
	if c.httpAddr, err = s.addr("http-addr"); err != nil {
		return nil, err
	}
	if c.pprofAddr, err = s.loopbackAddr("pprof-addr"); err != nil {
		return nil, err
	}
	if c.realm, err = s.realm(); err != nil {
		return nil, err
	}
	if v := s.str("credentials-key"); v != "" {
		if c.credKey, err = store.ParseCredentialKey(v); err != nil {
			// Never echo the value: it is a secret.
			return nil, s.errSetting("credentials-key", "%v", err)
		}
	}
	if c.natsReplicas, err = s.integer("nats-replicas", 1, 5); err != nil {
		return nil, err
	}
	if s.str("nats-url") == "" {
		if c.natsPort, err = s.port("nats-port"); err != nil {
			return nil, err
		}
		if c.natsReplicas != 1 {
			return nil, s.errSetting("nats-replicas", "the embedded NATS server is a single node: replicas must be 1 (set DUET_NATS_URL to a cluster)")
		}
	}
	if c.httpRead, err = s.duration("http-read-timeout", time.Second); err != nil {
		return nil, err
	}
	if c.httpWrite, err = s.duration("http-write-timeout", time.Second); err != nil {
		return nil, err
	}
	if c.httpIdle, err = s.duration("http-idle-timeout", time.Second); err != nil {
		return nil, err
	}
	if c.httpPerIP, err = s.integer("http-max-conns-per-ip", 0, 1_000_000); err != nil {
		return nil, err
	}
	if c.comps["controller"] {
		if c.apiDBConns, err = s.integer("api-db-conns", 2, 1000); err != nil {
			return nil, err
		}
		if c.apiQueryTimeout, err = s.duration("api-query-timeout", 100*time.Millisecond); err != nil {
			return nil, err
		}
		if c.apiSearches, err = s.integer("api-search-concurrency", 1, 1000); err != nil {
			return nil, err
		}
		c.secretParams = strings.Split(s.str("secret-params"), ",")
		if c.searchPaths, err = searchPaths(s); err != nil {
			return nil, err
		}
		if c.consoleIdle, err = s.duration("console-idle-timeout", time.Minute); err != nil {
			return nil, err
		}
		if c.consoleLifetime, err = s.duration("console-session-lifetime", c.consoleIdle); err != nil {
			return nil, err
		}
		if v := s.str("admin-token"); v != "" && len(v) < store.MinTokenLen {
			return nil, s.errSetting("admin-token", "is shorter than %d characters", store.MinTokenLen)
		}
		if c.policySweep, err = s.duration("policy-sweep", time.Minute); err != nil {
			return nil, err
		}
		if c.bulkRate, err = s.float("bulk-rate", 0, controller.MaxBulkRate); err != nil {
			return nil, err
		}
		if v := s.str("file-addr"); v != "" {
			if c.fileAddr, err = s.addr("file-addr"); err != nil {
				return nil, err
			}
		}
		if (s.str("file-tls-cert") == "") != (s.str("file-tls-key") == "") {
			return nil, s.errSetting("file-tls-cert", "give file-tls-cert and file-tls-key together")
		}
		if v := s.str("file-url"); v != "" {
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return nil, s.errSetting("file-url", "%q is not an http or https URL with a host", v)
			}
			c.fileURL = strings.TrimRight(v, "/")
		}
		n, err := strconv.ParseInt(s.str("file-max-size"), 10, 64)
		if err != nil || n < 1 {
			return nil, s.errSetting("file-max-size", "%q is not a positive number of bytes", s.str("file-max-size"))
		}
		c.fileMaxSize = n
		if c.fileURLTTL, err = s.duration("file-url-ttl", time.Minute); err != nil {
			return nil, err
		}
		for i, name := range []string{"reboot-timeout", "transfer-timeout", "operation-timeout"} {
			if c.awaitTimeouts[i], err = s.duration(name, time.Second); err != nil {
				return nil, err
			}
		}
	}
	if c.comps["cwmp"] {
		if c.cwmp, err = s.checkCWMP(c.realm); err != nil {
			return nil, err
		}
	}
	if err := s.checkEnrol(c); err != nil {
		return nil, err
	}
	c.cwmp.Enrol = c.enrol
	if c.comps["usp-mqtt"] || c.comps["usp-stomp"] || c.comps["usp-ws"] {
		if err := s.checkUSP(c); err != nil {
			return nil, err
		}
	}
	if (s.str("nats-user") == "") != (s.str("nats-password") == "") {
		return nil, s.errSetting("nats-user", "DUET_NATS_USER and DUET_NATS_PASSWORD must be set together")
	}
	if s.str("nats-url") == "" {
		for _, f := range []string{"nats-credentials", "nats-user"} {
			if s.str(f) != "" {
				return nil, s.errSetting(f, "is for an external NATS (DUET_NATS_URL); the embedded bus makes its own NKeys in <data-dir>/bus/")
			}
		}
	} else if f := s.str("nats-credentials"); f != "" {
		if _, err := os.Stat(f); err != nil {
			return nil, s.errSetting("nats-credentials", "%v", err)
		}
	}
	if v := s.str("bus-seal-key"); v != "" {
		if _, err := bus.ParseSealKey(v); err != nil {
			return nil, s.errSetting("bus-seal-key", "%v", err) // never the value
		}
	}
	if err := s.checkTLS(c); err != nil {
		return nil, err
	}
	return c, nil
}

// checkEnrol resolves DUET_CWMP_ENROL: auto is on in the shared mode when
// a credentials key is set; on needs the shared mode, and the key where
// the controller runs (it seals the new passwords).
func (s *settings) checkEnrol(c *serveConfig) error {
	mode, err := s.oneOf("cwmp-enrol", "auto", "on", "off")
	if err != nil {
		return err
	}
	shared := s.str("cwmp-auth") == cwmpadapter.AuthShared
	switch mode {
	case "on":
		if !shared {
			return s.errSetting("cwmp-enrol", "needs DUET_CWMP_AUTH=shared (CPEs are enrolled from the shared credentials)")
		}
		if c.comps["controller"] && c.credKey == nil {
			return s.errSetting("cwmp-enrol", "needs DUET_CREDENTIALS_KEY (the new passwords are kept sealed)")
		}
		c.enrol = true
	case "auto":
		c.enrol = shared && c.credKey != nil
	}
	if c.comps["controller"] && c.enrol && s.str("cwmp-username") == "" {
		return s.errSetting("cwmp-enrol", "needs DUET_CWMP_USERNAME (the username the CPEs keep)")
	}
	if c.enrolRules.MaxOldSessions, err = s.integer("cwmp-enrol-old-sessions", 1, 1000); err != nil {
		return err
	}
	c.enrolRules.Window, err = s.duration("cwmp-enrol-window", time.Minute)
	return err
}

func (s *settings) checkCWMP(realm string) (cwmpadapter.Options, error) {
	var o cwmpadapter.Options
	addr, err := s.addr("cwmp-addr")
	if err != nil {
		return o, err
	}
	auth, err := s.oneOf("cwmp-auth", cwmpadapter.AuthNone, cwmpadapter.AuthShared, cwmpadapter.AuthPerDevice)
	if err != nil {
		if s.str("cwmp-auth") == "" {
			return o, s.errSetting("cwmp-auth", "must be chosen: none, shared or per-device (none has to be explicit; run with --only to skip the cwmp component)")
		}
		return o, err
	}
	if auth == cwmpadapter.AuthShared && (s.str("cwmp-username") == "" || s.str("cwmp-password") == "") {
		return o, s.errSetting("cwmp-auth", "shared mode needs DUET_CWMP_USERNAME and DUET_CWMP_PASSWORD")
	}
	if auth == cwmpadapter.AuthShared {
		if err := cwmpadapter.CheckSharedPassword(s.str("cwmp-password")); err != nil {
			return o, s.errSetting("cwmp-password", "%v (every CPE holds it: use a long random one)", err)
		}
	}
	basic, err := s.boolean("cwmp-allow-basic-http")
	if err != nil {
		return o, err
	}
	noQop, err := s.boolean("cwmp-allow-digest-without-qop")
	if err != nil {
		return o, err
	}
	maxSessions, err := s.integer("cwmp-max-sessions", 1, 1_000_000)
	if err != nil {
		return o, err
	}
	minInform, err := s.duration("cwmp-min-inform-interval", 0)
	if err != nil {
		return o, err
	}
	perDevice, err := s.integer("cwmp-max-sessions-per-device", 1, 1000)
	if err != nil {
		return o, err
	}
	sources, err := netguard.ParsePrefixes(s.str("cwmp-allow-sources"))
	if err != nil {
		return o, s.errSetting("cwmp-allow-sources", "%v", err)
	}
	if (s.str("cwmp-connreq-username") == "") != (s.str("cwmp-connreq-password") == "") {
		return o, s.errSetting("cwmp-connreq-username", "DUET_CWMP_CONNREQ_USERNAME and DUET_CWMP_CONNREQ_PASSWORD must be set together")
	}
	rateDevice, err := s.informRate("device")
	if err != nil {
		return o, err
	}
	rateSource, err := s.informRate("source")
	if err != nil {
		return o, err
	}
	maxBacklog, err := s.integer("cwmp-max-backlog", 0, 1_000_000_000)
	if err != nil {
		return o, err
	}
	if (s.str("cwmp-tls-cert") == "") != (s.str("cwmp-tls-key") == "") {
		return o, s.errSetting("cwmp-tls-cert", "DUET_CWMP_TLS_CERT and DUET_CWMP_TLS_KEY must be set together")
	}
	if !strings.HasPrefix(s.str("cwmp-path"), "/") {
		return o, s.errSetting("cwmp-path", "%q must start with /", s.str("cwmp-path"))
	}
	allow, err := netguard.ParsePrefixes(s.str("cwmp-connreq-allow"))
	if err != nil {
		return o, s.errSetting("cwmp-connreq-allow", "%v", err)
	}
	refuse, err := netguard.ParsePrefixes(s.str("cwmp-connreq-refuse"))
	if err != nil {
		return o, s.errSetting("cwmp-connreq-refuse", "%v", err)
	}
	return cwmpadapter.Options{
		ConnReqTargets: &netguard.Targets{Allow: allow, Refuse: refuse},
		Addr:           addr, Path: s.str("cwmp-path"), Auth: auth,
		Username: s.str("cwmp-username"), Password: s.str("cwmp-password"), Realm: realm,
		TLSCertFile: s.str("cwmp-tls-cert"), TLSKeyFile: s.str("cwmp-tls-key"),
		AllowBasicOverHTTP: basic, AllowDigestWithoutQop: noQop, MaxSessions: maxSessions, MinInformInterval: minInform,
		ConnReqUsername: s.str("cwmp-connreq-username"), ConnReqPassword: s.str("cwmp-connreq-password"),
		MaxSessionsPerDevice: perDevice, AllowSources: sources, InformRateDevice: rateDevice, InformRateSource: rateSource,
		MaxBacklog: uint64(maxBacklog),
	}, nil
}

// informRate reads DUET_CWMP_INFORM_RATE_<who> and its burst; a rate of 0
// turns the limit off.
func (s *settings) informRate(who string) (cwmpadapter.Rate, error) {
	if s.str("cwmp-inform-rate-"+who) == "0" {
		return cwmpadapter.Rate{PerMinute: -1}, nil
	}
	rate, err := s.float("cwmp-inform-rate-"+who, 0, 1e9)
	if err != nil {
		return cwmpadapter.Rate{}, err
	}
	burst, err := s.integer("cwmp-inform-burst-"+who, 1, 1_000_000)
	if err != nil {
		return cwmpadapter.Rate{}, err
	}
	return cwmpadapter.Rate{PerMinute: rate, Burst: burst}, nil
}

func (s *settings) checkUSP(c *serveConfig) error {
	keepAlive, err := s.duration("usp-keepalive", 0)
	if err != nil {
		return err
	}
	if keepAlive == 0 {
		keepAlive = -1 // the endpoint's "off"
	} else if keepAlive < 10*time.Second {
		return s.errSetting("usp-keepalive", "%s is below 10s; 0 turns it off", keepAlive)
	}
	c.uspKeepAlive = keepAlive
	c.uspValueChange = []string{}
	for _, p := range strings.Split(s.str("usp-valuechange"), ",") {
		if p = strings.TrimSpace(p); p != "" {
			if _, err := devicemodel.ParsePath(p, false); err != nil {
				return s.errSetting("usp-valuechange", "%v", err)
			}
			c.uspValueChange = append(c.uspValueChange, p)
		}
	}
	if c.comps["usp-mqtt"] && s.str("mqtt-url") == "" {
		if c.mqttPort, err = s.port("mqtt-port"); err != nil {
			return err
		}
	}
	if c.comps["usp-stomp"] {
		if s.str("stomp-addr") == "" {
			if c.stompPort, err = s.port("stomp-port"); err != nil {
				return err
			}
		} else if _, err := s.addr("stomp-addr"); err != nil {
			return err
		}
	}
	if c.comps["usp-ws"] {
		if c.wsAddr, err = s.addr("ws-addr"); err != nil {
			return err
		}
		if (s.str("ws-tls-cert") == "") != (s.str("ws-tls-key") == "") {
			return s.errSetting("ws-tls-cert", "DUET_WS_TLS_CERT and DUET_WS_TLS_KEY must be set together")
		}
		if !strings.HasPrefix(s.str("ws-path"), "/") {
			return s.errSetting("ws-path", "%q must start with /", s.str("ws-path"))
		}
		if c.wsPerIP, err = s.integer("ws-max-conns-per-ip", 0, 1_000_000); err != nil {
			return err
		}
		if c.wsMaxConns, err = s.integer("ws-max-conns", 1, 10_000_000); err != nil {
			return err
		}
	}
	return s.checkUSPSecurity(c)
}

// searchPaths reads search-paths: parameter paths, or none.
func searchPaths(s *settings) ([]string, error) {
	out := []string{}
	v := strings.TrimSpace(s.str("search-paths"))
	if v == "none" {
		return out, nil
	}
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		if err := (store.ParamCondition{Path: p, Op: store.ParamEq}).Check(); err != nil {
			return nil, s.errSetting("search-paths", "%s", devicemodel.ErrorMessage(err))
		}
		out = append(out, p)
	}
	return out, nil
}
