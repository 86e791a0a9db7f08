package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// File types of the repository (issue 14 §1).
const (
	FileFirmware     = "firmware"
	FileVendorConfig = "vendor_config"
	FileOther        = "other"
)

// FileTypes lists the file types, for messages.
var FileTypes = []string{FileFirmware, FileVendorConfig, FileOther}

// File is what Duet knows of one file in the repository; its bytes are in
// the object store under ID.
type File struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	Type           string    `json:"type"`
	Version        string    `json:"version,omitempty"`
	ProductClasses []string  `json:"product_classes"`
	OUIs           []string  `json:"ouis"`
	DataModel      string    `json:"data_model,omitempty"`
	Size           int64     `json:"size"`
	SHA256         string    `json:"sha256"`
	DeviceID       string    `json:"device_id,omitempty"`
	UploadedBy     string    `json:"uploaded_by"`
	CreatedAt      time.Time `json:"created_at"`
}

const fileColumns = `id, name, type, version, product_classes, ouis, data_model, size, sha256, COALESCE(device_id, ''), uploaded_by, created_at`

func scanFile(row pgx.Row) (File, error) {
	var f File
	err := row.Scan(&f.ID, &f.Name, &f.Type, &f.Version, &f.ProductClasses, &f.OUIs, &f.DataModel, &f.Size, &f.SHA256,
		&f.DeviceID, &f.UploadedBy, &f.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return f, devicemodel.Errorf(devicemodel.CodeNotFound, "no such file")
	}
	f.CreatedAt = f.CreatedAt.UTC()
	return f, err
}

// CreateFile records a file whose bytes are stored.
func (s *Store) CreateFile(ctx context.Context, f File) (File, error) {
	if f.ProductClasses == nil {
		f.ProductClasses = []string{}
	}
	if f.OUIs == nil {
		f.OUIs = []string{}
	}
	var dev any
	if f.DeviceID != "" {
		dev = f.DeviceID
	}
	return scanFile(s.pool.QueryRow(ctx, `INSERT INTO files (id, name, type, version, product_classes, ouis, data_model, size, sha256, device_id, uploaded_by)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING `+fileColumns,
		f.ID, f.Name, f.Type, f.Version, f.ProductClasses, f.OUIs, f.DataModel, f.Size, f.SHA256, dev, f.UploadedBy))
}

// FindFile returns one file (CodeNotFound when there is none).
func (s *Store) FindFile(ctx context.Context, id string) (File, error) {
	return scanFile(s.pool.QueryRow(ctx, "SELECT "+fileColumns+" FROM files WHERE id = $1", id))
}

// FileFilter selects files; zero values select everything.
type FileFilter struct {
	Type     string
	DeviceID string
	// Before is the keyset cursor: files created before it (then by id).
	BeforeTime time.Time
	BeforeID   string
	Limit      int
}

// FindFiles lists files newest first.
func (s *Store) FindFiles(ctx context.Context, f FileFilter) ([]File, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	q := "SELECT " + fileColumns + " FROM files WHERE true"
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if f.Type != "" {
		q += " AND type = " + arg(f.Type)
	}
	if f.DeviceID != "" {
		q += " AND device_id = " + arg(f.DeviceID)
	}
	if !f.BeforeTime.IsZero() {
		q += " AND (created_at, id) < (" + arg(f.BeforeTime) + ", " + arg(f.BeforeID) + ")"
	}
	q += " ORDER BY created_at DESC, id DESC LIMIT " + arg(f.Limit)
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []File{}
	for rows.Next() {
		fl, err := scanFile(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, fl)
	}
	return out, rows.Err()
}

