package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// errExited stops a poll for good: the process it waits on has ended.
var errExited = errors.New("process exited")

const (
	pollInterval = 100 * time.Millisecond
	probeTimeout = 2 * time.Second
)

// poll calls try until it succeeds, returns errExited, or ctx is done.
func poll(ctx context.Context, what string, try func(context.Context) error) error {
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		err := try(ctx)
		if err == nil || errors.Is(err, errExited) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last attempt: %v)", what, ctx.Err(), err)
		case <-ticker.C:
		}
	}
}

// etcdHealthy checks etcd's /health endpoint, which answers once the
// single member has elected itself leader.
func etcdHealthy(clientURL string) func(context.Context) error {
	client := &http.Client{Timeout: probeTimeout}
	return func(ctx context.Context) error {
		body, err := get(ctx, client, clientURL+"/health", "")
		if err != nil {
			return err
		}
		var health struct {
			Health string `json:"health"`
		}
		if err := json.Unmarshal(body, &health); err != nil {
			return fmt.Errorf("etcd /health: %w", err)
		}
		if health.Health != "true" {
			return fmt.Errorf("etcd /health says %s", body)
		}
		return nil
	}
}

// apiserverProbe waits for the apiserver's self-signed certificate and then
// for /readyz, trusting only that certificate's CA.
type apiserverProbe struct {
	url      string
	certFile string
	token    string

	caPEM  []byte
	client *http.Client
}

func (a *apiserverProbe) ready(ctx context.Context) error {
	if a.client == nil {
		if err := a.trustServingCA(); err != nil {
			return err
		}
	}
	if _, err := get(ctx, a.client, a.url+"/readyz", a.token); err != nil {
		return err
	}
	// Read again: the first read may have caught the file half written.
	pemBytes, err := os.ReadFile(a.certFile)
	a.caPEM = pemBytes
	return err
}

// trustServingCA reads the certificate the apiserver generated in its
// cert dir: the serving certificate followed by the CA that signed it.
func (a *apiserverProbe) trustServingCA() error {
	pemBytes, err := os.ReadFile(a.certFile)
	if err != nil {
		return fmt.Errorf("serving certificate not written yet: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return fmt.Errorf("no certificate in %s yet", a.certFile)
	}
	a.client = &http.Client{
		Timeout:   probeTimeout,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}
	return nil
}

// get fetches url and returns the body of a 200 answer.
func get(ctx context.Context, client *http.Client, url, bearer string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return body, nil
}
