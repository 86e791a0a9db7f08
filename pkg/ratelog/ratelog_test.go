package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestBudget: a flood of one message writes the burst, then one line per
// refill, and the next written line counts what was dropped; another
// message has its own budget.
func TestBudget(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), 5, 1)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	for i := 0; i < 20000; i++ {
		l.Warn("refused record", "i", i)
	}
	if n := strings.Count(buf.String(), "refused record"); n != 5 {
		t.Fatalf("%d lines for 20000 refusals, want the burst of 5", n)
	}
	l.Warn("other refusal")
	if !strings.Contains(buf.String(), "other refusal") {
		t.Fatal("a second message shares the first one's budget")
	}
	now = now.Add(time.Second)
	buf.Reset()
	l.With("device", "d1").Warn("refused record")
	if !strings.Contains(buf.String(), "suppressed=19995") || !strings.Contains(buf.String(), "device=d1") {
		t.Fatalf("line after refill = %q, want suppressed=19995 and the attribute", buf.String())
	}
}
