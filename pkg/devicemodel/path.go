package devicemodel

import (
	"fmt"
	"strings"
)

// PathKind says what a data-model path names (TR-369 "Path Names").
type PathKind int

const (
	PathObject    PathKind = iota + 1 // ends with "." (object, table or instance: a partial path)
	PathParameter                     // ends with a name
	PathCommand                       // ends with "()"
	PathEvent                         // ends with "!"
)

func (k PathKind) String() string {
	switch k {
	case PathObject:
		return "object"
	case PathParameter:
		return "parameter"
	case PathCommand:
		return "command"
	case PathEvent:
		return "event"
	}
	return "unknown"
}

// Path is a checked data-model path.
type Path struct {
	Raw    string
	Kind   PathKind
	Search bool // contains "*" or "[...]" (a search path, TR-369 "Instance identifiers")
}

// PathSyntaxError reports where a path stops being valid. Pos is a 0-based
// byte offset into the path.
type PathSyntaxError struct {
	Path   string
	Pos    int
	Reason string
}

func (e *PathSyntaxError) Error() string {
	return fmt.Sprintf("invalid path %q at position %d: %s", e.Path, e.Pos, e.Reason)
}

// AsError converts the syntax error to the domain error type.
func (e *PathSyntaxError) AsError() *Error {
	return &Error{Code: CodeInvalidPath, Message: e.Error()}
}

// MaxPathLen is the longest path accepted. TR-069 limits names to 256
// characters (TR-069 A.3.2); USP search paths can be longer, so allow more.
const MaxPathLen = 1024

// ParsePath checks the syntax of an instantiated or search path as used in
// Get/Set/Add/Delete/Operate (TR-369 "Path Names" grammar). It is lenient where the spec's
// own examples are (unquoted dateTimes in search expressions, TR-369 "Search expressions") and
// rejects what can never be valid: empty segments, names starting with a
// digit, "{i}" in an instantiated path, unbalanced brackets.
//
// allowSupported additionally accepts "{i}" placeholders (GetSupportedDM).
func ParsePath(p string, allowSupported bool) (Path, error) {
	fail := func(pos int, format string, args ...any) (Path, error) {
		return Path{}, &PathSyntaxError{Path: p, Pos: pos, Reason: fmt.Sprintf(format, args...)}
	}
	if p == "" {
		return fail(0, "empty path")
	}
	if len(p) > MaxPathLen {
		return fail(MaxPathLen, "path longer than %d bytes", MaxPathLen)
	}
	out := Path{Raw: p}
	i := 0
	first := true
	for i < len(p) {
		start := i
		c := p[i]
		switch {
		case isNameStart(c):
			for i < len(p) && isNameChar(p[i]) {
				i++
			}
			if first && p[start:i] != "Device" && p[start:i] != "InternetGatewayDevice" {
				// Vendor roots exist (e.g. "Services"), so only the shape is checked.
				_ = first
			}
			first = false
			// Reference following: Name+ / Name#N+ / Name#*+ (TR-369 "Reference following").
			if i < len(p) && p[i] == '#' {
				j := i + 1
				if j < len(p) && p[j] == '*' {
					j++
				} else {
					d := j
					for j < len(p) && isDigit(p[j]) {
						j++
					}
					if j == d {
						return fail(j, "expected a list index or '*' after '#'")
					}
				}
				if j >= len(p) || p[j] != '+' {
					return fail(j, "expected '+' to follow a reference")
				}
				i = j
			}
			if i < len(p) && p[i] == '+' {
				i++
				if i >= len(p) || p[i] != '.' {
					return fail(i, "expected '.' after reference follow '+'")
				}
				out.Search = true
				i++
				if i >= len(p) {
					return fail(i, "path ends after a reference follow")
				}
				continue
			}
			if i == len(p) {
				out.Kind = PathParameter
				return out, nil
			}
			switch p[i] {
			case '.':
				i++
				if i == len(p) {
					out.Kind = PathObject
					return out, nil
				}
			case '(':
				if i+2 == len(p) && p[i+1] == ')' {
					out.Kind = PathCommand
					return out, nil
				}
				return fail(i, "a command path must end with \"()\"")
			case '!':
				if i+1 == len(p) {
					out.Kind = PathEvent
					return out, nil
				}
				return fail(i+1, "nothing may follow an event name's '!'")
			default:
				return fail(i, "unexpected character %q in a name", p[i])
			}
		case first:
			return fail(i, "a path must start with a name")
		case isDigit(c):
			if c == '0' {
				return fail(i, "instance numbers are positive and have no leading zero")
			}
			for i < len(p) && isDigit(p[i]) {
				i++
			}
			if i-start > 10 {
				return fail(start, "instance number too long")
			}
			if i == len(p) {
				// "Device.IP.Interface.1" is an object reference without the dot;
				// as a path it is not valid.
				return fail(i, "an instance number must be followed by '.'")
			}
			if p[i] != '.' {
				return fail(i, "unexpected character %q after an instance number", p[i])
			}
			i++
			if i == len(p) {
				out.Kind = PathObject
				return out, nil
			}
		case c == '*':
			out.Search = true
			i++
			if i == len(p) || p[i] != '.' {
				return fail(i, "expected '.' after '*'")
			}
			i++
			if i == len(p) {
				out.Kind = PathObject
				return out, nil
			}
		case c == '{':
			if !allowSupported {
				return fail(i, "\"{i}\" is only allowed in supported data model paths")
			}
			if !strings.HasPrefix(p[i:], "{i}") {
				return fail(i, "expected \"{i}\"")
			}
			i += 3
			if i == len(p) || p[i] != '.' {
				return fail(i, "expected '.' after \"{i}\"")
			}
			i++
			if i == len(p) {
				out.Kind = PathObject
				return out, nil
			}
		case c == '[':
			end, err := scanExpression(p, i)
			if err != nil {
				return Path{}, err
			}
			out.Search = true
			i = end
			if i == len(p) || p[i] != '.' {
				return fail(i, "expected '.' after a search expression")
			}
			i++
			if i == len(p) {
				out.Kind = PathObject
				return out, nil
			}
		case c == '.':
			return fail(i, "empty path segment")
		default:
			return fail(i, "unexpected character %q", c)
		}
	}
	return fail(len(p), "unexpected end of path")
}

