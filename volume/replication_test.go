package volume

import (
	"context"
	"errors"
	"testing"
)

// Every copy of a volume is created with the identity the cluster decided,
// so INQUIRY answers the same on every node.
func TestIdentityFromCaller(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	defer s.Close()
	id := NewIdentity()
	v, err := s.Create(ctx, Spec{Name: "a", Size: 1 << 20, Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	if v.ID != id.ID || v.NAA != id.NAA || v.Serial != id.Serial || !v.Created.Equal(id.Created) {
		t.Fatalf("created %+v, want the identity %+v", v, id)
	}
	c, err := s.Clone(ctx, "a", "", Spec{Name: "c", Identity: NewIdentity()})
	if err != nil {
		t.Fatal(err)
	}
	if c.ID == id.ID || c.NAA == id.NAA {
		t.Fatal("the clone took its source's identity")
	}
	bad := id
	bad.ID = "x"
	for _, tc := range []struct {
		name string
		spec Spec
		want error
	}{
		{"same ID as another volume", Spec{Name: "b", Size: 1 << 20, Identity: id}, ErrExists},
		{"malformed ID", Spec{Name: "b", Size: 1 << 20, Identity: bad}, ErrInvalidName},
		{"no NAA", Spec{Name: "b", Size: 1 << 20, Identity: Identity{ID: NewIdentity().ID, Serial: "S"}}, ErrInvalidName},
	} {
		if _, err := s.Create(ctx, tc.spec); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if name, err := s.NameOf(id.ID); err != nil || name != "a" {
		t.Fatalf("NameOf: %q %v", name, err)
	}
	if _, err := s.DeviceByID(c.ID); err != nil {
		t.Fatal(err)
	}
}

// Every copy made gets its own copy ID; a snapshot keeps the cluster's ID
// given with it.
func TestCopyAndSnapshotIDs(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	defer s.Close()
	id := NewIdentity()
	a, err := s.Create(ctx, Spec{Name: "a", Size: 1 << 20, Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "a", nil); err != nil {
		t.Fatal(err)
	}
	b, err := s.Create(ctx, Spec{Name: "a", Size: 1 << 20, Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	if a.CopyID == "" || a.CopyID == b.CopyID {
		t.Fatalf("copy IDs %q and %q of two copies made one after the other", a.CopyID, b.CopyID)
	}
	if _, err := s.SnapshotAs(ctx, "a", "s1", "snap-id-1"); err != nil {
		t.Fatal(err)
	}
	info, _ := s.Get("a")
	if len(info.Snapshots) != 1 || info.Snapshots[0].ID != "snap-id-1" {
		t.Fatalf("snapshots %+v", info.Snapshots)
	}
}

func TestRenewCopyID(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	a, err := s.Create(ctx, Spec{Name: "a", Size: 1 << 20, Identity: NewIdentity()})
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.RenewCopyID(ctx, "a")
	if err != nil || id == a.CopyID || id == "" {
		t.Fatalf("renewed %q (was %q): %v", id, a.CopyID, err)
	}
	s.Close()
	s = open(t, dir)
	defer s.Close()
	if got, _ := s.Get("a"); got.CopyID != id {
		t.Fatalf("after reopening: copy ID %q, want %q", got.CopyID, id)
	}
}
