// Package cwmp is Duet's SOAP/CWMP (TR-069) codec: Go structs for every RPC
// in both directions, a tolerant Decode and a strict, conservative Encode.
//
// The package is pure: it never opens a socket, reads a clock or starts a
// goroutine. It imports the standard library and pkg/devicemodel only.
//
// Decoding is deliberately lenient about what real CPEs send (TR-069 §3.4,
// §3.5 and docs/cwmp-interop.md): any namespace prefix, any urn:dslforum-org:cwmp-1-*
// namespace, a missing Header, missing or non-standard xsi:type, booleans as
// 1/0/true/false, lenient dateTimes, whitespace, comments, CDATA and wrong
// arrayType counts. It is strict about hostile input: a size limit, no DTD,
// bounded depth and element count.
//
// Encoding follows what the most CPEs accept: every namespace declared on
// the Envelope, the method element always prefixed "cwmp:", the cwmp:ID
// header with mustUnderstand="1", SOAP-encoded arrays with arrayType, typed
// Values and dateTimes without fractions.
//
// Every message type implements Message; Envelope.Body holds exactly one of
// them, or nil for the empty POST / empty response.
package cwmp
