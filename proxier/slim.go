package proxier

import (
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// slim is the informers' transform: it drops, before an object is stored
// in the informer's cache and handed to the tracker, the fields svcproxy
// never reads. The cache holds every Service and EndpointSlice of the
// cluster for as long as svcproxy runs, and the largest parts of those
// objects are bookkeeping: managedFields (a few KB per slice of ten
// endpoints), kubectl's last-applied-configuration annotation (a second
// copy of the whole object), each endpoint's targetRef and deprecated
// topology. What stays is what ParseService, ParseEndpointSlice and the
// health server read (TestSlimKeepsWhatSvcproxyReads).
//
// The informer calls it once per object, on a copy freshly decoded from
// the API server, so it may change the object in place.
func slim(obj any) (any, error) {
	switch o := obj.(type) {
	case *v1.Service:
		slimMeta(&o.ObjectMeta)
		o.Annotations = nil
		o.Status.Conditions = nil
	case *discoveryv1.EndpointSlice:
		slimMeta(&o.ObjectMeta)
		o.Annotations = keepAnnotation(o.Annotations, v1.EndpointsLastChangeTriggerTime)
		for i := range o.Endpoints {
			ep := &o.Endpoints[i]
			ep.TargetRef, ep.DeprecatedTopology, ep.Hostname = nil, nil, nil
		}
	case *v1.Node:
		slimMeta(&o.ObjectMeta)
		o.Status.Images = nil // often the largest part of a Node
	}
	return obj, nil
}

// slimMeta drops the metadata no kind's reader uses.
func slimMeta(m *metav1.ObjectMeta) {
	m.ManagedFields = nil
	m.OwnerReferences = nil
}

// keepAnnotation returns annotations with only key, or nil.
func keepAnnotation(annotations map[string]string, key string) map[string]string {
	v, ok := annotations[key]
	if !ok {
		return nil
	}
	return map[string]string{key: v}
}
