package store

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// searchExpr is the text free-text search (DeviceFilter.Query) looks in:
// the identity fields joined by U+001F, lower-cased. It must stay
// identical to the expression of devices_search_trgm_idx
// (migrations/0006_search.sql), or the planner cannot use that index.
const searchExpr = `lower(id || E'\x1f' || serial_number || E'\x1f' || manufacturer || E'\x1f' || oui || E'\x1f' || ` +
	`product_class || E'\x1f' || model_name || E'\x1f' || software_version)`

// MaxQueryLen bounds DeviceFilter.Query.
const MaxQueryLen = 256

// CheckQuery validates a free-text search string: at most MaxQueryLen
// bytes of UTF-8 without control characters (U+001F separates the fields
// searched).
func CheckQuery(q string) error {
	if len(q) > MaxQueryLen {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "longer than %d bytes", MaxQueryLen)
	}
	if !utf8.ValidString(q) {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "not valid UTF-8")
	}
	for i, r := range q {
		if unicode.IsControl(r) {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "control character at byte %d", i)
		}
	}
	return nil
}

// ParamOp is the comparison of a ParamCondition.
type ParamOp string

// Parameter comparisons. Eq, Ne and Prefix compare the cached value as
// text; Lt, Le, Gt and Ge as numbers (a cached value that is not a
// number never matches them).
const (
	ParamEq     ParamOp = "eq"
	ParamNe     ParamOp = "ne"
	ParamPrefix ParamOp = "prefix"
	ParamLt     ParamOp = "lt"
	ParamLe     ParamOp = "le"
	ParamGt     ParamOp = "gt"
	ParamGe     ParamOp = "ge"
)

var paramOpSQL = map[ParamOp]string{ParamLt: "<", ParamLe: "<=", ParamGt: ">", ParamGe: ">="}

// numericRE is what counts as a number for lt/le/gt/ge, on both sides.
// It is a subset of what PostgreSQL's numeric input accepts, bounded so
// that a cast of a matching value can never fail (no NaN, Infinity, or
// exponent beyond numeric's range). The same pattern runs in Go (for the
// operand) and in SQL (for the cached value).
const numericRE = `^\s*[-+]?([0-9]{1,100}(\.[0-9]{0,100})?|\.[0-9]{1,100})([eE][-+]?[0-9]{1,3})?\s*$`

var numericGo = regexp.MustCompile(numericRE)

// ParamCondition selects devices whose cached value of Path compares to
// Value with Op. A device without a cached value for Path matches no
// condition on it, not even ne.
type ParamCondition struct {
	Path  string  `json:"path"`
	Op    ParamOp `json:"op"`
	Value string  `json:"value"`
}

// String is the condition in the syntax ParseParamCondition reads.
func (c ParamCondition) String() string { return c.Path + ":" + string(c.Op) + ":" + c.Value }

// ParseParamCondition reads "<path>:<op>:<value>", e.g.
// "Device.DeviceInfo.ModelName:eq:HG8245". A parameter path never holds
// ':', so the first ':' ends the path and the second the operator;
// everything after it is the value, ':' included
// ("Device.X:eq:a:b" compares with "a:b"). Errors are
// CodeInvalidPath with the position for a bad path (ParsePath's), and
// CodeInvalidArgument for a missing part, an unknown operator or a
// non-numeric operand of lt/le/gt/ge.
func ParseParamCondition(s string) (ParamCondition, error) {
	path, rest, ok := strings.Cut(s, ":")
	if !ok {
		return ParamCondition{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument,
			"%q: want <path>:<op>:<value>, op one of eq, ne, prefix, lt, le, gt, ge", s)
	}
	op, value, ok := strings.Cut(rest, ":")
	if !ok {
		return ParamCondition{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument,
			"%q: no value after the operator (want <path>:<op>:<value>)", s)
	}
	c := ParamCondition{Path: path, Op: ParamOp(op), Value: value}
	return c, c.Check()
}

