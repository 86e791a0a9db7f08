package store_test

import (
	"context"
	"fmt"
	"io/fs"
	"sync"
	"testing"
	"time"

	"github.com/duet-dm/duet/migrations"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func TestConcurrentMigrate(t *testing.T) {
	url := storetest.NewDatabase(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	applied := make([]int, 4)
	errs := make([]error, 4)
	for i := range applied {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := store.Open(ctx, store.Options{URL: url})
			if err != nil {
				errs[i] = err
				return
			}
			defer s.Close()
			applied[i], errs[i] = s.Migrate(ctx)
		}()
	}
	wg.Wait()
	total := 0
	for i := range applied {
		if errs[i] != nil {
			t.Fatalf("migrate %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	// Versions need not be contiguous (0020 follows 0003), so count files.
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	if total != len(files) {
		t.Fatalf("migrations applied %d times in total, want each once (%d)", total, len(files))
	}
	s, err := store.Open(ctx, store.Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.SchemaVersion(ctx); err != nil || v != store.LatestMigration() {
		t.Fatalf("schema version %d, %v", v, err)
	}
}

func obs(id string, at time.Time, kind string, online bool, mut func(*devicemodel.Device)) store.Observation {
	d := devicemodel.Device{ID: id, Protocol: devicemodel.ProtocolCWMP}
	if mut != nil {
		mut(&d)
	}
	return store.Observation{EventID: fmt.Sprintf("%s-%s-%d", id, kind, at.UnixNano()), Kind: kind, Time: at,
		Payload: []byte(kind), Device: d, Online: online}
}

func TestApplyObservationsIsIdempotentAndOrdered(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const id = "00D09E-ONT-SN1"
	first := []store.Observation{
		obs(id, t0, "inform", true, func(d *devicemodel.Device) {
			d.Manufacturer, d.OUI, d.SoftwareVersion, d.Address = "Acme", "00D09E", "1.0", "10.0.0.1:7547"
		}),
		obs(id, t0.Add(time.Minute), "periodic", true, nil),
	}
	if err := s.ApplyObservations(ctx, first); err != nil {
		t.Fatal(err)
	}
	// Newer facts, then an offline, in one batch, given out of order.
	second := []store.Observation{
		obs(id, t0.Add(3*time.Minute), "offline", false, nil),
		obs(id, t0.Add(2*time.Minute), "inform", true, func(d *devicemodel.Device) { d.SoftwareVersion = "2.0" }),
	}
	if err := s.ApplyObservations(ctx, second); err != nil {
		t.Fatal(err)
	}
	want, err := s.FindDeviceByID(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if want.SoftwareVersion != "2.0" || want.Manufacturer != "Acme" || want.Online || !want.FirstSeen.Equal(t0) ||
		!want.LastSeen.Equal(t0.Add(3*time.Minute)) || want.Address != "10.0.0.1:7547" {
		t.Fatalf("merged device wrong: %+v", want)
	}
	// Replaying everything (redelivery after a crash) changes nothing.
	if err := s.ApplyObservations(ctx, append(first, second...)); err != nil {
		t.Fatal(err)
	}
	got, _ := s.FindDeviceByID(ctx, id)
	if got != want {
		t.Fatalf("replay changed the device:\n got %+v\nwant %+v", got, want)
	}
	if n, _ := s.CountDeviceEvents(ctx, id); n != 4 {
		t.Fatalf("%d events stored, want 4", n)
	}
}

func TestFindDevicesFiltersAndPages(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	var batch []store.Observation
	for i := 0; i < 25; i++ {
		o := obs(fmt.Sprintf("dev-%02d", i), t0, "inform", i%2 == 0, func(d *devicemodel.Device) {
			d.Manufacturer = []string{"Acme", "Zyx"}[i%2]
			d.SoftwareVersion = "1.0"
		})
		if i >= 20 {
			o.Device.Protocol = devicemodel.ProtocolUSP
		}
		batch = append(batch, o)
	}
	if err := s.ApplyObservations(ctx, batch); err != nil {
		t.Fatal(err)
	}
	var all []string
	cursor := ""
	for pages := 0; ; pages++ {
		devs, next, err := s.FindDevices(ctx, store.DeviceFilter{Limit: 10, After: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range devs {
			all = append(all, d.ID)
		}
		if next == "" {
			break
		}
		if cursor, err = store.DecodeCursor(next); err != nil {
			t.Fatal(err)
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
	}
	if len(all) != 25 || all[0] != "dev-00" || all[24] != "dev-24" {
		t.Fatalf("paged %d devices: %v", len(all), all)
	}
	on := true
	devs, _, err := s.FindDevices(ctx, store.DeviceFilter{Online: &on, Manufacturer: "Acme", Protocol: devicemodel.ProtocolCWMP})
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 10 {
		t.Fatalf("online Acme CWMP devices: %d, want 10", len(devs))
	}
	if _, err := s.FindDeviceByID(ctx, "nope"); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("missing device: %v", err)
	}
}

func TestTokens(t *testing.T) {
	s, _ := storetest.Open(t)
	ctx := context.Background()
	// First start, nothing configured: one admin token is created, once.
	secret, err := s.EnsureAdminToken(ctx, "")
	if err != nil || secret == "" {
		t.Fatalf("first start: %q %v", secret, err)
	}
	if again, err := s.EnsureAdminToken(ctx, ""); err != nil || again != "" {
		t.Fatalf("second start created another token: %q %v", again, err)
	}
	tok, err := s.FindTokenBySecret(ctx, secret)
	if err != nil || tok.Role != store.RoleAdmin {
		t.Fatalf("find: %+v %v", tok, err)
	}
	// The secret is not stored, only its hash.
	var n int
	if err := s.Pool().QueryRow(ctx, "SELECT count(*) FROM api_tokens WHERE position(convert_to($1, 'UTF8') in hash) > 0 OR name = $1", secret).Scan(&n); err != nil || n != 0 {
		t.Fatalf("secret found in the table (%d, %v)", n, err)
	}
	// A configured token is added beside it, once.
	conf := "configured-token-0123456789abcdef"
	for i := 0; i < 2; i++ {
		if got, err := s.EnsureAdminToken(ctx, conf); err != nil || got != "" {
			t.Fatalf("configured: %q %v", got, err)
		}
	}
	if _, err := s.EnsureAdminToken(ctx, "short"); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Fatalf("short configured token: %v", err)
	}
	v, vs, err := s.CreateToken(ctx, "ci", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	list, err := s.ListTokens(ctx)
	if err != nil || len(list) != 3 {
		t.Fatalf("list: %d %v", len(list), err)
	}
	if err := s.RevokeToken(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindTokenBySecret(ctx, vs); devicemodel.ErrorCode(err) != devicemodel.CodeUnauthenticated {
		t.Fatalf("revoked token still accepted: %v", err)
	}
	// Configuration does not undo a revocation.
	ct, _ := s.FindTokenBySecret(ctx, conf)
	if err := s.RevokeToken(ctx, ct.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EnsureAdminToken(ctx, conf); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindTokenBySecret(ctx, conf); devicemodel.ErrorCode(err) != devicemodel.CodeUnauthenticated {
		t.Fatalf("revoked configured token came back: %v", err)
	}
	if err := s.RevokeToken(ctx, "tok_nope"); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("revoke unknown: %v", err)
	}
	if _, _, err := s.CreateToken(ctx, "x", "root"); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Fatalf("bad role: %v", err)
	}
}
