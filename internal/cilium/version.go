package cilium

// Version is the Cilium release StateMesh renders for and tests against:
// its CRDs and Helm chart (from the github.com/cilium/cilium Go module).
const Version = "v1.20.2"

// Module is the Go module that carries Cilium's CRDs and chart.
const Module = "github.com/cilium/cilium"
