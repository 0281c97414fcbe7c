// Command svcproxy is a kube-proxy replacement: it watches Services,
// EndpointSlices and its Node and programs iptables or IPVS. It takes
// kube-proxy's flags and config file; see internal/app.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/svcproxy/svcproxy/internal/app"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		// One line, whatever the failure, so an operator sees it at once.
		fmt.Fprintln(os.Stderr, "svcproxy:", strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

func run(args []string) error {
	// The operator's subcommands, run on a node beside the daemon.
	if len(args) > 0 && (args[0] == "list" || args[0] == "explain") {
		err := app.Inspect(context.Background(), args, os.Stdout)
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	opts, err := app.Parse(args, os.Stdout)
	if errors.Is(err, pflag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := app.NewLogger(opts.Config.LogFormat, opts.Config.Verbosity, zapcore.Lock(os.Stderr))
	defer func() { _ = log.Sync() }()
	app.RouteKlog(log, opts.Config.Verbosity)
	for _, w := range opts.Warnings {
		log.Warn(w)
	}
	switch {
	case opts.WriteConfigTo != "":
		return writeConfig(opts)
	case opts.InitOnly:
		app.InitOnly(opts.Config, log)
		return nil
	case opts.CheckBinaries:
		return app.CheckBinaries(opts.Config, os.Stdout)
	}
	// SIGTERM and SIGINT end the run; the rules stay in place.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if opts.Cleanup {
		return app.Cleanup(ctx, opts.Config, log)
	}
	log.Info("svcproxy starting", zap.String("mode", opts.Config.Mode))
	return app.Run(ctx, opts.Config, log)
}

func writeConfig(opts *app.Options) error {
	f, err := os.Create(opts.WriteConfigTo)
	if err != nil {
		return err
	}
	if err := app.WriteConfig(opts.KubeProxy, f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
