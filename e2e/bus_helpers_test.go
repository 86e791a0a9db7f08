package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duet-dm/duet/pkg/bus"
)

// The embedded bus of a harness-started duet is closed (docs/bus.md, "Who
// may do what"): tests that play a part on it connect with the NKey of the
// controller role and the seal key from the duet's data directory.

// busKey is the seed file of role in the data directory of env.
func busKey(env map[string]string, r bus.Role) string {
	return filepath.Join(env["DUET_DATA_DIR"], "bus", string(r)+".nk")
}

// embeddedBusURL is the URL of the embedded NATS of a duet started with env.
func embeddedBusURL(env map[string]string) string {
	return "nats://127.0.0.1:" + env["DUET_NATS_PORT"]
}

// connectEmbeddedBus connects a Bus to the embedded NATS of a duet started
// with env, as its controller does; closed when the test ends.
func connectEmbeddedBus(t testing.TB, env map[string]string) *bus.Bus {
	t.Helper()
	seal, err := bus.LoadOrCreateSealKey(filepath.Join(env["DUET_DATA_DIR"], "bus", "seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bus.Connect(ctx, bus.Options{URL: embeddedBusURL(env), Name: t.Name(), CredentialsFile: busKey(env, bus.RoleController),
		SealKey: seal, DefaultTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("connect to the embedded bus: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// natsConnect is nats.Connect to the embedded NATS of a duet started with
// env, with the controller's NKey.
func natsConnect(env map[string]string) (*nats.Conn, error) {
	key, err := nats.NkeyOptionFromSeed(busKey(env, bus.RoleController))
	if err != nil {
		return nil, err
	}
	return nats.Connect(embeddedBusURL(env), key, nats.Timeout(30*time.Second))
}

// controllerConsumer is the controller's consumer of DUET_EVENTS
// ("duet-controller-<installation id>").
func controllerConsumer(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, error) {
	s, err := js.Stream(ctx, bus.EventStream)
	if err != nil {
		return nil, err
	}
	names := s.ConsumerNames(ctx)
	for n := range names.Name() {
		if strings.HasPrefix(n, "duet-controller-") {
			return s.Consumer(ctx, n)
		}
	}
	if err := names.Err(); err != nil {
		return nil, err
	}
	return nil, jetstream.ErrConsumerNotFound
}
