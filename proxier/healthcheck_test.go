package proxier

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/model"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// freePort finds a loopback port nobody listens on right now.
func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// lbPort is an externalTrafficPolicy=Local LoadBalancer port of ns/name
// with the given endpoints, local or not.
func lbPort(name string, hcPort uint16, portName string, eps ...model.Endpoint) *model.ServicePort {
	sp := &model.ServicePort{
		Name:                model.ServicePortName{Namespace: "ns", Name: name, Port: portName, Protocol: model.TCP},
		NodePort:            30080,
		ExternalPolicyLocal: true,
		HealthCheckNodePort: hcPort,
		ClusterEndpoints:    eps,
	}
	for _, e := range eps {
		if e.Local {
			sp.LocalEndpoints = append(sp.LocalEndpoints, e)
		}
	}
	return sp
}

func viewOf(fam model.Family, ports ...*model.ServicePort) *model.NodeView {
	v := &model.NodeView{Family: fam, Services: map[model.ServicePortName]*model.ServicePort{}}
	for _, sp := range ports {
		v.Services[sp.Name] = sp
	}
	return v
}

func synced(views ...*model.NodeView) *SyncReport {
	r := &SyncReport{Snapshot: &Snapshot{}}
	for _, v := range views {
		r.Families = append(r.Families, FamilyReport{Family: v.Family, View: v})
	}
	return r
}

type hcAnswer struct {
	code   int
	body   healthCheckBody
	weight string
	err    error
}

func askHealthCheck(port uint16) hcAnswer { return askHealthCheckAt("127.0.0.1", port) }

func askHealthCheckAt(host string, port uint16) hcAnswer {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + net.JoinHostPort(host, fmt.Sprint(port)) + "/")
	if err != nil {
		return hcAnswer{err: err}
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := hcAnswer{code: resp.StatusCode, weight: resp.Header.Get("X-Load-Balancing-Endpoint-Weight")}
	if err := json.Unmarshal(raw, &a.body); err != nil {
		a.err = fmt.Errorf("body %q: %w", raw, err)
	}
	return a
}

func expectAnswer(t *testing.T, what string, port uint16, code, local int, healthy bool) {
	t.Helper()
	a := askHealthCheck(port)
	if a.err != nil {
		t.Fatalf("%s: %v", what, a.err)
	}
	if a.code != code || a.body.LocalEndpoints != local || a.body.ServiceProxyHealthy != healthy || a.weight != fmt.Sprint(local) {
		t.Errorf("%s: got %d %+v weight %s, want %d with %d local endpoints, serviceProxyHealthy %v",
			what, a.code, a.body, a.weight, code, local, healthy)
	}
}

func expectClosed(t *testing.T, what string, port uint16) {
	t.Helper()
	if a := askHealthCheck(port); !errors.Is(a.err, syscall.ECONNREFUSED) {
		t.Errorf("%s: port %d gave %d %+v (%v), want the connection refused", what, port, a.code, a.body, a.err)
	}
}

func TestHealthCheckServersFollowViews(t *testing.T) {
	var proxyHealthy atomic.Bool
	proxyHealthy.Store(true)
	s := NewHealthCheckServers([]string{"127.0.0.1"}, proxyHealthy.Load, zap.NewNop())
	t.Cleanup(s.Close)
	web, api := freePort(t), freePort(t)

	local1, local2 := endpointAt("10.0.0.1:8080", true), endpointAt("10.0.0.2:8080", true)
	remote := endpointAt("10.0.1.1:8080", false)
	notReady := endpointAt("10.0.0.3:8080", true)
	notReady.Ready = false
	// Only ready local endpoints count; the others make no difference.
	s.Observe(synced(viewOf(model.IPv4,
		lbPort("web", web, "http", local1, local2, remote),
		lbPort("api", api, "grpc", remote, notReady),
		&model.ServicePort{Name: model.ServicePortName{Namespace: "ns", Name: "cluster-policy", Port: "", Protocol: model.TCP}, NodePort: 30081, ClusterEndpoints: []model.Endpoint{local1}},
	)))
	expectAnswer(t, "web with two local endpoints", web, http.StatusOK, 2, true)
	expectAnswer(t, "api with only remote and unready local endpoints", api, http.StatusServiceUnavailable, 0, true)
	if a := askHealthCheck(web); a.body.Service.Namespace != "ns" || a.body.Service.Name != "web" {
		t.Errorf("web body names %+v", a.body.Service)
	}

	proxyHealthy.Store(false)
	expectAnswer(t, "web while the proxy is unhealthy", web, http.StatusServiceUnavailable, 2, false)
	proxyHealthy.Store(true)

	// A failed sync changes nothing.
	failed := synced(viewOf(model.IPv4))
	failed.Families[0].Err = errors.New("restore failed")
	s.Observe(failed)
	expectAnswer(t, "web after a failed sync", web, http.StatusOK, 2, true)

	// web goes away; api gets a local endpoint in IPv6 only (a dual-stack
	// service whose IPv4 slice lags).
	s.Observe(synced(
		viewOf(model.IPv4, lbPort("api", api, "grpc", remote)),
		viewOf(model.IPv6, lbPort("api", api, "grpc", endpointAt("[fd00::1]:8080", true))),
	))
	expectClosed(t, "web after its service went away", web)
	expectAnswer(t, "api with a local IPv6 endpoint", api, http.StatusOK, 1, true)

	// api's health check port moves.
	moved := freePort(t)
	s.Observe(synced(viewOf(model.IPv4, lbPort("api", moved, "grpc", local1))))
	expectClosed(t, "api's old port", api)
	expectAnswer(t, "api on its new port", moved, http.StatusOK, 1, true)

	s.Close()
	expectClosed(t, "api after Close", moved)
}

