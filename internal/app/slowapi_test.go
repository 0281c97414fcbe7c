package app

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/netfilter"
)

// listServer is an API server over HTTP that answers /version at once and
// holds back the Services' list until release is closed: a loaded server
// listing 10,000 services. The real client talks to it, so the probe that
// tells slow from unreachable is the product's own.
func listServer(t *testing.T, release <-chan struct{}) *httptest.Server {
	svc, slice := webObjects()[0].(*v1.Service), webObjects()[1].(*discoveryv1.EndpointSlice)
	lists := map[string]any{
		"/api/v1/services": &v1.ServiceList{TypeMeta: metav1.TypeMeta{Kind: "ServiceList", APIVersion: "v1"},
			ListMeta: metav1.ListMeta{ResourceVersion: "1"}, Items: []v1.Service{*svc}},
		"/apis/discovery.k8s.io/v1/endpointslices": &discoveryv1.EndpointSliceList{
			TypeMeta: metav1.TypeMeta{Kind: "EndpointSliceList", APIVersion: "discovery.k8s.io/v1"},
			ListMeta: metav1.ListMeta{ResourceVersion: "1"}, Items: []discoveryv1.EndpointSlice{*slice}},
		"/api/v1/nodes": &v1.NodeList{TypeMeta: metav1.TypeMeta{Kind: "NodeList", APIVersion: "v1"},
			ListMeta: metav1.ListMeta{ResourceVersion: "1"}, Items: []v1.Node{*dualStackNode()}},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		q := r.URL.Query()
		switch {
		case r.URL.Path == "/version":
			_ = json.NewEncoder(w).Encode(map[string]string{"major": "1", "minor": "35", "gitVersion": "v1.35.8"})
		case q.Get("watch") == "true" && q.Get("sendInitialEvents") == "true":
			// No streaming lists here: the client falls back to a list.
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(&metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
				Status: metav1.StatusFailure, Code: http.StatusBadRequest, Reason: metav1.StatusReasonBadRequest})
		case q.Get("watch") == "true":
			// A watch with no events, open until the client leaves.
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		case lists[r.URL.Path] != nil:
			if r.URL.Path == "/api/v1/services" {
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
			}
			_ = json.NewEncoder(w).Encode(lists[r.URL.Path])
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// startOn runs the daemon, with its real API client, against master until
// the test ends; exited waits up to within for run to return, and says
// what it returned.
func startOn(t *testing.T, host *fakeHost, master string) (exited func(within time.Duration) (error, bool)) {
	td := newTestDaemon(t, nil, host, "--master="+master, "--kube-api-content-type=application/json")
	td.d.client = newClient
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- td.d.run(ctx) }()
	var returned *error
	exited = func(within time.Duration) (error, bool) {
		if returned == nil {
			select {
			case err := <-done:
				returned = &err
			case <-time.After(within):
				return nil, false
			}
		}
		return *returned, true
	}
	t.Cleanup(func() {
		cancel()
		if _, ok := exited(10 * time.Second); !ok {
			t.Error("run did not return within 10s of the cancel")
		}
	})
	return exited
}

// A list that is slow, not failing, is waited for past --api-timeout (1s
// here), as kube-proxy waits: a loaded API server may take longer than
// that to list 10,000 services, and exiting would only restart the wait.
func TestDaemonWaitsForASlowList(t *testing.T) {
	host := newFakeHost("nft/IPv4")
	release := make(chan struct{})
	exited := startOn(t, host, listServer(t, release).URL)
	if err, ok := exited(3500 * time.Millisecond); ok { // three --api-timeouts
		t.Fatalf("the daemon gave up on a slow list: %v", err)
	}
	close(release)
	waitFor(t, "the service programmed once the list came", func() bool {
		return strings.Contains(host.save("nft/IPv4", netfilter.TableNAT), "10.244.0.11:8080")
	})
}

// A server that accepts connections and never answers is not merely slow:
// the start ends after --api-timeout and the probe's own bound, with one
// line that names the server.
func TestDaemonGivesUpOnASilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() { // accept and hold, answering nothing
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	master := "http://" + ln.Addr().String()
	exited := startOn(t, newFakeHost("nft/IPv4"), master)
	err, ok := exited(10 * time.Second)
	if !ok {
		t.Fatal("the daemon still waits on a server that answers nothing")
	}
	if err == nil || !strings.Contains(err.Error(), master) || !strings.Contains(err.Error(), "/version: no answer within 1s") ||
		strings.Contains(err.Error(), "\n") {
		t.Fatalf("run = %v, want one line naming %s and the unanswered /version", err, master)
	}
	t.Logf("gave up: %v", err)
}
