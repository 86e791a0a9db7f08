package policy

import (
	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// pushdown finds conditions the database can apply before the filter
// runs: top-level conjuncts of the form `column == "literal"` (either
// way round) on an indexed device column, and `online` / `!online`. Each
// conjunct of a conjunction is implied by it (CEL's && is false whenever
// either side is false, errors included), so narrowing the scan by any of
// them never drops a member; the filter still runs on every row fetched.
// With two conditions on one column the later one is kept, which is just
// as implied.
func pushdown(ast *cel.Ast) store.DeviceFilter {
	var f store.DeviceFilter
	var walk func(e celast.Expr)
	walk = func(e celast.Expr) {
		switch e.Kind() {
		case celast.IdentKind:
			if e.AsIdent() == "online" {
				t := true
				f.Online = &t
			}
		case celast.CallKind:
			c := e.AsCall()
			args := c.Args()
			if c.IsMemberFunction() {
				return
			}
			switch c.FunctionName() {
			case operators.LogicalAnd:
				for _, a := range args {
					walk(a)
				}
			case operators.LogicalNot:
				if len(args) == 1 && args[0].Kind() == celast.IdentKind && args[0].AsIdent() == "online" {
					v := false
					f.Online = &v
				}
			case operators.Equals:
				if len(args) != 2 {
					return
				}
				name, lit, ok := identLiteral(args[0], args[1])
				if !ok {
					name, lit, ok = identLiteral(args[1], args[0])
				}
				if !ok {
					return
				}
				switch name {
				case "protocol":
					f.Protocol = devicemodel.Protocol(lit)
				case "manufacturer":
					f.Manufacturer = lit
				case "product_class":
					f.ProductClass = lit
				case "software_version":
					f.SoftwareVersion = lit
				}
			}
		}
	}
	walk(ast.NativeRep().Expr())
	return f
}

// identLiteral matches an identifier compared with a string literal.
func identLiteral(a, b celast.Expr) (string, string, bool) {
	if a.Kind() != celast.IdentKind || b.Kind() != celast.LiteralKind {
		return "", "", false
	}
	s, ok := b.AsLiteral().(types.String)
	return a.AsIdent(), string(s), ok
}
