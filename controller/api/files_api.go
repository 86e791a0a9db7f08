package api

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/duet-dm/duet/controller/files"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// The file repository's routes (issue 14 §1):
//
//	GET    /api/v1/files               list (type, device, limit, cursor), newest first
//	POST   /api/v1/files?name=…&type=… the body is the file, streamed
//	GET    /api/v1/files/{id}          one file, with its last transfers
//	DELETE /api/v1/files/{id}          refused (409) while a firmware policy or an open task uses it

// FileList is the body of GET /api/v1/files.
type FileList struct {
	Files      []store.File `json:"files"`
	NextCursor string       `json:"next_cursor,omitempty"`
}

// FileJSON is one file with its last transfers.
type FileJSON struct {
	store.File
	Transfers []FileTransferJSON `json:"transfers"`
}

// FileTransferJSON is one logged transfer.
type FileTransferJSON struct {
	store.FileTransfer
	DurationMS int64 `json:"duration_ms"`
}

func (a *Server) registerFileRoutes() {
	if a.o.Files == nil {
		return
	}
	a.route("GET /api/v1/files", a.listFiles)
	a.route("POST /api/v1/files", a.uploadFile)
	a.route("GET /api/v1/files/{id}", a.getFile)
	a.route("DELETE /api/v1/files/{id}", a.deleteFile)
}

func encodeFileCursor(f store.File) string {
	return base64.RawURLEncoding.EncodeToString([]byte(f.CreatedAt.Format(time.RFC3339Nano) + "|" + f.ID))
}

func (a *Server) listFiles(w http.ResponseWriter, r *http.Request) (int, error) {
	q, limit, cursor, err := pageParams(r, "type", "device")
	if err != nil {
		return 0, err
	}
	f := store.FileFilter{Type: q["type"], DeviceID: q["device"], Limit: limit}
	if f.Limit == 0 {
		f.Limit = 100
	}
	if f.Type != "" && !isFileType(f.Type) {
		return 0, badParam("type", "must be one of "+strings.Join(store.FileTypes, ", "))
	}
	if cursor != "" {
		raw, err := base64.RawURLEncoding.DecodeString(cursor)
		ts, id, ok := strings.Cut(string(raw), "|")
		t, terr := time.Parse(time.RFC3339Nano, ts)
		if err != nil || !ok || terr != nil {
			return 0, badParam("cursor", "malformed; pass next_cursor from the previous page")
		}
		f.BeforeTime, f.BeforeID = t, id
	}
	fs, err := a.store.FindFiles(r.Context(), f)
	if err != nil {
		return 0, err
	}
	out := FileList{Files: fs}
	if len(fs) == f.Limit {
		out.NextCursor = encodeFileCursor(fs[len(fs)-1])
	}
	return writeJSON(w, http.StatusOK, out), nil
}

func isFileType(t string) bool {
	for _, x := range store.FileTypes {
		if t == x {
			return true
		}
	}
	return false
}

// uploadFile streams the request body into the repository. The file's
// facts are query parameters, so the body is the file itself (curl
// --data-binary @image.bin, or -T): nothing is buffered.
func (a *Server) uploadFile(w http.ResponseWriter, r *http.Request) (int, error) {
	raw, err := parseQuery(r.URL.RawQuery)
	if err != nil {
		return 0, err
	}
	one := map[string]string{}
	for k, vs := range raw {
		switch k {
		case "name", "type", "version", "data_model", "size", "sha256":
			if len(vs) > 1 {
				return 0, badParam(k, "given more than once")
			}
			one[k] = vs[0]
		case "product_class", "oui":
		default:
			return 0, badParam(k, "unknown parameter (name, type, version, product_class, oui, data_model, size, sha256)")
		}
	}
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	u := files.Upload{Name: one["name"], Type: one["type"], Version: one["version"], DataModel: one["data_model"],
		ProductClasses: raw["product_class"], OUIs: raw["oui"], UploadedBy: who, ExpectedSize: -1, ExpectedSHA256: one["sha256"]}
	if v := one["size"]; v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, badParam("size", "must be a whole number of bytes")
		}
		u.ExpectedSize = n
	}
	if err := u.Check(); err != nil {
		return 0, err
	}
	if r.ContentLength > a.o.Files.MaxSize() {
		writeError(w, http.StatusRequestEntityTooLarge, devicemodel.Errorf(devicemodel.CodeResourcesExceeded,
			"the body is %d bytes; files are at most %d (DUET_FILE_MAX_SIZE)", r.ContentLength, a.o.Files.MaxSize()))
		return http.StatusRequestEntityTooLarge, nil
	}
	// A large image on a slow link takes longer than the API's read
	// timeout (DUET_HTTP_READ_TIMEOUT), which is for ordinary requests.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	f, err := a.o.Files.Put(r.Context(), u, r.Body)
	if devicemodel.ErrorCode(err) == devicemodel.CodeResourcesExceeded {
		writeError(w, http.StatusRequestEntityTooLarge, err)
		return http.StatusRequestEntityTooLarge, nil
	}
	if err != nil {
		return 0, err
	}
	w.Header().Set("Location", "/api/v1/files/"+f.ID)
	return writeJSON(w, http.StatusCreated, f), nil
}

func (a *Server) getFile(w http.ResponseWriter, r *http.Request) (int, error) {
	f, err := a.store.FindFile(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, err
	}
	ts, err := a.store.FileTransfers(r.Context(), f.ID, 50)
	if err != nil {
		return 0, err
	}
	out := FileJSON{File: f, Transfers: make([]FileTransferJSON, len(ts))}
	for i, t := range ts {
		out.Transfers[i] = FileTransferJSON{FileTransfer: t, DurationMS: t.Duration.Milliseconds()}
	}
	return writeJSON(w, http.StatusOK, out), nil
}

func (a *Server) deleteFile(w http.ResponseWriter, r *http.Request) (int, error) {
	if err := a.o.Files.Delete(r.Context(), r.PathValue("id")); err != nil {
		return 0, err
	}
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent, nil
}
