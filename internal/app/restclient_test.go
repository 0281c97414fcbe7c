package app

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// client-go's requests show in the daemon's registry as kube-proxy's
// rest_client_* metrics, in every registry the process makes.
func TestRegistryHasClientGoRestClientMetrics(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"major":"1","minor":"35","gitVersion":"v1.35.8"}`))
	}))
	defer api.Close()
	first, second := newRegistry(), newRegistry()
	client, err := kubernetes.NewForConfig(&rest.Config{Host: api.URL})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Discovery().ServerVersion(); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(api.URL)
	for _, reg := range []*prometheus.Registry{first, second} {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, l.GetName()+"="+l.GetValue())
				}
				seen[f.GetName()+"{"+strings.Join(labels, ",")+"}"] = true
			}
		}
		for _, want := range []string{
			"rest_client_requests_total{code=200,host=" + u.Host + ",method=GET}",
			"rest_client_request_duration_seconds{host=" + u.Host + ",verb=GET}",
			"rest_client_response_size_bytes{host=" + u.Host + ",verb=GET}",
			"rest_client_rate_limiter_duration_seconds{host=" + u.Host + ",verb=GET}",
			"rest_client_exec_plugin_ttl_seconds{}",
		} {
			if !seen[want] {
				t.Errorf("registry lacks %s", want)
			}
		}
	}
}
