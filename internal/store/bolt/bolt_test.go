package bolt

import (
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/statemesh/statemesh/internal/store"
	"github.com/statemesh/statemesh/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	dirs := map[store.Store]string{}
	open := func(t *testing.T, dir string, opts Options) store.Store {
		s, err := Open(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		dirs[s] = dir
		return s
	}
	storetest.Run(t, storetest.Backend{
		Open: func(t *testing.T) store.Store { return open(t, t.TempDir(), Options{}) },
		Reopen: func(t *testing.T, s store.Store) store.Store {
			dir := dirs[s]
			s.Close()
			return open(t, dir, Options{})
		},
		Compact: func(t *testing.T, s store.Store, rev int64) {
			bs := s.(*Store)
			bs.db.Update(func(tx *bbolt.Tx) error {
				return bs.compactTo(tx, rev)
			})
		},
	})
}
