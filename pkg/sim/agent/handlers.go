package agent

import (
	"strconv"
	"strings"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// read returns the value of obj+name, computing the dynamic ones.
func (a *Agent) read(obj, name string) string {
	switch obj + name {
	case "Device.DeviceInfo.UpTime", "Device.LocalAgent.UpTime":
		return strconv.FormatInt(int64(a.cfg.Now().Sub(a.bootTime).Seconds()), 10)
	case "Device.WiFi.SSIDNumberOfEntries":
		return strconv.Itoa(len(a.m.instances("Device.WiFi.SSID.")))
	case "Device.NAT.PortMappingNumberOfEntries":
		return strconv.Itoa(len(a.m.instances("Device.NAT.PortMapping.")))
	}
	return a.m.values[obj+name]
}

func (a *Agent) objectParams(obj string) map[string]string {
	d := defOf(obj)
	if d == nil || len(d.params) == 0 {
		return nil
	}
	out := make(map[string]string, len(d.params))
	for _, p := range d.params {
		out[p.name] = a.read(obj, p.name)
	}
	return out
}

// isSearch reports whether p is a search path: "*" or "[expr]" (TR-369 "Path Names").
func isSearch(p string) bool { return strings.ContainsAny(p, "*[") }

// level is the depth of obj below base for Get.max_depth: base itself is 1,
// and a table row counts as one level with its table (TR-369 "Get").
func level(base, obj string) uint32 {
	rel := strings.TrimPrefix(obj, base)
	n := uint32(1)
	for _, s := range strings.Split(strings.TrimSuffix(rel, "."), ".") {
		if s != "" && !isInstance(s) {
			n++
		}
	}
	return n
}

// get answers one Get (TR-369 "Get"): object paths give their subtree, one
// ResolvedPathResult per object; parameter paths give the parameter under
// its parent object. A missing plain path, or a search path outside the
// supported model, gives 7026.
func (a *Agent) get(g *uspmsg.Get) *uspmsg.GetResp {
	out := &uspmsg.GetResp{}
	for _, p := range g.GetParamPaths() {
		out.ReqPathResults = append(out.ReqPathResults, a.getPath(p, g.GetMaxDepth()))
	}
	return out
}

func (a *Agent) getPath(p string, depth uint32) *uspmsg.GetResp_RequestedPathResult {
	res := &uspmsg.GetResp_RequestedPathResult{RequestedPath: p}
	fail := func(code uint32, msg string) *uspmsg.GetResp_RequestedPathResult {
		res.ErrCode, res.ErrMsg = code, msg
		return res
	}
	if strings.ContainsAny(p, "{}") {
		return fail(usp.ErrCodeInvalidPathSyntax, "{i} is not valid in an instantiated path")
	}
	if !strings.HasPrefix(p, "Device.") {
		return fail(usp.ErrCodeInvalidPath, "invalid path")
	}
	if strings.HasSuffix(p, ".") {
		if defOf(p) == nil && !isTablePath(p) {
			return fail(usp.ErrCodeInvalidPath, "path not in the supported data model")
		}
		if !isSearch(p) && !isTablePath(p) && !a.m.objects[p] {
			return fail(usp.ErrCodeInvalidPath, "object does not exist")
		}
		var objs []string
		for o := range a.m.objects {
			if a.m.matchPrefix(p, o) {
				objs = append(objs, o)
			}
		}
		sortPaths(objs)
		for _, o := range objs {
			if depth != 0 && level(p, o) > depth {
				continue
			}
			if params := a.objectParams(o); params != nil {
				res.ResolvedPathResults = append(res.ResolvedPathResults, &uspmsg.GetResp_ResolvedPathResult{ResolvedPath: o, ResultParams: params})
			}
		}
		return res
	}
	obj, name := devicemodel.SplitParameter(p)
	d := defOf(obj)
	if d == nil || d.param(name) == nil {
		return fail(usp.ErrCodeInvalidPath, "parameter not in the supported data model")
	}
	objs := a.m.resolveObjects(obj)
	if len(objs) == 0 && !isSearch(p) {
		return fail(usp.ErrCodeInvalidPath, "object does not exist")
	}
	for _, o := range objs {
		res.ResolvedPathResults = append(res.ResolvedPathResults, &uspmsg.GetResp_ResolvedPathResult{
			ResolvedPath: o, ResultParams: map[string]string{name: a.read(o, name)},
		})
	}
	return res
}

// getInstances answers GetInstances (TR-369 "GetInstances").
func (a *Agent) getInstances(g *uspmsg.GetInstances) *uspmsg.GetInstancesResp {
	out := &uspmsg.GetInstancesResp{}
	for _, p := range g.GetObjPaths() {
		res := &uspmsg.GetInstancesResp_RequestedPathResult{RequestedPath: p}
		out.ReqPathResults = append(out.ReqPathResults, res)
		switch {
		case !strings.HasSuffix(p, ".") || (defOf(p) == nil && !isTablePath(p)):
			res.ErrCode, res.ErrMsg = usp.ErrCodeInvalidPath, "path not in the supported data model"
			continue
		case !isTablePath(p) && !defOf(p).multi:
			res.ErrCode, res.ErrMsg = usp.ErrCodeObjectNotTable, "not a multi-instance object"
			continue
		}
		var rows []string
		for o := range a.m.objects {
			segs := splitPath(o)
			if !a.m.matchPrefix(p, o) || !isInstance(segs[len(segs)-1]) {
				continue
			}
			// first_level_only: only rows of the matched table itself.
			if g.GetFirstLevelOnly() && len(segs) != len(splitPath(p))+boolInt(isTablePath(p)) {
				continue
			}
			rows = append(rows, o)
		}
		sortPaths(rows)
		for _, o := range rows {
			res.CurrInsts = append(res.CurrInsts, &uspmsg.GetInstancesResp_CurrInstance{InstantiatedObjPath: o, UniqueKeys: a.uniqueKeys(a.m, o)})
		}
	}
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (a *Agent) uniqueKeys(m *model, inst string) map[string]string {
	d := defOf(inst)
	if d == nil || len(d.keys) == 0 {
		return nil
	}
	out := map[string]string{}
	for _, set := range d.keys {
		for _, k := range set {
			out[k] = m.values[inst+k]
		}
	}
	return out
}

// duplicateKey reports whether inst shares a complete unique key set with
// another row of its table (7025).
func duplicateKey(m *model, inst string) (string, bool) {
	d := defOf(inst)
	if d == nil {
		return "", false
	}
	table, _ := devicemodel.SplitParameter(strings.TrimSuffix(inst, "."))
	for _, other := range m.instances(table) {
		if other == inst {
			continue
		}
		for _, set := range d.keys {
			same := true
			for _, k := range set {
				if m.values[inst+k] != m.values[other+k] {
					same = false
					break
				}
			}
			if same && !(len(set) == 1 && m.values[inst+set[0]] == "") {
				return strings.Join(set, "+"), true
			}
		}
	}
	return "", false
}

// getSupportedDM answers GetSupportedDM (TR-369 "GetSupportedDM") from the schema.
func (a *Agent) getSupportedDM(g *uspmsg.GetSupportedDM) *uspmsg.GetSupportedDMResp {
	out := &uspmsg.GetSupportedDMResp{}
	for _, p := range g.GetObjPaths() {
		res := &uspmsg.GetSupportedDMResp_RequestedObjectResult{ReqObjPath: p, DataModelInstUri: "urn:broadband-forum-org:tr-181-2-19-1"}
		out.ReqObjResults = append(out.ReqObjResults, res)
		base := supportedOf(p)
		if _, ok := schema.byPath[base]; !ok {
			if _, ok := schema.byPath[base+"{i}."]; ok {
				base += "{i}."
			} else {
				res.ErrCode, res.ErrMsg = usp.ErrCodeInvalidPath, "path not in the supported data model"
				continue
			}
		}
		baseDepth := len(splitPath(base))
		for _, sp := range schema.order {
			if !strings.HasPrefix(sp, base) {
				continue
			}
			d := schema.byPath[sp]
			rel := len(splitPath(sp)) - baseDepth
			if d.multi {
				rel-- // a row sits at its table's level
			}
			if g.GetFirstLevelOnly() && rel > 1 {
				continue
			}
			so := &uspmsg.GetSupportedDMResp_SupportedObjectResult{SupportedObjPath: sp, IsMultiInstance: d.multi}
			if d.creatable {
				so.Access = uspmsg.GetSupportedDMResp_OBJ_ADD_DELETE
			}
			details := !g.GetFirstLevelOnly() || rel == 0
			if details && g.GetReturnParams() {
				for _, pd := range d.params {
					acc := uspmsg.GetSupportedDMResp_PARAM_READ_ONLY
					if pd.writable {
						acc = uspmsg.GetSupportedDMResp_PARAM_READ_WRITE
					}
					so.SupportedParams = append(so.SupportedParams, &uspmsg.GetSupportedDMResp_SupportedParamResult{
						ParamName: pd.name, Access: acc, ValueType: pd.typ.protoType(),
						ValueChange: uspmsg.GetSupportedDMResp_VALUE_CHANGE_ALLOWED,
					})
				}
			}
			if details && g.GetReturnCommands() {
				for _, c := range d.commands {
					ct := uspmsg.GetSupportedDMResp_CMD_SYNC
					if c.async {
						ct = uspmsg.GetSupportedDMResp_CMD_ASYNC
					}
					so.SupportedCommands = append(so.SupportedCommands, &uspmsg.GetSupportedDMResp_SupportedCommandResult{
						CommandName: c.name, InputArgNames: c.inputs, OutputArgNames: c.output, CommandType: ct,
					})
				}
			}
			if details && g.GetReturnEvents() {
				for _, e := range d.events {
					so.SupportedEvents = append(so.SupportedEvents, &uspmsg.GetSupportedDMResp_SupportedEventResult{EventName: e})
				}
			}
			if details && g.GetReturnUniqueKeySets() {
				for _, set := range d.keys {
					so.UniqueKeySets = append(so.UniqueKeySets, &uspmsg.GetSupportedDMResp_SupportedUniqueKeySet{KeyNames: set})
				}
			}
			res.SupportedObjs = append(res.SupportedObjs, so)
		}
	}
	return out
}
