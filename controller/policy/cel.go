// Package policy evaluates group filters and per-device value expressions
// written in CEL (cel.dev/cel-go) over device facts, and computes group
// membership from the store in bounded pages.
//
// Expressions are checked when they are saved: CompileFilter and
// CompileValue type-check against the device-facts environment and return a
// *devicemodel.Error (CodeInvalidArgument) whose message starts with the
// line:column of the first problem, so an operator's typo is rejected with
// where it is before it can select the wrong thousand devices.
package policy

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"
	"cel.dev/cel-go/interpreter"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// Limits on expressions. A filter runs once per device per evaluation, so
// over a 100k fleet its cost is multiplied by 100k: these keep one
// expression's work small and bounded whatever an operator types.
const (
	// MaxSourceLen is the longest expression accepted, in bytes.
	MaxSourceLen = 4096
	// maxNodes bounds the checked AST, macro expansions included.
	maxNodes = 512
	// maxRecursion bounds parser nesting (deeply nested parentheses).
	maxRecursion = 32
	// MaxCost is the runtime cost budget of one evaluation, in cel-go cost
	// units (roughly one per operation, more for string work). An
	// evaluation that exceeds it fails and the device does not match.
	MaxCost = 10_000
)

// DeviceFacts is what an expression can see of one device.
type DeviceFacts struct {
	Device devicemodel.Device
	// Tags are the device's operator-assigned labels.
	Tags []string
	// Params are cached parameter values by full path.
	Params map[string]string
	// Listings are the tables Duet holds a complete listing of (for
	// policies' object Wants; expressions do not see them).
	Listings Listings
	// Now is the evaluation time (`now` in expressions); zero means
	// time.Now(). Callers evaluating a page set it once so every device of
	// the page is judged at the same instant.
	Now time.Time
}

// Variables of the environment, one per device fact. The names are the
// JSON names of the device API so operators write what they read.
var variables = []cel.EnvOption{
	cel.Variable("id", cel.StringType),
	cel.Variable("protocol", cel.StringType),
	cel.Variable("manufacturer", cel.StringType),
	cel.Variable("oui", cel.StringType),
	cel.Variable("product_class", cel.StringType),
	cel.Variable("serial_number", cel.StringType),
	cel.Variable("software_version", cel.StringType),
	cel.Variable("hardware_version", cel.StringType),
	cel.Variable("model_name", cel.StringType),
	cel.Variable("tags", cel.ListType(cel.StringType)),
	cel.Variable("online", cel.BoolType),
	cel.Variable("last_seen", cel.TimestampType),
	cel.Variable("now", cel.TimestampType),
	cel.Variable("params", cel.MapType(cel.StringType, cel.StringType)),
}

var env = sync.OnceValues(func() (*cel.Env, error) {
	opts := append([]cel.EnvOption{
		cel.ParserExpressionSizeLimit(MaxSourceLen),
		cel.ParserRecursionLimit(maxRecursion),
		cel.ExpressionNodeLimit(maxNodes),
		// lowerAscii, replace, split, substring, trim...: what building a
		// username or hostname from device facts needs.
		ext.Strings(),
	}, variables...)
	return cel.NewEnv(opts...)
})

// program is a checked expression ready to run.
type program struct {
	src  string
	ast  *cel.Ast
	prog cel.Program
	need ParamNeed
}

// compile parses, type-checks and plans src; check inspects the output
// type and returns a reason it is unacceptable ("" if fine).
func compile(kind, src string, check func(*cel.Type) string) (*program, error) {
	if strings.TrimSpace(src) == "" {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s is empty", kind)
	}
	if len(src) > MaxSourceLen {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s is %d bytes; the limit is %d", kind, len(src), MaxSourceLen)
	}
	e, err := env()
	if err != nil {
		return nil, fmt.Errorf("policy: CEL environment: %w", err)
	}
	ast, iss := e.Compile(src)
	if iss.Err() != nil {
		return nil, issueError(kind, iss.Errors())
	}
	if why := check(ast.OutputType()); why != "" {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s 1:1: %s", kind, why)
	}
	prog, err := e.Program(ast,
		cel.CostLimit(MaxCost),
		// Comprehensions check the budget as they go, not only at the end.
		cel.InterruptCheckFrequency(100),
	)
	if err != nil {
		// Planning can reject what checking allowed, e.g. a bad regex
		// literal.
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s: %v", kind, err)
	}
	return &program{src: src, ast: ast, prog: prog, need: paramNeed(ast)}, nil
}

// issueError turns cel-go's issues into one domain error. The position is
// 1-based line:column, as editors show it; cel-go's column is 0-based.
func issueError(kind string, errs []*cel.Error) error {
	if len(errs) == 0 {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s does not compile", kind)
	}
	var b strings.Builder
	for i, e := range errs {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(errs)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		line, col := 1, 1
		if e.Location != nil && e.Location.Line() > 0 {
			line, col = e.Location.Line(), e.Location.Column()+1
		}
		fmt.Fprintf(&b, "%d:%d: %s", line, col, e.Message)
	}
	return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s %s", kind, b.String())
}

// positionRE reads the position issueError (and compile) put at the
// start of a compile error's message: "<kind> <line>:<column>: ...".
var positionRE = regexp.MustCompile(`^(?:filter|value expression) (\d+):(\d+): `)

// ErrorPosition returns the 1-based line and column of the first problem
// of a CompileFilter or CompileValue error, for an editor to mark; ok is
// false for an error without one (an empty or oversized expression, a
// planning failure).
func ErrorPosition(err error) (line, col int, ok bool) {
	m := positionRE.FindStringSubmatch(devicemodel.ErrorMessage(err))
	if m == nil {
		return 0, 0, false
	}
	line, _ = strconv.Atoi(m[1])
	col, _ = strconv.Atoi(m[2])
	return line, col, true
}

