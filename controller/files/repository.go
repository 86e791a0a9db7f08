// Package files is Duet's file repository and file listener (issue 14 §1,
// §2): firmware images, vendor configuration files and device uploads,
// their bytes in the NATS JetStream Object Store (the bus Duet already
// runs; replicated on a NATS cluster, so any replica serves any file) and
// what is known of them in PostgreSQL; and the HTTP(S) listener devices
// fetch them from and upload to, with signed per-transfer URLs.
package files

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

var (
	metricStored = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_files_stored_total",
		Help: "Files written to the repository, by outcome (stored, too_large, mismatch, failed).",
	}, []string{"outcome"})
	metricStoredBytes = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_files_stored_bytes_total",
		Help: "Bytes written to the repository's object store.",
	})
)

// Bucket is the Object Store bucket holding the repository's bytes.
const Bucket = "duet-files"

// DefaultMaxSize bounds one file unless the repository is told otherwise.
const DefaultMaxSize = 2 << 30

// RepositoryOptions configure NewRepository.
type RepositoryOptions struct {
	Store *store.Store
	Bus   *bus.Bus
	// Replicas of the bucket on a clustered JetStream (the nats-replicas
	// setting). Default 1.
	Replicas int
	// MaxSize bounds one file in bytes. Default DefaultMaxSize.
	MaxSize int64
	Logger  *slog.Logger
}

// Repository stores files: bytes in the object store, metadata in
// PostgreSQL.
type Repository struct {
	o   RepositoryOptions
	obs jetstream.ObjectStore
	// chunks is the bucket's stream, read one chunk per request (OpenAt).
	chunks jetstream.Stream
	log    *slog.Logger
}

