package proxier

import (
	"context"

	"github.com/svcproxy/svcproxy/model"
)

// Backend programs the kernel for one IP family in one mode (iptables or
// IPVS). Implementations compile the view to a plan (pure) and apply it
// (the only place that touches the kernel).
//
// A backend keeps no memory of earlier syncs that a plan depends on: the
// syncer owns the view of the last successful sync and hands it back as
// prev, so a failed apply can never leave the backend believing something
// that is not in the kernel.
type Backend interface {
	Family() model.Family

	// Sync brings the kernel in line with view. prev is the view of the last
	// successful sync, which lets the backend change only what changed; nil
	// asks for a full sync that also removes anything stale it finds.
	//
	// A failed Sync may leave the kernel anywhere between prev and view
	// (an iptables-restore is atomic, a sequence of netlink requests is
	// not): the syncer's next Sync of the family is then full. The result
	// of a failed Sync still says what was attempted.
	Sync(ctx context.Context, view, prev *model.NodeView) (model.SyncResult, error)

	// Intact checks cheaply (it runs about once a second) that the
	// programming of applied, the view of the last successful sync, is
	// still in place: if another program flushed tables, deleted jump
	// rules or removed kernel objects, it returns false and the runner
	// does a full sync.
	Intact(ctx context.Context, applied *model.NodeView) (bool, error)

	// Inspect reads the kernel and tells, for every port of view, the
	// objects the port needs (rules, virtual servers, addresses, set
	// entries) and whether the kernel holds each as wanted: what
	// `svcproxy list` and `explain` show. It changes nothing.
	Inspect(ctx context.Context, view *model.NodeView) (map[model.ServicePortName][]model.KernelObject, error)

	// Cleanup removes everything this backend's mode ever programmed in
	// this family, and nothing else.
	Cleanup(ctx context.Context) error
}
