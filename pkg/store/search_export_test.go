package store

// SearchCondition is the free-text condition FindDevices builds, with arg
// as the parameter, for plan checks in the external tests.
func SearchCondition(arg string) string {
	return searchExpr + " LIKE ('%' || lower(" + arg + "::text) || '%')"
}
