package proxier

import (
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The informers' caches hold every Service and EndpointSlice of the
// cluster for as long as svcproxy runs, and the tracker holds them again,
// parsed. Rather than both, the informers store what the tracker reads:
// their transform (toStored) parses each object as it arrives, the cache
// keeps the parsed value under the object's name, and the tracker is
// handed that same value. At 10,000 services of 10 endpoints the API
// objects took about 45 MB of heap beside 15 MB of parsed values.

// storedService is what the Services informer stores: the parsed Service,
// or why it cannot be programmed.
type storedService struct {
	key
	parsed *Service
	err    error
}

// storedSlice is what the EndpointSlices informer stores.
type storedSlice struct {
	key
	parsed  *EndpointSlice
	dropped []string
	err     error
}

// key is a stored object's name and namespace, the cache's key, and all
// of its metadata the cache reads. An embedded metav1.ObjectMeta, mostly
// empty, was a fifth of what the two caches held at 10,000 services.
type key struct{ Namespace, Name string }

// GetObjectMeta is how client-go's meta.Accessor, which makes the cache's
// keys and indexes, reads an object that is no metav1.Object.
func (k key) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name}
}

// toStored is the informers' transform. The informer calls it on each
// object decoded from the API server, and may call it again on what it
// returned (a tombstone's object, after a relist): anything but an API
// object passes unchanged.
func toStored(obj any) (any, error) {
	switch o := obj.(type) {
	case *v1.Service:
		parsed, err := ParseService(o)
		return &storedService{key: keyOf(o.ObjectMeta), parsed: parsed, err: err}, nil
	case *discoveryv1.EndpointSlice:
		parsed, dropped, err := ParseEndpointSlice(o)
		return &storedSlice{key: keyOf(o.ObjectMeta), parsed: parsed, dropped: dropped, err: err}, nil
	case *v1.Node:
		// The one Node is kept whole (the health server reads its
		// taints and deletion), less its bookkeeping.
		o.ManagedFields, o.OwnerReferences = nil, nil
		o.Status.Images = nil // often the largest part of a Node
	}
	return obj, nil
}

func keyOf(m metav1.ObjectMeta) key { return key{Namespace: m.Namespace, Name: m.Name} }
