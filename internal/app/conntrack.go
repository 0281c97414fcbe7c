package app

import (
	"go.uber.org/zap"

	"github.com/svcproxy/svcproxy/conntrack"
)

// tuneConntrack sets the conntrack table's limit and timeouts as kube-proxy
// does when it starts, in either mode. What it cannot set stays as the
// kernel has it, with a warning (a container whose /proc/sys is read-only,
// a network namespace other than the host's), and svcproxy goes on: the
// rules work the same. With no sysctls (the daemon's unit tests) it does
// nothing.
func (d *daemon) tuneConntrack() {
	if d.sysctls != nil {
		tuneConntrack(d.cfg.Conntrack, d.sysctls, d.log.Named("conntrack"))
	}
}

func tuneConntrack(t conntrack.Tuning, files conntrack.Files, log *zap.Logger) []error {
	cpus := conntrack.CPUs(files)
	plan := conntrack.PlanTuning(t, cpus)
	log.Debug("tuning conntrack", zap.Int("cpus", cpus), zap.Int("nf_conntrack_max", plan.Max),
		zap.Int("sysctls", len(plan.Sysctls)))
	return conntrack.Tune(files, plan, log)
}

// InitOnly is --init-only, as in kube-proxy: it makes the settings that
// need a writable /proc/sys (the conntrack ones, and route_localnet for
// node ports on localhost), so that svcproxy itself
// can then run with NET_ADMIN and NET_RAW only, and finds them made. As in
// the daemon, and unlike kube-proxy, which exits, a setting it cannot make
// is a warning: run as an init container, a failure would keep the proxy
// itself from starting, and a node without its service proxy is far worse
// off than one with the kernel's conntrack settings (the daemon tries them
// again, and warns again).
func InitOnly(cfg Config, log *zap.Logger) {
	initOnly(cfg, conntrack.HostFiles{}, log)
}

func initOnly(cfg Config, files conntrack.Files, log *zap.Logger) []error {
	errs := tuneConntrack(cfg.Conntrack, files, log.Named("conntrack"))
	// As kube-proxy's --init-only, route_localnet too, where node ports
	// are to answer on loopback (the daemon then finds it set).
	if wantsRouteLocalnet(cfg, cfg.NodePortAddresses) && !cfg.NodePortPrimary {
		if err := ensureRouteLocalnet(files, log); err != nil {
			log.Warn("--init-only: route_localnet cannot be set; node ports will not be served on 127.0.0.1", zap.Error(err))
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		log.Info("--init-only: the settings are made; exiting")
	} else {
		log.Warn("--init-only: some settings could not be made; exiting", zap.Int("failed", len(errs)))
	}
	return errs
}
