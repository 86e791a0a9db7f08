package console

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/store"
)

// The overview's charts (issue 13 item 4, "Overview"), drawn in the
// browser with uPlot (static/charts.js) from /overview/charts.json:
// Informs and other device events per minute over the last hours (from
// the console's per-minute samples, console_activity), new devices per
// day over 30 days, task outcomes per hour over 24 hours.

// chartKinds are the event kinds counted as "other device events": every
// kind but the routine reports, which the Inform count covers.
var chartKinds = func() []string {
	var out []string
	for _, k := range strings.Split(controller.EventKindNames(), ", ") {
		if k != "inform" && k != "periodic" {
			out = append(out, k)
		}
	}
	return out
}()

// sampleActivity records one activity sample a minute until Close.
func (c *Console) sampleActivity() {
	defer c.wg.Done()
	sample := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.st.SampleActivity(ctx, time.Now(), chartKinds); err != nil {
			c.rl.Warn("console: cannot record the activity sample", "err", err)
		}
	}
	sample()
	t := time.NewTicker(c.o.ActivityInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			sample()
		}
	}
}

// chartSeries is one chart's data in uPlot's layout: X (Unix seconds)
// and one series of values per label.
type chartSeries struct {
	X      []int64   `json:"x"`
	Labels []string  `json:"labels"`
	Series [][]int64 `json:"series"`
}

type chartsData struct {
	Activity    chartSeries `json:"activity"`
	NewDevices  chartSeries `json:"new_devices"`
	TaskResults chartSeries `json:"task_outcomes"`
}

// chartHours is how far back the activity chart goes.
const chartHours = 6

// charts answers the charts' data, computed at most once per
// LiveInterval for every viewer together (as the overview's figures): at
// 100k devices and 200k tasks of the last day it takes about 250 ms on a
// loaded 2-core machine (BenchmarkConsolePages/overview-charts-computed).
func (c *Console) charts(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	c.chartsMu.Lock()
	defer c.chartsMu.Unlock()
	if c.chartsAt.IsZero() || time.Since(c.chartsAt) >= c.o.LiveInterval {
		d, err := c.computeCharts(r.Context())
		if err != nil {
			return err
		}
		c.chartsData, c.chartsAt = d, time.Now()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(c.chartsData)
}

func (c *Console) computeCharts(ctx context.Context) (chartsData, error) {
	now := time.Now().UTC()
	var d chartsData
	act, err := c.st.Activity(ctx, now.Add(-chartHours*time.Hour))
	if err != nil {
		return d, err
	}
	// Empty, not null, before the first two samples: the browser's
	// uPlot wants arrays.
	d.Activity = chartSeries{X: []int64{}, Labels: []string{"Informs", "Other device events"}, Series: [][]int64{{}, {}}}
	for _, p := range act {
		d.Activity.X = append(d.Activity.X, p.Minute.Unix())
		d.Activity.Series[0] = append(d.Activity.Series[0], p.Informs)
		d.Activity.Series[1] = append(d.Activity.Series[1], p.Events)
	}
	days, err := c.st.NewDevicesPerDay(ctx, now.Truncate(24*time.Hour).AddDate(0, 0, -29))
	if err != nil {
		return d, err
	}
	d.NewDevices = dailySeries(days, now)
	hours, err := c.st.TaskOutcomesPerHour(ctx, now.Truncate(time.Hour).Add(-23*time.Hour))
	if err != nil {
		return d, err
	}
	d.TaskResults = hourlySeries(hours, now)
	return d, nil
}

// dailySeries is the last 30 days, a point each, zero where nothing came.
func dailySeries(days []store.DayCount, now time.Time) chartSeries {
	s := chartSeries{Labels: []string{"New devices"}, Series: make([][]int64, 1)}
	by := map[int64]int64{}
	for _, d := range days {
		by[d.Day.Unix()] = d.N
	}
	first := now.Truncate(24*time.Hour).AddDate(0, 0, -29)
	for i := range 30 {
		day := first.AddDate(0, 0, i).Unix()
		s.X = append(s.X, day)
		s.Series[0] = append(s.Series[0], by[day])
	}
	return s
}

// outcomeStates are the final states, in the charts' order.
var outcomeStates = []store.TaskState{store.TaskSucceeded, store.TaskFailed, store.TaskExpired, store.TaskCancelled}

// hourlySeries is the last 24 hours, a point each, one series per final
// state.
func hourlySeries(hours []store.HourStateCount, now time.Time) chartSeries {
	s := chartSeries{Series: make([][]int64, len(outcomeStates))}
	idx := map[store.TaskState]int{}
	for i, st := range outcomeStates {
		s.Labels = append(s.Labels, string(st))
		idx[st] = i
	}
	by := map[int64]map[store.TaskState]int64{}
	for _, h := range hours {
		if by[h.Hour.Unix()] == nil {
			by[h.Hour.Unix()] = map[store.TaskState]int64{}
		}
		by[h.Hour.Unix()][h.State] += h.Tasks
	}
	first := now.Truncate(time.Hour).Add(-23 * time.Hour)
	for i := range 24 {
		hour := first.Add(time.Duration(i) * time.Hour).Unix()
		s.X = append(s.X, hour)
		for _, st := range outcomeStates {
			s.Series[idx[st]] = append(s.Series[idx[st]], by[hour][st])
		}
	}
	return s
}
