package vm

import (
	"bytes"
	"io"
	"strings"
	"sync"
)

// crlfWriter drops the carriage returns the serial line puts before every
// newline, so that the console reads like ordinary output (in t.Log, say).
type crlfWriter struct {
	w   io.Writer
	buf []byte
}

func (c *crlfWriter) Write(p []byte) (int, error) {
	if bytes.IndexByte(p, '\r') < 0 {
		return c.w.Write(p)
	}
	c.buf = c.buf[:0]
	for _, b := range p {
		if b != '\r' {
			c.buf = append(c.buf, b)
		}
	}
	if _, err := c.w.Write(c.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// consoleWriter feeds the tail and the caller's console. It never fails: a
// console that does would otherwise stop exec from draining qemu's output,
// and qemu would hang on a full pipe until the time-out.
type consoleWriter struct {
	tail    *lineTail
	console io.Writer
}

func (c consoleWriter) Write(p []byte) (int, error) {
	c.tail.Write(p)
	c.console.Write(p) //nolint:errcheck // see above
	return len(p), nil
}

// lineTail keeps the last max lines written to it, for error messages.
type lineTail struct {
	mu      sync.Mutex
	max     int
	lines   []string
	partial []byte
}

func (t *lineTail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.partial = append(t.partial, p...)
	for {
		i := bytes.IndexByte(t.partial, '\n')
		if i < 0 {
			break
		}
		t.add(string(t.partial[:i]))
		t.partial = t.partial[i+1:]
	}
	// A console that never prints a newline must not grow without bound.
	if len(t.partial) > 4096 {
		t.add(string(t.partial))
		t.partial = t.partial[:0]
	}
	return len(p), nil
}

func (t *lineTail) add(line string) {
	t.lines = append(t.lines, line)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

func (t *lineTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := t.lines
	if len(t.partial) > 0 {
		lines = append(lines[:len(lines):len(lines)], string(t.partial))
		if len(lines) > t.max {
			lines = lines[1:]
		}
	}
	if len(lines) == 0 {
		return "  (nothing)"
	}
	return "  " + strings.Join(lines, "\n  ")
}
