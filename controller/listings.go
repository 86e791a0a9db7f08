package controller

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

var metricListings = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_table_listings_total",
	Help: "Changes to what Duet knows of the completeness of device tables, by change (listed, extended, dropped, failed)."},
	[]string{"change"})

// recordListings keeps table_listings (store.RecordTableListings) true
// after a task succeeded: a Get of an object path with no depth limit is
// a full listing of it; a GetInstances a listing of its instances (their
// unique keys are cached with it) when the cache shows every one; Duet's
// own Add extends the table it added to, and a Delete drops the listings
// under what it deleted. It is
// a separate step from the parameter cache's own writes (cacheChanges
// and the Get result), called after them: a failure is logged and
// counted, and leaves the listing incomplete, which only costs a read.
func (q *TaskQueue) recordListings(ctx context.Context, t store.Task, res *duetv1.CommandResult) {
	var cmd duetv1.Command
	if err := proto.Unmarshal(t.Command, &cmd); err != nil {
		return
	}
	// The device answered after the task was handed out: a listing is as
	// old as that. Cached rows under a fully listed path older than it
	// were not in the answer, so they are gone from the device.
	at := t.CreatedAt
	if t.DispatchedAt != nil {
		at = *t.DispatchedAt
	}
	var err error
	change := ""
	switch {
	case cmd.GetGet() != nil && res.GetGet() != nil:
		listed, failed := listedByGet(cmd.GetGet(), res.GetGet())
		if len(failed) > 0 {
			// The device would not read them: what Duet listed there
			// before no longer holds (and a policy that asked for the
			// read reports it rather than asking again).
			err, change = q.o.Store.UnlistTables(ctx, t.DeviceID, failed, at), "dropped"
		}
		if err == nil && len(listed) > 0 {
			err, change = q.o.Store.RecordTableListings(ctx, t.DeviceID, listed, store.ListingFull, at), "listed"
		}
	case cmd.GetGetInstances() != nil && res.GetGetInstances() != nil:
		r := res.GetGetInstances()
		var ps []*duetv1.Parameter
		for _, in := range r.GetInstances() {
			for _, k := range slices.Sorted(maps.Keys(in.GetUniqueKeys())) {
				ps = append(ps, &duetv1.Parameter{Path: in.GetPath() + k, Value: in.GetUniqueKeys()[k]})
			}
		}
		if len(ps) > 0 {
			err = q.o.Store.UpsertParameters(ctx, cacheParams(t.DeviceID, time.Now(), ps))
		}
		for _, table := range listedByInstances(cmd.GetGetInstances(), r) {
			if err != nil {
				break
			}
			var insts []string
			for _, in := range r.GetInstances() {
				if strings.HasPrefix(in.GetPath(), table) {
					insts = append(insts, in.GetPath())
				}
			}
			var ok bool
			if ok, err = q.o.Store.RecordInstanceListing(ctx, t.DeviceID, table, insts, at); ok {
				change = "listed"
			}
		}
	case cmd.GetAdd() != nil:
		if inst := res.GetAdd().GetInstancePath(); strings.HasSuffix(inst, ".") {
			// cacheChanges cached the instance with the parameters it was
			// added with and its unique keys.
			err, change = q.o.Store.NoteInstancesCreated(ctx, t.DeviceID, []store.CreatedInstance{{Path: inst, Cached: true}}, time.Now()), "extended"
		}
	case cmd.GetDelete() != nil:
		paths := res.GetDelete().GetDeletedPaths()
		if len(paths) == 0 {
			paths = cmd.GetDelete().GetObjectPaths()
		}
		err, change = q.o.Store.DropTableListings(ctx, t.DeviceID, paths), "dropped"
	}
	if err != nil {
		metricListings.WithLabelValues("failed").Inc()
		q.log.Warn("recording a table listing failed; the table will be read again before a policy decides on it",
			"task", t.ID, "device", t.DeviceID, "err", err)
		return
	}
	if change != "" {
		metricListings.WithLabelValues(change).Inc()
	}
}

// listedByGet returns the object paths a Get read whole: partial paths
// (ending in '.') with no depth limit, no wildcard or search expression,
// and no error in the result; and those of them the device answered with
// an error. A table with no instances is listed too: its Get succeeds with
// nothing under it (TR-369 R-GET.0 resolves the path to no parameters;
// CWMP GetParameterNames returns only the table).
func listedByGet(req *duetv1.GetRequest, res *duetv1.GetResult) (listed, failed []string) {
	errs := map[string]bool{}
	for _, e := range res.GetErrors() {
		errs[e.GetPath()] = true
	}
	for _, p := range req.GetPaths() {
		switch {
		case !listablePath(p):
		case errs[p]:
			failed = append(failed, p)
		case req.GetMaxDepth() == 0:
			listed = append(listed, p)
		}
	}
	return listed, failed
}

// listedByInstances returns the tables a GetInstances listed: with every
// level below them (first_level_only false, so nested tables are listed
// too) and no error. Whether the cache can show each instance (USP
// answers carry unique keys, which are cached; CWMP GetParameterNames
// gives instance numbers only) is for store.RecordInstanceListing.
func listedByInstances(req *duetv1.GetInstancesRequest, res *duetv1.GetInstancesResult) []string {
	if req.GetFirstLevelOnly() {
		return nil
	}
	failed := map[string]bool{}
	for _, e := range res.GetErrors() {
		failed[e.GetPath()] = true
	}
	var out []string
	for _, p := range req.GetPaths() {
		if listablePath(p) && !failed[p] {
			out = append(out, p)
		}
	}
	return out
}

// listablePath: an object path naming objects by number only.
func listablePath(p string) bool {
	return strings.HasSuffix(p, ".") && strings.Count(p, ".") >= 1 && !strings.ContainsAny(p, "*[]{}")
}

// eventListings keeps table_listings true for USP ObjectCreation and
// ObjectDeletion notifications (TR-369 "Notify", ObjectCreation and ObjectDeletion): a created instance is
// cached with its unique keys (learnedParams) and extends its table's
// listing; a deleted one leaves the cache with what was under it.
func (r *Registry) eventListings(ctx context.Context, deviceID string, ev *duetv1.Event, at time.Time) error {
	switch {
	case ev.GetObjectCreated() != nil:
		c := ev.GetObjectCreated()
		if !strings.HasSuffix(c.GetPath(), ".") {
			return nil
		}
		metricListings.WithLabelValues("extended").Inc()
		return r.o.Store.NoteInstancesCreated(ctx, deviceID,
			[]store.CreatedInstance{{Path: c.GetPath(), Cached: len(c.GetUniqueKeys()) > 0}}, at)
	case ev.GetObjectDeleted() != nil:
		p := ev.GetObjectDeleted().GetPath()
		if !strings.HasSuffix(p, ".") {
			return nil
		}
		// Observed at the event's time: a value under it read before
		// then and applied late is not stored again (a tombstone).
		if err := r.o.Store.DeleteParameterSubtreesAt(ctx, deviceID, []string{p}, at); err != nil {
			return err
		}
		metricListings.WithLabelValues("dropped").Inc()
		return r.o.Store.DropTableListings(ctx, deviceID, []string{p})
	}
	return nil
}
