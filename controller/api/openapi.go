package api

import _ "embed"

// openAPIDocument is the OpenAPI 3 description of /api/v1, kept in the
// repository beside the handlers and served at /api/v1/openapi.json.
// TestOpenAPIMatchesRoutes fails when a route is added without it, or the
// document names a route that does not exist.
//
//go:embed openapi.json
var openAPIDocument []byte
