// Package proxier turns the API's Services and EndpointSlices into what a
// node must program: the change tracker, the pure Compute step that makes a
// model.NodeView per IP family, the runner that decides when to sync, the
// syncer that drives the backends, health, health-check node ports and
// metrics.
package proxier
