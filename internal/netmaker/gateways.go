package netmaker

import (
	"context"
	"fmt"
	"slices"
)

// gateways makes each network's first present candidate its gateway
// (relaying the hosts listed) and takes the role off StateMesh's other
// gateways: when the active one goes, the next candidate takes over.
// Gateways StateMesh did not create are left alone.
func (p *pass) gateways(ctx context.Context) {
	specs := map[string]GatewaySpec{}
	for _, g := range p.d.Gateways {
		specs[g.Network] = g
	}
	for _, net := range p.names {
		if p.down {
			return
		}
		if _, listed := p.nodes[net]; !listed {
			continue // the nodes could not be read
		}
		spec, wanted := specs[net]
		byKey := map[string]Node{}
		for _, n := range p.nodes[net] {
			byKey[p.hosts[n.HostID].PublicKey] = n
		}
		var active *Node
		for _, k := range spec.Candidates {
			if n, ok := byKey[k]; ok && k != "" {
				active = &n
				break
			}
		}
		for _, n := range p.nodes[net] {
			if ourGateway(n) && (active == nil || n.ID != active.ID) {
				p.write(fmt.Sprintf("remove the gateway role from %s in %s (no longer the first candidate present)", p.hosts[n.HostID].Name, net),
					p.r.C.DeleteGateway(ctx, net, n.ID))
			}
		}
		if !wanted {
			continue
		}
		if active == nil {
			p.note("network %s: none of its %d gateway candidates is a member: no gateway", net, len(spec.Candidates))
			continue
		}
		name := p.hosts[active.HostID].Name
		var relayed []string
		for _, k := range spec.Relayed {
			if n, ok := byKey[k]; ok && n.ID != active.ID {
				relayed = append(relayed, n.ID)
			}
		}
		slices.Sort(relayed)
		relayed = slices.Compact(relayed)
		switch {
		case active.IsGateway && !ourGateway(*active):
			p.note("network %s: %s is already a gateway not created by StateMesh: used as it is", net, name)
			p.rep.Gateways[net] = name
			continue
		case ourGateway(*active) && sameSet(active.RelayNodes, relayed):
			p.rep.Gateways[net] = name
			continue
		case ourGateway(*active):
			// The API has no call to change a gateway's relayed nodes.
			if !p.write(fmt.Sprintf("remove the gateway role from %s in %s to change its relayed hosts", name, net), p.r.C.DeleteGateway(ctx, net, active.ID)) {
				continue
			}
		}
		_, err := p.r.C.CreateGateway(ctx, GatewayRequest{NetID: net, NodeID: active.ID, Metadata: GatewayMeta, Relayed: relayed})
		if p.write(fmt.Sprintf("make %s the gateway of %s (relaying %d hosts)", name, net, len(relayed)), err) {
			p.rep.Gateways[net] = name
		}
	}
}
