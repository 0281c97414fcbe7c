package proxier

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/svcproxy/svcproxy/model"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

func sourceTestNode() *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: "zone-1"}},
		Spec:       v1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24", "fd00:244:1::/64"}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeHostName, Address: "node-a"},
			{Type: v1.NodeExternalIP, Address: "203.0.113.7"},
			{Type: v1.NodeInternalIP, Address: "192.168.50.1"},
			{Type: v1.NodeInternalIP, Address: "fd00:50::1"},
		}},
	}
}

// nodeLog records what a Source tells its OnNode.
type nodeLog struct {
	mu    sync.Mutex
	nodes []*v1.Node
}

func (l *nodeLog) record(n *v1.Node) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nodes = append(l.nodes, n)
}

func (l *nodeLog) last() (*v1.Node, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.nodes) == 0 {
		return nil, 0
	}
	return l.nodes[len(l.nodes)-1], len(l.nodes)
}

func startSource(t *testing.T, client *fake.Clientset) (*Tracker, *Source, *nodeLog) {
	t.Helper()
	tracker := NewTracker(zap.NewNop(), time.Now)
	nodes := &nodeLog{}
	src, err := NewSource(SourceConfig{Client: client, NodeName: "node-a", Tracker: tracker, OnNode: nodes.record, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	src.Start(ctx)
	return tracker, src, nodes
}

// eventually polls cond for up to five seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSourceFeedsTrackerFromInformers(t *testing.T) {
	otherProxy := pt.Service("ns", "other", []string{"10.96.0.20"}, pt.Port("http", "TCP", 80))
	otherProxy.Labels = map[string]string{labelServiceProxyName: "someone-else"}
	headlessSlice := webSlice("headless-1", "10.0.0.9")
	headlessSlice.Labels[labelHeadless] = ""
	apiNode := sourceTestNode()
	bookkeeping(&apiNode.ObjectMeta)
	client := fake.NewClientset(apiNode, webService(), webSlice("web-1", "10.0.0.1"), otherProxy, headlessSlice)

	tracker, src, nodes := startSource(t, client)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := src.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	node, ok := src.WaitForNode(ctx)
	if !ok {
		t.Fatalf("WaitForNode: no addresses in %+v", node)
	}

	snap := tracker.Snapshot()
	if _, ok := snap.Service(web); !ok {
		t.Error("ns/web not in the tracker")
	}
	if _, ok := snap.Service(ServiceName{"ns", "other"}); ok {
		t.Error("a service labelled for another proxy reached the tracker")
	}
	if got := sliceAddrs(snap, web); !slices.Equal(got, []string{"web-1=10.0.0.1"}) {
		t.Errorf("web's endpoints %v (the headless slice must be left out)", got)
	}
	wantNode := model.NodeInfo{Name: "node-a", Zone: "zone-1",
		Addresses: []netip.Addr{netip.MustParseAddr("192.168.50.1"), netip.MustParseAddr("fd00:50::1"), netip.MustParseAddr("203.0.113.7")},
		PodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}}
	if !nodeEqual(snap.Node, wantNode) || !nodeEqual(node, wantNode) {
		t.Errorf("node info: tracker %+v, WaitForNode %+v, want %+v", snap.Node, node, wantNode)
	}
	if n, _ := nodes.last(); n == nil || n.Name != "node-a" {
		t.Errorf("OnNode was not told about node-a: %v", n)
	}
	if cached, err := src.nodes.Get("node-a"); err != nil || cached.ManagedFields != nil {
		t.Errorf("the informer's cache holds the Node unslimmed: %v, %+v", err, cached)
	}
	for _, obj := range src.factories[0].Core().V1().Services().Informer().GetStore().List() {
		if _, ok := obj.(*storedService); !ok {
			t.Errorf("the Services informer's cache holds a %T", obj)
		}
	}

	// Changes through the API reach the tracker.
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, webSlice("web-1", "10.0.0.2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the slice update", func() bool {
		return slices.Equal(sliceAddrs(tracker.Snapshot(), web), []string{"web-1=10.0.0.2"})
	})
	if err := client.CoreV1().Services("ns").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the service delete", func() bool { _, ok := tracker.Snapshot().Service(web); return !ok })
	if err := client.CoreV1().Nodes().Delete(ctx, "node-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "OnNode(nil) on the node delete", func() bool { n, count := nodes.last(); return n == nil && count > 1 })
}

func TestSourceWaitForSyncSaysWhyListingFailed(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("list", "endpointslices", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New(`endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:kube-system:svcproxy" cannot list resource`)
	})
	_, src, _ := startSource(t, client)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := src.WaitForSync(ctx)
	if err == nil || !strings.Contains(err.Error(), "could not list endpointslices") || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("WaitForSync: %v, want it to name endpointslices and the forbidden error", err)
	}
}

