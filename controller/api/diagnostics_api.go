package api

import (
	"net/http"

	"github.com/duet-dm/duet/controller"
)

// listDiagnostics serves GET /api/v1/devices/{id}/diagnostics: the
// device's diagnostic results (issue 14 §6), newest first, paged; kind
// filters.
func (a *Server) listDiagnostics(w http.ResponseWriter, r *http.Request) (int, error) {
	q, limit, cursor, err := pageParams(r, "kind")
	if err != nil {
		return 0, err
	}
	page, err := controller.ListDiagnostics(r.Context(), a.store, r.PathValue("id"), q["kind"], cursor, limit)
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, page), nil
}
