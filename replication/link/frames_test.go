package link

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// TestFrameOrder: frames are read in the order sent, once each; anything
// else fails authentication and closes the connection.
func TestFrameOrder(t *testing.T) {
	k := testKey(5).Derive("frames", 32)
	big := bytes.Repeat([]byte("0123456789abcdef"), MaxFrame/16+100) // two frames
	f := sealFrames(t, k, []byte("one"), []byte("two"), big, []byte{}, []byte("four"))
	bigFrames := f[2]
	split := frameHeader + MaxFrame + tagLen
	f = [][]byte{f[0], f[1], bigFrames[:split], bigFrames[split:], f[4]}
	wrongKey := sealFrames(t, testKey(6).Derive("frames", 32), []byte("one"))[0]
	truncated := f[0][:len(f[0])-1]
	tooBig := []byte{0, 2, 0, 0}
	tooSmall := []byte{0, 0, 0, tagLen - 1}
	tests := []struct {
		name   string
		stream [][]byte
		want   []byte // what reads return before the error
		err    error
	}{
		{"in order", f, bytes.Join([][]byte{[]byte("one"), []byte("two"), big, []byte("four")}, nil), io.EOF},
		{"duplicated", [][]byte{f[0], f[0]}, []byte("one"), ErrFrameAuth},
		{"dropped", [][]byte{f[0], f[2]}, []byte("one"), ErrFrameAuth},
		{"swapped", [][]byte{f[1], f[0]}, nil, ErrFrameAuth},
		{"other key", [][]byte{wrongKey}, nil, ErrFrameAuth},
		{"truncated", [][]byte{f[0], truncated}, []byte("one"), io.ErrUnexpectedEOF},
		{"header cut", [][]byte{f[0], f[1][:2]}, []byte("one"), io.ErrUnexpectedEOF},
		{"too big", [][]byte{tooBig}, nil, ErrFrameSize},
		{"too small", [][]byte{tooSmall}, nil, ErrFrameSize},
	}
	for i, tt := range tests {
		for _, bufSize := range []int{7, 1 << 20} { // frames via the buffer, and straight into p
			t.Run(fmt.Sprintf("%d_%s_%d", i, tt.name, bufSize), func(t *testing.T) {
				c, fc := newReaderConn(t, k, bytes.NewReader(bytes.Join(tt.stream, nil)))
				var got []byte
				buf := make([]byte, bufSize)
				var err error
				for err == nil {
					var n int
					n, err = c.Read(buf)
					got = append(got, buf[:n]...)
				}
				if !bytes.Equal(got, tt.want) {
					t.Fatalf("read %d bytes %.20q, want %d bytes %.20q", len(got), got, len(tt.want), tt.want)
				}
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				if _, again := c.Read(buf); !errors.Is(again, tt.err) {
					t.Fatalf("second read: %v, want the same error %v", again, tt.err)
				}
				if closed := errorsIsAny(err, ErrFrameAuth, ErrFrameSize); fc.closed != closed {
					t.Fatalf("connection closed = %v, want %v", fc.closed, closed)
				}
			})
		}
	}
}

// TestReadDeadlineResumesFrame: a read deadline in the middle of a frame
// does not lose it.
func TestReadDeadlineResumesFrame(t *testing.T) {
	k := testKey(7).Derive("frames", 32)
	frame := sealFrames(t, k, []byte("across a deadline"))[0]
	for _, cut := range []int{2, frameHeader, frameHeader + 5} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			c, err := newConn(a, newReader(a), "peer", PurposeRPC, false, k, k)
			if err != nil {
				t.Fatal(err)
			}
			sent := make(chan error, 1)
			go func() { _, err := b.Write(frame[:cut]); sent <- err }()
			c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			buf := make([]byte, 64)
			if n, err := c.Read(buf); !isTimeout(err) {
				t.Fatalf("Read = %d, %v; want a timeout", n, err)
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			go func() { _, err := b.Write(frame[cut:]); sent <- err }()
			c.SetReadDeadline(time.Time{})
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != "across a deadline" {
				t.Fatalf("Read = %q, %v", buf[:n], err)
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestWriteAllocs: writing and reading frames allocates nothing once the
// buffers have grown.
func TestWriteAllocs(t *testing.T) {
	c, s := dialPair(t, Config{Key: testKey(1), Name: "a"}, Config{Key: testKey(1), Name: "b"}, PurposeReplication)
	msg := make([]byte, 3*MaxFrame+100)
	got := make([]byte, len(msg))
	roundTrip := func() {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(s, got); err != nil {
			t.Fatal(err)
		}
	}
	roundTrip()
	if n := testing.AllocsPerRun(20, roundTrip); n > 0 {
		t.Fatalf("%v allocations per write and read of %d bytes", n, len(msg))
	}
}

// TestRekey: both ends move to the next key every 2^shift frames; a frame
// after the boundary does not open under the old key.
func TestRekey(t *testing.T) {
	k := testKey(8).Derive("frames", 32)
	fc := &fakeConn{r: eofReader{}}
	w, err := newConn(fc, newReader(fc), "w", PurposeRPC, false, bytes.Clone(k), bytes.Clone(k))
	if err != nil {
		t.Fatal(err)
	}
	w.wk.shift = 2
	const frames = 11
	for i := range frames {
		if _, err := w.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	stream := fc.w.Bytes()
	for _, tt := range []struct {
		shift uint
		want  int // frames read before ErrFrameAuth (frames: all)
	}{{2, frames}, {63, 4}, {3, 4}} {
		t.Run(fmt.Sprint(tt.shift), func(t *testing.T) {
			r, _ := newReaderConn(t, bytes.Clone(k), bytes.NewReader(stream))
			r.rk.shift = tt.shift
			got := 0
			buf := make([]byte, 1)
			for {
				_, err := r.Read(buf)
				if err != nil {
					if tt.want == frames && err != io.EOF || tt.want < frames && !errors.Is(err, ErrFrameAuth) {
						t.Fatalf("after %d frames: %v", got, err)
					}
					break
				}
				if buf[0] != byte(got) {
					t.Fatalf("frame %d reads %d", got, buf[0])
				}
				got++
			}
			if got != tt.want {
				t.Fatalf("read %d frames, want %d", got, tt.want)
			}
		})
	}
}
