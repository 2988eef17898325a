package api

import "github.com/statemesh/statemesh/internal/policy"

// PolicyEndpoint is the node as the policy sees it: where it is, what it
// is, and its labels.
func (n Node) PolicyEndpoint() policy.Endpoint {
	return policy.Endpoint{Name: n.Name, Region: n.Region, Cluster: n.Cluster, Role: n.Role, Class: n.Class, Labels: n.Labels}
}
