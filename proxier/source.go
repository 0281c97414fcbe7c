package proxier

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/model"
	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Labels that take objects away from the proxy, as in kube-proxy: a
// Service handled by another proxy, and the slices of headless services
// (DNS serves those).
const (
	labelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	labelHeadless         = v1.IsHeadlessService
)

// SourceConfig says what a Source watches and whom it tells.
type SourceConfig struct {
	Client   kubernetes.Interface
	NodeName string
	// Resync is the informers' resync period (kube-proxy's configSyncPeriod).
	Resync  time.Duration
	Tracker *Tracker
	// OnNode, if set, is called with this node on every change and with
	// nil when it is deleted (Health.SetNode).
	OnNode func(*v1.Node)
	// WaitForPodCIDRs: WaitForNode waits for the Node's podCIDRs too, as
	// kube-proxy does under detectLocalMode NodeCIDR, which tells pods by
	// them.
	WaitForPodCIDRs bool
	Log             *zap.Logger
}

// Source runs the client-go shared informers for Services, EndpointSlices
// and this node's Node. Its handlers only hand objects to the tracker: an
// informer never waits for a sync.
type Source struct {
	cfg       SourceConfig
	factories []informers.SharedInformerFactory
	synced    map[string]cache.InformerSynced
	nodes     corelisters.NodeLister

	mu        sync.Mutex
	lastError map[string]error // the latest list or watch failure per resource, for startup errors
}

// NewSource sets up the informers; nothing is watched before Start.
func NewSource(cfg SourceConfig) (*Source, error) {
	s := &Source{cfg: cfg, synced: map[string]cache.InformerSynced{}, lastError: map[string]error{}}
	services := s.factory(func(o *metav1.ListOptions) {
		o.LabelSelector = "!" + labelServiceProxyName
		o.FieldSelector = fields.OneTermNotEqualSelector("spec.clusterIP", v1.ClusterIPNone).String()
	})
	slices := s.factory(func(o *metav1.ListOptions) { o.LabelSelector = "!" + labelHeadless })
	nodes := s.factory(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.NodeName).String()
	})
	t := cfg.Tracker
	err := errors.Join(
		s.watch("services", services.Core().V1().Services().Informer(), handlers(func(o *storedService) {
			t.upsertService(ServiceName{Namespace: o.Namespace, Name: o.Name}, o.parsed, o.err)
		}, t.DeleteService)),
		s.watch("endpointslices", slices.Discovery().V1().EndpointSlices().Informer(), handlers(func(o *storedSlice) {
			t.upsertSlice(sliceKey{o.Namespace, o.Name}, o.parsed, o.dropped, o.err)
		}, t.DeleteEndpointSlice)),
		s.watch("node", nodes.Core().V1().Nodes().Informer(), handlers(s.nodeChanged, s.nodeDeleted)),
	)
	s.nodes = nodes.Core().V1().Nodes().Lister()
	return s, err
}

func (s *Source) factory(tweak func(*metav1.ListOptions)) informers.SharedInformerFactory {
	f := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, s.cfg.Resync, informers.WithTweakListOptions(tweak))
	s.factories = append(s.factories, f)
	return f
}

func (s *Source) watch(resource string, inf cache.SharedIndexInformer, h cache.ResourceEventHandler) error {
	if err := inf.SetTransform(toStored); err != nil {
		return fmt.Errorf("watching %s: %w", resource, err)
	}
	reg, err := inf.AddEventHandler(h)
	if err != nil {
		return fmt.Errorf("watching %s: %w", resource, err)
	}
	// The handler's HasSynced, not the informer's: the informer has
	// synced once its cache holds the list, while the handler (and so the
	// tracker) may still be receiving it. Waiting on the informer's, the
	// first sync at 10,000 services saw about a third of them, removed
	// the rules of the rest and put them back in a second sync ten
	// seconds later.
	s.synced[resource] = reg.HasSynced
	return inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
		s.mu.Lock()
		s.lastError[resource] = err
		s.mu.Unlock()
		cache.DefaultWatchErrorHandler(ctx, r, err)
	})
}