// activation resolves variables from the facts on demand: a filter that
// reads two facts costs two lookups, not a map of fourteen per device
// (which dominated the membership benchmark).
type activation struct {
	f   *DeviceFacts
	now time.Time
}

var _ interpreter.Activation = activation{}

var (
	emptyTags   = []string{}
	emptyParams = map[string]string{}
)

func (a activation) ResolveName(name string) (any, bool) {
	d := &a.f.Device
	switch name {
	case "id":
		return d.ID, true
	case "protocol":
		return string(d.Protocol), true
	case "manufacturer":
		return d.Manufacturer, true
	case "oui":
		return d.OUI, true
	case "product_class":
		return d.ProductClass, true
	case "serial_number":
		return d.SerialNumber, true
	case "software_version":
		return d.SoftwareVersion, true
	case "hardware_version":
		return d.HardwareVersion, true
	case "model_name":
		return d.ModelName, true
	case "tags":
		if a.f.Tags == nil {
			return emptyTags, true
		}
		return a.f.Tags, true
	case "online":
		return d.Online, true
	case "last_seen":
		return d.LastSeen, true
	case "now":
		return a.now, true
	case "params":
		if a.f.Params == nil {
			return emptyParams, true
		}
		return a.f.Params, true
	}
	return nil, false
}

func (activation) Parent() interpreter.Activation { return nil }

// eval runs the program. Runtime failures (a key missing from params, the
// cost budget exceeded, an overflow) come back as CodeInvalidValue errors
// that name the device.
func (p *program) eval(kind string, f DeviceFacts) (any, error) {
	now := f.Now
	if now.IsZero() {
		now = time.Now()
	}
	out, _, err := p.prog.Eval(activation{f: &f, now: now})
	if err != nil {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidValue, "%s on device %s: %v", kind, f.Device.ID, err)
	}
	if types.IsError(out) {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidValue, "%s on device %s: %v", kind, f.Device.ID, out)
	}
	return out.Value(), nil
}

// Filter is a checked group filter.
type Filter struct {
	p *program
	// narrow is what the store can apply before the filter runs.
	narrow store.DeviceFilter
}

// CompileFilter checks a group filter: it must parse, type-check against
// the device facts, stay within the size limits and yield a bool. Errors
// are *devicemodel.Error with CodeInvalidArgument and a line:column.
func CompileFilter(src string) (*Filter, error) {
	p, err := compile("filter", src, func(t *cel.Type) string {
		if t.IsExactType(cel.BoolType) {
			return ""
		}
		return fmt.Sprintf("a filter must be a bool expression, this one is %s", t)
	})
	if err != nil {
		return nil, err
	}
	return &Filter{p: p, narrow: pushdown(p.ast)}, nil
}

// Source is the filter as written.
func (f *Filter) Source() string { return f.p.src }

// Params is which cached parameters the filter reads.
func (f *Filter) Params() ParamNeed { return f.p.need }

// Match reports whether the device is selected. An expression that cannot
// be evaluated for this device (params["X"] where X is not cached, the cost
// budget exceeded) does not match, and the reason comes back as a
// CodeInvalidValue error so the caller can count or show it: selecting a
// device on a failed evaluation would be the unsafe choice.
func (f *Filter) Match(d DeviceFacts) (bool, error) {
	v, err := f.p.eval("filter", d)
	if err != nil {
		return false, err
	}
	b, ok := v.(bool)
	if !ok {
		// The checker proved bool; a dyn escape hatch is the only way here.
		return false, devicemodel.Errorf(devicemodel.CodeInvalidValue, "filter on device %s: result is %T, not bool", d.Device.ID, v)
	}
	return b, nil
}

// Value is a checked per-device value expression.
type Value struct{ p *program }

// CompileValue checks an expression that computes a parameter value per
// device, e.g. `"pppoe-" + serial_number`. It must yield a string, int,
// uint or bool: the types a TR-069/TR-369 parameter value is written from.
func CompileValue(src string) (*Value, error) {
	p, err := compile("value expression", src, func(t *cel.Type) string {
		for _, ok := range []*cel.Type{cel.StringType, cel.IntType, cel.UintType, cel.BoolType} {
			if t.IsExactType(ok) {
				return ""
			}
		}
		return fmt.Sprintf("a value expression must be a string, int, uint or bool, this one is %s", t)
	})
	if err != nil {
		return nil, err
	}
	return &Value{p: p}, nil
}

// Source is the expression as written.
func (v *Value) Source() string { return v.p.src }

// Params is which cached parameters the expression reads.
func (v *Value) Params() ParamNeed { return v.p.need }

// Eval computes the value for one device in its wire form: strings as they
// are, integers in decimal, booleans as "true"/"false" (the TR-069 and USP
// boolean spelling). Failures are CodeInvalidValue.
func (v *Value) Eval(d DeviceFacts) (string, error) {
	out, err := v.p.eval("value expression", d)
	if err != nil {
		return "", err
	}
	switch x := out.(type) {
	case string:
		return x, nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case bool:
		return strconv.FormatBool(x), nil
	}
	return "", devicemodel.Errorf(devicemodel.CodeInvalidValue, "value expression on device %s: result is %T", d.Device.ID, out)
}

// IsEvalError reports whether err is a per-device evaluation failure (as
// opposed to a store or context error).
func IsEvalError(err error) bool {
	var e *devicemodel.Error
	return errors.As(err, &e) && e.Code == devicemodel.CodeInvalidValue
}
