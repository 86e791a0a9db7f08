package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startCluster runs three clustered nats-servers with JetStream in the
// test process and returns a client URL.
func startCluster(t *testing.T) string {
	t.Helper()
	ports := []int{freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))})
	}
	var srvs []*server.Server
	for i, p := range ports {
		s, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: t.TempDir(),
			Cluster: server.ClusterOpts{Name: "duet-test", Host: "127.0.0.1", Port: p},
			Routes:  routes, NoLog: true, NoSigs: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		t.Cleanup(s.Shutdown)
		srvs = append(srvs, s)
	}
	for _, s := range srvs {
		if !s.ReadyForConnections(30 * time.Second) {
			t.Fatal("cluster node not ready")
		}
	}
	// JetStream needs a meta leader before streams can be made.
	bustest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		for _, s := range srvs {
			if s.JetStreamIsLeader() {
				return nil
			}
		}
		return fmt.Errorf("no JetStream meta leader yet")
	})
	return srvs[0].ClientURL()
}

// With DUET_NATS_REPLICAS=3 on a three-node cluster, Duet's streams are
// kept on all three nodes.
func TestNATSReplicasOnCluster(t *testing.T) {
	natsURL := startCluster(t)
	env := map[string]string{
		"DUET_DATABASE_URL":  storetest.NewDatabase(t),
		"DUET_HTTP_ADDR":     "127.0.0.1:0",
		"DUET_NATS_URL":      natsURL,
		"DUET_NATS_REPLICAS": "3",
		"DUET_ONLY":          "controller",
		"DUET_DATA_DIR":      t.TempDir(), // the bus seal key
	}
	var out syncBuf
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{}, 1)
	m := &Main{Stdout: &out, Stderr: &out, Getenv: envOf(env), Ready: func(Listeners) { ready <- struct{}{} }}
	done := make(chan int, 1)
	go func() { done <- m.Run(ctx, []string{"serve"}) }()
	select {
	case <-ready:
	case code := <-done:
		t.Fatalf("serve exited %d: %s", code, out.String())
	case <-time.After(120 * time.Second):
		t.Fatalf("serve not up: %s", out.String())
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{bus.EventStream, bus.PolicyStream, bus.DeadLetterStream} {
		st, err := js.Stream(context.Background(), name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		info, err := st.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("%s: replicas %d, cluster %+v", name, info.Config.Replicas, info.Cluster)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
}
