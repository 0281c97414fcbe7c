package proxier

import (
	"reflect"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// bookkeeping is what the API server and kubectl add to every object.
func bookkeeping(m *metav1.ObjectMeta) {
	m.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply,
		FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{"f:ports":{}}}`)}}}
	m.OwnerReferences = []metav1.OwnerReference{{Kind: "Service", Name: m.Name}}
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations["kubectl.kubernetes.io/last-applied-configuration"] = `{"apiVersion":"v1","kind":"Service"}`
}

// The transform keeps everything the readers of each kind read: a
// slimmed object parses to what the whole one does.
func TestSlimKeepsWhatSvcproxyReads(t *testing.T) {
	svc := pt.Service("ns", "web", []string{"10.96.0.10", "fd00::10"},
		pt.Port("http", "TCP", 80), pt.Port("dns", "UDP", 53), pt.Port("sig", "SCTP", 9000),
		pt.LoadBalancer("203.0.113.9", "2001:db8::9"), pt.ProxyModeIngress("198.51.100.7"),
		pt.NodePort("http", 30080), pt.ExternalIPs("192.0.2.2", "2001:db8::1"),
		pt.SourceRanges("10.0.0.0/8", "2001:db8::/32"),
		pt.ExternalLocal(31000), pt.InternalLocal(), pt.Affinity(600), pt.Distribution("PreferSameNode"))
	bookkeeping(&svc.ObjectMeta)
	svc.Status.Conditions = []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue}}
	wantSvc, err := ParseService(svc.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	slimmed := mustSlim(t, svc.DeepCopy()).(*v1.Service)
	if got, err := ParseService(slimmed); err != nil || !got.Equal(wantSvc) {
		t.Errorf("slimmed Service parses to %+v, %v; want %+v", got, err, wantSvc)
	}
	if slimmed.ManagedFields != nil || slimmed.Annotations != nil || slimmed.OwnerReferences != nil || slimmed.Status.Conditions != nil {
		t.Errorf("slimmed Service keeps bookkeeping: %+v", slimmed.ObjectMeta)
	}

	es := pt.Slice("ns", "web-abc", "web", pt.SlicePort("http", "TCP", 8080), pt.SlicePort("dns", "UDP", 53),
		pt.TriggerTime("2026-01-02T03:04:05.123456789Z"),
		pt.Endpoints(
			pt.Ready("10.0.0.1", "node-a").InZone("z1").HintZones("z1", "z2").HintNodes("node-a"),
			pt.Terminating("10.0.0.2", "node-b", true),
			pt.NotReady("10.0.0.3", "node-c"),
		))
	bookkeeping(&es.ObjectMeta)
	for i := range es.Endpoints {
		es.Endpoints[i].TargetRef = &v1.ObjectReference{Kind: "Pod", Name: "web-1234567890-abcde"}
		es.Endpoints[i].DeprecatedTopology = map[string]string{"kubernetes.io/hostname": "node-a"}
		es.Endpoints[i].Hostname = new(string)
	}
	wantSlice, wantDropped, err := ParseEndpointSlice(es.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	slimSlice := mustSlim(t, es.DeepCopy()).(*discoveryv1.EndpointSlice)
	got, dropped, err := ParseEndpointSlice(slimSlice)
	if err != nil || !got.Equal(wantSlice) || !got.TriggerTime.Equal(wantSlice.TriggerTime) || !reflect.DeepEqual(dropped, wantDropped) {
		t.Errorf("slimmed EndpointSlice parses to %+v (dropped %v), %v; want %+v", got, dropped, err, wantSlice)
	}
	if len(slimSlice.Annotations) != 1 || slimSlice.ManagedFields != nil || slimSlice.Endpoints[0].TargetRef != nil {
		t.Errorf("slimmed EndpointSlice keeps bookkeeping: %+v", slimSlice)
	}

	node := sourceTestNode()
	bookkeeping(&node.ObjectMeta)
	node.Spec.Taints = []v1.Taint{{Key: toBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
	node.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	node.Status.Images = []v1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 320000}}
	slimNode := mustSlim(t, node.DeepCopy()).(*v1.Node)
	if !nodeEqual(NodeInfoFromNode(slimNode), NodeInfoFromNode(node)) || !reflect.DeepEqual(slimNode.Spec, node.Spec) ||
		slimNode.DeletionTimestamp == nil || slimNode.Status.Images != nil {
		t.Errorf("slimmed Node:\n%+v\nfrom\n%+v", slimNode, node)
	}

	// Whatever else reaches the transform (a tombstone) passes unchanged.
	tomb := struct{ Key string }{"ns/web"}
	if got := mustSlim(t, tomb); got != tomb {
		t.Errorf("slim changed a %T", tomb)
	}
}

func mustSlim(t *testing.T, obj any) any {
	t.Helper()
	out, err := slim(obj)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
