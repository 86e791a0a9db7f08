// Command duet-sim is the fleet simulator: it runs many simulated TR-069
// CPEs and TR-369 USP agents in one process against a running Duet, and
// reports how fast they came up and how their sessions go.
//
//	duet-sim --cwmp 1000 --acs http://localhost:7547/
//	duet-sim --usp-mqtt 500 --mqtt 127.0.0.1:1883 --usp-ws 500 --ws ws://localhost:8081/usp
//
// Every --report it prints a progress line (devices up, sessions per
// second, session errors, session latency percentiles, load average), and
// on exit one line of JSON with the totals, for benchmarks. Each CPE has a
// connection-request listener (one descriptor) unless --connreq=false;
// idle CPEs hold no goroutine and no connection, and at most --sessions
// sessions run at once. Each agent holds one connection: past the
// open-file limit (ulimit -n), run several simulators with distinct
// --prefix. A refused agent connection or a failed CPE session is counted
// and retried with back-off; the fleet is never abandoned.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/usp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "duet-sim:", err)
		os.Exit(1)
	}
}

type config struct {
	cwmp, uspMQTT, uspSTOMP, uspWS int
	acs, acsUser, acsPass          string
	tr098Share                     float64
	dataModels                     string
	periodic                       time.Duration
	mqtt, mqttTopic                string
	stomp, stompDest               string
	enrolmentKey, brokerCA         string
	ws                             string
	controllerID                   string
	prefix                         string
	duration, report               time.Duration
	connReq                        bool
	sessions, uspParallel          int
}

