//go:build tools

// Package tools pins the binaries that hack/controlplane-bins.sh builds (the
// control plane, and kube-proxy and kubectl of the same release), so `go mod
// tidy` keeps them in go.mod. It is never compiled into svcproxy: the build
// tag keeps it out of every ordinary build.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
