package daemon_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/internal/sandbox"
)

// manifestObjects reads manifests/ as kustomize would for this kustomization:
// its resources, with its namespace set on namespaced objects. (The
// kustomization uses nothing else that changes what the apiserver checks;
// the image override only renames the image.)
func manifestObjects(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "manifests")
	var k struct {
		Namespace string   `json:"namespace"`
		Resources []string `json:"resources"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &k); err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	for _, res := range k.Resources {
		data, err := os.ReadFile(filepath.Join(dir, res))
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			obj := &unstructured.Unstructured{}
			if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", res, err)
			}
			if len(obj.Object) == 0 {
				continue
			}
			objs = append(objs, obj)
		}
	}
	for _, obj := range objs {
		if obj.GetKind() != "ClusterRole" && obj.GetKind() != "ClusterRoleBinding" {
			obj.SetNamespace(k.Namespace)
		}
	}
	return objs
}

// applyManifests server-side applies every object; dryRun only validates.
func applyManifests(t *testing.T, objs []*unstructured.Unstructured, dryRun bool, kinds ...string) {
	t.Helper()
	cfg := cp.RESTConfig()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cp.Clientset().Discovery()))
	opts := metav1.ApplyOptions{FieldManager: "svcproxy-e2e", Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	for _, obj := range objs {
		if len(kinds) > 0 && !slices.Contains(kinds, obj.GetKind()) {
			continue
		}
		gvk := obj.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", gvk, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if obj.GetNamespace() != "" {
			ri = dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		if _, err := ri.Apply(t.Context(), obj.GetName(), obj, opts); err != nil {
			t.Fatalf("server-side apply (dry run %v) of %s %s: %v", dryRun, obj.GetKind(), obj.GetName(), err)
		}
	}
}

// The manifests are valid for the apiserver (server-side dry run), and the
// daemon works with exactly the rights they give its ServiceAccount.
func TestManifestsApplyAndTheirRBACIsEnoughAndNoMore(t *testing.T) {
	requireSetup(t)
	objs := manifestObjects(t)
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind())
	}
	for _, want := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"} {
		if !slices.Contains(kinds, want) {
			t.Fatalf("manifests hold %v, no %s", kinds, want)
		}
	}
	applyManifests(t, objs, true)
	applyManifests(t, objs, false, "ServiceAccount", "ClusterRole", "ClusterRoleBinding")

	n := newIdleNode(t, 2)
	tr, err := n.cs.CoreV1().ServiceAccounts("kube-system").CreateToken(n.ctx, "svcproxy",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hostKubeconfig, err := cp.KubeconfigForToken(tr.Status.Token)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := n.sb.KubeconfigInNode(hostKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	n.startProxy(kubeconfig)

	svc := n.createService(n.service("rbac", v1.ServiceTypeClusterIP, 80))
	wrote := n.createSlice(n.slice("rbac", n.ns, 0))
	n.eventually("service as the ServiceAccount sees it", wrote, answers(n.pod(1), "http://"+svc.Spec.ClusterIP+"/", "pod-0"))
	if out := n.proxy.Output(); bytes.Contains([]byte(out), []byte("forbidden")) {
		t.Fatalf("svcproxy met a forbidden request with the manifests' RBAC:\n%s", tail(out, 20))
	}

	// No wider than needed: the account reads services, slices and nodes
	// and can do nothing else.
	const sa = "system:serviceaccount:kube-system:svcproxy"
	allowed := []authorizationv1.ResourceAttributes{
		{Verb: "list", Resource: "services"}, {Verb: "watch", Resource: "services"},
		{Verb: "list", Group: "discovery.k8s.io", Resource: "endpointslices"},
		{Verb: "watch", Group: "discovery.k8s.io", Resource: "endpointslices"},
		{Verb: "get", Resource: "nodes"}, {Verb: "list", Resource: "nodes"}, {Verb: "watch", Resource: "nodes"},
	}
	denied := []authorizationv1.ResourceAttributes{
		{Verb: "create", Resource: "services"}, {Verb: "update", Resource: "services"},
		{Verb: "delete", Resource: "services"}, {Verb: "create", Group: "discovery.k8s.io", Resource: "endpointslices"},
		{Verb: "update", Resource: "nodes"}, {Verb: "patch", Resource: "nodes", Subresource: "status"},
		{Verb: "get", Resource: "secrets"}, {Verb: "list", Resource: "secrets"},
		{Verb: "list", Resource: "pods"}, {Verb: "list", Resource: "configmaps"},
		{Verb: "create", Resource: "pods"}, {Verb: "list", Resource: "endpoints"},
	}
	check := func(attrs authorizationv1.ResourceAttributes, want bool) {
		review, err := n.cs.AuthorizationV1().SubjectAccessReviews().Create(n.ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: sa, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system"}, ResourceAttributes: &attrs},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if review.Status.Allowed != want {
			t.Errorf("%s %s/%s %s: allowed=%v, want %v", attrs.Verb, attrs.Group, attrs.Resource, attrs.Subresource, review.Status.Allowed, want)
		}
	}
	for _, a := range allowed {
		check(a, true)
	}
	for _, a := range denied {
		check(a, false)
	}
}

// An apiserver that cannot be reached, or refuses svcproxy's credentials,
// ends startup with one clear error line and a non-zero exit, before any
// rule is written.
func TestUnusableAPIServerIsOneErrorLine(t *testing.T) {
	requireSetup(t)
	ns := netnstest.NewNS(t, "lonely-node")
	dir := t.TempDir()
	unreachable := filepath.Join(dir, "unreachable.kubeconfig")
	if err := sandbox.RewriteKubeconfig(cp.AdminKubeconfig(), unreachable, "https://127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	wrongToken, err := cp.KubeconfigForToken("not-a-token")
	if err != nil {
		t.Fatal(err)
	}
	n := newIdleNode(t, 0) // a node namespace bridged to the apiserver
	rejected, err := n.sb.KubeconfigInNode(wrongToken)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, kubeconfig string
		in               *netnstest.NS
		want             string
	}{
		{"unreachable", unreachable, ns, "https://127.0.0.1:1"},
		{"credentials refused", rejected, n.sb.Bed.Node(), "Unauthorized"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			p, err := sandbox.StartIn(tc.in, filepath.Join(dir, fmt.Sprintf("svcproxy-%d.log", i)), nil, svcproxyBin,
				"--kubeconfig="+tc.kubeconfig, "--hostname-override=lonely", "--api-timeout=3s")
			if err != nil {
				t.Fatal(err)
			}
			exitErr := p.Wait(60 * time.Second)
			var ee *exec.ExitError
			if !errors.As(exitErr, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("exit %v, want a non-zero exit code; output:\n%s", exitErr, p.Output())
			}
			var errorLines []string
			for _, line := range strings.Split(strings.TrimSpace(p.Output()), "\n") {
				if strings.HasPrefix(line, "svcproxy: ") {
					errorLines = append(errorLines, line)
				}
			}
			if len(errorLines) != 1 || !strings.Contains(errorLines[0], tc.want) {
				t.Fatalf("error lines %q, want exactly one naming %q; output:\n%s", errorLines, tc.want, p.Output())
			}
			t.Logf("gave up after %v: %s", time.Since(start).Round(100*time.Millisecond), errorLines[0])
		})
	}
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		out, err := ns.Run(save)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "SVCPROXY") {
			t.Fatalf("%s shows svcproxy rules after a failed start:\n%s", save, out)
		}
	}
}