func run(ctx context.Context, args []string, out io.Writer) error {
	var c config
	fs := flag.NewFlagSet("duet-sim", flag.ContinueOnError)
	fs.IntVar(&c.cwmp, "cwmp", 0, "number of simulated TR-069 CPEs")
	fs.StringVar(&c.acs, "acs", "http://127.0.0.1:7547/", "ACS URL the CPEs inform to")
	fs.StringVar(&c.acsUser, "acs-username", "", "CPE username for the ACS (shared mode)")
	fs.StringVar(&c.acsPass, "acs-password", "", "CPE password for the ACS")
	fs.Float64Var(&c.tr098Share, "tr098-share", 0.5, "fraction of CPEs on the TR-098 (InternetGatewayDevice.) data model")
	fs.StringVar(&c.dataModels, "datamodels", "testdata/datamodel", "directory holding tr181.json and tr098.json")
	fs.DurationVar(&c.periodic, "periodic", 5*time.Minute, "periodic inform interval of the CPEs")
	fs.IntVar(&c.uspMQTT, "usp-mqtt", 0, "number of USP agents over MQTT")
	fs.StringVar(&c.mqtt, "mqtt", "127.0.0.1:1883", "MQTT broker host:port")
	fs.StringVar(&c.mqttTopic, "mqtt-topic", "", "controller topic (default usp/controller/<controller id>)")
	fs.IntVar(&c.uspSTOMP, "usp-stomp", 0, "number of USP agents over STOMP")
	fs.StringVar(&c.stomp, "stomp", "127.0.0.1:61613", "STOMP broker host:port")
	fs.StringVar(&c.stompDest, "stomp-destination", "/queue/usp.controller", "controller destination")
	fs.IntVar(&c.uspWS, "usp-ws", 0, "number of USP agents over WebSocket")
	fs.StringVar(&c.ws, "ws", "ws://127.0.0.1:8081/usp", "controller WebSocket URL")
	fs.StringVar(&c.enrolmentKey, "usp-enrolment-key", "", "enrolment key (POST /api/v1/usp/enrolment-keys) the USP agents derive their passwords from: MQTT password, STOMP passcode, WebSocket bearer token")
	fs.StringVar(&c.brokerCA, "usp-tls-ca", "", "PEM CA file: connect to the MQTT and STOMP brokers over TLS (MQTTS, STOMP over TLS) and to wss:// trusting it")
	fs.StringVar(&c.controllerID, "controller-id", "self::duet-controller", "the controller's USP endpoint ID")
	fs.StringVar(&c.prefix, "prefix", "SIM", "serial number prefix, to run several simulators side by side")
	fs.DurationVar(&c.duration, "duration", 0, "stop after this long (0: until Ctrl-C)")
	fs.DurationVar(&c.report, "report", 10*time.Second, "how often to print progress")
	fs.IntVar(&c.sessions, "sessions", 1000, "CWMP sessions in flight at once, at most (each one ACS connection)")
	fs.IntVar(&c.uspParallel, "usp-parallel", 8, "USP agent connections being opened at once")
	fs.BoolVar(&c.connReq, "connreq", true, "give each CPE a connection-request listener (one file descriptor each; false for fleets past the open-file limit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.cwmp+c.uspMQTT+c.uspSTOMP+c.uspWS == 0 {
		fs.Usage()
		return errors.New("nothing to simulate: give --cwmp and/or --usp-mqtt/--usp-stomp/--usp-ws")
	}
	if c.tr098Share < 0 || c.tr098Share > 1 {
		return fmt.Errorf("--tr098-share %v is not between 0 and 1", c.tr098Share)
	}
	if c.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.duration)
		defer cancel()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	start := time.Now()
	counters := &cwmpCounters{}
	uspErrors := &errorCounter{log: log}
	uspReady := &readyRate{}

	var fleets []*cpe.Fleet
	sched := cpe.NewScheduler(c.sessions)
	if c.cwmp > 0 {
		n098 := int(float64(c.cwmp)*c.tr098Share + 0.5)
		for _, part := range []struct {
			n     int
			file  string
			class string
		}{{c.cwmp - n098, "tr181.json", "SIM181"}, {n098, "tr098.json", "SIM098"}} {
			if part.n == 0 {
				continue
			}
			f, err := cpe.NewFleet(cpe.FleetOptions{N: part.n, SerialPrefix: c.prefix + part.class, Template: cpe.Options{
				ACSURL: c.acs, DataModelPath: filepath.Join(c.dataModels, part.file), ProductClass: part.class,
				Username: c.acsUser, Password: c.acsPass, PeriodicInterval: c.periodic, Logger: log,
				DisableConnReq: !c.connReq, SessionObserver: counters.observe, Scheduler: sched,
			}})
			if err != nil {
				return err
			}
			if err := f.Start(ctx); err != nil {
				return err
			}
			closers = append(closers, f.Stop)
			fleets = append(fleets, f)
		}
		fmt.Fprintf(out, "started %d CWMP CPEs (%d TR-098) against %s in %s\n", c.cwmp, n098, c.acs, time.Since(start).Round(time.Millisecond))
	}

	topic := c.mqttTopic
	if topic == "" {
		topic = "usp/controller/" + c.controllerID
	}
	uspConfig := func(kind string) func(int) agent.Config {
		return func(i int) agent.Config {
			return agent.Config{SerialNumber: fmt.Sprintf("%s%s%06d", c.prefix, kind, i+1), ControllerID: c.controllerID}
		}
	}
	var agentFleets []*agent.Fleet
	// Each agent's login: its endpoint ID and the password the enrolment
	// key gives it (docs/guide-usp.md, securing USP).
	login := func(a *agent.Agent) (user, pass string) {
		if c.enrolmentKey == "" {
			return "", ""
		}
		return a.EndpointID(), usp.EnrolmentPassword(c.enrolmentKey, a.EndpointID())
	}
	var tlsCfg *tls.Config
	if c.brokerCA != "" {
		pem, err := os.ReadFile(c.brokerCA)
		pool := x509.NewCertPool()
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--usp-tls-ca %s: no PEM certificate (%v)", c.brokerCA, err)
		}
		tlsCfg = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	for _, tr := range []struct {
		name string
		n    int
		dial agent.DialFunc
	}{
		{"MQTT", c.uspMQTT, func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			user, pass := login(a)
			return agent.DialMQTT(ctx, a, agent.MQTTConfig{Broker: c.mqtt, ControllerTopic: topic, AgentTopic: "usp/agent/" + a.EndpointID(),
				Username: user, Password: pass, TLS: tlsCfg})
		}},
		{"STOMP", c.uspSTOMP, func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			user, pass := login(a)
			return agent.DialSTOMP(ctx, a, agent.STOMPConfig{Server: c.stomp, Destination: "/queue/agent-" + a.EndpointID(), ControllerDestination: c.stompDest,
				Login: user, Passcode: pass, TLS: tlsCfg})
		}},
		{"WS", c.uspWS, func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			_, token := login(a)
			wc := agent.WebSocketConfig{URL: c.ws, Token: token}
			if tlsCfg != nil {
				wc.Dialer = &websocket.Dialer{TLSClientConfig: tlsCfg, HandshakeTimeout: 30 * time.Second}
			}
			return agent.DialWebSocket(ctx, a, wc)
		}},
	} {
		if tr.n == 0 {
			continue
		}
		f, err := agent.ConnectFleet(ctx, agent.FleetOptions{N: tr.n, Config: uspConfig(tr.name), Dial: tr.dial,
			Parallel: c.uspParallel, OnError: uspErrors.record})
		if err != nil {
			return fmt.Errorf("%s agents: %w", tr.name, err)
		}
		closers = append(closers, func() { _ = f.Close() })
		agentFleets = append(agentFleets, f)
		go func(name string, n int) {
			select {
			case <-f.Ready():
				el := time.Since(start)
				uspReady.add(n, el)
				fmt.Fprintf(out, "connected %d USP agents over %s in %s (%.0f/s)\n", n, name, el.Round(time.Millisecond), float64(n)/el.Seconds())
			case <-ctx.Done():
			}
		}(tr.name, tr.n)
	}

	uspAgents := c.uspMQTT + c.uspSTOMP + c.uspWS
	uspConnected := func() (n int) {
		for _, f := range agentFleets {
			n += f.Connected()
		}
		return n
	}
	ticker := time.NewTicker(c.report)
	defer ticker.Stop()
	// The first interval starts with the simulator: the CPEs were
	// informing while the rest started.
	lastSessions, lastLat, lastAt := uint64(0), histogram{}, start
	cpesUp := func() int64 {
		var up int64
		for _, f := range fleets {
			for _, p := range f.CPEs() {
				if p.Stats().Sessions > 0 {
					up++
				}
			}
		}
		return up
	}
	report := func() {
		now := time.Now()
		sessions := counters.sessions.Load()
		lat := counters.lat.snapshot()
		iv := lat.since(lastLat)
		dt := now.Sub(lastAt).Seconds()
		fmt.Fprintf(out, "%s  up: cwmp %d/%d usp %d/%d | sessions %d (%.1f/s) errors %d | session p50 %.1f p95 %.1f p99 %.1f ms | usp connect errors %d%s | rss %d MB | load %s\n",
			time.Since(start).Round(time.Second), cpesUp(), c.cwmp, uspConnected(), uspAgents, sessions,
			float64(sessions-lastSessions)/dt, counters.errors.Load(), iv.percentile(50), iv.percentile(95), iv.percentile(99),
			uspErrors.n.Load(), uspErrors.last(), rssKB()/1024, loadAverage())
		lastSessions, lastLat, lastAt = sessions, lat, now
	}
	final := func() {
		var s cpe.Stats
		for _, f := range fleets {
			fs := f.Stats()
			s.Informs += fs.Informs
			s.RPCs += fs.RPCs
		}
		boots := 0
		for _, f := range agentFleets {
			for _, a := range f.Agents() {
				boots += a.Boots()
			}
		}
		lat := counters.lat.snapshot()
		el := time.Since(start).Seconds()
		sum := summary{Seconds: math.Round(el*10) / 10, CWMPCPEs: c.cwmp, CWMPUp: cpesUp(), Sessions: counters.sessions.Load(),
			SessionsPerSec: math.Round(float64(counters.sessions.Load())/el*10) / 10, SessionErrors: counters.errors.Load(),
			Informs: s.Informs, RPCs: s.RPCs, LatencyP50ms: lat.percentile(50), LatencyP95ms: lat.percentile(95), LatencyP99ms: lat.percentile(99),
			USPAgents: uspAgents, USPConnected: uspConnected(), USPConnectPerS: uspReady.rate(), USPConnectErrors: uspErrors.n.Load(),
			USPBoots: boots, RSSMB: rssKB() / 1024}
		if devices := int64(c.cwmp + uspAgents); devices > 0 {
			sum.KBPerDevice = math.Round(float64(rssKB())/float64(devices)*10) / 10
		}
		if l, err := strconv.ParseFloat(strings.Fields(loadAverage() + " x")[0], 64); err == nil {
			sum.LoadAverage1Min = &l
		}
		b, _ := json.Marshal(sum)
		fmt.Fprintln(out, string(b))
	}
	for {
		select {
		case <-ctx.Done():
			report()
			final()
			return nil
		case <-ticker.C:
			report()
		}
	}
}

// observe counts one CPE session (cpe.Options.SessionObserver).
func (cc *cwmpCounters) observe(took time.Duration, err error) {
	if err != nil {
		cc.errors.Add(1)
		return
	}
	cc.sessions.Add(1)
	cc.lat.add(took)
}

// loadAverage is the machine's 1, 5 and 15 minute load averages, or "?"
// where /proc/loadavg does not exist.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
