package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/svcproxy/svcproxy/internal/netnstest"
)

// Process is a program started inside a namespace (the svcproxy daemon).
type Process struct {
	cmd  *exec.Cmd
	Log  string // path of its combined output
	done chan struct{}
	err  error // its exit, once done is closed
}

// StartIn starts binary with args inside ns, its output in logPath, with
// the caller's environment plus env. The program dies with the caller
// (Pdeathsig) so a killed test leaves nothing.
func StartIn(ns *netnstest.NS, logPath string, env []string, binary string, args ...string) (*Process, error) {
	out, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &Process{Log: logPath, done: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	// Started on a thread inside ns, the child is born in ns. Pdeathsig
	// fires when the *thread* that started the child ends, and Do's thread
	// ends with its function: so that thread also waits for the child,
	// living exactly as long as it does.
	started := make(chan error, 1)
	go func() {
		defer close(p.done)
		defer out.Close()
		p.err = ns.Do(func() error {
			if err := p.cmd.Start(); err != nil {
				started <- err
				return err
			}
			started <- nil
			return p.cmd.Wait()
		})
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", binary, ns.Name, err)
	}
	return p, nil
}

// PID is the process's id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Wait waits up to timeout for the process to end and returns its exit.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("pid %d still running after %v", p.PID(), timeout)
	}
}

// Stop sends SIGTERM and waits up to grace, then SIGKILL. It returns the
// process's exit error for a SIGTERM exit, nil for a clean one.
func (p *Process) Stop(grace time.Duration) error {
	if done, err := p.Exited(); done {
		return err
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return errors.New("did not end on SIGTERM; killed")
	}
}

// Output returns what the process has written so far.
func (p *Process) Output() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}
