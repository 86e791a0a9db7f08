package policy

import (
	"slices"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
)

// ParamNeed says which cached parameters an expression reads, so a page of
// devices loads those rows and not every parameter of every device (a
// device can have hundreds).
type ParamNeed struct {
	// All is set when the expression uses params other than with a
	// literal key (iterating it, a computed key): then every cached
	// parameter of the device is loaded.
	All bool
	// Paths are the literal keys: params["P"], "P" in params, params.P.
	Paths []string
	// Prefixes are subtrees read whole (an object table whose instances a
	// policy looks for): every cached parameter under each.
	Prefixes []string
}

// None reports whether nothing needs loading.
func (n ParamNeed) None() bool { return !n.All && len(n.Paths) == 0 && len(n.Prefixes) == 0 }

// Union is the parameters either need reads.
func (n ParamNeed) Union(o ParamNeed) ParamNeed {
	if n.All || o.All {
		return ParamNeed{All: true}
	}
	paths := slices.Concat(n.Paths, o.Paths)
	slices.Sort(paths)
	prefixes := slices.Concat(n.Prefixes, o.Prefixes)
	slices.Sort(prefixes)
	return ParamNeed{Paths: slices.Compact(paths), Prefixes: slices.Compact(prefixes)}
}

// paramNeed walks a checked AST. Every reference to the params variable
// must be the map operand of a literal-key access; any other reference
// (including a comprehension variable that shadows the name) makes the
// need All, which costs more rows but is never wrong.
func paramNeed(ast *cel.Ast) ParamNeed {
	covered := map[int64]bool{}
	var refs []int64
	var paths []string
	isParams := func(e celast.Expr) bool {
		return e.Kind() == celast.IdentKind && e.AsIdent() == "params"
	}
	literal := func(e celast.Expr) (string, bool) {
		if e.Kind() != celast.LiteralKind {
			return "", false
		}
		s, ok := e.AsLiteral().(types.String)
		return string(s), ok
	}
	celast.PreOrderVisit(ast.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.IdentKind:
			if isParams(e) {
				refs = append(refs, e.ID())
			}
		case celast.SelectKind:
			if s := e.AsSelect(); isParams(s.Operand()) {
				covered[s.Operand().ID()] = true
				paths = append(paths, s.FieldName())
			}
		case celast.CallKind:
			c := e.AsCall()
			args := c.Args()
			if len(args) != 2 || c.IsMemberFunction() {
				return
			}
			var m, k celast.Expr
			switch c.FunctionName() {
			case operators.Index, operators.OptIndex:
				m, k = args[0], args[1]
			case operators.In, operators.OldIn:
				k, m = args[0], args[1]
			default:
				return
			}
			if key, ok := literal(k); ok && isParams(m) {
				covered[m.ID()] = true
				paths = append(paths, key)
			}
		}
	}))
	for _, id := range refs {
		if !covered[id] {
			return ParamNeed{All: true}
		}
	}
	return ParamNeed{}.Union(ParamNeed{Paths: paths})
}