// handlers adapts typed callbacks to client-go's event handler, the one
// place objects arrive untyped. Deletes need only the name, which also
// covers the tombstones of deletes the informer missed.
func handlers[T any](upsert func(T), remove func(namespace, name string)) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if o, ok := obj.(T); ok {
				upsert(o)
			}
		},
		UpdateFunc: func(_, obj any) {
			if o, ok := obj.(T); ok {
				upsert(o)
			}
		},
		DeleteFunc: func(obj any) {
			key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
			if err != nil {
				return
			}
			if namespace, name, err := cache.SplitMetaNamespaceKey(key); err == nil {
				remove(namespace, name)
			}
		},
	}
}

func (s *Source) nodeChanged(n *v1.Node) {
	s.cfg.Tracker.SetNode(NodeInfoFromNode(n))
	if s.cfg.OnNode != nil {
		s.cfg.OnNode(n)
	}
}

// nodeDeleted keeps the last node information: the rules stay right for
// whatever still runs here while the node goes away.
func (s *Source) nodeDeleted(_, name string) {
	s.cfg.Log.Warn("this node's Node object was deleted", zap.String("node", name))
	if s.cfg.OnNode != nil {
		s.cfg.OnNode(nil)
	}
}

// Start starts the informers; they stop when ctx ends.
func (s *Source) Start(ctx context.Context) {
	for _, f := range s.factories {
		f.Start(ctx.Done())
	}
}

// WaitForSync waits until every informer has listed its objects, so the
// first sync programs the whole cluster rather than an empty one. When ctx
// ends first, the error says what did not sync and why.
func (s *Source) WaitForSync(ctx context.Context) error {
	var all []cache.InformerSynced
	for _, synced := range s.synced {
		all = append(all, synced)
	}
	if cache.WaitForCacheSync(ctx.Done(), all...) {
		return nil
	}
	return s.notSynced()
}

func (s *Source) notSynced() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for name, synced := range s.synced {
		if !synced() {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		if err := s.lastError[name]; err != nil {
			// The request's URL is long and says nothing the cause does not.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return fmt.Errorf("could not list %s from the API server: %w", name, err)
		}
	}
	return fmt.Errorf("%w listing %v", ErrStillListing, names)
}

// ErrStillListing is WaitForSync's error when no list has failed: the API
// server has not answered yet (at 10,000 services a loaded one takes
// tens of seconds to).
var ErrStillListing = errors.New("no answer from the API server")

// WaitForNode waits, until ctx ends, for this node's Node object to exist
// with an address (and podCIDRs, with WaitForPodCIDRs), as kube-proxy does
// before it decides the node's IP families. It returns what it last saw
// and whether that has them.
func (s *Source) WaitForNode(ctx context.Context) (model.NodeInfo, bool) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if n, err := s.nodes.Get(s.cfg.NodeName); err == nil {
			info := NodeInfoFromNode(n)
			if len(info.Addresses) > 0 && (!s.cfg.WaitForPodCIDRs || len(info.PodCIDRs) > 0) {
				return info, true
			}
		}
		select {
		case <-ctx.Done():
			n, err := s.nodes.Get(s.cfg.NodeName)
			if err != nil {
				return model.NodeInfo{Name: s.cfg.NodeName}, false
			}
			return NodeInfoFromNode(n), false
		case <-tick.C:
		}
	}
}

// NodeInfoFromNode reads what svcproxy needs from a Node: its InternalIP
// addresses, then its ExternalIP ones (kube-proxy's order, so the first is
// the node's primary IP), its zone label and its pod CIDRs. Unparsable
// values are left out.
func NodeInfoFromNode(n *v1.Node) model.NodeInfo {
	info := model.NodeInfo{Name: n.Name, Zone: n.Labels[v1.LabelTopologyZone]}
	for _, kind := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != kind {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil && !slices.Contains(info.Addresses, ip.Unmap()) {
				info.Addresses = append(info.Addresses, ip.Unmap())
			}
		}
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			info.PodCIDRs = append(info.PodCIDRs, p.Masked())
		}
	}
	return info
}
