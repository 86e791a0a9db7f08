package policy

import (
	"context"
	"time"

	"github.com/duet-dm/duet/pkg/store"
)

// Bounds of one Members call. Membership is computed, not stored, so it is
// always current with the registry; each call does bounded work: at most
// scanBudget devices read, in pages of scanPage, one query per page.
const (
	scanPage   = 1000
	scanBudget = 50_000
	// scanPageAllParams is the page when a filter needs every cached
	// parameter of each device.
	scanPageAllParams = 100
)

// MemberPage is one page of a group's members.
type MemberPage struct {
	// IDs of matching devices, in ID order.
	IDs []string
	// Next is the cursor to pass for the next page; "" when the registry
	// has been scanned to the end. A page can hold fewer than limit IDs
	// (even none) and still have a Next: the call stopped at its scan
	// budget so that a sparse group over a big fleet never turns one
	// request into a full-table evaluation.
	Next string
	// Scanned is how many devices were evaluated: those the store
	// returned after the conditions it could apply itself (equality on
	// protocol, manufacturer, product_class, software_version; online).
	Scanned int
	// Unevaluable counts devices whose evaluation failed (a params key
	// not cached, the cost budget): they are not members.
	Unevaluable int
}

// Members evaluates the group's filter over the registry from cursor (""
// for the start) and returns up to limit matching device IDs. Device
// parameters come from the parameter cache, loaded per page for just the
// paths the filter reads; a device without the cached value is
// unevaluable, not a member.
//
// Errors: CodeInvalidArgument for a malformed cursor or a filter that
// does not compile (it was checked when saved, so only after an upgrade
// that changed the environment); store errors as they come.
func Members(ctx context.Context, st *store.Store, g store.Group, cursor string, limit int) (MemberPage, error) {
	f, err := CompileFilter(g.Filter)
	if err != nil {
		return MemberPage{}, err
	}
	return members(ctx, st, f, cursor, limit, scanBudget)
}

func members(ctx context.Context, st *store.Store, f *Filter, cursor string, limit, budget int) (MemberPage, error) {
	var ids []string
	p, err := scan(ctx, st, f, cursor, limit, budget, f.Params(), func(d DeviceFacts) { ids = append(ids, d.Device.ID) })
	p.IDs = ids
	return p, err
}

// scan evaluates f from cursor and calls visit for each member, up to
// limit members or budget devices scanned, whichever comes first. need
// says which cached parameters to load for each page (f's and the
// caller's). The returned page has no IDs; visit collects what the caller
// needs.
func scan(ctx context.Context, st *store.Store, f *Filter, cursor string, limit, budget int, need ParamNeed, visit func(DeviceFacts)) (MemberPage, error) {
	if limit <= 0 {
		limit = 100
	}
	if limit > store.MaxPageSize {
		limit = store.MaxPageSize
	}
	after := ""
	if cursor != "" {
		var err error
		if after, err = store.DecodeCursor(cursor); err != nil {
			return MemberPage{}, err
		}
	}
	var p MemberPage
	found := 0
	// One instant for the whole call: `now - last_seen` judges every
	// device of the page by the same clock.
	now := time.Now()
	page := scanPage
	if need.All {
		// Every cached parameter of each device: hundreds of rows apiece.
		page = scanPageAllParams
	}
	for {
		n := min(page, budget-p.Scanned)
		narrow := f.narrow
		narrow.After, narrow.Limit = after, n
		devs, err := st.ScanDevices(ctx, narrow)
		if err != nil {
			return MemberPage{}, err
		}
		var params map[string]map[string]string
		var listings map[string]map[string]store.TableListing
		if !need.None() && len(devs) > 0 {
			ids := make([]string, len(devs))
			for i, d := range devs {
				ids[i] = d.Device.ID
			}
			// Listings first: one recorded meanwhile lists values already
			// cached (see Reconciler.judge).
			if len(need.Prefixes) > 0 {
				if listings, err = st.FindTableListings(ctx, ids, need.Prefixes); err != nil {
					return MemberPage{}, err
				}
			}
			if params, err = st.FindParameterValues(ctx, ids, need.Paths, need.All, need.Prefixes...); err != nil {
				return MemberPage{}, err
			}
		}
		for _, d := range devs {
			p.Scanned++
			after = d.Device.ID
			facts := DeviceFacts{Device: d.Device, Tags: d.Tags, Params: params[d.Device.ID], Listings: listings[d.Device.ID], Now: now}
			ok, err := f.Match(facts)
			if err != nil {
				p.Unevaluable++
				continue
			}
			if ok {
				visit(facts)
				found++
				if found == limit {
					// More may follow this device, even within this
					// batch: resume right after it.
					p.Next = store.EncodeCursor(after)
					return p, nil
				}
			}
		}
		if len(devs) < n {
			return p, nil // end of the registry
		}
		if p.Scanned >= budget {
			p.Next = store.EncodeCursor(after)
			return p, nil
		}
		if err := ctx.Err(); err != nil {
			return MemberPage{}, err
		}
	}
}

// MemberCount is how many devices a filter selects.
type MemberCount struct {
	Members int
	// Scanned devices were evaluated; Unevaluable of them could not be
	// (not members).
	Scanned, Unevaluable int
	// Complete: the whole registry was scanned. Otherwise the scan
	// stopped at its budget and Members is a lower bound.
	Complete bool
}

// CountMembers counts a filter's members over the registry, scanning at
// most budget devices (in Members' bounded pages), so that a count asked
// for on every keystroke of a filter being written stays bounded on any
// fleet.
func CountMembers(ctx context.Context, st *store.Store, f *Filter, budget int) (MemberCount, error) {
	var c MemberCount
	cursor := ""
	for c.Scanned < budget {
		p, err := scan(ctx, st, f, cursor, store.MaxPageSize, budget-c.Scanned, f.Params(), func(DeviceFacts) { c.Members++ })
		if err != nil {
			return MemberCount{}, err
		}
		c.Scanned += p.Scanned
		c.Unevaluable += p.Unevaluable
		if p.Next == "" {
			c.Complete = true
			return c, nil
		}
		cursor = p.Next
	}
	return c, nil
}
