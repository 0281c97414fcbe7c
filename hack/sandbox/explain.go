package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/template"

	"github.com/svcproxy/svcproxy/internal/controlplane"
	"github.com/svcproxy/svcproxy/internal/sandbox"
)

// tryIt is what explain prints: commands that work as pasted into a root
// shell while the sandbox runs. The heredoc stays at the left margin, where
// its end marker must be.
const tryIt = `
The sandbox keeps running. In another shell, as root, paste:

export KUBECONFIG={{.Kubeconfig}} PATH={{.KubectlDir}}:$PATH   # {{.KubectlIs}}
kubectl get nodes,pods,services,endpointslices -o wide

# hits URL: 12 requests from the client pod ({{.Client}}), counted by the pod that answered
hits() { for i in $(seq 12); do nsenter --net={{.ClientNetns}} curl -s -m 2 "$1" || echo no-answer; done | cut -d' ' -f1 | sort | uniq -c; }
hits http://{{.ClusterIP}}/

# take {{.First}} out of Service hello (its label stops matching): the controller drops its endpoint, svcproxy its rules
kubectl label pod {{.First}} app=resting --overwrite
sleep 2   # the controller, then svcproxy (at most one sync a second)
kubectl get endpointslices -l kubernetes.io/service-name=hello
hits http://{{.ClusterIP}}/
kubectl label pod {{.First}} app=hello --overwrite   # and back in

# a Service without a selector, and its EndpointSlice written by hand: {{.Last}} only
kubectl apply -f - <<'EOF'
apiVersion: v1
kind: Service
metadata:
  name: by-hand
spec:
  ports:
  - {name: http, port: 8081, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: by-hand-1
  labels: {kubernetes.io/service-name: by-hand}
addressType: IPv4
endpoints:
- addresses: ["{{.LastIP}}"]
  conditions: {ready: true}
  nodeName: {{.Node}}
ports:
- {name: http, port: 8080, protocol: TCP}
EOF
sleep 2
hits http://$(kubectl get service by-hand -o jsonpath='{.spec.clusterIP}'):8081/
kubectl delete service/by-hand endpointslice/by-hand-1   # a slice written by hand has no owner to go with

# the NodePort from the outside client, and the chains svcproxy wrote in the node namespace
nsenter --net={{.OutsideNetns}} curl -s -m 2 http://{{.NodeIP}}:{{.NodePort}}/
nsenter --net={{.NodeNetns}} iptables-save -t nat | grep -e '^:SVCPROXY' -e '^-A SVCPROXY-SERVICES'

# what svcproxy believes and whether the kernel holds it, per service port; one service explained
nsenter --net={{.NodeNetns}} {{.Svcproxy}} list -o wide
nsenter --net={{.NodeNetns}} {{.Svcproxy}} explain default/hello

svcproxy's log: {{.ProxyLog}}
Ctrl-C here stops svcproxy and the control plane and removes the namespaces.
`

// explain prints how to drive the running sandbox with kubectl and watch
// the traffic follow. kubectl is the one built beside the control plane,
// put on a PATH of its own in dir.
func explain(w io.Writer, cp *controlplane.ControlPlane, sb *sandbox.Sandbox, proxy *sandbox.Process, o options, dir, clusterIP string, nodePort int32) error {
	kubectlDir, kubectlIs := filepath.Join(dir, "bin"), "the kubectl of the control plane's release"
	kubectl, err := cp.Kubectl()
	if err == nil {
		err = errors.Join(os.MkdirAll(kubectlDir, 0o755), os.Symlink(kubectl, filepath.Join(kubectlDir, "kubectl")))
	}
	if err != nil {
		kubectlIs = fmt.Sprintf("no kubectl here (%v): use one of your own, v1.34 or newer", err)
	}
	first, last, client := sb.Bed.Pod(0), sb.Bed.Pod(o.backends-1), sb.Bed.Pod(o.backends)
	tmpl, err := template.New("try").Parse(tryIt)
	if err != nil {
		return err
	}
	return tmpl.Execute(w, map[string]any{
		"Kubeconfig":   cp.AdminKubeconfig(),
		"KubectlDir":   kubectlDir,
		"KubectlIs":    kubectlIs,
		"Client":       client.Name,
		"ClientNetns":  sandbox.NetnsPath(client),
		"ClusterIP":    clusterIP,
		"First":        first.Name,
		"Last":         last.Name,
		"LastIP":       last.IPv4(),
		"Node":         sb.NodeName(),
		"OutsideNetns": sandbox.NetnsPath(sb.Bed.Outside()),
		"NodeNetns":    sandbox.NetnsPath(sb.Bed.Node()),
		"NodeIP":       sb.Bed.Node().IPv4(),
		"NodePort":     nodePort,
		"ProxyLog":     proxy.Log,
		"Svcproxy":     svcproxyPath(o.svcproxy),
	})
}

// svcproxyPath is the binary's absolute path, for commands pasted elsewhere.
func svcproxyPath(bin string) string {
	if abs, err := filepath.Abs(bin); err == nil {
		return abs
	}
	return bin
}