// Check validates a condition (see ParseParamCondition for the errors).
func (c ParamCondition) Check() error {
	p, err := devicemodel.ParsePath(c.Path, false)
	if err != nil {
		if se, ok := err.(*devicemodel.PathSyntaxError); ok {
			return se.AsError()
		}
		return err
	}
	if p.Kind != devicemodel.PathParameter {
		return devicemodel.Errorf(devicemodel.CodeInvalidPath, "%q is a %s path; a condition needs a parameter", c.Path, p.Kind)
	}
	switch c.Op {
	case ParamEq, ParamNe, ParamPrefix:
	case ParamLt, ParamLe, ParamGt, ParamGe:
		if !numericGo.MatchString(c.Value) {
			return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%s: %q is not a number", c.Op, c.Value)
		}
	default:
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "operator %q is unknown; one of eq, ne, prefix, lt, le, gt, ge", c.Op)
	}
	if len(c.Value) > 4096 {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "value is longer than 4096 bytes")
	}
	return nil
}

// sql returns the condition as an EXISTS probe of the table holding
// Path's values, its arguments numbered after args: indexed (a path
// configured and backfilled, see paramsearch.go) in
// device_parameter_search, whose value indexes let the planner start from
// the devices a selective condition matches, or else device_parameters,
// probed by its key for each candidate device.
func (c ParamCondition) sql(args []any, partition string) (string, []any) {
	if partition != "" {
		return c.indexedSQL(partition, args)
	}
	args = append(args, c.Path, c.Value)
	pa, va := len(args)-1, len(args)
	var cmp string
	switch c.Op {
	case ParamEq:
		cmp = fmt.Sprintf("p.value = $%d", va)
	case ParamNe:
		cmp = fmt.Sprintf("p.value <> $%d", va)
	case ParamPrefix:
		cmp = fmt.Sprintf("starts_with(p.value, $%d)", va)
	default:
		// CASE evaluates the cast only for values that pass numericRE,
		// so a non-numeric cached value is NULL (no match), never an
		// error. The operand passed the same pattern in Check.
		cmp = fmt.Sprintf("(CASE WHEN p.value ~ '%s' THEN p.value::numeric END) %s $%d::numeric",
			numericRE, paramOpSQL[c.Op], va)
	}
	return fmt.Sprintf("EXISTS (SELECT 1 FROM device_parameters p WHERE p.device_id = devices.id AND p.path = $%d AND %s)", pa, cmp), args
}

// indexedSQL is sql's condition on partition, the path's partition of
// device_parameter_search (0100). eq, ne and prefix compare vkey, the
// value's first indexedPrefixLen characters, which the partition's
// indexes hold: for an operand shorter than that, vkey decides alone
// (vkey = x is value = x when x is shorter, and vkey starts with x when
// value does), so the planner estimates from the index's own statistics
// and the page reads no table row. A longer operand also compares the
// whole value. lt, le, gt, ge compare num, the value as a number (NULL,
// no match, for a value that is not one).
func (c ParamCondition) indexedSQL(partition string, args []any) (string, []any) {
	args = append(args, c.Path)
	pa := len(args)
	short := utf8.RuneCountInString(c.Value) < indexedPrefixLen
	var cmp string
	switch {
	case c.Op == ParamPrefix && short:
		args = append(args, likeEscape(c.Value)+"%")
		cmp = fmt.Sprintf("s.vkey LIKE $%d", len(args))
	case c.Op == ParamPrefix:
		args = append(args, c.Value)
		cmp = fmt.Sprintf("s.vkey = left($%[1]d, %[2]d) AND starts_with(s.value, $%[1]d)", len(args), indexedPrefixLen)
	case (c.Op == ParamEq || c.Op == ParamNe) && short:
		args = append(args, c.Value)
		cmp = fmt.Sprintf("s.vkey %s $%d", map[ParamOp]string{ParamEq: "=", ParamNe: "<>"}[c.Op], len(args))
	case c.Op == ParamEq:
		args = append(args, c.Value)
		cmp = fmt.Sprintf("s.vkey = left($%[1]d, %[2]d) AND s.value = $%[1]d", len(args), indexedPrefixLen)
	case c.Op == ParamNe:
		args = append(args, c.Value)
		cmp = fmt.Sprintf("s.value <> $%d", len(args))
	default:
		args = append(args, c.Value)
		cmp = fmt.Sprintf("s.num %s $%d::numeric", paramOpSQL[c.Op], len(args))
	}
	return fmt.Sprintf("EXISTS (SELECT 1 FROM %s s WHERE s.device_id = devices.id AND s.path = $%d AND %s)", partition, pa, cmp), args
}

