package stomp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"github.com/go-stomp/stomp/v3/frame"

	pkgusp "github.com/duet-dm/duet/pkg/usp"
)

// Bounds of readFrame. go-stomp's own reader allocates whatever a
// content-length header says before reading a byte of the body (issue
// 15 §3), so frames from agents are read here first.
const (
	maxHeaderLine = 8 << 10 // the bufio.Reader's size: ReadSlice fails beyond it
	maxHeaders    = 64
)

var errFrameTooLarge = errors.New("stomp frame too large")

// newFrameReader returns the reader readFrame needs.
func newFrameReader(r interface{ Read([]byte) (int, error) }) *bufio.Reader {
	return bufio.NewReaderSize(r, maxHeaderLine)
}

// readFrame reads one STOMP 1.2 frame a client sends (to the embedded
// broker) of at most maxBody body bytes, or a heart-beat EOL (nil frame,
// nil error); a frame beyond any bound is an error before its body is read
// (errFrameTooLarge for the body).
func readFrame(br *bufio.Reader, maxBody int) (*frame.Frame, error) {
	return readFrameOf(br, maxBody, clientCommand)
}

// readServerFrame is readFrame for the frames a broker sends (to Duet's
// client, guardedConn).
func readServerFrame(br *bufio.Reader, maxBody int) (*frame.Frame, error) {
	return readFrameOf(br, maxBody, serverCommand)
}

func clientCommand(c string) bool {
	switch c {
	case frame.CONNECT, frame.STOMP, frame.SEND, frame.SUBSCRIBE, frame.UNSUBSCRIBE, frame.ACK, frame.NACK,
		frame.BEGIN, frame.COMMIT, frame.ABORT, frame.DISCONNECT:
		return true
	}
	return false
}

func serverCommand(c string) bool {
	switch c {
	case frame.CONNECTED, frame.MESSAGE, frame.RECEIPT, frame.ERROR:
		return true
	}
	return false
}

// readFrameOf reads one frame whose command accept takes.
func readFrameOf(br *bufio.Reader, maxBody int, accept func(string) bool) (*frame.Frame, error) {
	line, err := readLine(br)
	if err != nil || len(line) == 0 {
		return nil, err
	}
	f := frame.New(string(line))
	if !accept(f.Command) {
		return nil, fmt.Errorf("stomp: unexpected command %.40q", f.Command)
	}
	for n := 0; ; n++ {
		l, err := readLine(br)
		if err != nil {
			return nil, err
		}
		if len(l) == 0 {
			break
		}
		if n >= maxHeaders {
			return nil, fmt.Errorf("stomp: more than %d headers", maxHeaders)
		}
		i := bytes.IndexByte(l, ':')
		if i <= 0 {
			return nil, errors.New("stomp: header without a name or a colon")
		}
		k, v := string(l[:i]), string(l[i+1:])
		// Unescaped in every frame, CONNECT included: STOMP 1.2 exempts
		// CONNECT, but go-stomp clients escape there too (':' in an
		// endpoint ID login), and go-stomp's server reads it so.
		if k, err = pkgusp.STOMPUnescapeHeader(k); err != nil {
			return nil, err
		}
		if v, err = pkgusp.STOMPUnescapeHeader(v); err != nil {
			return nil, err
		}
		f.Header.Add(k, v)
	}
	if cl, ok := f.Header.Contains(frame.ContentLength); ok {
		n, err := strconv.Atoi(cl)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("stomp: content-length %.20q", cl)
		}
		if n > maxBody {
			return nil, errFrameTooLarge
		}
		f.Body = make([]byte, n)
		if _, err := readFull(br, f.Body); err != nil {
			return nil, err
		}
		if b, err := br.ReadByte(); err != nil || b != 0 {
			return nil, errors.New("stomp: body not followed by NUL")
		}
		return f, nil
	}
	var body []byte
	for {
		chunk, err := br.ReadSlice(0)
		if len(body)+len(chunk) > maxBody+1 {
			return nil, errFrameTooLarge
		}
		body = append(body, chunk...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
	f.Body = body[:len(body)-1]
	return f, nil
}

// readLine reads one line without its EOL (LF or CRLF); a line longer
// than the reader's buffer is an error.
func readLine(br *bufio.Reader) ([]byte, error) {
	l, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, errors.New("stomp: header line too long")
	}
	if err != nil {
		return nil, err
	}
	l = l[:len(l)-1]
	if len(l) > 0 && l[len(l)-1] == '\r' {
		l = l[:len(l)-1]
	}
	return bytes.Clone(l), nil
}

func readFull(br *bufio.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := br.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
