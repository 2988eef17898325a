package topology

import "testing"

// The spec's dataplane.firewall reaches every node's map (issue 22): the
// agent runs the XDP guard when it says ebpf or auto and its own flag does
// not override it.
func TestSpecDataplaneReachesMaps(t *testing.T) {
	w := newWorldWith(t, 1, 1, 1, "dataplane: {firewall: auto}\n")
	w.populate(1, 1)
	for name, m := range w.maps() {
		if m.Self.Dataplane != "auto" {
			t.Errorf("%s: map's dataplane %q, want auto", name, m.Self.Dataplane)
		}
	}
}