// DeviceSort orders FindDevices. The zero value is by ID, ascending.
type DeviceSort struct {
	// Field is one of SortFields ("" means id).
	Field string
	Desc  bool
}

// SortFields are the columns a device list can be sorted by; each has a
// (column, id) index (0001, 0006) so every keyset page is a range scan.
var SortFields = []string{"id", "last_seen", "serial_number", "manufacturer", "product_class", "software_version"}

// ParseDeviceSort reads "field" or "-field" (descending). CodeInvalidArgument
// for another field.
func ParseDeviceSort(s string) (DeviceSort, error) {
	var o DeviceSort
	if strings.HasPrefix(s, "-") {
		o.Desc, s = true, s[1:]
	}
	for _, f := range SortFields {
		if s == f {
			o.Field = f
			return o, nil
		}
	}
	return o, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%q is not a sort; one of %s, each with - for descending", s, strings.Join(SortFields, ", "))
}

func (o DeviceSort) field() string {
	if o.Field == "" {
		return "id"
	}
	return o.Field
}

// String is the sort in ParseDeviceSort's syntax.
func (o DeviceSort) String() string {
	if o.Desc {
		return "-" + o.field()
	}
	return o.field()
}

// sortKey is d's value of the sort column, as a cursor carries it.
func (o DeviceSort) sortKey(d devicemodel.Device) string {
	switch o.field() {
	case "last_seen":
		return d.LastSeen.UTC().Format(time.RFC3339Nano)
	case "serial_number":
		return d.SerialNumber
	case "manufacturer":
		return d.Manufacturer
	case "product_class":
		return d.ProductClass
	case "software_version":
		return d.SoftwareVersion
	}
	return d.ID
}

// deviceCursor is a page cursor under a sort other than id: the sort it
// belongs to, the last device's sort key and its ID.
type deviceCursor struct {
	Sort string `json:"s"`
	Key  string `json:"k"`
	ID   string `json:"id"`
}

