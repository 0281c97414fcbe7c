package controlplane

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
)

// Process is one program the control plane started.
type Process struct {
	Name    string // etcd, kube-apiserver or kube-controller-manager
	PID     int
	LogPath string // its stdout and stderr; gone after Stop
}

// process is a started program and what its end looks like.
type process struct {
	Process
	cmd     *exec.Cmd
	exited  chan struct{} // closed once the process has been reaped
	waitErr error         // valid after exited is closed
}

// launch starts bin with its output in a log file named after it in dir.
func launch(name, bin string, args []string, dir string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child holds its own copy

	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A test binary killed by its timeout or a Ctrl-C must not leave an
		// apiserver behind.
		Pdeathsig: syscall.SIGKILL,
		// Its own process group keeps a terminal's Ctrl-C away from it, so
		// the caller stops the control plane in order instead.
		Setpgid: true,
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	if err := startOnOwnThread(p); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p.Process = Process{Name: name, PID: cmd.Process.Pid, LogPath: logPath}
	return p, nil
}

// startOnOwnThread starts p's command from a goroutine locked to its own
// thread, which then waits for the child. Pdeathsig fires when the thread
// that forked the child ends, not the process; the runtime ends threads
// whose locked goroutine exits (as netnstest.Do's do), and an ordinary
// goroutine's thread may later be handed to such a goroutine. A thread that
// lives exactly as long as the child is the only safe parent.
func startOnOwnThread(p *process) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends after the child
		if err := p.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	return <-started
}

// hasExited reports whether the process has ended, without waiting.
func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// stop asks the process to end with SIGTERM and kills it if it has not
// ended within grace. It signals only this PID, never a group.
func (p *process) stop(grace time.Duration) error {
	if p.hasExited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping %s (pid %d): %w", p.Name, p.PID, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(grace):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing %s (pid %d): %w", p.Name, p.PID, err)
	}
	<-p.exited
	return fmt.Errorf("%s (pid %d) ignored SIGTERM for %s and was killed", p.Name, p.PID, grace)
}

// logTail is the end of the process's output, for error messages.
func (p *process) logTail(maxLines int) string {
	data, err := os.ReadFile(p.LogPath)
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// exitError describes a process that ended during startup, with the end of
// its log, which is where etcd and the apiserver say why.
func (p *process) exitError() error {
	return fmt.Errorf("%s exited during startup (%v); last lines of %s:\n%s",
		p.Name, p.waitErr, p.LogPath, p.logTail(15))
}
