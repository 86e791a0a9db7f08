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
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// needBroker makes sure the machine's broker at addr runs, starting it with
// start when it is down (services.md; never skip).
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
