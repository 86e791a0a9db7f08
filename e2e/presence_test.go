package e2e

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// needBroker makes sure the machine's broker at addr runs, starting it with
// start when it is down (docs/testing.md; never skip).
func needBroker(t *testing.T, addr string, start ...string) {
	t.Helper()
	up := func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err
	}
	if up() == nil {
		return
	}
	if out, err := exec.Command(start[0], start[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("start %v: %v: %s", start, err, out)
	}
	bustest.CheckFor(t, 60*time.Second, 200*time.Millisecond, up)
}

// TestUSPAgentOnBrokerSurvivesRestart: an agent stays connected to an
// external broker (Mosquitto over MQTT, RabbitMQ over STOMP) while `duet
// serve` restarts. Before issue 11 §2 nothing served it afterwards: a task
// stayed queued (nobody serves duet.cmd.usp.<id>), the API said online and
// duet_usp_agents_online_count said 0. Now the adapter restores its route
// from the registry and probes it; a task runs within seconds.
func TestUSPAgentOnBrokerSurvivesRestart(t *testing.T) {
	cases := []struct {
		name  string
		setup func(env map[string]string) func(ctx context.Context, a *agent.Agent) (*agent.Client, error)
	}{
		{"mosquitto", func(env map[string]string) func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			needBroker(t, "127.0.0.1:1883", "mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf")
			env["DUET_MQTT_URL"] = "mqtt://127.0.0.1:1883"
			// A unique topic, so parallel runs on the shared broker stay apart.
			env["DUET_MQTT_TOPIC"] = "duet-e2e/" + bus.NewID()[:8]
			return func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
				return agent.DialMQTT(ctx, a, agent.MQTTConfig{Broker: "127.0.0.1:1883", ControllerTopic: env["DUET_MQTT_TOPIC"],
					AgentTopic: "duet-e2e/agent/" + bus.NewID()[:8]})
			}
		}},
		{"rabbitmq", func(env map[string]string) func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			needBroker(t, "127.0.0.1:61613", "rabbitmq-server", "-detached")
			env["DUET_STOMP_ADDR"] = "127.0.0.1:61613"
			env["DUET_STOMP_LOGIN"], env["DUET_STOMP_PASSCODE"] = "guest", "guest"
			// /topic/: auto-delete queues, nothing left on the shared broker.
			env["DUET_STOMP_DESTINATION"] = "/topic/duet-e2e-" + bus.NewID()[:8]
			return func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
				return agent.DialSTOMP(ctx, a, agent.STOMPConfig{Server: "127.0.0.1:61613", Login: "guest", Passcode: "guest",
					Destination: "/topic/duet-e2e-agent-" + bus.NewID()[:8], ControllerDestination: env["DUET_STOMP_DESTINATION"]})
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := baseEnv(t, storetest.NewDatabase(t))
			dial := tc.setup(env)
			d := startDuet(t, env, "serve")
			d.waitReady(30 * time.Second)
			a, err := agent.New(agent.Config{SerialNumber: "RESTART" + strings.ToUpper(tc.name[:4]), ControllerID: tasksControllerEID})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			c, err := dial(ctx, a)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close(); _ = a.Close() })
			dev := a.EndpointID()
			d.waitOnline(dev, true)
			d.runTask(dev, `{"operation":"get","paths":["Device.DeviceInfo.SoftwareVersion"]}`)

			d.signal(syscall.SIGTERM)
			if code := d.wait(30 * time.Second); code != 0 {
				t.Fatalf("exit %d", code)
			}
			connects := c.Connects()
			d2 := startDuet(t, env, "serve")
			d2.waitReady(30 * time.Second)
			start := time.Now()
			got := d2.runTask(dev, `{"operation":"get","paths":["Device.DeviceInfo.SoftwareVersion"]}`)
			if !strings.Contains(string(got.Result), "1.0.0") {
				t.Fatalf("get after restart: %s", got.Result)
			}
			t.Logf("task after restart succeeded in %s", time.Since(start).Round(time.Millisecond))
			if c.Connects() != connects {
				t.Fatalf("the agent reconnected (%d -> %d connects): the test must keep it connected", connects, c.Connects())
			}
			// Presence and the metric agree.
			d2.waitOnline(dev, true)
			bustest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
				if v := d2.metric("duet_usp_agents_online_count"); v != 1 {
					return fmt.Errorf("duet_usp_agents_online_count %v", v)
				}
				return nil
			})
			if code, body := d2.get("/api/v1/devices/" + url.PathEscape(dev)); code != 200 || !strings.Contains(body, `"online":true`) {
				t.Fatalf("device after restart: %d %s", code, body)
			}
		})
	}
}