func TestHealthCheckPortInUseIsLoggedNotFatal(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := uint16(taken.Addr().(*net.TCPAddr).Port)
	core, logs := observer.New(zapcore.InfoLevel)
	s := NewHealthCheckServers([]string{"127.0.0.1"}, func() bool { return true }, zap.New(core))
	t.Cleanup(s.Close)
	free := freePort(t)

	local := endpointAt("10.0.0.1:8080", true)
	s.Observe(synced(viewOf(model.IPv4, lbPort("busy", busy, "", local), lbPort("free", free, "", local))))

	expectAnswer(t, "the service whose port is free", free, http.StatusOK, 1, true)
	warned := logs.FilterMessage("health check node port cannot be served").All()
	if len(warned) != 1 || warned[0].ContextMap()["service"] != "ns/busy" {
		t.Errorf("want one warning naming ns/busy, got %v", warned)
	}
}

// kube-proxy counts a service's local endpoints by IP: a pod behind two
// ports of the service (or two target ports) is one endpoint.
func TestHealthCheckCountsLocalEndpointsByIP(t *testing.T) {
	s := NewHealthCheckServers([]string{"127.0.0.1"}, func() bool { return true }, zap.NewNop())
	t.Cleanup(s.Close)
	port := freePort(t)
	s.Observe(synced(viewOf(model.IPv4,
		lbPort("web", port, "http", endpointAt("10.0.0.1:8080", true), endpointAt("10.0.0.2:8080", true)),
		lbPort("web", port, "https", endpointAt("10.0.0.1:8443", true)),
		lbPort("web", port, "metrics", endpointAt("10.0.0.1:9090", true), endpointAt("10.0.0.1:9091", true)),
	)))
	expectAnswer(t, "two pods behind three ports", port, http.StatusOK, 2, true)
}

// A service's server listens on every host given and nowhere else; if one
// host cannot be bound, on none of them.
func TestHealthCheckServersListenOnEveryHost(t *testing.T) {
	s := NewHealthCheckServers([]string{"127.0.0.2", "127.0.0.3"}, func() bool { return true }, zap.NewNop())
	t.Cleanup(s.Close)
	port := freePort(t)
	local := endpointAt("10.0.0.1:8080", true)
	s.Observe(synced(viewOf(model.IPv4, lbPort("web", port, "", local))))
	for _, host := range []string{"127.0.0.2", "127.0.0.3"} {
		if a := askHealthCheckAt(host, port); a.err != nil || a.code != http.StatusOK {
			t.Errorf("%s:%d: %d, %v; want 200", host, port, a.code, a.err)
		}
	}
	if a := askHealthCheckAt("127.0.0.1", port); !errors.Is(a.err, syscall.ECONNREFUSED) {
		t.Errorf("127.0.0.1:%d, a host not given: %d, %v; want the connection refused", port, a.code, a.err)
	}

	taken, err := net.Listen("tcp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := uint16(taken.Addr().(*net.TCPAddr).Port)
	s.Observe(synced(viewOf(model.IPv4, lbPort("web", port, "", local), lbPort("busy", busy, "", local))))
	if a := askHealthCheckAt("127.0.0.2", busy); !errors.Is(a.err, syscall.ECONNREFUSED) {
		t.Errorf("127.0.0.2:%d, whose other host is taken: %d, %v; want the connection refused", busy, a.code, a.err)
	}
}

func TestListenNetwork(t *testing.T) {
	for host, want := range map[string]string{"": "tcp", "0.0.0.0": "tcp4", "::": "tcp6", "10.0.0.1": "tcp", "fd00::1": "tcp"} {
		if got := listenNetwork(host); got != want {
			t.Errorf("listenNetwork(%q) = %q, want %q", host, got, want)
		}
	}
}
