package cluster

import (
	"errors"
	"maps"
	"slices"
	"testing"
)

func TestImportTombstonesCloneInSync(t *testing.T) {
	imported := Volume{Name: "old", ID: "id-old", NAA: naa(7), Size: 1 << 20, Created: t0, Copies: 1,
		Placement: []string{"d"}, Primary: "d", Epoch: 1, InSync: []string{"d"},
		Snapshots: []Snapshot{{Name: "s", ID: "x", Created: t0, Size: 1 << 20}}, Reservations: []byte("pr")}
	with := func(f func(v *Volume)) Volume { v := imported.Clone(); f(&v); return v }
	deleted := baseState()
	deleted.Tombstones = []string{"id-old"}
	pendingS3 := baseState()
	vol := pendingS3.Volumes["vol"]
	vol.Snapshots = append(vol.Snapshots, Snapshot{Name: "s3", ID: "id-s3", Pending: true})
	pendingS3.Volumes["vol"] = vol
	tests := []struct {
		name  string
		state State
		cmd   Command
		want  error
		check func(t *testing.T, s State)
	}{
		{"import", baseState(), ImportVolume{imported}, nil, func(t *testing.T, s State) {
			if v := s.Volumes["old"]; v.ID != "id-old" || string(v.Reservations) != "pr" || len(v.Snapshots) != 1 {
				t.Errorf("imported %+v", v)
			}
		}},
		{"import twice by name", baseState(), ImportVolume{with(func(v *Volume) { v.Name = "vol" })}, ErrExists, nil},
		{"import an ID in use", baseState(), ImportVolume{with(func(v *Volume) { v.ID = "id-vol" })}, ErrExists, nil},
		{"import a deleted ID", deleted, ImportVolume{imported}, ErrConflict, nil},
		{"import onto a witness", baseState(), ImportVolume{with(func(v *Volume) { v.Placement, v.Primary, v.InSync = []string{"w"}, "w", []string{"w"} })}, ErrConflict, nil},
		{"import without its primary in sync", baseState(), ImportVolume{with(func(v *Volume) { v.InSync = nil })}, ErrInvalid, nil},
		{"import keeps copy IDs", baseState(), ImportVolume{with(func(v *Volume) { v.CopyIDs = map[string]string{"d": "old-d"}; v.Pending = "revert:s" })}, nil,
			func(t *testing.T, s State) {
				if v := s.Volumes["old"]; !maps.Equal(v.CopyIDs, map[string]string{"d": "old-d"}) || v.Pending != "revert:s" {
					t.Errorf("imported copy IDs %v, pending %q", v.CopyIDs, v.Pending)
				}
			}},
		{"import a copy ID of an unplaced node", baseState(), ImportVolume{with(func(v *Volume) { v.CopyIDs = map[string]string{"d": "old-d", "a": "old-a"} })}, ErrInvalid, nil},
		{"import an empty copy ID", baseState(), ImportVolume{with(func(v *Volume) { v.CopyIDs = map[string]string{"d": ""} })}, ErrInvalid, nil},
		{"import a clone of a pending snapshot", pendingS3, ImportVolume{with(func(v *Volume) { v.Source = &CloneSource{Volume: "vol", Snapshot: "s3"} })}, ErrConflict, nil},
		{"import a clone of a committed snapshot", baseState(), ImportVolume{with(func(v *Volume) { v.Source = &CloneSource{Volume: "vol", Snapshot: "s2"} })}, nil, nil},
		{"import a clone of an unknown source", baseState(), ImportVolume{with(func(v *Volume) { v.Source = &CloneSource{Volume: "nope", Snapshot: "s"} })}, ErrNotFound, nil},
		{"delete leaves a tombstone", baseState(), DeleteVolume{Name: "solo"}, nil, func(t *testing.T, s State) {
			if !s.Deleted("id-solo") || s.Deleted("id-vol") {
				t.Errorf("tombstones %v", s.Tombstones)
			}
		}},
		{"clone in sync where the source is", baseState(), CreateVolume{Name: "c2", ID: "id-c2", NAA: naa(8), Size: 1 << 30, Created: t0,
			Copies: 2, Placement: []string{"a", "b"}, Source: &CloneSource{Volume: "vol", Snapshot: "s2"}, InSync: []string{"a", "b"}}, nil, func(t *testing.T, s State) {
			if v := s.Volumes["c2"]; !slices.Equal(v.InSync, []string{"a", "b"}) {
				t.Errorf("clone in sync %v", v.InSync)
			}
		}},
		{"clone in sync where the source is not", baseState(), CreateVolume{Name: "c2", ID: "id-c2", NAA: naa(8), Size: 1 << 30, Created: t0,
			Copies: 2, Placement: []string{"a", "c"}, Source: &CloneSource{Volume: "vol", Snapshot: "s2"}, InSync: []string{"a", "c"}}, ErrInvalid, nil},
		{"in sync at creation without a source", baseState(), CreateVolume{Name: "c2", ID: "id-c2", NAA: naa(8), Size: 1 << 30, Created: t0,
			Copies: 2, Placement: []string{"a", "b"}, InSync: []string{"a", "b"}}, ErrInvalid, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := applyTo(t, tc.state, tc.cmd)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if err != nil && mustJSON(t, s.Volumes) != mustJSON(t, tc.state.Volumes) {
				t.Fatal("a refused command changed the state")
			}
			if tc.check != nil {
				tc.check(t, s)
			}
		})
	}
	// The tombstone list is bounded.
	s := baseState()
	for i := 0; i < maxTombstones+5; i++ {
		s.Tombstones = append(s.Tombstones, "t")
	}
	s, err := applyTo(t, s, DeleteVolume{Name: "solo"})
	if err != nil || len(s.Tombstones) != maxTombstones || s.Tombstones[len(s.Tombstones)-1] != "id-solo" {
		t.Fatalf("tombstones after a delete beyond the bound: %d, %v", len(s.Tombstones), err)
	}
}

func TestNoopChangesNothing(t *testing.T) {
	s, err := applyTo(t, baseState(), Noop{})
	if err != nil || mustJSON(t, s.Volumes) != mustJSON(t, baseState().Volumes) || mustJSON(t, s.Nodes) != mustJSON(t, baseState().Nodes) {
		t.Fatalf("noop: %v", err)
	}
}

func TestDeleteSnapshotOfAPendingRevertRefused(t *testing.T) {
	s := baseState()
	v := s.Volumes["vol"]
	v.Pending = "revert:s1"
	s.Volumes["vol"] = v
	if _, err := applyTo(t, s, DeleteSnapshot{Volume: "vol", Name: "s1"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("deleting the snapshot a pending revert needs: %v, want a conflict", err)
	}
	if _, err := applyTo(t, s, DeleteSnapshot{Volume: "vol", Name: "s2"}); err != nil {
		t.Fatalf("deleting another snapshot: %v", err)
	}
}
