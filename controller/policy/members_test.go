package policy_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// seed stores n devices through the registry's own write path: every
// third is a Huawei, every other one online, and device 5 is tagged.
func seed(t *testing.T, s *store.Store, n int) {
	t.Helper()
	ctx := context.Background()
	at := time.Now().Add(-time.Minute)
	var batch []store.Observation
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("dev-%03d", i)
		d := devicemodel.Device{ID: id, Protocol: devicemodel.ProtocolCWMP, Manufacturer: "ZTE", SerialNumber: fmt.Sprintf("SN%03d", i)}
		if i%3 == 0 {
			d.Manufacturer = "Huawei"
		}
		batch = append(batch, store.Observation{EventID: id + "-boot", Kind: "inform", Time: at, Payload: []byte{}, Device: d, Online: i%2 == 0})
	}
	if err := s.ApplyObservations(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDeviceTags(ctx, "dev-005", []string{"lab"}); err != nil {
		t.Fatal(err)
	}
}

// collect pages through a group with the given page size and budget.
func collect(t *testing.T, s *store.Store, src string, limit, budget int) (ids []string, pages, unevaluable int) {
	t.Helper()
	f, err := policy.CompileFilter(src)
	if err != nil {
		t.Fatal(err)
	}
	cursor := ""
	for {
		p, err := policy.MembersWithBudget(context.Background(), s, f, cursor, limit, budget)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.IDs) > limit || p.Scanned > budget {
			t.Fatalf("page of %d IDs after scanning %d; limit %d, budget %d", len(p.IDs), p.Scanned, limit, budget)
		}
		ids = append(ids, p.IDs...)
		unevaluable += p.Unevaluable
		pages++
		if pages > 1000 {
			t.Fatal("paging does not terminate")
		}
		if p.Next == "" {
			return ids, pages, unevaluable
		}
		cursor = p.Next
	}
}

func TestMembersPaging(t *testing.T) {
	s, _ := storetest.Open(t)
	seed(t, s, 40)
	var want []string
	for i := 0; i < 40; i++ {
		if i%3 == 0 && i%2 == 0 {
			want = append(want, fmt.Sprintf("dev-%03d", i))
		}
	}
	src := `manufacturer == "Huawei" && online`
	for _, c := range []struct{ limit, budget int }{{1000, 50_000}, {3, 50_000}, {1, 50_000}, {2, 5}, {100, 1}} {
		got, _, _ := collect(t, s, src, c.limit, c.budget)
		if !slices.Equal(got, want) {
			t.Errorf("limit %d budget %d: %v, want %v", c.limit, c.budget, got, want)
		}
	}
	// A filter matching nothing still ends, in budget-sized steps.
	got, pages, _ := collect(t, s, `serial_number == "none"`, 10, 7)
	if len(got) != 0 || pages != 6 {
		t.Errorf("empty group: %v in %d pages, want none in 6", got, pages)
	}
	if got, _, _ := collect(t, s, `"lab" in tags`, 10, 100); !slices.Equal(got, []string{"dev-005"}) {
		t.Errorf("tags: %v", got)
	}
	if got, _, _ := collect(t, s, `now - last_seen < duration("1h") && serial_number == "SN007"`, 10, 100); !slices.Equal(got, []string{"dev-007"}) {
		t.Errorf("last_seen: %v", got)
	}
	// No parameter cached: every device is unevaluable, none match.
	if got, _, unev := collect(t, s, `params["Device.DeviceInfo.ModelName"] == "x"`, 10, 100); len(got) != 0 || unev != 40 {
		t.Errorf("params: %v, %d unevaluable", got, unev)
	}
}

func TestMembersFollowsRegistryChanges(t *testing.T) {
	s, _ := storetest.Open(t)
	seed(t, s, 6)
	g := store.Group{Name: "lab", Filter: `"lab" in tags || manufacturer == "Nokia"`}
	ctx := context.Background()
	page, err := policy.Members(ctx, s, g, "", 100)
	if err != nil || !slices.Equal(page.IDs, []string{"dev-005"}) || page.Next != "" || page.Scanned != 6 {
		t.Fatalf("%+v %v", page, err)
	}
	if err := s.SetDeviceTags(ctx, "dev-005", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyObservations(ctx, []store.Observation{{EventID: "e2", Kind: "inform", Time: time.Now(), Payload: []byte{},
		Device: devicemodel.Device{ID: "dev-001", Protocol: devicemodel.ProtocolCWMP, Manufacturer: "Nokia"}, Online: true}}); err != nil {
		t.Fatal(err)
	}
	page, err = policy.Members(ctx, s, g, "", 100)
	if err != nil || !slices.Equal(page.IDs, []string{"dev-001"}) {
		t.Fatalf("after changes: %+v %v", page, err)
	}
	if _, err := policy.Members(ctx, s, g, "%%%", 100); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Fatalf("bad cursor: %v", err)
	}
	if _, err := policy.Members(ctx, s, store.Group{Filter: "oops("}, "", 100); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Fatalf("bad filter: %v", err)
	}
}

