package volume

import (
	"context"
	"testing"

	"tandem.io/tandem/volume/catalog"
)

// A clone whose head-layer record cannot be read is damaged, and the store
// cannot tell it sits on the source's snapshot. So while any layer record is
// unreadable, no snapshot is removed (DeleteSnapshot of the clone's base,
// Delete of the source): once the record is repaired, the clone opens with
// its base intact. (Found in review: before, the base was merged away and
// the clone's data lost for good.)
func TestUnreadableRecordBlocksSnapshotRemoval(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	s.Create(ctx, Spec{Name: "v", Size: 4 << 20})
	dev, _ := s.Device("v")
	dev.WriteAt(ctx, blockData('a', 0), 0, true)
	if _, err := s.Snapshot(ctx, "v", "s1"); err != nil {
		t.Fatal(err)
	}
	c, err := s.Clone(ctx, "v", "s1", Spec{Name: "c"})
	if err != nil {
		t.Fatal(err)
	}
	good := s.recs[c.HeadLayer]
	bad := good
	bad.Size = 0 // unreadable: fails DecodeLayer
	s.cat.Apply(catalog.Changes{PutLayers: []catalog.Layer{bad}})
	s.Close()

	s = open(t, dir)
	if info, _ := s.Get("c"); info.Error == "" {
		t.Fatal("setup: the clone is not damaged")
	}
	err = s.DeleteSnapshot(ctx, "v", "s1")
	// Repair the record, as an operator (or a later fix) would.
	s.cat.Apply(catalog.Changes{PutLayers: []catalog.Layer{good}})
	s.Close()
	s = open(t, dir)
	defer s.Close()
	info, _ := s.Get("c")
	if err == nil || info.Error != "" {
		t.Fatalf("DeleteSnapshot of the base of a clone whose record could not be read: err %v; after the record is repaired the clone's error is %q — its base is gone", err, info.Error)
	}
}
