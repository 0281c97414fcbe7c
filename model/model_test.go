package model

import (
	"net/netip"
	"slices"
	"testing"
)

func port(name string, portNumber uint16) *ServicePort {
	return &ServicePort{Name: ServicePortName{Namespace: "ns", Name: name, Port: "http", Protocol: TCP},
		ClusterIP: netip.MustParseAddr("10.96.0.1"), Port: portNumber}
}

// A derived view's changed ports come from what it touched, and are what a
// walk of both views finds: touching a port without changing it (the same
// or an Equal port set again, a missing one deleted) is no change.
func TestChangedPortsOfADerivedView(t *testing.T) {
	base := NewNodeView(IPv4, NodeInfo{Name: "node-a"}, 4)
	for _, sp := range []*ServicePort{port("same", 80), port("equal", 80), port("edited", 80), port("gone", 80)} {
		base.Set(sp)
	}
	view := base.Derive(base.Node)
	view.Set(base.Services[port("same", 0).Name])
	view.Set(port("equal", 80))
	view.Set(port("edited", 81))
	view.Delete(port("gone", 0).Name)
	view.Delete(port("never", 0).Name)
	view.Set(port("added", 80))
	view.Set(port("added", 80)) // touched twice, listed once

	want := []ServicePortName{port("added", 0).Name, port("edited", 0).Name, port("gone", 0).Name}
	if got := ChangedPorts(view, base); !slices.Equal(got, want) {
		t.Errorf("ChangedPorts(derived, base) = %v, want %v", got, want)
	}
	walked := &NodeView{Family: view.Family, Node: view.Node, Services: view.Services}
	if got := ChangedPorts(walked, base); !slices.Equal(got, want) {
		t.Errorf("ChangedPorts by a walk = %v, want %v", got, want)
	}
	if len(base.Services) != 4 || base.Services[port("edited", 0).Name].Port != 80 {
		t.Errorf("deriving modified the base view: %v", base.Services)
	}

	// Against any view but its base, a derived view is walked: the ports
	// it touched say nothing of the difference.
	other := NewNodeView(IPv4, base.Node, 0)
	other.Set(port("same", 80))
	got := ChangedPorts(view, other)
	if want := []ServicePortName{port("added", 0).Name, port("edited", 0).Name, port("equal", 0).Name}; !slices.Equal(got, want) {
		t.Errorf("ChangedPorts(derived, another view) = %v, want %v", got, want)
	}
	grandchild := view.Derive(view.Node)
	grandchild.Set(port("late", 80))
	got = ChangedPorts(grandchild, base)
	if want := []ServicePortName{port("added", 0).Name, port("edited", 0).Name, port("gone", 0).Name, port("late", 0).Name}; !slices.Equal(got, want) {
		t.Errorf("ChangedPorts(grandchild, base) = %v, want %v", got, want)
	}
}
