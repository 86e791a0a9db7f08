package cwmp

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"mime"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Decode errors. Hostile-input errors are distinct so the ACS can log and
// count them; all of them mean "answer 400" (TR-069 §3.4).
var (
	ErrBodyTooLarge        = errors.New("cwmp: body larger than the limit")
	ErrTooDeep             = errors.New("cwmp: elements nested deeper than the limit")
	ErrTooManyElements     = errors.New("cwmp: more elements and attributes than the limit")
	ErrDTD                 = errors.New("cwmp: DOCTYPE and other DTD directives are not allowed")
	ErrUnsupportedCharset  = errors.New("cwmp: unsupported charset")
	ErrUnsupportedEncoding = errors.New("cwmp: unsupported Content-Encoding")
	ErrMalformed           = errors.New("cwmp: malformed envelope")
	// ErrEnvelopeNamespace: the root is not a SOAP 1.1 Envelope
	// (TR-069 A.2.1 mandates SOAP 1.1; a SOAP 1.2 or made-up namespace is
	// another protocol, not a vendor quirk).
	ErrEnvelopeNamespace = errors.New("cwmp: Envelope is not in the SOAP 1.1 namespace " + NamespaceSOAPEnv)
	// ErrCWMPNamespace: the method element is not in any
	// urn:dslforum-org:cwmp-1-* namespace (TR-069 A.3.1; docs/cwmp-interop.md #2).
	ErrCWMPNamespace = errors.New("cwmp: method is not in a urn:dslforum-org:cwmp-1-* namespace")
	// ErrTrailingData: something other than white space, comments or
	// processing instructions follows the Envelope.
	ErrTrailingData = errors.New("cwmp: data after the Envelope")
)

// Limits bound what Decode accepts. Zero fields take the DefaultLimits value.
type Limits struct {
	MaxBodySize int // bytes of the (decompressed) body; default 4 MiB
	MaxDepth    int // element nesting; default 32 (an Inform needs 6)
	MaxElements int // elements plus attributes in the whole document; default 200000
}

// DefaultLimits is used by Decode.
var DefaultLimits = Limits{MaxBodySize: 4 << 20, MaxDepth: 32, MaxElements: 200000}

func (l Limits) withDefaults() Limits {
	if l.MaxBodySize <= 0 {
		l.MaxBodySize = DefaultLimits.MaxBodySize
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultLimits.MaxDepth
	}
	if l.MaxElements <= 0 {
		l.MaxElements = DefaultLimits.MaxElements
	}
	return l
}

// Decode parses one SOAP message with DefaultLimits. contentType is the
// HTTP Content-Type header ("" when absent). An empty message (0 bytes,
// white space only, an Envelope without a Body child) decodes to an
// Envelope whose Body is nil (docs/cwmp-interop.md #6).
func Decode(body []byte, contentType string) (*Envelope, error) {
	return DefaultLimits.Decode(body, contentType)
}

// Decode parses one SOAP message within the limits l.
func (l Limits) Decode(body []byte, contentType string) (*Envelope, error) {
	l = l.withDefaults()
	if len(body) > l.MaxBodySize {
		return nil, ErrBodyTooLarge
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return &Envelope{}, nil
	}
	text, err := toUTF8(body, contentType)
	if err != nil {
		return nil, err
	}
	// C stacks may send their string terminator (and, padded buffers,
	// more NULs) after the envelope; NUL is not XML, so trim it here.
	text = bytes.TrimRight(text, "\x00")
	root, err := parseTree(text, l)
	if err != nil {
		return nil, err
	}
	if root == nil {
		// Only a declaration, comments or white space: a child-less document
		// is the empty POST as well (docs/cwmp-interop.md #6).
		return &Envelope{}, nil
	}
	if root.local != "Envelope" {
		return nil, fmt.Errorf("%w: root element is %q, not Envelope", ErrMalformed, root.local)
	}
	if root.space != NamespaceSOAPEnv {
		return nil, fmt.Errorf("%w (got %q)", ErrEnvelopeNamespace, root.space)
	}
	env := &Envelope{}
	for _, a := range root.attrs {
		if a.Name.Space == "xmlns" && IsCWMPNamespace(a.Value) && env.Namespace == "" {
			env.Namespace = a.Value
		}
	}
	if h := root.child("Header"); h != nil {
		decodeHeader(h, env)
	}
	b := root.child("Body")
	if b == nil || len(b.kids) == 0 {
		return env, nil
	}
	m := b.kids[0]
	if IsCWMPNamespace(m.space) {
		// The method element's namespace is the one to echo (TR-069 §3.5).
		env.Namespace = m.space
	} else if m.local != "Fault" || m.space != NamespaceSOAPEnv {
		// Every CWMP method is in the cwmp namespace; only a SOAP Fault is
		// in the envelope's (TR-069 A.3.1, A.4).
		return nil, fmt.Errorf("%w (%s in %q)", ErrCWMPNamespace, m.local, m.space)
	}
	if m.local == "Fault" {
		f, err := decodeFault(m)
		if err != nil {
			return nil, err
		}
		env.Body = f
		return env, nil
	}
	mk, ok := newMessage[m.local]
	if !ok {
		env.Body = &UnknownMethod{Name: m.local}
		return env, nil
	}
	msg := mk()
	if err := decodeStruct(m, valueOf(msg).Elem()); err != nil {
		return nil, fmt.Errorf("cwmp: %s: %w", m.local, err)
	}
	env.Body = msg
	return env, nil
}

