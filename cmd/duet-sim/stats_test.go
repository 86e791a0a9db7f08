package main

import (
	"testing"
	"time"
)

// TestLatencyPercentiles: the percentiles land in the bucket of the
// sample at that rank, within the buckets' 19 % width, and an interval
// (since) holds only what came after the earlier snapshot.
func TestLatencyPercentiles(t *testing.T) {
	var l latencies
	if got := l.snapshot().percentile(50); got != 0 {
		t.Fatalf("empty p50 = %v", got)
	}
	for i := 1; i <= 100; i++ {
		l.add(time.Duration(i) * time.Millisecond)
	}
	h := l.snapshot()
	for _, c := range []struct{ p, want float64 }{{50, 50}, {95, 95}, {99, 99}, {100, 100}} {
		if got := h.percentile(c.p); got < c.want || got > c.want*1.2 {
			t.Errorf("p%v = %v ms, want %v to %v", c.p, got, c.want, c.want*1.2)
		}
	}
	l.add(5 * time.Second)
	iv := l.snapshot().since(h)
	if iv.n != 1 {
		t.Fatalf("interval holds %d samples, want 1", iv.n)
	}
	if got := iv.percentile(50); got < 5000 || got > 6000 {
		t.Errorf("interval p50 = %v ms, want about 5000", got)
	}
}
