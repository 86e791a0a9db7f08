package storetest

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BackendCPU sums the CPU time of the PostgreSQL backends serving one
// database (on this machine), for benchmarks that report server CPU per
// operation: on a loaded machine CPU time says more than wall time.
type BackendCPU struct {
	tb     testing.TB
	conn   *pgx.Conn
	db     string
	seen   map[int]time.Duration
	passed time.Duration
}

// NewBackendCPU connects to url to list its database's backends.
func NewBackendCPU(tb testing.TB, url string) *BackendCPU {
	tb.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close(context.Background()) })
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		tb.Fatal(err)
	}
	return &BackendCPU{tb: tb, conn: conn, db: db, seen: map[int]time.Duration{}}
}

// Conn is the reader's connection, which it leaves out of its sum: a
// benchmark polls through it.
func (c *BackendCPU) Conn() *pgx.Conn { return c.conn }

// Used is the CPU the database's backends (but this reader's) used so
// far; a backend that exits between two calls loses what it used since
// the first.
func (c *BackendCPU) Used() time.Duration {
	c.tb.Helper()
	rows, err := c.conn.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", c.db)
	if err != nil {
		c.tb.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		c.tb.Fatal(err)
	}
	now := map[int]time.Duration{}
	for _, pid := range pids {
		if d, ok := ProcCPU(int(pid)); ok {
			now[int(pid)] = d
		}
	}
	for pid, d := range c.seen {
		if _, ok := now[pid]; !ok {
			c.passed += d
		}
	}
	c.seen = now
	total := c.passed
	for _, d := range now {
		total += d
	}
	return total
}

// ProcCPU is the user + system CPU time process pid used so far (proc(5):
// fields 14 and 15 of /proc/<pid>/stat, in ticks of 1/100 s on Linux);
// ok is false when it cannot be read.
func ProcCPU(pid int) (time.Duration, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	stat := string(data)
	// The command name (field 2) may hold spaces: count from the last ')'.
	fields := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	if len(fields) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseInt(fields[11], 10, 64)
	s, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+s) * 10 * time.Millisecond, true
}
