// Package sandbox runs svcproxy for real on one machine with no cluster: a
// node network namespace with pods (internal/netnstest), the local control
// plane bridged into it, Node and Pod objects that describe the bed, and the
// svcproxy binary (or the upstream kube-proxy, see StartKubeProxy) running
// inside the node namespace. make run and the control-plane tests are built
// from it.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"k8s.io/client-go/tools/clientcmd"
)

// Bridge carries TCP connections made to listen inside a namespace to
// target in the host's namespace. The node namespace has no link to the
// host at all; this is its only way to the apiserver, and it is a socket
// pair per connection, not a route.
type Bridge struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
}

// NewBridge listens on listen (e.g. "127.0.0.1:6443") inside ns.
func NewBridge(ns *netnstest.NS, listen, target string) (*Bridge, error) {
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", listen)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bridge listening on %s in %s: %w", listen, ns.Name, err)
	}
	b := &Bridge{ln: ln, open: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go b.serve(target)
	return b, nil
}

// Addr is the address the bridge listens on inside the namespace.
func (b *Bridge) Addr() string { return b.ln.Addr().String() }

func (b *Bridge) serve(target string) {
	defer b.wg.Done()
	for {
		in, err := b.ln.Accept()
		if err != nil {
			return // closed
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.carry(in, target)
		}()
	}
}

func (b *Bridge) carry(in net.Conn, target string) {
	out, err := net.Dial("tcp", target) // from a host-namespace thread
	if err != nil {
		in.Close()
		return
	}
	b.track(in, out)
	defer b.untrack(in, out)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tcp, ok := dst.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(out, in)
	go pipe(in, out)
	<-done
	<-done
}

func (b *Bridge) track(conns ...net.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range conns {
		b.open[c] = struct{}{}
	}
}

func (b *Bridge) untrack(conns ...net.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range conns {
		c.Close()
		delete(b.open, c)
	}
}

// Cut closes every carried connection but keeps listening: what a client
// sees when the apiserver restarts.
func (b *Bridge) Cut() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.open {
		c.Close()
	}
}

// Close stops listening, cuts every connection and waits for the copies.
func (b *Bridge) Close() error {
	err := b.ln.Close()
	b.Cut()
	b.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// RewriteKubeconfig writes to dst the kubeconfig src with every cluster's
// server replaced by server: the same credentials, reached through a bridge.
func RewriteKubeconfig(src, dst, server string) error {
	cfg, err := clientcmd.LoadFromFile(src)
	if err != nil {
		return err
	}
	for _, cluster := range cfg.Clusters {
		cluster.Server = server
	}
	return clientcmd.WriteToFile(*cfg, dst)
}

// dialIn dials addr from inside ns: the connection's socket lives there.
func dialIn(ctx context.Context, ns *netnstest.NS, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := ns.Do(func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}
