// Command sandbox is `make run`: svcproxy's main job on one machine with no
// cluster. It starts a local control plane, a node network namespace with
// pods serving HTTP, registers them as a Node, Pods and a NodePort Service,
// runs the real svcproxy binary inside the node namespace and shows
// requests through the ClusterIP and the NodePort spread over the pods.
// Then it prints kubectl and curl commands to paste (with the kubectl built
// beside the control plane) and waits: Ctrl-C ends it and removes
// everything.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/internal/controlplane"
	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/internal/sandbox"
)

type options struct {
	binDir   string
	svcproxy string
	backends int
	requests int
	once     bool
}

func main() {
	var o options
	flag.StringVar(&o.binDir, "controlplane-bin-dir", "", "directory with etcd, kube-apiserver, kube-controller-manager (hack/controlplane-bins.sh prints it)")
	flag.StringVar(&o.svcproxy, "svcproxy", "bin/svcproxy", "the svcproxy binary to run in the node namespace")
	flag.IntVar(&o.backends, "backends", 3, "pods behind the demo Service")
	flag.IntVar(&o.requests, "requests", 30, "requests sent through each address")
	flag.BoolVar(&o.once, "once", false, "exit after the demo instead of waiting for Ctrl-C")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run(ctx context.Context, o options) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root to create network namespaces")
	}
	dir, err := os.MkdirTemp("", "svcproxy-sandbox-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step("starting etcd, kube-apiserver and kube-controller-manager on loopback")
	cp, err := controlplane.Start(ctx, controlplane.Options{BinDir: o.binDir, WorkDir: dir, WithControllerManager: true, Log: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cp.Stop()
	step("control plane ready in %v at %s", cp.ReadyAfter().Round(100*time.Millisecond), cp.URL())

	var session netnstest.Session
	defer session.Close()
	sb, err := buildNode(ctx, &session, cp, o, dir)
	if err != nil {
		return err
	}
	clusterIP, nodePort, err := deployWeb(ctx, cp, sb, o.backends)
	if err != nil {
		return err
	}

	step("starting svcproxy in the node namespace")
	proxy, err := sb.StartProxy()
	if err != nil {
		return err
	}
	defer proxy.Stop(10 * time.Second)
	if err := sb.WaitHealthy(proxy, 60*time.Second); err != nil {
		return err
	}
	step("svcproxy (pid %d) is healthy; its log: %s", proxy.PID(), proxy.Log)

	if err := demo(sb, o, clusterIP, nodePort); err != nil {
		return fmt.Errorf("%w\nsvcproxy log:\n%s", err, tail(proxy.Output(), 30))
	}
	if o.once {
		return nil
	}
	if err := explain(os.Stdout, cp, sb, proxy, o, dir, clusterIP, nodePort); err != nil {
		return err
	}
	<-ctx.Done()
	step("stopping svcproxy, the control plane, and removing the namespaces")
	return nil
}

// buildNode makes the bed: backends pods plus one client pod.
func buildNode(ctx context.Context, session *netnstest.Session, cp *controlplane.ControlPlane, o options, dir string) (*sandbox.Sandbox, error) {
	step("building the node namespace with %d web pods and a client pod, and an outside client", o.backends)
	var sb *sandbox.Sandbox
	var err error
	buildErr := session.Build(func() {
		sb, err = sandbox.New(ctx, session, sandbox.Options{
			ControlPlane: cp, Pods: o.backends + 1, Binary: o.svcproxy, Dir: dir,
		})
		if err != nil {
			return
		}
		for _, pod := range sb.Bed.Pods()[:o.backends] {
			sandbox.ServeHTTP(session, pod, 8080)
		}
	})
	return sb, errors.Join(buildErr, err)
}

// deployWeb registers the web pods and a NodePort Service "hello" over them.
func deployWeb(ctx context.Context, cp *controlplane.ControlPlane, sb *sandbox.Sandbox, backends int) (string, int32, error) {
	cs := cp.Clientset()
	for _, pod := range sb.Bed.Pods()[:backends] {
		if err := sandbox.CreatePod(ctx, cs, "default", sb.NodeName(), pod, map[string]string{"app": "hello"}, 8080); err != nil {
			return "", 0, err
		}
	}
	svc, err := cs.CoreV1().Services("default").Create(ctx, sandbox.WebService("default", "hello", 80, 8080), metav1.CreateOptions{})
	if err != nil {
		return "", 0, err
	}
	step("created Service default/hello: ClusterIP %s:80, NodePort %d, selecting %d pods",
		svc.Spec.ClusterIP, svc.Spec.Ports[0].NodePort, backends)
	return svc.Spec.ClusterIP, svc.Spec.Ports[0].NodePort, nil
}

// demo sends requests through the ClusterIP from the client pod and
// through the NodePort from outside the node, and prints who answered.
func demo(sb *sandbox.Sandbox, o options, clusterIP string, nodePort int32) error {
	client := sb.Bed.Pods()[o.backends]
	targets := []struct {
		what string
		from *netnstest.NS
		url  string
	}{
		{"ClusterIP from " + client.Name, client, fmt.Sprintf("http://%s/", clusterIP)},
		{"NodePort from outside", sb.Bed.Outside(), fmt.Sprintf("http://%s:%d/", sb.Bed.Node().IPv4(), nodePort)},
	}
	for _, tg := range targets {
		c := sandbox.Client(tg.from, 2*time.Second)
		took, err := sandbox.WaitFor(30*time.Second, func() error { _, err := sandbox.Get(c, tg.url); return err })
		if err != nil {
			return fmt.Errorf("%s (%s): %w", tg.what, tg.url, err)
		}
		counts, err := sandbox.Spread(c, tg.url, o.requests)
		if err != nil {
			return fmt.Errorf("%s: %w", tg.what, err)
		}
		sample, _ := sandbox.Get(c, tg.url)
		step("%d requests to %s (%s), first answer after %v:", o.requests, tg.url, tg.what, took.Round(time.Millisecond))
		for _, backend := range sortedKeys(counts) {
			fmt.Printf("      %-8s %3d  %s\n", backend, counts[backend], strings.Repeat("#", counts[backend]))
		}
		fmt.Printf("      e.g. %q\n", sample)
	}
	return nil
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}