func decodeHeader(h *node, env *Envelope) {
	for _, k := range h.kids {
		v := strings.TrimSpace(k.text())
		switch {
		case k.local == "ID":
			env.Header.ID = v
			if env.Namespace == "" && IsCWMPNamespace(k.space) {
				env.Namespace = k.space
			}
		case strings.EqualFold(k.local, "HoldRequests"):
			env.Header.HoldRequests, _ = ParseBool(v) // lenient: garbage = no hold
		case strings.EqualFold(k.local, "SessionTimeout"): // docs/cwmp-interop.md #26
			n, _ := strconv.ParseUint(v, 10, 32)
			env.Header.SessionTimeout = uint32(n)
		case strings.EqualFold(k.local, "SupportedCWMPVersions"):
			env.Header.SupportedCWMPVersions = v
		case strings.EqualFold(k.local, "UseCWMPVersion"):
			env.Header.UseCWMPVersion = v
		}
		// NoMoreRequests and anything else: ignored (docs/cwmp-interop.md #28).
	}
}

func decodeFault(n *node) (*Fault, error) {
	f := &Fault{}
	if c := n.child("faultcode"); c != nil {
		f.SOAPCode = strings.TrimSpace(c.text())
		if i := strings.LastIndexByte(f.SOAPCode, ':'); i >= 0 {
			f.SOAPCode = f.SOAPCode[i+1:] // "SOAP-ENV:Client" → "Client"
		}
	}
	if s := n.child("faultstring"); s != nil {
		f.SOAPString = strings.TrimSpace(s.text())
	}
	if d := n.child("detail"); d != nil {
		if cf := d.child("Fault"); cf != nil {
			if err := decodeStruct(cf, valueOf(&f.Detail).Elem()); err != nil {
				return nil, fmt.Errorf("cwmp: Fault: %w", err)
			}
		}
	}
	return f, nil
}

// node is a parsed element. Names are local; prefixes are resolved away.
type node struct {
	local string
	space string
	attrs []xml.Attr
	buf   []byte
	kids  []*node
}

func (n *node) text() string { return string(n.buf) }

// child returns the first child element with the given local name; names
// are compared case-insensitively to tolerate stacks that get case wrong.
func (n *node) child(local string) *node {
	for _, k := range n.kids {
		if k.local == local {
			return k
		}
	}
	for _, k := range n.kids {
		if strings.EqualFold(k.local, local) {
			return k
		}
	}
	return nil
}

// parseTree reads the document into nodes, rejecting DTDs and enforcing
// the depth and element limits. It returns nil, nil for a document with no
// element at all.
func parseTree(text []byte, l Limits) (*node, error) {
	d := xml.NewDecoder(bytes.NewReader(text))
	d.Strict = true
	// text is already UTF-8 (toUTF8); the declaration may still name the
	// original charset, so accept any label without converting again.
	d.CharsetReader = func(_ string, r io.Reader) (io.Reader, error) { return r, nil }
	var (
		stack []*node
		root  *node
		count int
	)
	for {
		tok, err := d.Token()
		if err == io.EOF {
			if len(stack) > 0 {
				return nil, fmt.Errorf("%w: unexpected end of document", ErrMalformed)
			}
			return root, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			// Attributes count too: each is kept like an element.
			count += 1 + len(t.Attr)
			if count > l.MaxElements {
				return nil, ErrTooManyElements
			}
			if len(stack) >= l.MaxDepth {
				return nil, ErrTooDeep
			}
			n := &node{local: t.Name.Local, space: t.Name.Space}
			if len(t.Attr) > 0 {
				n.attrs = append([]xml.Attr(nil), t.Attr...)
			}
			if len(stack) == 0 {
				root = n
			} else {
				p := stack[len(stack)-1]
				p.kids = append(p.kids, n)
			}
			stack = append(stack, n)
		case xml.EndElement:
			if len(stack) == 0 {
				return nil, fmt.Errorf("%w: unbalanced end element", ErrMalformed)
			}
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				return root, trailing(d)
			}
		case xml.CharData: // text and CDATA alike (docs/cwmp-interop.md #18)
			if len(stack) > 0 {
				n := stack[len(stack)-1]
				n.buf = append(n.buf, t...)
			}
		case xml.Directive:
			// encoding/xml never expands external entities, but a DTD has no
			// business in SOAP: reject it outright (billion laughs etc.).
			return nil, ErrDTD
		}
		// Comments and processing instructions are skipped.
	}
}

