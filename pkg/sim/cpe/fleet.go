package cpe

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// FleetOptions configure a Fleet: N CPEs built from Template, each with
// serial SerialPrefix + a zero-padded index (SerialPrefix defaults to
// "SIM").
type FleetOptions struct {
	N            int
	Template     Options
	SerialPrefix string
}

// Fleet runs many simulated CPEs in one process.
type Fleet struct {
	cpes      []*CPE
	mu        sync.Mutex
	started   bool
	closeOnce sync.Once
}

// FleetStats sums the Stats of every CPE.
type FleetStats struct {
	CPEs int
	Stats
}

// NewFleet builds the CPEs; the template's data model is loaded once.
func NewFleet(opts FleetOptions) (*Fleet, error) {
	if opts.N <= 0 {
		return nil, fmt.Errorf("cpe: FleetOptions.N must be positive, got %d", opts.N)
	}
	if opts.SerialPrefix == "" {
		opts.SerialPrefix = "SIM"
	}
	tmpl := opts.Template
	if tmpl.DataModel == nil && tmpl.DataModelPath != "" {
		dm, err := LoadDataModel(tmpl.DataModelPath)
		if err != nil {
			return nil, err
		}
		tmpl.DataModel = dm
	}
	f := &Fleet{}
	for i := 0; i < opts.N; i++ {
		o := tmpl
		o.Serial = fmt.Sprintf("%s%06d", opts.SerialPrefix, i+1)
		c, err := New(o)
		if err != nil {
			return nil, fmt.Errorf("cpe: fleet member %d: %w", i+1, err)
		}
		f.cpes = append(f.cpes, c)
	}
	return f, nil
}

// CPEs returns the members in serial order.
func (f *Fleet) CPEs() []*CPE { return f.cpes }

// Start starts every CPE; on error the ones already started are closed.
func (f *Fleet) Start(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started {
		return errors.New("cpe: fleet already started")
	}
	f.started = true
	for i, c := range f.cpes {
		if err := c.Start(ctx); err != nil {
			for _, s := range f.cpes[:i] {
				s.Close()
			}
			return err
		}
	}
	return nil
}

// Stop stops every CPE and waits for all their goroutines. Safe to call
// more than once; Close is the same.
func (f *Fleet) Stop() {
	f.closeOnce.Do(func() {
		var wg sync.WaitGroup
		for _, c := range f.cpes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.Close()
			}()
		}
		wg.Wait()
	})
}

// Close is Stop, for io.Closer.
func (f *Fleet) Close() error {
	f.Stop()
	return nil
}

// Stats sums the members' counters.
func (f *Fleet) Stats() FleetStats {
	s := FleetStats{CPEs: len(f.cpes)}
	for _, c := range f.cpes {
		cs := c.Stats()
		s.Sessions += cs.Sessions
		s.FailedSessions += cs.FailedSessions
		s.Informs += cs.Informs
		s.RPCs += cs.RPCs
		s.Faults += cs.Faults
		s.ConnectionRequests += cs.ConnectionRequests
		s.Reboots += cs.Reboots
	}
	return s
}