// EncodeDeviceCursor is the cursor of the page after d under sort o. By
// ID it is EncodeCursor(d.ID), the cursor every ID-ordered list uses.
func EncodeDeviceCursor(o DeviceSort, d devicemodel.Device) string {
	if o.field() == "id" {
		return EncodeCursor(d.ID)
	}
	b, _ := json.Marshal(deviceCursor{Sort: o.String(), Key: o.sortKey(d), ID: d.ID})
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeDeviceCursor reverses EncodeDeviceCursor for sort o and returns
// the values for DeviceFilter.After and AfterKey. A cursor made under
// another sort is CodeInvalidArgument.
func DecodeDeviceCursor(o DeviceSort, c string) (afterID, afterKey string, err error) {
	if o.field() == "id" {
		id, err := DecodeCursor(c)
		return id, "", err
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	var dc deviceCursor
	if err != nil || json.Unmarshal(b, &dc) != nil || dc.ID == "" {
		return "", "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "malformed cursor")
	}
	if dc.Sort != o.String() {
		return "", "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "cursor belongs to sort=%s, not sort=%s", dc.Sort, o.String())
	}
	if o.field() == "last_seen" {
		if _, err := time.Parse(time.RFC3339Nano, dc.Key); err != nil {
			return "", "", devicemodel.Errorf(devicemodel.CodeInvalidArgument, "malformed cursor")
		}
	}
	return dc.ID, dc.Key, nil
}

// keysetSQL is the ORDER BY and the "after the cursor" condition of sort o,
// its arguments numbered after args.
func (o DeviceSort) keysetSQL(after, afterKey string, args []any) (cond, order string, _ []any, err error) {
	dir, cmp := "", ">"
	if o.Desc {
		dir, cmp = " DESC", "<"
	}
	col := o.field()
	if col == "id" {
		order = "id" + dir
		if after != "" {
			args = append(args, after)
			cond = fmt.Sprintf("id %s $%d", cmp, len(args))
		}
		return cond, order, args, nil
	}
	order = col + dir + ", id" + dir
	if after != "" {
		var key any = afterKey
		if col == "last_seen" {
			t, err := time.Parse(time.RFC3339Nano, afterKey)
			if err != nil {
				return "", "", nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "malformed cursor")
			}
			key = t
		}
		args = append(args, key, after)
		// A row comparison: the (column, id) btree serves it as one range.
		cond = fmt.Sprintf("(%s, id) %s ($%d, $%d)", col, cmp, len(args)-1, len(args))
	}
	return cond, order, args, nil
}

// MaxTagLen bounds a device tag (device_tags' CHECK).
const MaxTagLen = 128

// CheckTag validates an operator tag: 1 to MaxTagLen bytes of ASCII
// letters, digits and - _ . : / (so a tag reads the same in a URL path, a
// query and a CEL filter).
func CheckTag(tag string) error {
	if tag == "" {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "tag is empty")
	}
	if len(tag) > MaxTagLen {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "tag is %d bytes, more than %d", len(tag), MaxTagLen)
	}
	for i := 0; i < len(tag); i++ {
		c := tag[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.:/", c) >= 0 {
			continue
		}
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument,
			"tag %q has %q at byte %d; allowed are letters, digits and - _ . : /", tag, rune(c), i)
	}
	return nil
}

// CountDevicesWithoutParams returns, for each distinct path of f.Params,
// how many devices matching f's other filters (not its param conditions,
// cursor or limit) have no cached value for it: the devices a condition
// on that path cannot judge. One count per path; like the param
// conditions, each is a probe of device_parameters' key per candidate.
func (s *Store) CountDevicesWithoutParams(ctx context.Context, f DeviceFilter) (map[string]int64, error) {
	out := map[string]int64{}
	base := f
	base.Params = nil
	indexed, err := s.indexedPaths(ctx, f.Params)
	if err != nil {
		return nil, err
	}
	for _, c := range f.Params {
		if _, done := out[c.Path]; done {
			continue
		}
		where, args := deviceConditions(base, nil, nil)
		if t := indexed[c.Path]; t != "" && len(where) == 0 {
			// Every device with a value has one row in the path's
			// partition: the registry's size less the partition's is two
			// index-only counts, not an anti-join over both.
			var n int64
			q := fmt.Sprintf("SELECT (SELECT count(*) FROM devices) - (SELECT count(*) FROM %s)", t)
			if err := s.pool.QueryRow(ctx, q).Scan(&n); err != nil {
				return nil, fmt.Errorf("store: count devices without %s: %w", c.Path, err)
			}
			out[c.Path] = n
			continue
		}
		args = append(args, c.Path)
		// device_parameter_search holds every cached value of an indexed
		// path, numbers or not.
		table := "device_parameters"
		if t := indexed[c.Path]; t != "" {
			table = t
		}
		where = append(where, fmt.Sprintf("NOT EXISTS (SELECT 1 FROM %s p WHERE p.device_id = devices.id AND p.path = $%d)", table, len(args)))
		var n int64
		q := "SELECT count(*) FROM devices WHERE " + strings.Join(where, " AND ")
		if err := s.pool.QueryRow(ctx, q, append([]any{customPlan}, args...)...).Scan(&n); err != nil {
			return nil, fmt.Errorf("store: count devices without %s: %w", c.Path, err)
		}
		out[c.Path] = n
	}
	return out, nil
}
