package proxier

import (
	"context"
	"github.com/svcproxy/svcproxy/model"
)

// Backend programs the kernel for one IP family. Implementations compile the
// view to a plan (pure) and apply it (the only place that touches the kernel).
//
// A backend keeps no memory of earlier syncs: the runner owns the view of the
// last successful sync and hands it back as prev, so a failed apply can never
// leave the backend believing something that is not in the kernel.
type Backend interface {
	Family() model.Family

	// Sync brings the kernel in line with view. prev is the view of the last
	// successful sync, which lets the backend rewrite only what changed; nil
	// asks for a full sync that also removes anything stale it finds.
	Sync(ctx context.Context, view, prev *model.NodeView) (model.SyncResult, error)

	// Intact checks cheaply (it runs about once a second) that the
	// programming is still in place: if another program flushed tables or
	// deleted jump rules, it returns false and the runner does a full sync.
	Intact(ctx context.Context) (bool, error)

	// Cleanup removes everything this backend ever programmed.
	Cleanup(ctx context.Context) error
}
