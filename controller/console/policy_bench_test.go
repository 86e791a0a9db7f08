package console

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// BenchmarkConsolePolicyPages measures the server time of the group and
// policy pages on a registry of DUET_CONSOLE_BENCH_DEVICES devices
// (default 100000) with DUET_CONSOLE_BENCH_POLICY_PARAMS cached parameters
// each (default 10; the filter reads one), seeded as BenchmarkConsolePages
// does. The pages themselves (issue 13 item 5: 300 ms) and the parts they
// load after themselves, which evaluate the group's filter over the
// registry (the member count, within countBudget; a page of members; a
// page of the preview), are reported apart:
//
//	go test -run '^$' -bench ConsolePolicyPages -benchtime 10x -timeout 1h ./controller/console
func BenchmarkConsolePolicyPages(b *testing.B) {
	devices, params := envInt(b, "DUET_CONSOLE_BENCH_DEVICES", 100000), envInt(b, "DUET_CONSOLE_BENCH_POLICY_PARAMS", 10)
	st, _ := storetest.Open(b)
	ctx := context.Background()
	start := time.Now()
	seedConsoleBench(b, st, devices, params)
	b.Logf("seeded %d devices × %d parameters in %s", devices, params, time.Since(start).Round(time.Second))
	c, err := New(Options{Store: st})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	// One device in 7 is PC3; the filter reads a cached parameter of each.
	g, err := c.pol.CreateGroup(ctx, "bench", "pc3", `product_class == "PC3" && params["Device.X_Bench.P3"].startsWith("v-")`)
	if err != nil {
		b.Fatal(err)
	}
	spec := `{"parameters":[{"path":"Device.X_Bench.P3","expr":"\"w-\" + serial_number"}]}`
	p, err := c.pol.CreatePolicy(ctx, "bench", controller.PolicyInput{GroupID: g.ID, Name: "p3", Kind: "parameters", Spec: []byte(spec)})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.pol.EnablePolicy(ctx, "bench", p.ID, []byte(`{"batch_percent": 10}`)); err != nil {
		b.Fatal(err)
	}
	u, err := st.CreateUser(ctx, "bench", "bench", store.RoleOperator, "bench password long")
	if err != nil {
		b.Fatal(err)
	}
	secret, sess, err := st.CreateSession(ctx, u, "bench")
	if err != nil {
		b.Fatal(err)
	}
	preview := url.Values{"group_id": {g.ID}, "name": {"p3"}, "kind": {"parameters"}, "mode": {"json"}, "spec": {spec}}.Encode()
	for _, x := range []struct{ name, method, path, body string }{
		{"groups", "GET", "/groups", ""},
		{"group-page", "GET", "/groups/" + g.ID, ""},
		{"group-count", "GET", "/groups/" + g.ID + "/count", ""},
		{"group-members", "GET", "/groups/" + g.ID + "/members", ""},
		{"policies", "GET", "/policies", ""},
		{"policy-page", "GET", "/policies/" + p.ID, ""},
		{"rollout", "GET", "/policies/" + p.ID + "/rollout", ""},
		{"statuses", "GET", "/policies/" + p.ID + "/devices", ""},
		{"preview", "POST", "/policies/preview", preview},
	} {
		b.Run(x.name, func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				req := httptest.NewRequest(x.method, x.path, strings.NewReader(x.body))
				req.AddCookie(&http.Cookie{Name: sessionCookie, Value: secret})
				if x.method == "POST" {
					req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
					req.Header.Set("X-CSRF-Token", sess.CSRF)
					req.Header.Set("HX-Request", "true")
				}
				rec := httptest.NewRecorder()
				t0 := time.Now()
				c.ServeHTTP(rec, req)
				lat = append(lat, time.Since(t0))
				if rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), `class="error"`) {
					b.Fatalf("%s %s: %d\n%s", x.method, x.path, rec.Code, rec.Body.String())
				}
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)*95/100].Microseconds())/1000, "p95-ms")
		})
	}
}
