package volume

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"sync"
	"testing"
)

// I/O (partial and whole-block writes, unmaps, FUA, reads) on a volume and
// on clones of its snapshots, while the volume is snapshotted, cloned,
// merged (older snapshots deleted) and resized. Each writer owns its blocks
// and keeps a model of them; at the end every device must read back its
// model. Run with -race.
func TestIOUnderOperations(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	defer s.Close()
	const nb = 64
	if _, err := s.Create(ctx, Spec{Name: "v", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	type writer struct {
		dev   *Volume
		first int
		model [][]byte
	}
	run := func(w *writer, seed int64, stop <-chan struct{}, errs chan<- error) {
		rng := rand.New(rand.NewSource(seed))
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b := w.first + rng.Intn(len(w.model))
			m := w.model[b-w.first]
			off := int64(b) * 4096
			switch rng.Intn(5) {
			case 0, 1: // a sector or a few
				so := rng.Intn(8) * 512
				n := (1 + rng.Intn(8-so/512)) * 512
				p := bytes.Repeat([]byte{byte(rng.Intn(250) + 1)}, n)
				if err := w.dev.WriteAt(ctx, p, off+int64(so), rng.Intn(8) == 0); err != nil {
					errs <- err
					return
				}
				copy(m[so:], p)
			case 2: // whole block
				p := bytes.Repeat([]byte{byte(rng.Intn(250) + 1)}, 4096)
				if err := w.dev.WriteAt(ctx, p, off, false); err != nil {
					errs <- err
					return
				}
				copy(m, p)
			case 3: // unmap, whole or partial
				if rng.Intn(2) == 0 {
					if err := w.dev.Unmap(ctx, off, 4096); err != nil {
						errs <- err
						return
					}
					clear(m)
				} else {
					if err := w.dev.Unmap(ctx, off+512, 1024); err != nil {
						errs <- err
						return
					}
					clear(m[512:1536])
				}
			case 4:
				got := make([]byte, 4096)
				if err := w.dev.ReadAt(ctx, got, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, m) {
					errs <- fmt.Errorf("block %d reads %v..., model %v...", b, got[:8], m[:8])
					return
				}
			}
		}
	}
	dev, _ := s.Device("v")
	var writers []*writer
	for i := 0; i < 4; i++ {
		w := &writer{dev: dev, first: i * nb / 4}
		for j := 0; j < nb/4; j++ {
			w.model = append(w.model, make([]byte, 4096))
		}
		writers = append(writers, w)
	}
	stop := make(chan struct{})
	errs := make(chan error, 64)
	var wg sync.WaitGroup
	start := func(w *writer, seed int64) {
		wg.Add(1)
		go func() { defer wg.Done(); run(w, seed, stop, errs) }()
	}
	for i, w := range writers {
		start(w, int64(i))
	}
	var snaps []string
	for round := 0; round < 40; round++ {
		select {
		case err := <-errs:
			close(stop)
			wg.Wait()
			t.Fatalf("round %d: %v", round, err)
		default:
		}
		name := fmt.Sprintf("s%d", round)
		if _, err := s.Snapshot(ctx, "v", name); err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, name)
		if round%3 == 0 {
			// A clone of the newest snapshot, with its own writer on
			// blocks past the volume's, so it has a model.
			cn := "c" + name
			if _, err := s.Clone(ctx, "v", name, Spec{Name: cn}); err != nil {
				t.Fatal(err)
			}
			cd, _ := s.Device(cn)
			w := &writer{dev: cd, first: nb}
			for j := 0; j < 16; j++ {
				w.model = append(w.model, make([]byte, 4096))
			}
			writers = append(writers, w)
			start(w, int64(100+round))
		}
		// Merge the oldest snapshot without clones.
		for i, sn := range snaps {
			err := s.DeleteSnapshot(ctx, "v", sn)
			if err == nil {
				snaps = append(snaps[:i], snaps[i+1:]...)
				break
			}
		}
		if round%10 == 9 {
			info, _ := s.Get("v")
			if _, err := s.Resize(ctx, "v", info.Size+1<<20); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	for _, w := range writers {
		for j, m := range w.model {
			got := make([]byte, 4096)
			w.dev.ReadAt(ctx, got, int64(w.first+j)*4096)
			if !bytes.Equal(got, m) {
				t.Fatalf("block %d of %s reads %v..., model %v...", w.first+j, w.dev.name, got[:8], m[:8])
			}
		}
	}
}