// NewRepository opens (creating when needed) the bucket.
func NewRepository(ctx context.Context, o RepositoryOptions) (*Repository, error) {
	if o.Store == nil || o.Bus == nil {
		return nil, errors.New("files: the repository needs a store and a bus")
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.MaxSize <= 0 {
		o.MaxSize = DefaultMaxSize
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	// A NATS cluster still electing its leaders times out for a while
	// (docs/scaling.md): try again as stream creation does.
	var obs jetstream.ObjectStore
	err := o.Bus.RetryNotReady(ctx, "OBJ_"+Bucket, func() error {
		actx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		var err error
		obs, err = o.Bus.JetStream().CreateOrUpdateObjectStore(actx, jetstream.ObjectStoreConfig{
			Bucket: Bucket, Description: "Duet's file repository (firmware, configuration files, device uploads)",
			Storage: jetstream.FileStorage, Replicas: o.Replicas,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("files: object store bucket %s: %w", Bucket, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	chunks, err := o.Bus.JetStream().Stream(cctx, "OBJ_"+Bucket)
	if err != nil {
		return nil, fmt.Errorf("files: object store stream: %w", err)
	}
	return &Repository{o: o, obs: obs, chunks: chunks, log: o.Logger.With("component", "files")}, nil
}

// MaxSize is the largest file accepted.
func (r *Repository) MaxSize() int64 { return r.o.MaxSize }

// Store is the metadata store.
func (r *Repository) Store() *store.Store { return r.o.Store }

// Upload describes a file being added.
type Upload struct {
	Name           string
	Type           string
	Version        string
	ProductClasses []string
	OUIs           []string
	DataModel      string
	DeviceID       string
	UploadedBy     string
	// ExpectedSize (≥ 0 when given, -1 otherwise) and ExpectedSHA256
	// (hex, "" when not given), from the uploader: the stored file must
	// match them or nothing is kept.
	ExpectedSize   int64
	ExpectedSHA256 string
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9._+-][A-Za-z0-9._+ -]{0,254}$`)

// Check validates u (CodeInvalidArgument naming the field).
func (u *Upload) Check() error {
	bad := func(f string, a ...any) error { return devicemodel.Errorf(devicemodel.CodeInvalidArgument, f, a...) }
	if !namePattern.MatchString(u.Name) || strings.Contains(u.Name, "..") {
		return bad("name %q: 1 to 255 letters, digits, spaces and ._+- (no path, no \"..\")", u.Name)
	}
	switch u.Type {
	case store.FileFirmware, store.FileVendorConfig, store.FileOther:
	case "":
		u.Type = store.FileOther
	default:
		return bad("type %q is not one of %s", u.Type, strings.Join(store.FileTypes, ", "))
	}
	if u.Type == store.FileFirmware && u.Version == "" {
		return bad("a firmware file needs a version (the SoftwareVersion devices report once they run it)")
	}
	if len(u.Version) > 256 || len(u.DataModel) > 64 {
		return bad("version or data_model is too long")
	}
	if u.ExpectedSHA256 != "" {
		u.ExpectedSHA256 = strings.ToLower(u.ExpectedSHA256)
		if b, err := hex.DecodeString(u.ExpectedSHA256); err != nil || len(b) != sha256.Size {
			return bad("sha256 %q is not 64 hexadecimal digits", u.ExpectedSHA256)
		}
	}
	if len(u.ProductClasses) > 64 || len(u.OUIs) > 64 {
		return bad("at most 64 product classes and 64 OUIs")
	}
	return nil
}

// countingReader counts and hashes what passes, and fails past a limit.
type countingReader struct {
	r     io.Reader
	h     hash.Hash
	n     int64
	limit int64
	over  bool
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.h.Write(p[:n])
	if c.n > c.limit {
		c.over = true
		return n, errTooLarge
	}
	return n, err
}

var errTooLarge = errors.New("file larger than the limit")

// Put streams body into the object store (never the whole file in
// memory: the object store takes it in 128 KiB chunks), computing its
// size and SHA-256, checks them against what the uploader announced, and
// records the file. On any failure nothing is kept.
func (r *Repository) Put(ctx context.Context, u Upload, body io.Reader) (store.File, error) {
	if err := u.Check(); err != nil {
		return store.File{}, err
	}
	if u.ExpectedSize > r.o.MaxSize {
		metricStored.WithLabelValues("too_large").Inc()
		return store.File{}, devicemodel.Errorf(devicemodel.CodeResourcesExceeded, "the file is %d bytes; the limit is %d (DUET_FILE_MAX_SIZE)", u.ExpectedSize, r.o.MaxSize)
	}
	id := bus.NewID()
	cr := &countingReader{r: body, h: sha256.New(), limit: r.o.MaxSize}
	start := time.Now()
	_, err := r.obs.Put(ctx, jetstream.ObjectMeta{Name: id, Description: u.Name}, cr)
	if err != nil {
		r.deleteBytes(id)
		if cr.over {
			metricStored.WithLabelValues("too_large").Inc()
			return store.File{}, devicemodel.Errorf(devicemodel.CodeResourcesExceeded, "the file is larger than the limit of %d bytes (DUET_FILE_MAX_SIZE)", r.o.MaxSize)
		}
		metricStored.WithLabelValues("failed").Inc()
		return store.File{}, fmt.Errorf("files: storing %s: %w", u.Name, err)
	}
	sum := hex.EncodeToString(cr.h.Sum(nil))
	if (u.ExpectedSize >= 0 && cr.n != u.ExpectedSize) || (u.ExpectedSHA256 != "" && sum != u.ExpectedSHA256) {
		r.deleteBytes(id)
		metricStored.WithLabelValues("mismatch").Inc()
		return store.File{}, devicemodel.Errorf(devicemodel.CodeConflict, "received %d bytes with sha256 %s; the upload announced size %d, sha256 %q: nothing was kept",
			cr.n, sum, u.ExpectedSize, u.ExpectedSHA256)
	}
	f, err := r.o.Store.CreateFile(ctx, store.File{ID: id, Name: u.Name, Type: u.Type, Version: u.Version,
		ProductClasses: u.ProductClasses, OUIs: u.OUIs, DataModel: u.DataModel, Size: cr.n, SHA256: sum,
		DeviceID: u.DeviceID, UploadedBy: u.UploadedBy})
	if err != nil {
		r.deleteBytes(id)
		metricStored.WithLabelValues("failed").Inc()
		return store.File{}, err
	}
	metricStored.WithLabelValues("stored").Inc()
	metricStoredBytes.Add(float64(cr.n))
	r.log.Info("file stored", "file", id, "name", u.Name, "type", u.Type, "version", u.Version, "bytes", cr.n,
		"sha256", sum, "device", u.DeviceID, "by", u.UploadedBy, "duration", time.Since(start).Round(time.Millisecond))
	return f, nil
}

// deleteBytes drops an object, in the background of a failed request's
// context.
func (r *Repository) deleteBytes(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.obs.Delete(ctx, id); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		r.log.Warn("deleting a file's bytes failed", "file", id, "err", err)
	}
}

// Delete removes a file, refused (CodeConflict) while a firmware policy or
// an open task uses it.
func (r *Repository) Delete(ctx context.Context, id string) error {
	if err := r.o.Store.DeleteFile(ctx, id); err != nil {
		return err
	}
	r.deleteBytes(id)
	r.log.Info("file deleted", "file", id)
	return nil
}

// OpenAt reads a file's bytes from offset on. It fetches one chunk per
// request, when the reader wants it: a slow device holds no consumer
// open. (The object store's own Get pushes the chunks through an ordered
// consumer into a pipe; a reader slower than its heartbeats made the
// consumer reset and the transfer end short — BenchmarkServeFileConcurrent
// saw it.) Chunks before offset are fetched and skipped: a chunk's length
// is only known by reading it (an upload's reads fill them unevenly).
func (r *Repository) OpenAt(ctx context.Context, id string, offset int64) (io.ReadCloser, error) {
	info, err := r.obs.GetInfo(ctx, id)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, devicemodel.Errorf(devicemodel.CodeNotFound, "no bytes stored for file %s", id)
	}
	if err != nil {
		return nil, err
	}
	cr := &chunkReader{ctx: ctx, stream: r.chunks, subject: "$O." + Bucket + ".C." + info.NUID, seq: 1, left: int64(info.Size)}
	for offset > 0 && cr.left > 0 {
		if err := cr.next(); err != nil {
			return nil, err
		}
		n := min(offset, int64(len(cr.buf)))
		cr.buf = cr.buf[n:]
		offset -= n
	}
	return cr, nil
}

// chunkReader reads an object's chunks in order, one request each.
type chunkReader struct {
	ctx     context.Context
	stream  jetstream.Stream
	subject string
	seq     uint64
	left    int64 // bytes of the object not yet fetched
	buf     []byte
}

// chunkTimeout bounds one chunk's fetch; a busy server gets chunkTries.
const (
	chunkTimeout = 30 * time.Second
	chunkTries   = 3
)

func (c *chunkReader) next() error {
	var m *jetstream.RawStreamMsg
	var err error
	for try := 0; try < chunkTries && c.ctx.Err() == nil; try++ {
		cctx, cancel := context.WithTimeout(c.ctx, chunkTimeout)
		m, err = c.stream.GetMsg(cctx, c.seq, jetstream.WithGetMsgSubject(c.subject))
		cancel()
		if err == nil || !errors.Is(err, context.DeadlineExceeded) {
			break
		}
	}
	if err == nil && m == nil {
		err = c.ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("files: reading a chunk: %w", err)
	}
	c.seq = m.Sequence + 1
	c.buf = m.Data
	c.left -= int64(len(m.Data))
	if len(m.Data) == 0 || c.left < 0 {
		return errors.New("files: the object's chunks do not add up to its size")
	}
	return nil
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.buf) == 0 {
		if c.left == 0 {
			return 0, io.EOF
		}
		if err := c.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func (c *chunkReader) Close() error { return nil }