// TestCWMPDevicesGoOfflineWhenTheyStopInforming: CPEs (TR-181 and TR-098)
// told to inform every second stop informing and go offline within
// PeriodicInformInterval × DUET_CWMP_OFFLINE_TOLERANCE + grace, with an
// offline event (reason inform_overdue) in their history; one that keeps
// informing stays online. Before issue 11 §3 they stayed online forever.
// The interval is learned from the parameter cache (the set task's
// values); the default for an unknown interval is an hour here, so only a
// learned interval can take them offline in time.
func TestCWMPDevicesGoOfflineWhenTheyStopInforming(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	env["DUET_CWMP_OFFLINE_TOLERANCE"] = "2"
	env["DUET_CWMP_OFFLINE_GRACE"] = "1s"
	env["DUET_CWMP_OFFLINE_AFTER"] = "1h"
	env["DUET_CWMP_OFFLINE_SWEEP"] = "200ms"
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"
	type dev struct {
		c    *cpe.CPE
		id   string
		root string
	}
	var devs []dev
	for i, m := range []struct{ path, root string }{
		{cwmpModels[0].path, "Device."}, {cwmpModels[1].path, "InternetGatewayDevice."}, {cwmpModels[0].path, "Device."},
	} {
		c, err := cpe.New(cpe.Options{ACSURL: acs, DataModelPath: m.path, OUI: "00D09E", ProductClass: "PRES",
			Serial: fmt.Sprintf("PRESENCE%d", i), RetryMinWait: 200 * time.Millisecond, Bootstrapped: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		devs = append(devs, dev{c: c, id: c.DeviceID(), root: m.root})
	}
	for _, dv := range devs {
		d.waitDevice(dv.id)
		ms := dv.root + "ManagementServer."
		d.runTask(dv.id, `{"operation":"set","params":[{"path":"`+ms+`PeriodicInformEnable","value":"true","type":"boolean"},{"path":"`+ms+`PeriodicInformInterval","value":"1","type":"unsignedInt"}]}`)
	}
	stopped, keeps := devs[:2], devs[2]
	for _, dv := range stopped {
		_ = dv.c.Close()
	}
	start := time.Now()
	for _, dv := range stopped {
		d.waitOnline(dv.id, false)
	}
	t.Logf("offline %s after the CPEs stopped (interval 1 s, tolerance 2, grace 1 s)", time.Since(start).Round(time.Millisecond))
	for _, dv := range stopped {
		code, body := d.get("/api/v1/devices/" + url.PathEscape(dv.id) + "/events?type=offline")
		if code != 200 || !strings.Contains(body, "inform_overdue") {
			t.Fatalf("history of %s: %d %s", dv.id, code, body)
		}
	}
	if code, body := d.get("/api/v1/devices/" + url.PathEscape(keeps.id)); code != 200 || !strings.Contains(body, `"online":true`) {
		t.Fatalf("a CPE that keeps informing: %d %s", code, body)
	}
	code, body := d.get("/api/v1/devices?protocol=cwmp&online=true")
	if code != 200 || !strings.Contains(body, keeps.id) || strings.Contains(body, stopped[0].id) || strings.Contains(body, stopped[1].id) {
		t.Fatalf("?online=true: %d %s", code, body)
	}
}
