package app

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/model"
	"github.com/svcproxy/svcproxy/netfilter"
	"github.com/svcproxy/svcproxy/proxier"
)

// StatusPath is where the metrics server (127.0.0.1:10249 by default,
// so local to the node) answers with what the daemon believes, for
// `svcproxy list` and `explain`; ?service=NAMESPACE/NAME narrows it to one
// service and explains its endpoints.
const StatusPath = "/debug/svcproxy/status"

// statusDoc is the status endpoint's answer: the daemon's view of every
// service port, and what the CLI needs to compile the same view into the
// kernel objects it then looks for (the mode, the flavor and the
// backends' settings).
type statusDoc struct {
	Mode     string            `json:"mode"`
	Flavor   netfilter.Flavor  `json:"iptablesFlavor"`
	Node     model.NodeInfo    `json:"node"`
	Rules    netfilter.Config  `json:"rules"`
	IPVS     *ipvs.Config      `json:"ipvs,omitempty"`
	Families []familyStatusDoc `json:"families"`
}

type familyStatusDoc struct {
	Family      model.Family     `json:"family"`
	LastSync    proxier.SyncInfo `json:"lastSync"`
	LastError   string           `json:"lastError,omitempty"`
	LastSuccess time.Time        `json:"lastSuccess"`
	Ports       []portStatusDoc  `json:"ports"`
}

// portStatusDoc is one service port as Compute made it, with the last
// sync that programmed it and, for one service, its endpoints explained.
type portStatusDoc struct {
	*model.ServicePort
	Programmed *proxier.SyncInfo     `json:"programmed,omitempty"`
	Endpoints  []proxier.EndpointUse `json:"endpoints,omitempty"`
}

// view is the family's view rebuilt from the document.
func (f *familyStatusDoc) view(node model.NodeInfo) *model.NodeView {
	v := &model.NodeView{Family: f.Family, Node: node, Services: make(map[model.ServicePortName]*model.ServicePort, len(f.Ports))}
	for _, p := range f.Ports {
		v.Services[p.Name] = p.ServicePort
	}
	return v
}

// statusServer serves StatusPath. The backends' settings are known once
// the startup has made them, the rest after each sync.
type statusServer struct {
	recorder proxier.StatusRecorder
	setup    atomic.Pointer[statusDoc] // mode, flavor, node and settings; no families
}

// ready records what the backends were made with.
func (s *statusServer) ready(mode string, p *proxy, ipvsCfg *ipvs.Config) {
	s.setup.Store(&statusDoc{Mode: mode, Flavor: p.flavor, Node: p.node, Rules: p.rules, IPVS: ipvsCfg})
}

func (s *statusServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	setup, status := s.setup.Load(), s.recorder.Current()
	if setup == nil || status == nil {
		http.Error(w, "svcproxy has not synced yet", http.StatusServiceUnavailable)
		return
	}
	var only *proxier.ServiceName
	if q := r.URL.Query().Get("service"); q != "" {
		ns, name, ok := strings.Cut(q, "/")
		if !ok || ns == "" || name == "" {
			http.Error(w, "service must be NAMESPACE/NAME", http.StatusBadRequest)
			return
		}
		only = &proxier.ServiceName{Namespace: ns, Name: name}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(statusDocOf(setup, status, only))
}

// statusDocOf renders a status, every port or one service's.
func statusDocOf(setup *statusDoc, status *proxier.Status, only *proxier.ServiceName) *statusDoc {
	doc := *setup
	doc.Node = status.Snapshot.Node
	for _, f := range status.Families {
		fd := familyStatusDoc{Family: f.Family, LastSync: f.LastSync, LastError: f.LastError, LastSuccess: f.LastSuccess}
		for _, name := range f.Wanted.SortedNames() {
			if only != nil && (name.Namespace != only.Namespace || name.Name != only.Name) {
				continue
			}
			pd := portStatusDoc{ServicePort: f.Wanted.Services[name]}
			if info, ok := f.Programmed.Get(name); ok {
				pd.Programmed = &info
			}
			if only != nil {
				pd.Endpoints = proxier.ExplainEndpoints(status.Snapshot, pd.ServicePort, f.Family)
			}
			fd.Ports = append(fd.Ports, pd)
		}
		doc.Families = append(doc.Families, fd)
	}
	return &doc
}
