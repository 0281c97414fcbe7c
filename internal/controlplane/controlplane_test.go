package controlplane_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/svcproxy/svcproxy/internal/controlplane"
	"github.com/svcproxy/svcproxy/internal/controlplanetest"
)

func TestStartWithoutBinariesSaysHowToBuildThem(t *testing.T) {
	work := t.TempDir()
	_, err := controlplane.Start(t.Context(), controlplane.Options{BinDir: t.TempDir(), WorkDir: work})
	if err == nil || !strings.Contains(err.Error(), "hack/controlplane-bins.sh") {
		t.Fatalf("Start without binaries: got %v, want an error pointing at hack/controlplane-bins.sh", err)
	}
	if left, _ := os.ReadDir(work); len(left) != 0 {
		t.Errorf("a failed Start left %v in the work dir", left)
	}
}

func TestStartRefusesServiceCIDRsTheAPIServerWouldReject(t *testing.T) {
	bin := t.TempDir()
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if err := os.WriteFile(filepath.Join(bin, name), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cases := map[string][]netip.Prefix{
		"two IPv4":   {netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("10.97.0.0/16")},
		"three":      {netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00::/112"), netip.MustParsePrefix("10.97.0.0/16")},
		"host bits":  {netip.MustParsePrefix("10.96.0.1/16")},
		"zero value": {{}},
	}
	for name, cidrs := range cases {
		_, err := controlplane.Start(t.Context(), controlplane.Options{BinDir: bin, WorkDir: t.TempDir(), ServiceCIDRs: cidrs})
		if err == nil || !strings.Contains(err.Error(), "service CIDR") {
			t.Errorf("%s %v: got %v, want an error about the service CIDRs", name, cidrs, err)
		}
	}
}

// TestDualStackAPIServerStoresWhatSvcproxyWatches creates, through
// client-go, the objects svcproxy reads (a Node, a dual-stack Service, an
// EndpointSlice), checks that a ServiceAccount token only gets what RBAC
// grants it, and that the kubectl and kube-proxy built beside the control
// plane are of its release.
func TestDualStackAPIServerStoresWhatSvcproxyWatches(t *testing.T) {
	cp := controlplanetest.StartWith(t, controlplane.Options{ServiceCIDRs: []netip.Prefix{
		netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:96::/112"),
	}})
	t.Logf("ready after %v", cp.ReadyAfter())
	ctx, client := t.Context(), cp.Clientset()

	node := createNode(t, client, "node-a", "192.168.7.2")
	if got := node.Status.Addresses; len(got) != 1 || got[0].Address != "192.168.7.2" {
		t.Errorf("node addresses read back as %v, want InternalIP 192.168.7.2", got)
	}

	svc := createService(t, client, "web", corev1.IPFamilyPolicyRequireDualStack)
	checkClusterIPs(t, svc.Spec.ClusterIPs, "10.96.0.0/16", "fd00:96::/112")

	createEndpointSlice(t, client, "web")
	slices, err := client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
	if err != nil {
		t.Fatal(err)
	}
	if len(slices.Items) != 1 || len(slices.Items[0].Endpoints) != 2 || *slices.Items[0].Endpoints[1].NodeName != "node-a" {
		t.Errorf("endpoint slices of web read back as %+v, want one with two endpoints on node-a", slices.Items)
	}

	checkTokenGetsOnlyWhatRBACGrants(t, cp)
	checkKubectlAndKubeProxyAreOfItsRelease(t, cp)
	stopAndCheckNothingIsLeft(t, cp)
}

func TestControllerManagerTurnsPodsIntoEndpointSlices(t *testing.T) {
	cp := controlplanetest.StartWith(t, controlplane.Options{WithControllerManager: true})
	t.Logf("ready after %v", cp.ReadyAfter())
	ctx, client := t.Context(), cp.Clientset()

	createNode(t, client, "node-a", "192.168.7.2")
	createService(t, client, "web", corev1.IPFamilyPolicySingleStack)
	pod := createRunningPod(t, client, "web-1", "node-a", "10.244.0.5")

	var endpoint discoveryv1.Endpoint
	eventually(t, 30*time.Second, func() error {
		slices, err := client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
		if err != nil {
			return err
		}
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					endpoint = e
					return nil
				}
			}
		}
		return errors.New("no EndpointSlice with a ready endpoint for web yet")
	})
	if endpoint.Addresses[0] != "10.244.0.5" || endpoint.NodeName == nil || *endpoint.NodeName != "node-a" ||
		endpoint.TargetRef == nil || endpoint.TargetRef.UID != pod.UID {
		t.Errorf("endpoint for web is %+v, want 10.244.0.5 on node-a pointing at pod %s", endpoint, pod.UID)
	}

	for _, p := range cp.Processes() {
		t.Logf("%s: pid %d, RSS %s", p.Name, p.PID, residentSize(p.PID))
	}
	stopAndCheckNothingIsLeft(t, cp)
}

