package usp

import "fmt"

// ParseBool parses a TR-106 boolean: "true", "false", "1" or "0" (TR-369
// "Messages", TR-106 value encoding).
func ParseBool(s string) (bool, error) {
	switch s {
	case "true", "1":
		return true, nil
	case "false", "0":
		return false, nil
	}
	return false, fmt.Errorf("usp: %q is not a boolean (want true, false, 1 or 0)", s)
}

// FormatBool writes a boolean the way USP sends it: "true" or "false".
func FormatBool(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
