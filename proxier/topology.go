package proxier

import (
	"github.com/svcproxy/svcproxy/model"
	"slices"
)

// topologyMode is how a service port's ready endpoints are narrowed for
// this node before the Cluster traffic policy uses them.
type topologyMode uint8

const (
	// topologyAny: no narrowing, every ready endpoint.
	topologyAny topologyMode = iota
	// topologyNodeHints: endpoints whose hints.forNodes name this node.
	topologyNodeHints
	// topologyZoneHints: endpoints whose hints.forZones name this node's zone.
	topologyZoneHints
	// topologySameNode: endpoints running on this node (derived, see topologyFor).
	topologySameNode
	// topologySameZone: endpoints in this node's zone (derived, see topologyFor).
	topologySameZone
)

// topologyFor chooses the topology mode for one service port, as kube-proxy's
// topologyModeFromHints does: node hints when every ready endpoint has some
// and one names this node (they take precedence), else zone hints when every
// ready endpoint has some and one names this node's zone, else no narrowing.
// A mode is only chosen when it leaves at least one ready endpoint.
//
// svcproxy extends this for services that set spec.trafficDistribution but
// whose slices carry no hints at all, because no controller in the cluster
// fills them in: an operator who asked for PreferSameNode or PreferSameZone
// expects it to hold anyway. The preference is then derived from the
// endpoints' own nodeName and zone: PreferSameNode keeps the ready endpoints
// on this node if there are any, and otherwise falls through to the zone
// rule; PreferSameZone (and PreferClose) keeps the ready endpoints in this
// node's zone if there are any, and otherwise all of them. Hints, when a
// controller did write any, always win: partial hints are the controller's
// way of asking for no narrowing, and kube-proxy honours that.
func topologyFor(cands []candidate, dist TrafficDistribution, node model.NodeInfo) topologyMode {
	h := surveyHints(cands, node)
	switch {
	case !h.anyReady:
		return topologyAny
	case h.allNodeHints && h.nodeHinted:
		return topologyNodeHints
	case h.allZoneHints && h.zoneHinted:
		return topologyZoneHints
	case h.anyHints:
		return topologyAny
	}
	if dist == PreferSameNode && h.readyOnNode {
		return topologySameNode
	}
	if (dist == PreferSameNode || dist == PreferSameZone) && h.readyInZone {
		return topologySameZone
	}
	return topologyAny
}

// hintSurvey is what topologyFor needs to know of a port's ready endpoints.
type hintSurvey struct {
	anyReady     bool
	anyHints     bool // some ready endpoint has a node or zone hint
	allNodeHints bool // every ready endpoint has a node hint
	nodeHinted   bool // some ready endpoint's node hints name this node
	allZoneHints bool
	zoneHinted   bool
	readyOnNode  bool // some ready endpoint runs on this node
	readyInZone  bool // some ready endpoint is in this node's (non-empty) zone
}

func surveyHints(cands []candidate, node model.NodeInfo) hintSurvey {
	h := hintSurvey{allNodeHints: true, allZoneHints: true}
	for i := range cands {
		c := &cands[i]
		if !c.Ready {
			continue
		}
		e := c.src
		h.anyReady = true
		h.anyHints = h.anyHints || len(e.NodeHints()) > 0 || len(e.ZoneHints()) > 0
		h.allNodeHints = h.allNodeHints && len(e.NodeHints()) > 0
		h.allZoneHints = h.allZoneHints && len(e.ZoneHints()) > 0
		h.nodeHinted = h.nodeHinted || slices.Contains(e.NodeHints(), node.Name)
		h.zoneHinted = h.zoneHinted || slices.Contains(e.ZoneHints(), node.Zone)
		h.readyOnNode = h.readyOnNode || c.Local
		h.readyInZone = h.readyInZone || (node.Zone != "" && e.Zone == node.Zone)
	}
	return h
}

// allows reports whether the mode lets this node use an endpoint.
func (m topologyMode) allows(e *SliceEndpoint, node model.NodeInfo) bool {
	switch m {
	case topologyNodeHints:
		return slices.Contains(e.NodeHints(), node.Name)
	case topologyZoneHints:
		return slices.Contains(e.ZoneHints(), node.Zone)
	case topologySameNode:
		return node.Name != "" && e.NodeName == node.Name
	case topologySameZone:
		return e.Zone == node.Zone
	}
	return true
}