// BenchmarkMembership100k computes a group's full membership over 100k
// seeded devices per iteration (ns/op) and reports devices evaluated per
// second, store paging included. "facts" has manufacturer and online
// pushed down to SQL, so it evaluates only the Huawei online third.
func BenchmarkMembership100k(b *testing.B) {
	s, _ := storetest.Open(b)
	ctx := context.Background()
	const n = 100_000
	// One statement, not 100k round trips.
	if _, err := s.Pool().Exec(ctx, `INSERT INTO devices (id, protocol, manufacturer, oui, product_class, serial_number,
		software_version, first_seen, last_seen, online, online_changed_at, facts_updated_at)
		SELECT format('00D09E-HG8245-SN%s', lpad(i::text, 6, '0')), CASE WHEN i % 10 = 0 THEN 'usp' ELSE 'cwmp' END,
			CASE WHEN i % 3 = 0 THEN 'Huawei' ELSE 'ZTE' END, '00D09E', 'HG8245', format('SN%s', lpad(i::text, 6, '0')),
			CASE WHEN i % 4 = 0 THEN 'V3R017' ELSE 'V3R018' END, now(), now() - (i % 120) * interval '1 minute',
			i % 2 = 0, now(), now()
		FROM generate_series(1, $1) AS i`, n); err != nil {
		b.Fatal(err)
	}
	if _, err := s.Pool().Exec(ctx, `INSERT INTO device_tags (device_id, tag)
		SELECT id, 'north' FROM devices WHERE right(id, 1) IN ('1', '2')`); err != nil {
		b.Fatal(err)
	}
	// Autovacuum would analyze a table this size soon after; without
	// statistics the planner may sort the whole table for every page.
	if _, err := s.Pool().Exec(ctx, `ANALYZE devices, device_tags`); err != nil {
		b.Fatal(err)
	}
	// Every device has its model name cached, among 20 other parameters.
	if _, err := s.Pool().Exec(ctx, `INSERT INTO device_parameters (device_id, path, value, updated_at)
		SELECT d.id, p.path, CASE WHEN p.path = 'Device.DeviceInfo.ModelName' THEN
			CASE WHEN right(d.id, 1) = '7' THEN 'HG8245H' ELSE 'F660' END ELSE 'v' END, now()
		FROM devices d, (SELECT 'Device.DeviceInfo.ModelName' AS path UNION ALL
			SELECT format('Device.X_Test.P%s', i) FROM generate_series(1, 20) AS i) AS p`); err != nil {
		b.Fatal(err)
	}
	if _, err := s.Pool().Exec(ctx, `ANALYZE device_parameters`); err != nil {
		b.Fatal(err)
	}
	for name, src := range map[string]string{
		"facts":  `manufacturer == "Huawei" && software_version.startsWith("V3R017") && online && !("north" in tags) && now - last_seen < duration("1h")`,
		"params": `params["Device.DeviceInfo.ModelName"] == "HG8245H" && online`,
		// The facts filter wrapped so nothing is pushed to SQL: every
		// device is fetched and evaluated.
		"facts-unpushed": `[manufacturer == "Huawei" && software_version.startsWith("V3R017") && online && !("north" in tags) && now - last_seen < duration("1h")][0]`,
	} {
		b.Run(name, func(b *testing.B) {
			f, err := policy.CompileFilter(src)
			if err != nil {
				b.Fatal(err)
			}
			evaluated := 0
			for b.Loop() {
				cursor := ""
				for {
					p, err := policy.MembersWithBudget(ctx, s, f, cursor, store.MaxPageSize, n)
					if err != nil {
						b.Fatal(err)
					}
					evaluated += p.Scanned
					if p.Next == "" {
						break
					}
					cursor = p.Next
				}
			}
			b.ReportMetric(float64(evaluated)/b.Elapsed().Seconds(), "devices/s")
		})
	}
}

// TestCountMembers: the count is the members' over the whole registry,
// whatever the page size; a budget smaller than the registry gives a
// lower bound that says so.
func TestCountMembers(t *testing.T) {
	s, _ := storetest.Open(t)
	seed(t, s, 40)
	ctx := context.Background()
	f, err := policy.CompileFilter(`manufacturer == "Huawei" || params["Device.X"] == "y"`)
	if err != nil {
		t.Fatal(err)
	}
	c, err := policy.CountMembers(ctx, s, f, 1000)
	// Devices 0, 3, ..., 39 are Huawei (14); the other 26 cannot be
	// judged on a parameter never read.
	if err != nil || c != (policy.MemberCount{Members: 14, Scanned: 40, Unevaluable: 26, Complete: true}) {
		t.Fatalf("count: %+v %v", c, err)
	}
	c, err = policy.CountMembers(ctx, s, f, 10)
	if err != nil || c.Complete || c.Scanned != 10 || c.Members != 4 {
		t.Fatalf("count within a budget of 10: %+v %v", c, err)
	}
}
