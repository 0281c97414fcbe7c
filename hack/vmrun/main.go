// Command vmrun runs a program as root inside the IPVS-capable VM of
// internal/vm, for trying things by hand and for scripts:
//
//	go run ./hack/vmrun [-mem MiB] [-timeout D] [-share DIR]... [-C DIR] [-env K=V]... -- PROGRAM ARGS...
//
// The VM's console (the program's output included) goes to stdout. vmrun exits
// with the program's status, or 125 when the VM did not give one (it did not
// boot, died or timed out), the reason on stderr.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/svcproxy/svcproxy/internal/vm"
)

func main() {
	os.Exit(run())
}

type listFlag []string

func (l *listFlag) String() string     { return fmt.Sprint(*l) }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func run() int {
	mem := flag.Int("mem", 2048, "the VM's memory in MiB")
	timeout := flag.Duration("timeout", 10*time.Minute, "bound on the whole VM, boot to poweroff")
	dir := flag.String("C", "", "working directory of the program in the VM (default /)")
	var shares, env listFlag
	flag.Var(&shares, "share", "host directory to mount read-write at the same path in the VM (repeatable)")
	flag.Var(&env, "env", "NAME=value to add to the program's environment (repeatable)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] -- PROGRAM ARGS...\n", filepath.Base(os.Args[0]))
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		return 2
	}
	for i, s := range shares {
		abs, err := filepath.Abs(s)
		if err != nil {
			fmt.Fprintln(os.Stderr, "vmrun:", err)
			return 2
		}
		shares[i] = abs
	}

	// Ctrl-C or a kill ends the VM (Run kills qemu) rather than orphaning it.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	kernelDir, err := vm.KernelDir()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmrun:", err)
		return 125
	}
	code, err := vm.Run(ctx, vm.Config{
		KernelDir: kernelDir,
		MemoryMiB: *mem,
		Timeout:   *timeout,
		Console:   os.Stdout,
	}, vm.Job{Args: flag.Args(), Env: env, Dir: *dir, Shares: shares})
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmrun:", err)
		return 125
	}
	return code
}
