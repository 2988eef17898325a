// Package ciliumcheck holds the tests that check what StateMesh renders for
// Cilium with Cilium's own code: its policy parser and sanitizer
// (pkg/k8s/apis/cilium.io/v2, pkg/policy/api) under the agent options the
// rendered Helm values set, its CRD validator (the one the API server and
// cilium-dbg preflight use), and its MTU arithmetic (pkg/mtu).
//
// It is a module of its own so that the main module does not depend on
// Cilium (a large dependency tree); scripts/test runs it.
package ciliumcheck
