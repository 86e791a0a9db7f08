package policy

import "github.com/duet-dm/duet/pkg/store"

// MembersWithBudget exposes the scan budget to the external tests.
var MembersWithBudget = members

// Pushdown exposes what the store is asked to pre-filter.
func (f *Filter) Pushdown() store.DeviceFilter { return f.narrow }