func TestSourceWaitForNodeGivesUpWithoutAddresses(t *testing.T) {
	bare := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
	_, src, _ := startSource(t, fake.NewClientset(bare))
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := src.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	if node, ok := src.WaitForNode(ctx); ok || node.Name != "node-a" {
		t.Fatalf("WaitForNode = %+v, %v; want node-a without addresses, false", node, ok)
	}
}

// Under detectLocalMode NodeCIDR the wait is for the podCIDRs too.
func TestSourceWaitForNodeWaitsForPodCIDRsIfAsked(t *testing.T) {
	node := sourceTestNode()
	node.Spec.PodCIDRs = nil
	client := fake.NewClientset(node)
	src, err := NewSource(SourceConfig{Client: client, NodeName: "node-a", Tracker: NewTracker(zap.NewNop(), time.Now),
		WaitForPodCIDRs: true, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	src.Start(ctx)
	if err := src.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	short, stop := context.WithTimeout(ctx, 300*time.Millisecond)
	defer stop()
	if _, ok := src.WaitForNode(short); ok {
		t.Fatal("WaitForNode returned a Node without podCIDRs")
	}
	node.Spec.PodCIDRs = []string{"10.244.1.0/24"}
	if _, err := client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if info, ok := src.WaitForNode(ctx); !ok || len(info.PodCIDRs) != 1 {
		t.Fatalf("WaitForNode = %+v, %v; want the podCIDR", info, ok)
	}
}

func TestNodeInfoFromNodeSkipsBadValues(t *testing.T) {
	n := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n"},
		Spec:       v1.NodeSpec{PodCIDR: "10.244.3.7/24"},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "not-an-ip"},
			{Type: v1.NodeInternalIP, Address: "::ffff:192.168.1.1"},
			{Type: v1.NodeExternalIP, Address: "192.168.1.1"},
		}},
	}
	got := NodeInfoFromNode(n)
	want := model.NodeInfo{Name: "n", Addresses: []netip.Addr{netip.MustParseAddr("192.168.1.1")},
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}}
	if !nodeEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

// slowCore is a zap core whose every write takes a while, as a busy
// terminal's would: it makes the tracker's handlers slow.
type slowCore struct{ zapcore.Core }

func (c slowCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(e, c)
}
func (c slowCore) Write(zapcore.Entry, []zapcore.Field) error {
	time.Sleep(200 * time.Microsecond)
	return nil
}
func (c slowCore) With([]zapcore.Field) zapcore.Core { return c }
func (c slowCore) Enabled(zapcore.Level) bool        { return true }

// WaitForSync returns once the tracker holds every object listed, not
// just the informers' caches: the first sync must see the whole cluster.
// Each slice here draws a warning (an endpoint with a bad address), which
// a slow log makes the tracker's handler lag behind the informer.
func TestSourceWaitForSyncMeansTheTrackerHasEverything(t *testing.T) {
	const n = 1000
	objs := []runtime.Object{sourceTestNode()}
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		objs = append(objs, pt.Service("ns", name, []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)}, pt.Port("http", "TCP", 80)),
			pt.Slice("ns", name+"-1", name, pt.SlicePort("http", "TCP", 8080),
				pt.Endpoints(pt.Ready("10.244.0.1", "node-a"), pt.Ready("10.244.0.300", "node-a"))))
	}
	tracker := NewTracker(zap.New(slowCore{zapcore.NewNopCore()}), time.Now)
	src, err := NewSource(SourceConfig{Client: fake.NewClientset(objs...), NodeName: "node-a", Tracker: tracker, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src.Start(ctx)
	if err := src.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	snap := tracker.Snapshot()
	services, slices := 0, 0
	for i := range n {
		name := ServiceName{"ns", fmt.Sprintf("svc-%d", i)}
		if _, ok := snap.Service(name); ok {
			services++
		}
		if len(sliceAddrs(snap, name)) > 0 {
			slices++
		}
	}
	if services != n || slices != n {
		t.Errorf("after WaitForSync the tracker holds %d services and %d slices of %d", services, slices, n)
	}
}
