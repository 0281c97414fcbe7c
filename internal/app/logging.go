package app

import (
	"flag"
	"strconv"

	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"
)

// NewLogger returns the daemon's logger writing to w, as text ("text") or
// JSON lines ("json"). Verbosity v enables zap level -v, which is where
// zapr puts logr's V(v): -v=1 shows svcproxy's debug messages, higher
// values client-go's details.
func NewLogger(format string, verbosity int, w zapcore.WriteSyncer) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	enc.EncodeDuration = zapcore.StringDurationEncoder
	var encoder zapcore.Encoder
	if format == "json" {
		encoder = zapcore.NewJSONEncoder(enc)
	} else {
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
		encoder = zapcore.NewConsoleEncoder(enc)
	}
	level := zap.NewAtomicLevelAt(zapcore.Level(-min(verbosity, 127)))
	return zap.New(zapcore.NewCore(encoder, w, level))
}

// RouteKlog sends klog's output, which is client-go's (reflector errors,
// retries), and the standard library's log through log, and lets klog's verbosity follow svcproxy's so
// klog.V(n) messages reach log exactly when log would show them.
func RouteKlog(log *zap.Logger, verbosity int) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("v", strconv.Itoa(verbosity))
	klog.SetLogger(zapr.NewLogger(log.Named("client-go")))
	// The standard library's log is netlink's: a line for each ipset
	// attribute it does not know (the comments on kube-proxy's sets, say),
	// worth a debug line at most.
	_, _ = zap.RedirectStdLogAt(log.Named("netlink"), zapcore.DebugLevel)
}
