package api

import (
	"slices"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/files"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestOpenAPIMatchesRoutes: every registered route is documented and every
// documented operation is registered.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	st, _ := storetest.Open(t)
	// Tasks enabled, so their routes are registered too.
	a := New(Options{Store: st, Tasks: &controller.TaskQueue{}, Files: &files.Repository{}})
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
	srv := httptest.NewServer(New(Options{Store: st}))
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

// TestOpenAPIListsEnums: openapi.json has a schema per bus enum, named
// like it, listing exactly the names the API renders.
func TestOpenAPIListsEnums(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Type string   `json:"type"`
				Enum []string `json:"enum"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatal(err)
	}
	for _, ed := range busEnums(t) {
		s, ok := doc.Components.Schemas[string(ed.Name())]
		if !ok {
			t.Errorf("openapi.json has no schema %s", ed.Name())
			continue
		}
		if want := controller.APIEnumValues(ed); s.Type != "string" || !slices.Equal(s.Enum, want) {
			t.Errorf("schema %s: %s %v, want string %v", ed.Name(), s.Type, s.Enum, want)
		}
	}
}

// busEnums are the enums of the bus schema (package duet.v1).
func busEnums(t *testing.T) []protoreflect.EnumDescriptor {
	t.Helper()
	var out []protoreflect.EnumDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage("duet.v1", func(f protoreflect.FileDescriptor) bool {
		for i := 0; i < f.Enums().Len(); i++ {
			out = append(out, f.Enums().Get(i))
		}
		return true
	})
	if len(out) < 4 {
		t.Fatalf("only %d duet.v1 enums registered", len(out))
	}
	return out
}
