package volume

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"testing"
)

// Snapshot, clone and revert cost the same whatever the volume's size:
// compare the 1 GiB and 1 TiB rows (make bench prints them).
func BenchmarkLayerOps(b *testing.B) {
	for _, size := range []int64{1 << 30, 1 << 40} {
		b.Run(fmt.Sprintf("size=%s", humanSize(size)), func(b *testing.B) {
			ctx := context.Background()
			s, err := Open(ctx, Config{Dir: b.TempDir(), Logger: quiet, AllowCrashUnsafe: true})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Create(ctx, Spec{Name: "v", Size: size}); err != nil {
				b.Fatal(err)
			}
			dev, _ := s.Device("v")
			dev.WriteAt(ctx, make([]byte, 1<<20), size/2, true)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				snap := fmt.Sprintf("s%d", i)
				if _, err := s.Snapshot(ctx, "v", snap); err != nil {
					b.Fatal(err)
				}
				if _, err := s.Clone(ctx, "v", snap, Spec{Name: fmt.Sprintf("c%d", i)}); err != nil {
					b.Fatal(err)
				}
				if err := s.Revert(ctx, "v", snap, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func humanSize(n int64) string {
	if n >= 1<<40 {
		return fmt.Sprintf("%dTiB", n>>40)
	}
	return fmt.Sprintf("%dGiB", n>>30)
}

// Random 4 KiB reads and writes with 0, 1 and 20 snapshots under the head,
// each snapshot holding its own share of the data: the rows should stay
// within 10% of each other.
func BenchmarkRandomIOWithSnapshots(b *testing.B) {
	for _, snaps := range []int{0, 1, 20} {
		for _, op := range []string{"read", "write"} {
			b.Run(fmt.Sprintf("snapshots=%d/%s", snaps, op), func(b *testing.B) {
				ctx := context.Background()
				s, err := Open(ctx, Config{Dir: b.TempDir(), Logger: quiet, AllowCrashUnsafe: true})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				const size = 256 << 20
				s.Create(ctx, Spec{Name: "v", Size: size})
				dev, _ := s.Device("v")
				chunk := make([]byte, 1<<20)
				for i := 0; i <= snaps; i++ {
					// Each layer gets a slice of the volume.
					part := size / int64(snaps+1)
					for off := int64(i) * part; off < int64(i+1)*part; off += int64(len(chunk)) {
						dev.WriteAt(ctx, chunk[:min(int64(len(chunk)), int64(i+1)*part-off)], off, false)
					}
					if i < snaps {
						s.Snapshot(ctx, "v", fmt.Sprintf("s%d", i))
					}
				}
				dev, _ = s.Device("v")
				p := make([]byte, 4096)
				rng := rand.New(rand.NewSource(1))
				b.SetBytes(4096)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					off := rng.Int63n(size/4096) * 4096
					if op == "read" {
						dev.ReadAt(ctx, p, off)
					} else {
						dev.WriteAt(ctx, p, off, false)
					}
				}
			})
		}
	}
}
