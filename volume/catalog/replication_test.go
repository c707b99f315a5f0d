package catalog

import (
	"path/filepath"
	"slices"
	"testing"
)

func TestEpochs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	c, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e, err := c.Epoch("v1"); err != nil || e != 0 {
		t.Fatalf("new volume: epoch %d, %v; want 0", e, err)
	}
	for _, tc := range []struct {
		set     uint64
		wantErr bool
		want    uint64
	}{{3, false, 3}, {3, false, 3}, {7, false, 7}, {5, true, 7}} {
		err := c.SetEpoch("v1", tc.set)
		if (err != nil) != tc.wantErr {
			t.Fatalf("SetEpoch(%d): %v, want error %v", tc.set, err, tc.wantErr)
		}
		if e, _ := c.Epoch("v1"); e != tc.want {
			t.Fatalf("after SetEpoch(%d): epoch %d, want %d", tc.set, e, tc.want)
		}
	}
	c.Close()
	c, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if e, _ := c.Epoch("v1"); e != 7 {
		t.Fatalf("after reopening: epoch %d, want 7", e)
	}
	if err := c.Apply(Changes{DropVolumeState: []string{"v1"}}); err != nil {
		t.Fatal(err)
	}
	if e, _ := c.Epoch("v1"); e != 0 {
		t.Fatalf("after dropping the volume's state: epoch %d, want 0", e)
	}
}

func TestDirtyMaps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	c, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		mark, clear []uint64
		drop        bool
		want        []uint64
		replicas    []string
	}{
		{mark: []uint64{9, 0, 1000}, want: []uint64{0, 9, 1000}, replicas: []string{"n2"}},
		{mark: []uint64{9, 8}, want: []uint64{0, 8, 9, 1000}, replicas: []string{"n2"}},
		{clear: []uint64{0, 1000, 5}, want: []uint64{8, 9}, replicas: []string{"n2"}},
		{clear: []uint64{8, 9}, want: nil, replicas: []string{"n2"}}, // empty map: still out of sync
		{drop: true, want: nil, replicas: nil},
	}
	for i, st := range steps {
		switch {
		case st.mark != nil:
			err = c.MarkDirty("v1", "n2", st.mark)
		case st.drop:
			err = c.ClearDirty("v1", "n2", nil)
		default:
			err = c.ClearDirty("v1", "n2", st.clear)
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		got, err := c.Dirty("v1", "n2")
		if err != nil || !slices.Equal(got, st.want) {
			t.Fatalf("step %d: dirty %v, %v; want %v", i, got, err, st.want)
		}
		reps, _ := c.DirtyReplicas("v1")
		if !slices.Equal(reps, st.replicas) {
			t.Fatalf("step %d: replicas with maps %v, want %v", i, reps, st.replicas)
		}
	}
	if err := c.MarkDirty("v1", "n3", []uint64{maxDirtyRegions}); err == nil {
		t.Fatal("a region beyond the bound was accepted")
	}
	if err := c.MarkDirty("v1", "n3", []uint64{4}); err != nil {
		t.Fatal(err)
	}
	if err := c.MarkDirty("v10", "n3", []uint64{4}); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(Changes{DropVolumeState: []string{"v1"}}); err != nil {
		t.Fatal(err)
	}
	if reps, _ := c.DirtyReplicas("v1"); len(reps) != 0 {
		t.Fatalf("dropped volume still has dirty maps for %v", reps)
	}
	if got, _ := c.Dirty("v10", "n3"); !slices.Equal(got, []uint64{4}) {
		t.Fatalf("another volume's map (v10) went with v1's: %v", got)
	}
	c.Close()
}

func TestStartDirtyEpoch(t *testing.T) {
	c, err := Open(filepath.Join(t.TempDir(), "c.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, r := range []string{"n2", "n3", "@active"} {
		if err := c.MarkDirty("v1", r, []uint64{1}); err != nil {
			t.Fatal(err)
		}
	}
	if e, _ := c.DirtyEpoch("v1"); e != 0 {
		t.Fatalf("dirty epoch %d before any", e)
	}
	if err := c.StartDirtyEpoch("v1", 3, "@active"); err != nil {
		t.Fatal(err)
	}
	if e, _ := c.DirtyEpoch("v1"); e != 3 {
		t.Fatalf("dirty epoch %d, want 3", e)
	}
	if reps, _ := c.DirtyReplicas("v1"); !slices.Equal(reps, []string{"@active"}) {
		t.Fatalf("maps after a new epoch: %v, want only the activity log", reps)
	}
	if err := c.Apply(Changes{DropVolumeState: []string{"v1"}}); err != nil {
		t.Fatal(err)
	}
	if e, _ := c.DirtyEpoch("v1"); e != 0 {
		t.Fatalf("dirty epoch %d after the volume went", e)
	}
}
