package cli

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/statemesh/statemesh/internal/dataplane/ebpffw"
	"github.com/statemesh/statemesh/internal/dataplane/guardplan"
	"github.com/statemesh/statemesh/internal/dataplane/xdpguard"
)

// guardView is `statemesh guard -o json`.
type guardView struct {
	PinDir   string            `json:"pinDir"`
	Sources  []guardSource     `json:"sources"`
	Ports    []guardPort       `json:"ports"`
	Local    []string          `json:"local"`
	Config   guardplan.Config  `json:"config"`
	Tracked  int               `json:"trackedUnknownSources"`
	Counters map[string]uint64 `json:"counters"`
}

// firewallView is the eBPF firewall's part of `statemesh guard -o json`.
type firewallView struct {
	PinDir   string            `json:"pinDir"`
	Sources  int               `json:"sources"`
	Ports    int               `json:"ports"`
	Dests    int               `json:"destinations"`
	Flows    int               `json:"flows"`
	Mark     string            `json:"mark"`
	Counters map[string]uint64 `json:"counters"`
}

type guardSource struct {
	Prefix  string   `json:"prefix"`
	Classes []string `json:"classes"`
}

type guardPort struct {
	Port    string   `json:"port"`
	Kind    string   `json:"kind"`
	Classes []string `json:"classes,omitempty"`
}

func classNames(mask uint32) []string {
	var out []string
	for _, c := range []struct {
		bit  uint32
		name string
	}{{guardplan.ClassWireGuard, "wireguard"}, {guardplan.ClassBGP, "bgp"}, {guardplan.ClassManagement, "management"}} {
		if mask&c.bit != 0 {
			out = append(out, c.name)
		}
	}
	return out
}

