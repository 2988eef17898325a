package spec

// SetDefaults fills every unset field with its documented default.
func (m *Mesh) SetDefaults() {
	if m.Addressing.OverlayIPv4 == "" {
		m.Addressing.OverlayIPv4 = DefaultOverlayIPv4
	}
	if m.Underlay.MTU == 0 {
		m.Underlay.MTU = DefaultUnderlayMTU
	}
	if m.Underlay.Family == "" {
		m.Underlay.Family = DefaultFamily
	}
	if m.Underlay.WAN.MTU == 0 {
		m.Underlay.WAN.MTU = DefaultWANMTU
	}
	if m.Underlay.WAN.Family == "" {
		m.Underlay.WAN.Family = m.Underlay.Family
	}
	if m.Cilium.RoutingMode == "" {
		m.Cilium.RoutingMode = RoutingNative
	}
	if m.Cilium.ClustermeshDomain == "" {
		m.Cilium.ClustermeshDomain = "mesh.cilium.io"
	}
	if m.Cilium.KubeProxyReplacement == nil {
		t := true
		m.Cilium.KubeProxyReplacement = &t
	}
	if m.Cilium.MaxConnectedClusters == 0 {
		m.Cilium.MaxConnectedClusters = 255
	}
	if a := m.Attestation; a != nil {
		if a.PCRs == nil {
			a.PCRs = []int{0, 1, 2, 3, 4, 5, 6, 7}
		}
		if a.ReattestInterval == "" {
			a.ReattestInterval = DefaultReattest
		}
		if a.OnFailure == "" {
			a.OnFailure = OnFailureQuarantine
		}
		if c := a.Controller; c != nil && c.PCRs == nil {
			c.PCRs = []int{0, 1, 2, 3, 4, 5, 6, 7}
		}
	}
	explicitPods := false
	for i := range m.Regions {
		r := &m.Regions[i]
		if r.Gateways == 0 {
			r.Gateways = DefaultGateways
		}
		if r.UnderlayMTU == 0 {
			r.UnderlayMTU = m.Underlay.MTU
		}
		if r.UnderlayFamily == "" {
			r.UnderlayFamily = m.Underlay.Family
		}
		for j := range r.Clusters {
			c := &r.Clusters[j]
			if c.MaxNodes == 0 {
				c.MaxNodes = MaxNodesPerCluster
			}
			if c.MaxPodsPerNode == 0 {
				c.MaxPodsPerNode = DefaultMaxPodsPerNode
			}
			if c.MaxPods == 0 {
				c.MaxPods = min(MaxPodsPerCluster, c.MaxNodes*c.MaxPodsPerNode)
			}
			if len(c.PodCIDRs) > 0 {
				explicitPods = true
			}
		}
	}
	if len(m.Addressing.PodIPv4) == 0 && len(m.Addressing.PodIPv6) == 0 && !explicitPods {
		m.Addressing.PodIPv4 = []string{"10.0.0.0/8"}
	}
}

// RoleUnderlay returns the effective underlay MTU and family of a role in a
// region. The most specific setting wins: the region's role override, the
// mesh's role override, the region's underlay, the mesh's underlay.
func (m *Mesh) RoleUnderlay(region int, role string) (mtu int, family string) {
	r := m.Regions[region]
	mtu, family = r.UnderlayMTU, r.UnderlayFamily
	if mtu == 0 {
		mtu = m.Underlay.MTU
	}
	if family == "" {
		family = m.Underlay.Family
	}
	for _, o := range []RoleUnderlay{m.Roles.get(role), r.Roles.get(role)} {
		if o.UnderlayMTU != 0 {
			mtu = o.UnderlayMTU
		}
		if o.UnderlayFamily != "" {
			family = o.UnderlayFamily
		}
	}
	return mtu, family
}

func (r Roles) get(role string) RoleUnderlay {
	switch role {
	case "node":
		return r.Node
	case "operator":
		return r.Operator
	case "gateway":
		return r.Gateway
	}
	return RoleUnderlay{}
}

// AdmitsWithoutTPM says whether a cluster admits nodes without TPM
// evidence (as weak).
func (m *Mesh) AdmitsWithoutTPM(region, cluster string) bool {
	if m.Attestation == nil {
		return true
	}
	for _, r := range m.Regions {
		for _, c := range r.Clusters {
			if r.Name == region && c.Name == cluster && c.AdmitWithoutTPM != nil {
				return *c.AdmitWithoutTPM
			}
		}
	}
	return m.Attestation.AdmitWithoutTPM
}
