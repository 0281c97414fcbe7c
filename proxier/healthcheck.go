package proxier

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svcproxy/svcproxy/model"
	"go.uber.org/zap"
)

// HealthCheckServers answers the health checks cloud load balancers send to
// the healthCheckNodePort of each externalTrafficPolicy=Local LoadBalancer
// service: 200 while this node has a ready endpoint of the service (and
// the proxy is healthy), 503 otherwise, so the load balancer only sends
// traffic to nodes that can keep its client addresses. The servers follow
// the synced views; the map of running servers is all the state there is.
type HealthCheckServers struct {
	hosts   []string // listen addresses, as listenNetwork reads them
	healthy func() bool
	log     *zap.Logger

	mu      sync.Mutex
	running map[ServiceName]*healthCheckServer
}

// NewHealthCheckServers returns a set with no server running. Each
// service's server listens on every one of hosts (netfilter.NodePortHosts:
// "" for every address of the node, "0.0.0.0" or "::" for every address
// of one family, else an address). healthy reports the proxy's own health
// (Health.Healthy).
func NewHealthCheckServers(hosts []string, healthy func() bool, log *zap.Logger) *HealthCheckServers {
	return &HealthCheckServers{hosts: hosts, healthy: healthy, log: log, running: map[ServiceName]*healthCheckServer{}}
}

// healthCheck is what a service's server must answer.
type healthCheck struct {
	port           uint16
	localEndpoints int
}

// Observe starts, stops and updates servers after a sync; register it with
// Syncer.Observe. After a failed sync the servers stay as they were, as
// the rules do.
func (s *HealthCheckServers) Observe(r *SyncReport) {
	if r.Err() != nil {
		return
	}
	var views []*model.NodeView
	for _, f := range r.Families {
		views = append(views, f.View)
	}
	s.reconcile(wantedHealthChecks(views))
}

// wantedHealthChecks lists the services that need a health check server
// and how many ready local endpoints each has. Like kube-proxy it counts
// distinct endpoint IPs over the service's ports (a pod serving two ports
// is one endpoint); a dual-stack pod has one IP per family, so the count
// is the larger of the two families.
func wantedHealthChecks(views []*model.NodeView) map[ServiceName]healthCheck {
	wanted := map[ServiceName]healthCheck{}
	for _, v := range views {
		perFamily := map[ServiceName]map[netip.Addr]bool{}
		for _, sp := range v.Services {
			if !sp.ExternalPolicyLocal || sp.HealthCheckNodePort == 0 {
				continue
			}
			name := ServiceName{Namespace: sp.Name.Namespace, Name: sp.Name.Name}
			if perFamily[name] == nil {
				perFamily[name] = map[netip.Addr]bool{}
			}
			for _, e := range sp.LocalEndpoints {
				if e.Local && e.Ready {
					perFamily[name][e.Addr.Addr()] = true
				}
			}
			hc := wanted[name]
			hc.port = sp.HealthCheckNodePort
			wanted[name] = hc
		}
		for name, eps := range perFamily {
			hc := wanted[name]
			hc.localEndpoints = max(hc.localEndpoints, len(eps))
			wanted[name] = hc
		}
	}
	return wanted
}

func (s *HealthCheckServers) reconcile(wanted map[ServiceName]healthCheck) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, srv := range s.running {
		if hc, ok := wanted[name]; !ok || hc.port != srv.port {
			srv.close(s.log)
			delete(s.running, name)
		}
	}
	for name, hc := range wanted {
		srv := s.running[name]
		if srv == nil {
			var err error
			if srv, err = s.start(name, hc.port); err != nil {
				// Another program may hold the port; the load balancer
				// then sees this node as down, which is safe. The next
				// sync tries again.
				s.log.Warn("health check node port cannot be served", zap.Stringer("service", name),
					zap.Uint16("port", hc.port), zap.Error(err))
				continue
			}
			s.running[name] = srv
		}
		srv.localEndpoints.Store(int64(hc.localEndpoints))
	}
}

// start listens on every host, or on none if one fails (as kube-proxy
// does, so that a later sync may try again), and serves.
func (s *HealthCheckServers) start(name ServiceName, port uint16) (*healthCheckServer, error) {
	listeners := make([]net.Listener, 0, len(s.hosts))
	for _, host := range s.hosts {
		l, err := net.Listen(listenNetwork(host), net.JoinHostPort(host, strconv.Itoa(int(port))))
		if err != nil {
			for _, l := range listeners {
				_ = l.Close()
			}
			return nil, err
		}
		listeners = append(listeners, l)
	}
	srv := &healthCheckServer{name: name, port: port, healthy: s.healthy}
	srv.http = &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	for _, l := range listeners {
		go func() {
			if err := srv.http.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Warn("health check server stopped", zap.Stringer("service", name), zap.Error(err))
			}
		}()
	}
	s.log.Info("serving health check node port", zap.Stringer("service", name), zap.Uint16("port", port),
		zap.Strings("hosts", s.hosts))
	return srv, nil
}

// listenNetwork: a family's unspecified address stands for every address
// of that family only ("tcp" would make "0.0.0.0" a dual-stack socket);
// "" and an address need no family.
func listenNetwork(host string) string {
	switch host {
	case "0.0.0.0":
		return "tcp4"
	case "::":
		return "tcp6"
	}
	return "tcp"
}

// Close stops every server.
func (s *HealthCheckServers) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, srv := range s.running {
		srv.close(s.log)
		delete(s.running, name)
	}
}

// healthCheckServer serves one service's health check port.
type healthCheckServer struct {
	name           ServiceName
	port           uint16
	localEndpoints atomic.Int64
	healthy        func() bool
	http           *http.Server
}

func (h *healthCheckServer) close(log *zap.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := h.http.Shutdown(ctx); err != nil {
		_ = h.http.Close()
	}
	log.Info("stopped health check node port", zap.Stringer("service", h.name), zap.Uint16("port", h.port))
}

// healthCheckBody is kube-proxy's answer, field for field.
type healthCheckBody struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (h *healthCheckServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	var body healthCheckBody
	body.Service.Namespace, body.Service.Name = h.name.Namespace, h.name.Name
	body.LocalEndpoints = int(h.localEndpoints.Load())
	body.ServiceProxyHealthy = h.healthy()
	code := http.StatusServiceUnavailable
	if body.LocalEndpoints > 0 && body.ServiceProxyHealthy {
		code = http.StatusOK
	}
	out, _ := json.MarshalIndent(body, "", "\t")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(body.LocalEndpoints))
	w.WriteHeader(code)
	_, _ = w.Write(out)
}
