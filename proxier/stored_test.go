package proxier

import (
	"reflect"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// bookkeeping is what the API server and kubectl add to every object.
func bookkeeping(m *metav1.ObjectMeta) {
	m.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply,
		FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{"f:ports":{}}}`)}}}
	m.OwnerReferences = []metav1.OwnerReference{{Kind: "Service", Name: m.Name}}
	m.ResourceVersion, m.UID = "4711", "5d7c0a2e"
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations["kubectl.kubernetes.io/last-applied-configuration"] = `{"apiVersion":"v1","kind":"Service"}`
}

// The informers store what the tracker reads: the parse of each object
// (or why it failed) under its key, and nothing of the API object.
func TestInformersStoreTheParsedObjects(t *testing.T) {
	svc := pt.Service("ns", "web", []string{"10.96.0.10", "fd00::10"},
		pt.Port("http", "TCP", 80), pt.Port("dns", "UDP", 53), pt.LoadBalancer("203.0.113.9"),
		pt.NodePort("http", 30080), pt.ExternalLocal(31000), pt.Affinity(600))
	bookkeeping(&svc.ObjectMeta)
	wantSvc, err := ParseService(svc.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	stored := mustStore(t, svc).(*storedService)
	if !stored.parsed.Equal(wantSvc) || stored.err != nil {
		t.Errorf("stored Service %+v, %v; want %+v", stored.parsed, stored.err, wantSvc)
	}
	if key, err := cache.MetaNamespaceKeyFunc(stored); key != "ns/web" || err != nil {
		t.Errorf("stored Service's key %q, %v", key, err)
	}
	if stored.key != (key{Namespace: "ns", Name: "web"}) {
		t.Errorf("stored Service's name %+v", stored.key)
	}
	// The informers' caches index by namespace, and name tombstones.
	if ns, err := cache.MetaNamespaceIndexFunc(stored); !reflect.DeepEqual(ns, []string{"ns"}) || err != nil {
		t.Errorf("stored Service's namespace index %q, %v", ns, err)
	}
	tombstone := cache.DeletedFinalStateUnknown{Key: "ns/web", Obj: stored}
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(tombstone); key != "ns/web" || err != nil {
		t.Errorf("a stored Service's tombstone's key %q, %v", key, err)
	}
	bad := pt.Service("ns", "bad", []string{"10.96.0.300"}, pt.Port("http", "TCP", 80))
	if stored := mustStore(t, bad).(*storedService); stored.err == nil || stored.parsed != nil {
		t.Errorf("an invalid Service stored as %+v, %v", stored.parsed, stored.err)
	}

	es := pt.Slice("ns", "web-abc", "web", pt.SlicePort("http", "TCP", 8080),
		pt.TriggerTime("2026-01-02T03:04:05.123456789Z"),
		pt.Endpoints(pt.Ready("10.0.0.1", "node-a").InZone("z1").HintZones("z1"), pt.Terminating("10.0.0.2", "node-b", true),
			pt.Ready("10.0.0.300", "node-a"))) // dropped
	bookkeeping(&es.ObjectMeta)
	wantSlice, wantDropped, err := ParseEndpointSlice(es.DeepCopy())
	if err != nil || len(wantDropped) == 0 {
		t.Fatalf("the test slice: dropped %v, %v", wantDropped, err)
	}
	storedES := mustStore(t, es).(*storedSlice)
	if !storedES.parsed.Equal(wantSlice) || !storedES.parsed.TriggerTime.Equal(wantSlice.TriggerTime) ||
		!reflect.DeepEqual(storedES.dropped, wantDropped) || storedES.err != nil {
		t.Errorf("stored EndpointSlice %+v (dropped %v), %v; want %+v", storedES.parsed, storedES.dropped, storedES.err, wantSlice)
	}
	if key, _ := cache.MetaNamespaceKeyFunc(storedES); key != "ns/web-abc" {
		t.Errorf("stored EndpointSlice's key %q", key)
	}
	orphan := pt.Slice("ns", "orphan", "")
	delete(orphan.Labels, "kubernetes.io/service-name")
	if stored := mustStore(t, orphan).(*storedSlice); stored.err == nil {
		t.Error("a slice without a service stored without its error")
	}

	// The one Node is kept whole, less its bookkeeping.
	node := sourceTestNode()
	bookkeeping(&node.ObjectMeta)
	node.Spec.Taints = []v1.Taint{{Key: toBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
	node.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	node.Status.Images = []v1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 320000}}
	want := node.DeepCopy()
	slimNode := mustStore(t, node).(*v1.Node)
	if !nodeEqual(NodeInfoFromNode(slimNode), NodeInfoFromNode(want)) || !reflect.DeepEqual(slimNode.Spec, want.Spec) ||
		slimNode.DeletionTimestamp == nil || slimNode.Status.Images != nil || slimNode.ManagedFields != nil {
		t.Errorf("stored Node:\n%+v\nfrom\n%+v", slimNode, want)
	}

	// What the transform made, or a tombstone, may come through again.
	for _, again := range []any{stored, storedES, cache.DeletedFinalStateUnknown{Key: "ns/web", Obj: stored}} {
		if got := mustStore(t, again); !reflect.DeepEqual(got, again) {
			t.Errorf("the transform changed a %T", again)
		}
	}
}

func mustStore(t *testing.T, obj any) any {
	t.Helper()
	out, err := toStored(obj)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
