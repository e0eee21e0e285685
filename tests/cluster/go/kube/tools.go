//go:build tools

// Package tools pins the control-plane programs tests/cluster builds: kube-apiserver from
// k8s.io/kubernetes and etcd from go.etcd.io/etcd/server/v3, in one module so that they share one
// set of dependency versions (and one compile of what they share).
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