// trailing checks what follows the root element: XML allows only white
// space, comments and processing instructions there (XML 1.0 §2.1,
// "Misc"). Anything else (a second document, "<<<<garbage") means the
// message is not the envelope it seems to be. Trailing NULs that C stacks
// write with the string terminator were trimmed before parsing
// (docs/cwmp-interop.md #32).
func trailing(d *xml.Decoder) error {
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %v", ErrTrailingData, err)
		}
		switch t := tok.(type) {
		case xml.Comment, xml.ProcInst:
		case xml.CharData:
			if len(bytes.TrimSpace(t)) != 0 {
				return fmt.Errorf("%w: text %.20q", ErrTrailingData, t)
			}
		default:
			return fmt.Errorf("%w: %T", ErrTrailingData, tok)
		}
	}
}

// toUTF8 converts body to UTF-8. Charset precedence: the Content-Type
// parameter (quoted or not), then a BOM, then the XML declaration, then
// UTF-8 (TR-069 §3.4, docs/cwmp-interop.md #5).
func toUTF8(body []byte, contentType string) ([]byte, error) {
	label := charsetFromContentType(contentType)
	if label == "" {
		switch {
		case bytes.HasPrefix(body, []byte{0xFE, 0xFF}), bytes.HasPrefix(body, []byte{0xFF, 0xFE}),
			bytes.HasPrefix(body, []byte{0, '<'}), bytes.HasPrefix(body, []byte{'<', 0}):
			label = "utf-16"
		default:
			label = declEncoding(body)
		}
	}
	switch strings.ToLower(label) {
	case "", "utf-8", "utf8", "us-ascii", "ascii":
		return bytes.TrimPrefix(body, []byte{0xEF, 0xBB, 0xBF}), nil
	case "iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "latin-1", "l1", "iso-ir-100", "cp819", "ibm819":
		if utf8.Valid(body) && isASCII(body) {
			return body, nil
		}
		out := make([]byte, 0, len(body)+len(body)/4)
		for _, c := range body {
			out = utf8.AppendRune(out, rune(c))
		}
		return out, nil
	case "utf-16", "utf-16le", "utf-16be", "utf16":
		return fromUTF16(body, strings.ToLower(label))
	}
	return nil, fmt.Errorf("%w %q", ErrUnsupportedCharset, label)
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

func fromUTF16(b []byte, label string) ([]byte, error) {
	big := true
	switch {
	case bytes.HasPrefix(b, []byte{0xFE, 0xFF}):
		b = b[2:]
	case bytes.HasPrefix(b, []byte{0xFF, 0xFE}):
		b, big = b[2:], false
	case label == "utf-16le" || bytes.HasPrefix(b, []byte{'<', 0}):
		big = false
	}
	if len(b)%2 != 0 {
		return nil, fmt.Errorf("%w: odd-length UTF-16 body", ErrMalformed)
	}
	u := make([]uint16, len(b)/2)
	for i := range u {
		if big {
			u[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
		} else {
			u[i] = uint16(b[2*i+1])<<8 | uint16(b[2*i])
		}
	}
	out := make([]byte, 0, len(u))
	for _, r := range utf16.Decode(u) {
		out = utf8.AppendRune(out, r)
	}
	return out, nil
}

func charsetFromContentType(ct string) string {
	if ct == "" {
		return ""
	}
	if _, params, err := mime.ParseMediaType(ct); err == nil {
		return strings.TrimSpace(params["charset"])
	}
	// Malformed header: look for charset= by hand.
	// ASCII-only lowering keeps byte offsets valid (strings.ToLower may
	// change the length of non-ASCII input).
	lower := []byte(ct)
	for j, c := range lower {
		if c >= 'A' && c <= 'Z' {
			lower[j] = c + 'a' - 'A'
		}
	}
	i := bytes.Index(lower, []byte("charset="))
	if i < 0 {
		return ""
	}
	v := ct[i+len("charset="):]
	if j := strings.IndexByte(v, ';'); j >= 0 {
		v = v[:j]
	}
	return strings.Trim(strings.TrimSpace(v), `"'`)
}

// declEncoding returns the encoding pseudo-attribute of a leading XML
// declaration, or "".
func declEncoding(b []byte) string {
	b = bytes.TrimLeft(bytes.TrimPrefix(b, []byte{0xEF, 0xBB, 0xBF}), " \t\r\n")
	if !bytes.HasPrefix(b, []byte("<?xml")) {
		return ""
	}
	end := bytes.Index(b, []byte("?>"))
	if end < 0 {
		return ""
	}
	decl := string(b[:end])
	i := strings.Index(decl, "encoding")
	if i < 0 {
		return ""
	}
	rest := strings.TrimLeft(decl[i+len("encoding"):], " \t\r\n")
	if !strings.HasPrefix(rest, "=") {
		return ""
	}
	rest = strings.TrimLeft(rest[1:], " \t\r\n")
	if rest == "" || (rest[0] != '"' && rest[0] != '\'') {
		return ""
	}
	q := rest[0]
	j := strings.IndexByte(rest[1:], q)
	if j < 0 {
		return ""
	}
	return rest[1 : 1+j]
}
