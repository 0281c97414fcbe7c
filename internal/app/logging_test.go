package app

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"
)

func TestKlogGoesThroughZapAtTheSameVerbosity(t *testing.T) {
	defer klog.ClearLogger()
	for _, v := range []int{0, 2} {
		var buf bytes.Buffer
		log := NewLogger("json", v, zapcore.AddSync(&buf))
		RouteKlog(log, v)
		klog.InfoS("reflector started", "resource", "services")
		klog.V(2).InfoS("watch event", "resource", "endpointslices")
		klog.ErrorS(nil, "Failed to watch", "resource", "nodes")
		log.Debug("synced")
		klog.Flush()

		var msgs []string
		for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			var entry struct {
				Msg, Logger string
			}
			if err := json.Unmarshal([]byte(line), &entry); err != nil {
				t.Fatalf("-v=%d: log line %q is not JSON: %v", v, line, err)
			}
			msgs = append(msgs, entry.Logger+":"+entry.Msg)
		}
		want := []string{"client-go:reflector started", "client-go:Failed to watch"}
		if v == 2 {
			want = []string{"client-go:reflector started", "client-go:watch event", "client-go:Failed to watch", ":synced"}
		}
		if strings.Join(msgs, "|") != strings.Join(want, "|") {
			t.Errorf("-v=%d: logged %q, want %q", v, msgs, want)
		}
	}
}

func TestTextLogsAreOneLinePerEntry(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger("text", 0, zapcore.AddSync(&buf))
	log.Info("serving", zap.String("address", "0.0.0.0:10256"))
	if line := buf.String(); !strings.Contains(line, "INFO\tserving\t{\"address\": \"0.0.0.0:10256\"}") || strings.Count(line, "\n") != 1 {
		t.Errorf("text log %q", line)
	}
}