// scanExpression checks a "[...]" unique-key or search expression starting at
// p[open] == '[' and returns the index just past the closing ']'.
func scanExpression(p string, open int) (int, error) {
	fail := func(pos int, format string, args ...any) (int, error) {
		return 0, &PathSyntaxError{Path: p, Pos: pos, Reason: fmt.Sprintf(format, args...)}
	}
	i := open + 1
	for {
		// relative parameter path
		if i >= len(p) {
			return fail(i, "unterminated search expression")
		}
		if !isNameStart(p[i]) {
			if p[i] == ']' && i == open+1 {
				return fail(i, "empty search expression")
			}
			return fail(i, "expected a parameter name in the search expression")
		}
		for i < len(p) && (isNameChar(p[i]) || p[i] == '.' || p[i] == '+' || p[i] == '#' || p[i] == '*' || isDigit(p[i])) {
			i++
		}
		for i < len(p) && p[i] == ' ' {
			i++
		}
		// operator
		switch {
		case strings.HasPrefix(p[i:], "=="), strings.HasPrefix(p[i:], "!="), strings.HasPrefix(p[i:], "~="),
			strings.HasPrefix(p[i:], "<="), strings.HasPrefix(p[i:], ">="):
			i += 2
		case i < len(p) && (p[i] == '<' || p[i] == '>'):
			i++
		default:
			return fail(i, "expected an operator (==, !=, ~=, <, >, <=, >=)")
		}
		for i < len(p) && p[i] == ' ' {
			i++
		}
		// value: a quoted string, or a bare token (numbers, booleans, dateTimes)
		if i >= len(p) {
			return fail(i, "expected a value in the search expression")
		}
		if p[i] == '"' {
			j := strings.IndexByte(p[i+1:], '"')
			if j < 0 {
				return fail(i, "unterminated string in the search expression")
			}
			i += j + 2
		} else {
			s := i
			for i < len(p) && p[i] != '&' && p[i] != ']' && p[i] != ' ' {
				if p[i] == '[' || p[i] == '"' {
					return fail(i, "unexpected %q in a value", p[i])
				}
				i++
			}
			if i == s {
				return fail(i, "expected a value in the search expression")
			}
		}
		for i < len(p) && p[i] == ' ' {
			i++
		}
		if i >= len(p) {
			return fail(i, "unterminated search expression")
		}
		if p[i] == ']' {
			return i + 1, nil
		}
		if strings.HasPrefix(p[i:], "&&") {
			i += 2
			for i < len(p) && p[i] == ' ' {
				i++
			}
			continue
		}
		return fail(i, "expected \"&&\" or ']'")
	}
}

func isNameStart(c byte) bool { return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '_' }
func isNameChar(c byte) bool  { return isNameStart(c) || isDigit(c) || c == '-' }
func isDigit(c byte) bool     { return c >= '0' && c <= '9' }

// SplitParameter splits a parameter path into its object path (with the
// trailing '.') and the parameter name: "Device.WiFi.SSID.1.SSID" ->
// ("Device.WiFi.SSID.1.", "SSID"). A path without '.' returns ("", p).
func SplitParameter(p string) (object, name string) {
	i := strings.LastIndexByte(p, '.')
	if i < 0 {
		return "", p
	}
	return p[:i+1], p[i+1:]
}

// DataModelRoot returns "Device." or "InternetGatewayDevice." (or another
// first segment) for a path; "" if the path has no '.'.
func DataModelRoot(p string) string {
	i := strings.IndexByte(p, '.')
	if i < 0 {
		return ""
	}
	return p[:i+1]
}
