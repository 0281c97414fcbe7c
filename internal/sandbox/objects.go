package sandbox

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// PodCIDR4 and PodCIDR6 hold every pod address of a bed.
var (
	PodCIDR4 = netip.MustParsePrefix("10.244.0.0/16")
	PodCIDR6 = netip.MustParsePrefix("fd00:244::/64")
)

// RegisterNode creates the Node object of the bed's node, with the
// addresses and pod ranges svcproxy reads, written through the status
// subresource as a kubelet would.
func RegisterNode(ctx context.Context, cs kubernetes.Interface, name string, bed *netnstest.Bed, zone string) error {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
		Spec: v1.NodeSpec{
			PodCIDR:  "10.244.0.0/24",
			PodCIDRs: []string{"10.244.0.0/24", "fd00:244::/96"},
		},
	}
	if zone != "" {
		node.Labels["topology.kubernetes.io/zone"] = zone
	}
	created, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating node %s: %w", name, err)
	}
	created.Status.Addresses = []v1.NodeAddress{
		{Type: v1.NodeInternalIP, Address: bed.Node().IPv4().String()},
		{Type: v1.NodeInternalIP, Address: bed.Node().IPv6().String()},
		{Type: v1.NodeHostName, Address: name},
	}
	created.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting node %s addresses: %w", name, err)
	}
	return nil
}

// CreatePod creates a running, ready Pod for a bed pod, with the labels
// given, so the endpointslice controller turns it into endpoints of the
// Services that select it. Without a kubelet, its status is written here.
func CreatePod(ctx context.Context, cs kubernetes.Interface, namespace, nodeName string, pod *netnstest.NS, labels map[string]string, port int32) error {
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: pod.Name, Labels: labels},
		Spec: v1.PodSpec{
			NodeName:   nodeName,
			Containers: []v1.Container{{Name: "web", Image: "sandbox/web", Ports: []v1.ContainerPort{{ContainerPort: port}}}},
		},
	}
	created, err := cs.CoreV1().Pods(namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating pod %s: %w", pod.Name, err)
	}
	now := metav1.Now()
	created.Status = v1.PodStatus{
		Phase:  v1.PodRunning,
		PodIP:  pod.IPv4().String(),
		PodIPs: []v1.PodIP{{IP: pod.IPv4().String()}, {IP: pod.IPv6().String()}},
		Conditions: []v1.PodCondition{
			{Type: v1.PodReady, Status: v1.ConditionTrue, LastTransitionTime: now},
			{Type: v1.ContainersReady, Status: v1.ConditionTrue, LastTransitionTime: now},
		},
		StartTime: &now,
	}
	if _, err := cs.CoreV1().Pods(namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting pod %s running: %w", pod.Name, err)
	}
	return nil
}

// WebService is a NodePort Service selecting app=<name> pods on targetPort.
func WebService(namespace, name string, port, targetPort int32) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1.ServiceSpec{
			Type:     v1.ServiceTypeNodePort,
			Selector: map[string]string{"app": name},
			Ports: []v1.ServicePort{{
				Name: "http", Protocol: v1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(targetPort),
			}},
		},
	}
}
