package policy

// MembersWithBudget exposes the scan budget to the external tests.
var MembersWithBudget = members
