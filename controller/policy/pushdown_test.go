package policy_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func TestFilterPushdown(t *testing.T) {
	show := func(f store.DeviceFilter) string {
		on := "-"
		if f.Online != nil {
			on = fmt.Sprint(*f.Online)
		}
		return fmt.Sprintf("p=%s m=%s pc=%s sw=%s on=%s", f.Protocol, f.Manufacturer, f.ProductClass, f.SoftwareVersion, on)
	}
	for src, want := range map[string]string{
		`manufacturer == "Huawei"`:                                    "p= m=Huawei pc= sw= on=-",
		`"usp" == protocol && online && product_class == "HG"`:        "p=usp m= pc=HG sw= on=true",
		`!online && software_version == "1.0" && "x" in tags`:         "p= m= pc= sw=1.0 on=false",
		`manufacturer == "Huawei" || online`:                          "p= m= pc= sw= on=-",
		`!(manufacturer == "Huawei") && serial_number == "S"`:         "p= m= pc= sw= on=-",
		`[manufacturer == "Huawei"][0]`:                               "p= m= pc= sw= on=-",
		`tags.exists(online, online == "x") && manufacturer == "ZTE"`: "p= m=ZTE pc= sw= on=-",
		`manufacturer == model_name`:                                  "p= m= pc= sw= on=-",
		`(online && (manufacturer == "A")) && manufacturer == "B"`:    "p= m=B pc= sw= on=true",
	} {
		f, err := policy.CompileFilter(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if got := show(f.Pushdown()); got != want {
			t.Errorf("%s: %s, want %s", src, got, want)
		}
	}
}

// A pushed-down filter selects exactly what the same filter evaluated on
// every device does, while evaluating fewer.
func TestMembersPushdownAgreesWithFullScan(t *testing.T) {
	s, _ := storetest.Open(t)
	seed(t, s, 30)
	ctx := context.Background()
	for _, src := range []string{
		`manufacturer == "Huawei" && online`,
		`!online && manufacturer == "ZTE" && serial_number.endsWith("7")`,
		`protocol == "cwmp" && "lab" in tags`,
		`manufacturer == "Huawei" && manufacturer == "ZTE"`,
	} {
		pushed, err := policy.Members(ctx, s, store.Group{Filter: src}, "", 1000)
		if err != nil {
			t.Fatal(err)
		}
		full, err := policy.Members(ctx, s, store.Group{Filter: "[" + src + "][0]"}, "", 1000)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(pushed.IDs, full.IDs) || full.Scanned != 30 {
			t.Errorf("%s: pushed %v, full scan %v (%d scanned)", src, pushed.IDs, full.IDs, full.Scanned)
		}
		if src != `protocol == "cwmp" && "lab" in tags` && pushed.Scanned >= 30 {
			t.Errorf("%s: pushdown evaluated %d of 30 devices", src, pushed.Scanned)
		}
	}
}
