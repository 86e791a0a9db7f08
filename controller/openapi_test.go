package controller

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/duet-dm/duet/controller/files"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestOpenAPIMatchesRoutes: every registered route is documented and every
// documented operation is registered.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	st, _ := storetest.Open(t)
	// Tasks enabled, so their routes are registered too.
	a := NewAPI(APIOptions{Store: st, Tasks: &TaskQueue{}, Files: &files.Repository{}})
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatalf("openapi.json is not valid JSON: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	registered := map[string]bool{}
	for _, p := range a.patterns {
		registered[p] = true
	}
	var missing, extra []string
	for p := range registered {
		if !documented[p] {
			missing = append(missing, p)
		}
	}
	for p := range documented {
		if !registered[p] {
			extra = append(extra, p)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Fatalf("openapi.json out of step with the routes:\n  not documented: %v\n  documented, no route: %v", missing, extra)
	}
	if len(registered) < 20 {
		t.Fatalf("only %d routes registered; the check is not seeing the API", len(registered))
	}
}

func TestOpenAPIServed(t *testing.T) {
	st, _ := storetest.Open(t)
	_, tok, err := st.CreateToken(t.Context(), "viewer", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewAPI(APIOptions{Store: st}))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/openapi.json", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/json" || !json.Valid(body) {
		t.Fatalf("%d %s valid=%v", res.StatusCode, res.Header.Get("Content-Type"), json.Valid(body))
	}
}
