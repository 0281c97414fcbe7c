package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	etcdBinary              = "etcd"
	apiserverBinary         = "kube-apiserver"
	controllerManagerBinary = "kube-controller-manager"
	kubeProxyBinary         = "kube-proxy"
	kubectlBinary           = "kubectl"
)

// Layout of the work directory.
const (
	etcdDataDir          = "etcd"
	certDir              = "pki"
	adminKubeconfigFile  = "admin.kubeconfig"
	selfSignedServerCert = "apiserver.crt" // the apiserver writes it into certDir
)

// controllerManagerControllers are what Pod-driven tests need: endpointslice
// turns Pods selected by a Service into EndpointSlices; serviceaccount
// creates each namespace's default ServiceAccount, without which the
// apiserver refuses Pods; serviceaccount-token fills legacy token Secrets.
const controllerManagerControllers = "endpointslice,serviceaccount,serviceaccount-token"

// startStorageAndAPIServer starts etcd and the apiserver on fresh loopback
// ports, picking new ones when another program took a port first.
func (cp *ControlPlane) startStorageAndAPIServer(ctx context.Context, opts Options, creds credentials) error {
	const attempts = 3
	for attempt := 1; ; attempt++ {
		err := cp.tryStartStorageAndAPIServer(ctx, opts, creds)
		if err == nil || !errors.Is(err, errPortTaken) || attempt == attempts {
			return err
		}
		cp.log.Info("a port was taken meanwhile; retrying with other ports", zap.Error(err))
		cp.mu.Lock()
		stopErr := cp.stopProcessesLocked()
		cp.mu.Unlock()
		if err := errors.Join(stopErr, cp.forgetState()); err != nil {
			return err
		}
	}
}

// forgetState removes what a failed attempt left, so the next one starts
// from an empty etcd and a fresh serving certificate for its new port.
func (cp *ControlPlane) forgetState() error {
	return errors.Join(
		os.RemoveAll(filepath.Join(cp.dir, etcdDataDir)),
		os.RemoveAll(filepath.Join(cp.dir, certDir)))
}

func (cp *ControlPlane) tryStartStorageAndAPIServer(ctx context.Context, opts Options, creds credentials) error {
	ports, err := freeLoopbackPorts(3)
	if err != nil {
		return err
	}
	etcdURL := loopbackURL("http", ports[0])
	etcd, err := cp.launch(etcdBinary, opts.BinDir, cp.etcdArgs(etcdURL, loopbackURL("http", ports[1])))
	if err != nil {
		return err
	}
	if err := waitUntilReady(ctx, etcd, etcdHealthy(etcdURL)); err != nil {
		return err
	}

	cp.url = loopbackURL("https", ports[2])
	apiserver, err := cp.launch(apiserverBinary, opts.BinDir, cp.apiserverArgs(opts, creds, etcdURL, ports[2]))
	if err != nil {
		return err
	}
	probe := &apiserverProbe{url: cp.url, certFile: filepath.Join(cp.dir, certDir, selfSignedServerCert), token: creds.adminToken}
	if err := waitUntilReady(ctx, apiserver, probe.ready); err != nil {
		return err
	}
	cp.caPEM = probe.caPEM
	return nil
}

func loopbackURL(scheme string, port int) string {
	return scheme + "://127.0.0.1:" + strconv.Itoa(port)
}

func (cp *ControlPlane) etcdArgs(clientURL, peerURL string) []string {
	return []string{
		"--name=controlplane",
		"--data-dir=" + filepath.Join(cp.dir, etcdDataDir),
		"--listen-client-urls=" + clientURL,
		"--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=controlplane=" + peerURL,
		// The data lives only as long as the test; fsync would only make
		// every write wait on a disk shared with other work.
		"--unsafe-no-fsync",
		"--log-level=warn",
	}
}

func (cp *ControlPlane) apiserverArgs(opts Options, creds credentials, etcdURL string, port int) []string {
	return []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(cp.dir, certDir),
		"--service-cluster-ip-range=" + opts.serviceClusterIPRange(),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + creds.serviceAccountPublic,
		"--service-account-signing-key-file=" + creds.serviceAccountKey,
		"--token-auth-file=" + creds.tokenFile,
		"--authorization-mode=Node,RBAC",
		// The default reconciler would publish 127.0.0.1 as the kubernetes
		// Service's endpoint, which the API rejects, forever, in a loop.
		"--endpoint-reconciler-type=none",
		// As on a real cluster, so manifests with privileged pods validate.
		"--allow-privileged=true",
		"--profiling=false",
	}
}

// connect writes the admin kubeconfig and checks that a client built from it
// works: TLS against the self-signed CA, the token, the default namespace.
func (cp *ControlPlane) connect(ctx context.Context, creds credentials) error {
	cp.adminKubeconfig = filepath.Join(cp.dir, adminKubeconfigFile)
	if err := writeKubeconfig(cp.adminKubeconfig, cp.url, cp.caPEM, adminUser, creds.adminToken); err != nil {
		return err
	}
	cp.restConfig = &rest.Config{
		Host:            cp.url,
		BearerToken:     creds.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.caPEM},
		// Tests load hundreds of objects; client-go's default of 5 per
		// second would make them wait on the client, not the server.
		QPS:   200,
		Burst: 400,
	}
	clientset, err := kubernetes.NewForConfig(cp.restConfig)
	if err != nil {
		return err
	}
	cp.clientset = clientset
	// The apiserver creates the default namespace shortly after it is ready.
	return poll(ctx, "the default namespace", func(ctx context.Context) error {
		_, err := clientset.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{})
		return err
	})
}

func (cp *ControlPlane) startControllerManager(ctx context.Context, opts Options, creds credentials) error {
	args := []string{
		"--kubeconfig=" + cp.adminKubeconfig,
		"--controllers=" + controllerManagerControllers,
		"--leader-elect=false",
		// Nothing scrapes it; a port less to pick.
		"--secure-port=0",
		"--service-account-private-key-file=" + creds.serviceAccountKey,
		"--root-ca-file=" + filepath.Join(cp.dir, certDir, selfSignedServerCert),
		"--use-service-account-credentials=false",
	}
	kcm, err := cp.launch(controllerManagerBinary, opts.BinDir, args)
	if err != nil {
		return err
	}
	// The default ServiceAccount appearing shows the controllers have synced
	// their caches and run; Pods cannot be created before it exists.
	return waitUntilReady(ctx, kcm, func(ctx context.Context) error {
		_, err := cp.clientset.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return errors.New("the default ServiceAccount does not exist yet")
		}
		return err
	})
}

// portTakenMessage is what both etcd and the apiserver log when their
// listening port is in use.
const portTakenMessage = "address already in use"

// waitUntilReady polls probe until it succeeds, p ends, or ctx is done.
func waitUntilReady(ctx context.Context, p *process, probe func(context.Context) error) error {
	err := poll(ctx, p.Name, func(ctx context.Context) error {
		if p.hasExited() {
			return errExited
		}
		return probe(ctx)
	})
	switch {
	case errors.Is(err, errExited) && strings.Contains(p.logTail(30), portTakenMessage):
		return fmt.Errorf("%w: %w", errPortTaken, p.exitError())
	case errors.Is(err, errExited):
		return p.exitError()
	case err != nil:
		return fmt.Errorf("%w; last lines of %s:\n%s", err, p.LogPath, p.logTail(15))
	}
	return nil
}