// FileUsers names what still needs a file: enabled or disabled firmware
// policies naming it, and open (queued or dispatched) tasks carrying it.
func (s *Store) FileUsers(ctx context.Context, id string) (policies []string, tasks int, err error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM policies WHERE kind = 'firmware' AND spec->>'file_id' = $1 ORDER BY id`, id)
	if err != nil {
		return nil, 0, err
	}
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			rows.Close()
			return nil, 0, err
		}
		policies = append(policies, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	err = s.pool.QueryRow(ctx, `SELECT count(*) FROM tasks WHERE state IN ('queued', 'dispatched')
		AND request->>'file_id' = $1`, id).Scan(&tasks)
	return policies, tasks, err
}

// DeleteFile removes a file's row, refusing (CodeConflict) while a
// firmware policy or an open task uses it; the caller deletes the bytes
// after. The check and the delete are one statement, so a policy created
// meanwhile is seen.
func (s *Store) DeleteFile(ctx context.Context, id string) error {
	policies, tasks, err := s.FileUsers(ctx, id)
	if err != nil {
		return err
	}
	if len(policies) > 0 || tasks > 0 {
		return devicemodel.Errorf(devicemodel.CodeConflict, "file %s is in use: firmware policies %v, %d open tasks; delete or change those first", id, policies, tasks)
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM files WHERE id = $1
		AND NOT EXISTS (SELECT 1 FROM policies WHERE kind = 'firmware' AND spec->>'file_id' = $1)
		AND NOT EXISTS (SELECT 1 FROM tasks WHERE state IN ('queued', 'dispatched') AND request->>'file_id' = $1)`, id)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		if _, err := s.FindFile(ctx, id); err != nil {
			return err
		}
		return devicemodel.Errorf(devicemodel.CodeConflict, "file %s came into use; delete or change its users first", id)
	}
	return nil
}

// FileTransfer is one transfer the file listener served or received.
type FileTransfer struct {
	At        time.Time `json:"at"`
	FileID    string    `json:"file_id"`
	DeviceID  string    `json:"device_id"`
	Direction string    `json:"direction"` // download (to the device) or upload (from it)
	Bytes     int64     `json:"bytes"`
	Duration  time.Duration
	Outcome   string `json:"outcome"`
	Remote    string `json:"remote"`
}

// RecordFileTransfer logs one transfer.
func (s *Store) RecordFileTransfer(ctx context.Context, t FileTransfer) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO file_transfers (file_id, device_id, direction, bytes, duration_ms, outcome, remote)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, t.FileID, t.DeviceID, t.Direction, t.Bytes, t.Duration.Milliseconds(), t.Outcome, t.Remote)
	return err
}

// FileTransfers lists a file's transfers, newest first (at most limit).
func (s *Store) FileTransfers(ctx context.Context, fileID string, limit int) ([]FileTransfer, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, `SELECT at, file_id, device_id, direction, bytes, duration_ms, outcome, remote
		FROM file_transfers WHERE file_id = $1 ORDER BY at DESC, id DESC LIMIT $2`, fileID, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []FileTransfer{}
	for rows.Next() {
		var t FileTransfer
		var ms int64
		if err := rows.Scan(&t.At, &t.FileID, &t.DeviceID, &t.Direction, &t.Bytes, &ms, &t.Outcome, &t.Remote); err != nil {
			return nil, err
		}
		t.Duration = time.Duration(ms) * time.Millisecond
		out = append(out, t)
	}
	return out, rows.Err()
}

// FileSigningKey returns the key every replica signs transfer URLs with,
// making it on first use.
func (s *Store) FileSigningKey(ctx context.Context) ([]byte, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO file_signing_key (key) VALUES ($1) ON CONFLICT DO NOTHING`, k); err != nil {
		return nil, err
	}
	var out []byte
	err := s.pool.QueryRow(ctx, `SELECT key FROM file_signing_key`).Scan(&out)
	return out, err
}

// CountVersions counts a policy's member devices (those with a status) by
// the software version they run: a firmware campaign's progress by
// version (issue 14 §4).
func (s *Store) CountVersions(ctx context.Context, policyID string) (map[string]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT d.software_version, count(*) FROM policy_status s
		JOIN devices d ON d.id = s.device_id WHERE s.policy_id = $1 GROUP BY 1`, policyID)
	if err != nil {
		return nil, fmt.Errorf("store: count versions: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var v string
		var n int
		if err := rows.Scan(&v, &n); err != nil {
			return nil, err
		}
		out[v] = n
	}
	return out, rows.Err()
}
