package cwmp

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"fmt"
	"io"
	"strings"
)

// ReadBody reads an HTTP body of at most limit bytes (DefaultLimits.MaxBodySize
// when limit <= 0), inflating it according to contentEncoding: "" or
// "identity", "gzip"/"x-gzip", or "deflate" (zlib, or raw deflate as some
// stacks send). The limit applies to the inflated size, so a gzip bomb stops
// at the limit with ErrBodyTooLarge. Any other encoding returns
// ErrUnsupportedEncoding, which the ACS answers with 415 (docs/cwmp-interop.md #8).
// A zero-length body returns nil, nil for every supported encoding.
func ReadBody(r io.Reader, contentEncoding string, limit int) ([]byte, error) {
	if limit <= 0 {
		limit = DefaultLimits.MaxBodySize
	}
	enc := strings.ToLower(strings.TrimSpace(contentEncoding))
	switch enc {
	case "", "identity", "gzip", "x-gzip", "deflate":
	default:
		return nil, fmt.Errorf("%w %q", ErrUnsupportedEncoding, contentEncoding)
	}
	// A zero-length body is the empty POST whatever Content-Encoding says
	// (docs/cwmp-interop.md #6): there is nothing to inflate.
	br0 := bufio.NewReader(r)
	if _, err := br0.Peek(1); err == io.EOF {
		return nil, nil
	}
	r = br0
	var src io.Reader
	switch enc {
	case "", "identity":
		src = r
	case "gzip", "x-gzip":
		// The compressed input is bounded too, so a huge stream of
		// concatenated empty members cannot spin forever.
		zr, err := gzip.NewReader(io.LimitReader(r, int64(limit)+1))
		if err != nil {
			return nil, fmt.Errorf("%w: gzip: %v", ErrMalformed, err)
		}
		defer zr.Close()
		src = zr
	case "deflate":
		br := bufio.NewReader(io.LimitReader(r, int64(limit)+1))
		hdr, _ := br.Peek(2)
		if len(hdr) == 2 && hdr[0]&0x0f == 8 && (uint16(hdr[0])<<8|uint16(hdr[1]))%31 == 0 {
			zr, err := zlib.NewReader(br)
			if err != nil {
				return nil, fmt.Errorf("%w: deflate: %v", ErrMalformed, err)
			}
			defer zr.Close()
			src = zr
		} else {
			fr := flate.NewReader(br)
			defer fr.Close()
			src = fr
		}
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(src, int64(limit)+1))
	if n > int64(limit) {
		return nil, ErrBodyTooLarge
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading body: %v", ErrMalformed, err)
	}
	return buf.Bytes(), nil
}