func newGuardCmd(e *env) *cobra.Command {
	var output, iface, dir, wgif, fwdir string
	cmd := &cobra.Command{
		Use:   "guard [--interface IFNAME | --pin-dir DIR] [--wireguard-interface sm0] [-o json]",
		Short: "Print the XDP guard's maps, the eBPF firewall's, and their per-verdict counters on this node (read from the kernel)",
		Long: `Print what the XDP guard on this node's underlay interface holds, read from the maps the
agent pinned under /sys/fs/bpf/statemesh/IFNAME: the sources it knows (and their classes:
wireguard, bgp, management), the ports it serves, the node's own addresses, the handshake
limits, and the packets counted per verdict; then the eBPF firewall on the WireGuard
interface (maps pinned under /sys/fs/bpf/statemesh/WG-IFNAME): how many sources, ports,
destinations and flows it holds, and its counters. bpftool map dump pinned PATH shows the
same maps raw. docs/ebpf.md explains them.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(output, formatTable, formatJSON); err != nil {
				return err
			}
			if fwdir == "" {
				fwdir = filepath.Join(xdpguard.DefaultPinDir, wgif)
			}
			fs, fwErr := ebpffw.Inspect(fwdir)
			var fv *firewallView
			if fwErr == nil {
				fv = &firewallView{PinDir: fwdir, Sources: fs.Sources, Ports: fs.Ports, Dests: fs.Dests, Flows: fs.Flows, Mark: fmt.Sprintf("0x%08x", fs.Mark), Counters: map[string]uint64{}}
				for k, n := range fs.Counters {
					fv.Counters[k.String()] = n
				}
			}
			if dir == "" && iface != "" {
				dir = filepath.Join(xdpguard.DefaultPinDir, iface)
			}
			if dir == "" {
				if fv == nil {
					return usagef("give --interface (the underlay interface the guard is on) or --pin-dir; no eBPF firewall either: %v", fwErr)
				}
				if output == formatJSON {
					return writeJSON(e.stdout, struct {
						Firewall *firewallView `json:"firewall"`
					}{fv})
				}
				return printFirewall(e.stdout, fv)
			}
			c, err := xdpguard.Inspect(dir)
			if err != nil {
				return err
			}
			v := guardView{PinDir: dir, Config: c.Config, Tracked: c.Tracked, Counters: map[string]uint64{}, Local: []string{}}
			for _, s := range c.Sources {
				v.Sources = append(v.Sources, guardSource{Prefix: guardplan.Unmapped(s.Prefix).String(), Classes: classNames(s.Classes)})
			}
			for _, p := range c.Ports {
				kind := map[uint32]string{guardplan.KindWireGuard: "wireguard", guardplan.KindRestricted: "restricted", guardplan.KindOpen: "open"}[p.Value&0xff]
				v.Ports = append(v.Ports, guardPort{Port: p.Key.String(), Kind: kind, Classes: classNames(p.Value >> 8)})
			}
			for _, a := range c.Local {
				v.Local = append(v.Local, a.Unmap().String())
			}
			for k, n := range c.Counters {
				v.Counters[k.String()] = n
			}
			if output == formatJSON {
				return writeJSON(e.stdout, struct {
					guardView
					Firewall *firewallView `json:"firewall,omitempty"`
				}{v, fv})
			}
			w := e.stdout
			fmt.Fprintf(w, "Maps:   %s\nLocal:  %s\nLimits: %d handshakes/s per unknown source, %d in total; replies to ephemeral ports %d-%d pass\n\n",
				dir, strings.Join(v.Local, ", "), c.Config.HandshakesPerSource, c.Config.HandshakesTotal, c.Config.EphemeralFrom, c.Config.EphemeralTo)
			t := newTable(w, "PORT", "KIND", "FROM")
			for _, p := range v.Ports {
				from := strings.Join(p.Classes, ",")
				if p.Kind == "open" {
					from = "anyone"
				}
				t.row(p.Port, p.Kind, from)
			}
			if err := t.flush(); err != nil {
				return err
			}
			fmt.Fprintln(w)
			t = newTable(w, "SOURCE", "CLASSES")
			for _, s := range v.Sources {
				t.row(s.Prefix, strings.Join(s.Classes, ","))
			}
			if err := t.flush(); err != nil {
				return err
			}
			fmt.Fprintf(w, "\n%d unknown sources have a handshake window\n\n", c.Tracked)
			t = newTable(w, "VERDICT", "ACTION", "PACKETS")
			for _, vd := range xdpguard.Verdicts() {
				act := "pass"
				if vd.Drop() {
					act = "drop"
				}
				t.row(vd.String(), act, c.Counters[vd])
			}
			if err := t.flush(); err != nil {
				return err
			}
			if fv == nil {
				fmt.Fprintf(w, "\nNo eBPF firewall maps in %s (the overlay policy is nftables' alone there).\n", fwdir)
				return nil
			}
			fmt.Fprintln(w)
			return printFirewall(w, fv)
		},
	}
	f := cmd.Flags()
	f.StringVar(&iface, "interface", "", "the underlay interface the guard is attached to")
	f.StringVar(&dir, "pin-dir", "", "directory of the pinned maps (default /sys/fs/bpf/statemesh/IFNAME)")
	f.StringVar(&wgif, "wireguard-interface", "sm0", "the WireGuard interface the eBPF firewall is on")
	f.StringVar(&fwdir, "firewall-pin-dir", "", "directory of the firewall's pinned maps (default /sys/fs/bpf/statemesh/WG-IFNAME)")
	f.StringVarP(&output, "output", "o", formatTable, "table or json")
	return cmd
}

func printFirewall(w io.Writer, fv *firewallView) error {
	fmt.Fprintf(w, "eBPF firewall: %s\n%d source prefixes, %d ports, %d destinations, %d flows recorded; mark %s\n\n",
		fv.PinDir, fv.Sources, fv.Ports, fv.Dests, fv.Flows, fv.Mark)
	t := newTable(w, "VERDICT", "ACTION", "PACKETS")
	for _, vd := range ebpffw.Verdicts() {
		act := "pass"
		if vd.Drop() {
			act = "drop"
		}
		t.row(vd.String(), act, fv.Counters[vd.String()])
	}
	return t.flush()
}