// checkKubectlAndKubeProxyAreOfItsRelease runs the kubectl and kube-proxy
// built beside the control plane: kubectl reaches the apiserver with the
// admin kubeconfig, and both say they are of the apiserver's version (not
// v0.0.0, which is what a build without version ldflags says).
func checkKubectlAndKubeProxyAreOfItsRelease(t *testing.T, cp *controlplane.ControlPlane) {
	t.Helper()
	kubectl, err := cp.Kubectl()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(kubectl, "--kubeconfig="+cp.AdminKubeconfig(), "version", "--output=json").Output()
	if err != nil {
		t.Fatalf("kubectl version: %v\n%s", err, stderrOf(err))
	}
	var versions struct {
		Client struct{ GitVersion string } `json:"clientVersion"`
		Server struct{ GitVersion string } `json:"serverVersion"`
	}
	if err := json.Unmarshal(out, &versions); err != nil {
		t.Fatalf("kubectl version printed %s: %v", out, err)
	}
	server := versions.Server.GitVersion
	if !strings.HasPrefix(server, "v1.") || versions.Client.GitVersion != server {
		t.Errorf("kubectl is %q, the apiserver %q: want the same v1.x release", versions.Client.GitVersion, server)
	}

	kubeProxy, err := cp.KubeProxy()
	if err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(kubeProxy, "--version").Output()
	if err != nil {
		t.Fatalf("kube-proxy --version: %v\n%s", err, stderrOf(err))
	}
	if got, want := strings.TrimSpace(string(out)), "Kubernetes "+server; got != want {
		t.Errorf("kube-proxy --version printed %q, want %q", got, want)
	}
}

func stderrOf(err error) []byte {
	if exit, ok := err.(*exec.ExitError); ok {
		return exit.Stderr
	}
	return nil
}

func createNode(t *testing.T, client kubernetes.Interface, name, internalIP string) *corev1.Node {
	t.Helper()
	ctx := t.Context()
	node, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: internalIP}}
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	node, err = client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return node
}

func createService(t *testing.T, client kubernetes.Interface, name string, policy corev1.IPFamilyPolicy) *corev1.Service {
	t.Helper()
	svc, err := client.CoreV1().Services("default").Create(t.Context(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector:       map[string]string{"app": name},
			IPFamilyPolicy: &policy,
			Ports:          []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func checkClusterIPs(t *testing.T, got []string, wantIn ...string) {
	t.Helper()
	if len(got) != len(wantIn) {
		t.Fatalf("cluster IPs %v, want one in each of %v", got, wantIn)
	}
	for i, ip := range got {
		if !netip.MustParsePrefix(wantIn[i]).Contains(netip.MustParseAddr(ip)) {
			t.Errorf("cluster IP %s is not in %s", ip, wantIn[i])
		}
	}
}

func createEndpointSlice(t *testing.T, client kubernetes.Interface, service string) {
	t.Helper()
	ready, node := true, "node-a"
	port, name, proto := int32(8080), "http", corev1.ProtocolTCP
	_, err := client.DiscoveryV1().EndpointSlices("default").Create(t.Context(), &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: service + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node},
			{Addresses: []string{"10.244.0.6"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node},
		},
		Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// createRunningPod creates a Pod bound to node and, standing in for the
// kubelet, reports it running and ready at ip through the status subresource.
func createRunningPod(t *testing.T, client kubernetes.Interface, name, node, ip string) *corev1.Pod {
	t.Helper()
	ctx := t.Context()
	pod, err := client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "web", Image: "registry.k8s.io/pause:3.10"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		PodIP:      ip,
		PodIPs:     []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	pod, err = client.CoreV1().Pods("default").UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// checkTokenGetsOnlyWhatRBACGrants proves KubeconfigForToken carries a
// ServiceAccount's identity: denied before a RoleBinding, allowed after.
func checkTokenGetsOnlyWhatRBACGrants(t *testing.T, cp *controlplane.ControlPlane) {
	t.Helper()
	ctx, admin := t.Context(), cp.Clientset()
	sa, err := admin.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reader"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	token, err := admin.CoreV1().ServiceAccounts("default").CreateToken(ctx, sa.Name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	path, err := cp.KubeconfigForToken(token.Status.Token)
	if err != nil {
		t.Fatal(err)
	}
	config, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	reader := kubernetes.NewForConfigOrDie(config)

	_, err = reader.CoreV1().Services("default").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("listing services as a ServiceAccount without a role: got %v, want Forbidden", err)
	}
	grantServiceReading(t, admin, sa.Name)
	// The RBAC authorizer sees new bindings through an informer.
	eventually(t, 10*time.Second, func() error {
		_, err := reader.CoreV1().Services("default").List(ctx, metav1.ListOptions{})
		return err
	})
}

func grantServiceReading(t *testing.T, admin kubernetes.Interface, serviceAccount string) {
	t.Helper()
	ctx := t.Context()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "service-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"list"}}},
	}
	if _, err := admin.RbacV1().Roles("default").Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "service-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: serviceAccount, Namespace: "default"}},
	}
	if _, err := admin.RbacV1().RoleBindings("default").Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// stopAndCheckNothingIsLeft stops cp and checks that every process it
// started has ended and its work directory is gone.
func stopAndCheckNothingIsLeft(t *testing.T, cp *controlplane.ControlPlane) {
	t.Helper()
	processes := cp.Processes()
	began := time.Now()
	if err := cp.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	t.Logf("stopped %d processes in %v", len(processes), time.Since(began))
	for _, p := range processes {
		if err := syscall.Kill(p.PID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) still exists after Stop (kill -0: %v)", p.Name, p.PID, err)
		}
	}
	if _, err := os.Stat(cp.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("work dir %s still there after Stop (%v)", cp.Dir(), err)
	}
}

// residentSize reads a process's resident memory from /proc.
func residentSize(pid int) string {
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return err.Error()
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rss, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.TrimSpace(rss)
		}
	}
	return "unknown"
}

// eventually retries check until it succeeds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("after %v: %v", timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
