package link

import (
	"io"
	"testing"
)

// BenchmarkThroughput: 1 MiB writes over loopback, read on the other side.
func BenchmarkThroughput(b *testing.B) {
	for _, mode := range []struct {
		name     string
		insecure bool
	}{{"encrypted", false}, {"insecure", true}} {
		b.Run(mode.name, func(b *testing.B) {
			cfg, _ := testConfig("n", testKey(1))
			cfg.Insecure = mode.insecure
			c, s := dialPair(b, cfg, cfg, PurposeReplication)
			const size = 1 << 20
			done := make(chan error, 1)
			go func() {
				buf := make([]byte, size)
				_, err := io.ReadFull(s, buf) // warm-up write
				for i := 0; i < b.N && err == nil; i++ {
					_, err = io.ReadFull(s, buf)
				}
				done <- err
			}()
			msg := make([]byte, size)
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}
