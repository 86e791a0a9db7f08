package cwmp

import (
	"compress/gzip"
	"fmt"
	"io"
)

var sprintf = fmt.Sprintf

func gzipWriter(w io.Writer) *gzip.Writer { return gzip.NewWriter(w) }
