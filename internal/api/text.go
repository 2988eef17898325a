package api

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxReportText bounds each free-text field of a status report (runes).
const MaxReportText = 512

// CleanText makes a string that a node (or anyone but an admin) wrote safe
// to print on an admin's terminal or in a table: control characters
// (escape sequences, carriage returns, tabs, newlines), invalid UTF-8 and
// the bidirectional overrides that reorder what is shown are written as
// visible escapes (\x1b, \u202e), and the text is cut to max runes (0: no
// bound). Text without such characters comes back unchanged.
func CleanText(s string, max int) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || unsafeRune(r) {
			clean = false
			break
		}
	}
	if clean && (max == 0 || utf8.RuneCountInString(s) <= max) {
		return s
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(s); {
		if max > 0 && n == max {
			b.WriteString("…")
			break
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r) && r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
		i += size
		n++
	}
	return b.String()
}

// unsafeRune: control characters and the invisible formatting characters
// that change how the rest of a line is shown.
func unsafeRune(r rune) bool {
	if unicode.IsControl(r) {
		return true
	}
	switch {
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
		return true
	}
	return false
}

// Clean returns the report with every free-text field passed through
// CleanText: the controller stores and shows only cleaned reports.
func (r StatusReport) Clean() StatusReport {
	r.Firewall = CleanText(r.Firewall, MaxReportText)
	r.Dataplane = CleanText(r.Dataplane, MaxReportText)
	r.Message = CleanText(r.Message, MaxReportText)
	if r.StalePeers != nil {
		peers := make([]string, len(r.StalePeers))
		for i, p := range r.StalePeers {
			peers[i] = CleanText(p, 64)
		}
		r.StalePeers = peers
	}
	if r.Paths != nil {
		paths := make([]PathProbe, len(r.Paths))
		for i, p := range r.Paths {
			p.Peer, p.Region = CleanText(p.Peer, 64), CleanText(p.Region, 64)
			paths[i] = p
		}
		r.Paths = paths
	}
	if r.Routing != nil {
		rt := *r.Routing
		rt.BIRD = CleanText(rt.BIRD, MaxReportText)
		rt.Links = CleanText(rt.Links, MaxReportText)
		rt.Sessions = nil
		if r.Routing.Sessions != nil {
			rt.Sessions = make([]BGPSession, len(r.Routing.Sessions))
		}
		for i, s := range r.Routing.Sessions {
			s.Name, s.Neighbor, s.Peer = CleanText(s.Name, 64), CleanText(s.Neighbor, 64), CleanText(s.Peer, 64)
			s.State, s.BGPState, s.BFD = CleanText(s.State, 64), CleanText(s.BGPState, 64), CleanText(s.BFD, 64)
			rt.Sessions[i] = s
		}
		r.Routing = &rt
	}
	return r
}
