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
	return &p, nil
}
