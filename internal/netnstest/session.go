package netnstest

import (
	"fmt"
	"slices"
	"sync"
)

// TB is the part of testing.TB the bed uses. A *testing.T is one; a
// Session is one for programs that are not tests (make run's sandbox).
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Skip(args ...any)
	Cleanup(func())
}

// Session lets a program build beds. Its Fatal and Skip end the Build call
// that hit them with an error; Close runs the cleanups, newest first, as a
// test would at its end.
type Session struct {
	mu       sync.Mutex
	cleanups []func()
}

type sessionFailure struct{ msg string }

// Build runs f, which builds namespaces with s; a failure inside it becomes
// the returned error instead of ending a test.
func (s *Session) Build(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			failure, ok := r.(sessionFailure)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("%s", failure.msg)
		}
	}()
	f()
	return nil
}

// Helper implements TB.
func (s *Session) Helper() {}

// Fatal implements TB.
func (s *Session) Fatal(args ...any) { panic(sessionFailure{fmt.Sprint(args...)}) }

// Fatalf implements TB.
func (s *Session) Fatalf(format string, args ...any) {
	panic(sessionFailure{fmt.Sprintf(format, args...)})
}

// Skip implements TB: a program cannot skip, so it fails.
func (s *Session) Skip(args ...any) { panic(sessionFailure{fmt.Sprint(args...)}) }

// Cleanup implements TB.
func (s *Session) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

// Close runs every cleanup, newest first, once.
func (s *Session) Close() {
	s.mu.Lock()
	cleanups := s.cleanups
	s.cleanups = nil
	s.mu.Unlock()
	for _, f := range slices.Backward(cleanups) {
		f()
	}
}
