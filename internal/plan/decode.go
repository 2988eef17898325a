package plan

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Decode reads a plan written as JSON (statemesh plan -o json), rejecting
// unknown fields so that a file that is not a plan is not taken for one.
func Decode(data []byte) (*Plan, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p Plan
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("not a StateMesh plan: %w", err)
	}
	if p.Mesh == "" || !p.Addressing.OverlayIPv4.IsValid() {
		return nil, fmt.Errorf("not a StateMesh plan: no mesh name or overlay supernet")
	}
	if err := p.checkArithmetic(); err != nil {
		return nil, fmt.Errorf("not a usable StateMesh plan: %w", err)
	}
	return &p, nil
}

// checkArithmetic refuses a decoded plan whose address arithmetic would
// fail: a node mask outside its pod prefix or a negative cluster size.
func (p *Plan) checkArithmetic() error {
	for _, r := range p.Regions {
		for _, c := range r.Clusters {
			if c.MaxNodes < 0 {
				return fmt.Errorf("cluster %s/%s: maxNodes %d", r.Name, c.Name, c.MaxNodes)
			}
			if c.PodIPv4.IsValid() && (c.NodeMaskIPv4 < c.PodIPv4.Bits() || c.NodeMaskIPv4 > c.PodIPv4.Addr().BitLen()) {
				return fmt.Errorf("cluster %s/%s: node mask /%d outside pod prefix %s", r.Name, c.Name, c.NodeMaskIPv4, c.PodIPv4)
			}
			if c.PodIPv6.IsValid() && (c.NodeMaskIPv6 < c.PodIPv6.Bits() || c.NodeMaskIPv6 > c.PodIPv6.Addr().BitLen()) {
				return fmt.Errorf("cluster %s/%s: node mask /%d outside pod prefix %s", r.Name, c.Name, c.NodeMaskIPv6, c.PodIPv6)
			}
		}
	}
	return nil
}
