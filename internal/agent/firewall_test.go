package agent

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/statemesh/statemesh/internal/dataplane/firewall"
	"github.com/statemesh/statemesh/internal/netmap"
)

// checkBlocker is a table that has always drifted, whose Check waits until
// the test lets it finish.
type checkBlocker struct {
	fakeFirewall
	checking, release chan struct{}
}

func (f *checkBlocker) Check(context.Context) error {
	f.checking <- struct{}{}
	<-f.release
	return errors.New("drifted")
}

// A drift repair that started before a new map was applied must not
// restore the older map's table after it: the table's writers take turns,
// and the repair restores the map last applied to the table.
func TestDriftRepairNeverRestoresAnOlderMap(t *testing.T) {
	ctx := context.Background()
	a, _, _ := testAgent(t)
	fw := &checkBlocker{checking: make(chan struct{}), release: make(chan struct{})}
	a.fw = fw
	older, newer := sampleMap(), sampleMap()
	older.Peers = []netmap.Peer{peer("n2", 2)}
	newer.Peers = []netmap.Peer{peer("n2", 2), peer("n3", 3)}
	a.syncFirewall(ctx, netmap.Map{}, older, nil)

	repaired := make(chan struct{})
	go func() { a.repairDrift(ctx); close(repaired) }()
	<-fw.checking // the repair has read its map and is checking the table
	applied := make(chan struct{})
	go func() { a.syncFirewall(ctx, older, newer, nil); close(applied) }()
	select {
	case <-applied:
		t.Error("the new map was applied while a drift repair was under way")
	case <-time.After(200 * time.Millisecond):
	}
	close(fw.release)
	<-repaired
	<-applied

	want := firewall.StateFor(newer, firewall.StateOptions{}).Peers
	fw.mu.Lock()
	got := slices.Clone(fw.lastPeerIPs)
	fw.mu.Unlock()
	if !slices.EqualFunc(got, want, func(a, b netip.Addr) bool { return a == b }) {
		t.Errorf("the table was last made for peers %v, want the newer map's %v", got, want)
	}
	// The next repair restores the newer map too.
	fw.release = make(chan struct{})
	go func() { <-fw.checking; close(fw.release) }()
	a.repairDrift(ctx)
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if !slices.Equal(fw.lastPeerIPs, want) {
		t.Errorf("a later repair made the table for %v, want %v", fw.lastPeerIPs, want)
	}
}
