package replication

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"tandem.io/tandem/replication/memnet"
)

// rawClient speaks the protocol by hand, to drive a Server directly.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	mr messageReader
}

func dialRaw(t *testing.T, n *memnet.Network, node string) *rawClient {
	t.Helper()
	c, err := n.Dialer("client").Dial(context.Background(), node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c, mr: messageReader{r: bufio.NewReader(c)}}
}

func (rc *rawClient) send(m Message) {
	rc.t.Helper()
	if _, err := rc.c.Write(m.AppendMarshal(nil)); err != nil {
		rc.t.Fatalf("sending %T: %v", m, err)
	}
}

func (rc *rawClient) reply() *Reply {
	rc.t.Helper()
	m, err := rc.mr.read()
	if err != nil {
		rc.t.Fatalf("reading a reply: %v", err)
	}
	r, ok := m.(*Reply)
	if !ok {
		rc.t.Fatalf("got a %T", m)
	}
	return r
}

func (rc *rawClient) hello(epoch uint64) *Reply {
	rc.send(&Hello{ID: 1, VolumeID: testVol, Epoch: epoch})
	return rc.reply()
}

// startServer serves copies on node "r" of a new network.
func startServer(t *testing.T, cfg ServerConfig, buffer int) (*Server, *memnet.Network) {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := memnet.New(buffer)
	l, err := n.Listen("r")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		s.Serve(context.Background(), l)
		close(done)
	}()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	return s, n
}

// oneCopy serves a single Copy as testVol.
type oneCopy struct{ c Copy }

func (o oneCopy) Copy(id string) (Copy, error) {
	if id != testVol {
		return nil, errors.New("no such volume")
	}
	return o.c, nil
}

func (o oneCopy) Barrier(context.Context, string, []byte) error { return nil }

func TestServerHello(t *testing.T) {
	epochs := newMemEpochs()
	_, n := startServer(t, ServerConfig{Copies: oneCopy{newMemCopy(1 << 20)}, Epochs: epochs}, 0)
	rc := dialRaw(t, n, "r")
	rc.send(&Hello{ID: 1, VolumeID: "other", Epoch: 1})
	if r := rc.reply(); r.Status != StatusNoCopy {
		t.Errorf("hello for a volume without copy: %v", r.Status)
	}
	if r := rc.hello(5); r.Status != StatusOK || r.Size != 1<<20 || r.Epoch != 5 {
		t.Errorf("hello: %+v", r)
	}
	if e, _ := epochs.Epoch(testVol); e != 5 {
		t.Errorf("epoch persisted %d, want 5", e)
	}
	rc2 := dialRaw(t, n, "r")
	if r := rc2.hello(4); r.Status != StatusStaleEpoch || r.Epoch != 5 {
		t.Errorf("hello at an older epoch: %+v", r)
	}
}

func TestServerApplies(t *testing.T) {
	cp := newMemCopy(1 << 20)
	_, n := startServer(t, ServerConfig{Copies: oneCopy{cp}, Epochs: newMemEpochs()}, 0)
	rc := dialRaw(t, n, "r")
	rc.hello(1)
	data := bytes.Repeat([]byte("x"), 8192)
	got := map[uint64]Status{}
	rc.send(&Write{ID: 2, VolumeID: testVol, Epoch: 1, Off: 4096, Data: data, FUA: true})
	r := rc.reply()
	got[r.ID] = r.Status
	// The rest does not overlap: in flight together.
	rc.send(&Unmap{ID: 3, VolumeID: testVol, Epoch: 1, Off: 8192, Len: 4096})
	rc.send(&Flush{ID: 4, VolumeID: testVol, Epoch: 1})
	rc.send(&Write{ID: 5, VolumeID: testVol, Epoch: 1, Off: 1 << 20, Data: data})
	for range 3 {
		r := rc.reply()
		got[r.ID] = r.Status
	}
	want := map[uint64]Status{2: StatusOK, 3: StatusOK, 4: StatusOK, 5: StatusOutOfRange}
	for id, s := range want {
		if got[id] != s {
			t.Errorf("request %d: %v, want %v", id, got[id], s)
		}
	}
	snap := cp.snapshot()
	if !bytes.Equal(snap[4096:8192], data[:4096]) || !bytes.Equal(snap[8192:12288], make([]byte, 4096)) {
		t.Error("write and unmap not applied")
	}
	if cp.fuaWrites.Load() != 1 || cp.flushes.Load() != 1 {
		t.Errorf("FUA writes %d, flushes %d", cp.fuaWrites.Load(), cp.flushes.Load())
	}
	rc.send(&Checksums{ID: 6, VolumeID: testVol, Epoch: 1, Off: 0, Len: 12288, RegionSize: 8192})
	r = rc.reply()
	wantSums := []Sum{sha256.Sum256(snap[:8192]), sha256.Sum256(snap[8192:12288])}
	if r.Status != StatusOK || !slices.Equal(r.Sums, wantSums) {
		t.Errorf("checksums: %v %x, want %x", r.Status, r.Sums, wantSums)
	}
}

// TestStaleRequestInFlightNotApplied: a request of epoch 1 already read
// when a Hello raises the epoch to 2 is answered StaleEpoch, not applied.
func TestStaleRequestInFlightNotApplied(t *testing.T) {
	cp := newMemCopy(1 << 20)
	s, err := NewServer(ServerConfig{Copies: oneCopy{cp}, Epochs: newMemEpochs()})
	if err != nil {
		t.Fatal(err)
	}
	arrived, release := make(chan struct{}), make(chan struct{})
	s.beforeApply = func(m Message) {
		if w, ok := m.(*Write); ok && w.ID == 2 {
			close(arrived)
			<-release
		}
	}
	n := memnet.New(0)
	l, _ := n.Listen("r")
	go s.Serve(context.Background(), l)
	defer s.Close()

	old := dialRaw(t, n, "r")
	old.hello(1)
	old.send(&Write{ID: 2, VolumeID: testVol, Epoch: 1, Data: bytes.Repeat([]byte{1}, 4096)})
	<-arrived
	primary := dialRaw(t, n, "r")
	if r := primary.hello(2); r.Status != StatusOK {
		t.Fatalf("hello at epoch 2: %+v", r)
	}
	close(release)
	if r := old.reply(); r.Status != StatusStaleEpoch || r.Epoch != 2 {
		t.Errorf("the old request: %+v, want stale epoch", r)
	}
	if !bytes.Equal(cp.snapshot()[:4096], make([]byte, 4096)) {
		t.Error("the old epoch's request was applied after the epoch was raised")
	}
}

// blockingCopy blocks writes at the gate and logs when one is applied.
type blockingCopy struct {
	*memCopy
	started, release chan struct{}
	log              *eventLog
}

func (b *blockingCopy) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	b.started <- struct{}{}
	<-b.release
	err := b.memCopy.WriteAt(ctx, p, off, fua)
	b.log.add("applied")
	return err
}

// TestEpochRaiseWaitsForApply: a Hello raising the epoch waits for the
// request being applied (it holds the volume's shared lock) and persists
// the epoch only after it.
func TestEpochRaiseWaitsForApply(t *testing.T) {
	log := &eventLog{}
	cp := &blockingCopy{memCopy: newMemCopy(1 << 20), started: make(chan struct{}, 1), release: make(chan struct{}), log: log}
	epochs := newMemEpochs()
	_, n := startServer(t, ServerConfig{Copies: oneCopy{cp}, Epochs: epochs}, 0)
	old := dialRaw(t, n, "r")
	old.hello(1)
	epochs.log = log
	old.send(&Write{ID: 2, VolumeID: testVol, Epoch: 1, Data: make([]byte, 4096)})
	<-cp.started
	helloDone := make(chan *Reply, 1)
	primary := dialRaw(t, n, "r")
	go func() {
		primary.send(&Hello{ID: 1, VolumeID: testVol, Epoch: 2})
		m, _ := primary.mr.read()
		r, _ := m.(*Reply)
		helloDone <- r
	}()
	time.Sleep(20 * time.Millisecond) // give a lock-free server the chance to raise first
	close(cp.release)
	if r := old.reply(); r.Status != StatusOK {
		t.Errorf("the request applied before the raise: %+v", r)
	}
	if r := <-helloDone; r == nil || r.Status != StatusOK {
		t.Errorf("hello: %+v", r)
	}
	if got := log.list(); !slices.Equal(got, []string{"applied", "set epoch vol-1 2"}) {
		t.Errorf("events %q: the epoch was raised while a request of the old one was being applied", got)
	}
	// And afterwards the old stream is stale.
	old.send(&Flush{ID: 3, VolumeID: testVol, Epoch: 1})
	if r := old.reply(); r.Status != StatusStaleEpoch {
		t.Errorf("old stream after the raise: %v", r.Status)
	}
}

func TestRaiseEpoch(t *testing.T) {
	epochs := newMemEpochs()
	s, n := startServer(t, ServerConfig{Copies: oneCopy{newMemCopy(1 << 20)}, Epochs: epochs}, 0)
	rc := dialRaw(t, n, "r")
	rc.hello(3)
	if err := s.RaiseEpoch(testVol, 2); !errors.Is(err, ErrStaleEpoch) {
		t.Errorf("raise to an older epoch: %v", err)
	}
	if err := s.RaiseEpoch(testVol, 4); err != nil {
		t.Fatal(err)
	}
	if e, _ := epochs.Epoch(testVol); e != 4 {
		t.Errorf("persisted %d", e)
	}
	rc.send(&Flush{ID: 2, VolumeID: testVol, Epoch: 3})
	if r := rc.reply(); r.Status != StatusStaleEpoch {
		t.Errorf("stream of epoch 3 after raise to 4: %v", r.Status)
	}
}

// TestSupersededStream: a second stream at the same epoch fences the first,
// whose connection is closed at its next request.
func TestSupersededStream(t *testing.T) {
	cp := newMemCopy(1 << 20)
	_, n := startServer(t, ServerConfig{Copies: oneCopy{cp}, Epochs: newMemEpochs()}, 0)
	first := dialRaw(t, n, "r")
	first.hello(1)
	second := dialRaw(t, n, "r")
	second.hello(1)
	first.send(&Write{ID: 2, VolumeID: testVol, Epoch: 1, Data: bytes.Repeat([]byte{7}, 4096)})
	if r := first.reply(); r.Status == StatusOK {
		t.Error("a superseded stream's write was applied")
	}
	if _, err := first.mr.read(); err == nil {
		t.Error("the superseded stream stays open")
	}
	if !bytes.Equal(cp.snapshot()[:4096], make([]byte, 4096)) {
		t.Error("a superseded stream's write was applied")
	}
}

func TestServerProtocolErrors(t *testing.T) {
	cases := []struct {
		name string
		send func(rc *rawClient)
	}{
		{"garbage", func(rc *rawClient) { rc.c.Write(bytes.Repeat([]byte{0xff}, HeaderLen)) }},
		{"write before hello", func(rc *rawClient) {
			rc.send(&Write{ID: 1, VolumeID: testVol, Epoch: 1, Data: []byte("x")})
		}},
		{"second hello", func(rc *rawClient) { rc.hello(1); rc.send(&Hello{ID: 2, VolumeID: testVol, Epoch: 1}) }},
		{"other volume", func(rc *rawClient) {
			rc.hello(1)
			rc.send(&Flush{ID: 2, VolumeID: "other", Epoch: 1})
		}},
		{"other epoch", func(rc *rawClient) {
			rc.hello(1)
			rc.send(&Flush{ID: 2, VolumeID: testVol, Epoch: 2})
		}},
		{"a reply", func(rc *rawClient) { rc.hello(1); rc.send(&Reply{ID: 9}) }},
	}
	_, n := startServer(t, ServerConfig{Copies: oneCopy{newMemCopy(1 << 20)}, Epochs: newMemEpochs()}, 0)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc := dialRaw(t, n, "r")
			c.send(rc)
			if r := rc.reply(); r.Status != StatusProtocol {
				t.Errorf("status %v, want protocol error", r.Status)
			}
			if _, err := rc.mr.read(); err != io.EOF {
				t.Errorf("after a protocol error: %v, want the connection closed", err)
			}
		})
	}
}

func (s *Server) connStats() (inflight int, bytes, peak int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns {
		sc.mu.Lock()
		inflight, bytes, peak = sc.inflight, sc.bytes, sc.peak
		sc.mu.Unlock()
	}
	return
}

// sendUntilBlocked sends writes until one blocks (the server stopped
// reading) and returns how many it sent.
func sendUntilBlocked(t *testing.T, rc *rawClient, size int, fua bool) int {
	t.Helper()
	data := make([]byte, size)
	for i := 0; ; i++ {
		if i > 100000 {
			t.Fatal("the server keeps reading")
		}
		rc.c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := rc.c.Write((&Write{ID: uint64(i + 2), VolumeID: testVol, Epoch: 1, FUA: fua, Data: data}).AppendMarshal(nil))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return i
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestServerBackpressure: requests the copy does not finish stop the
// server reading: at MaxRequests for FUA writes, each applied in a
// goroutine of its own; at the first for writes without FUA, applied on
// the reader.
func TestServerBackpressure(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fua      bool
		inflight int
	}{
		{"FUA writes run side by side", true, 8},
		{"writes without FUA run on the reader", false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := newMemCopy(1 << 20)
			release := make(chan struct{})
			var once sync.Once
			unblock := func() { once.Do(func() { close(release) }) }
			cp.setHook(func(off, n int64) error {
				<-release
				return nil
			})
			s, n := startServer(t, ServerConfig{Copies: oneCopy{cp}, Epochs: newMemEpochs(), MaxRequests: 8}, 64<<10)
			t.Cleanup(unblock)
			rc := dialRaw(t, n, "r")
			rc.hello(1)
			sent := sendUntilBlocked(t, rc, 64<<10, tc.fua)
			inflight, _, peak := s.connStats()
			if inflight != tc.inflight || peak > int64(tc.inflight)*(64<<10+HeaderLen+int64(len(testVol))) {
				t.Errorf("%d requests, peak %d bytes in flight: want %d", inflight, peak, tc.inflight)
			}
			// The rest in the reader's buffer and the pipe.
			if sent > tc.inflight+2+2 {
				t.Errorf("the server took %d requests of 64 KiB", sent)
			}
			unblock()
		})
	}
}

// TestServerBackpressureUnreadReplies: a client that never reads replies
// stops the server reading once its replies fill the connection.
func TestServerBackpressureUnreadReplies(t *testing.T) {
	s, n := startServer(t, ServerConfig{Copies: oneCopy{newMemCopy(1 << 20)}, Epochs: newMemEpochs(), MaxRequests: 8}, 4<<10)
	rc := dialRaw(t, n, "r")
	rc.hello(1)
	sent := sendUntilBlocked(t, rc, 4096, false)
	// Replies of 56 bytes: the 4 KiB pipe, the writer's buffer (64 KiB),
	// 8 in flight; requests: the pipe and the reader's buffer.
	if sent > 4096/HeaderLen+(64<<10)/HeaderLen+8+2+16 {
		t.Errorf("the server took %d requests without its replies being read", sent)
	}
	if inflight, _, _ := s.connStats(); inflight > 8 {
		t.Errorf("%d requests in flight", inflight)
	}
}

// FuzzServerStream feeds arbitrary bytes to a server connection: it must
// neither panic nor hang, whatever the order of messages.
func FuzzServerStream(f *testing.F) {
	hello := (&Hello{ID: 1, VolumeID: testVol, Epoch: 1}).AppendMarshal(nil)
	f.Add(hello)
	f.Add(append(slices.Clone(hello), (&Write{ID: 2, VolumeID: testVol, Epoch: 1, Off: 512, Data: []byte("data")}).AppendMarshal(nil)...))
	f.Add(append(slices.Clone(hello), (&Checksums{ID: 2, VolumeID: testVol, Epoch: 1, Len: 8192, RegionSize: 4096}).AppendMarshal(nil)...))
	f.Add(append(slices.Clone(hello), (&Unmap{ID: 2, VolumeID: testVol, Epoch: 1, Off: 1 << 40, Len: 4096}).AppendMarshal(nil)...))
	f.Add(append(slices.Clone(hello), (&Barrier{ID: 2, VolumeID: testVol, Epoch: 1, Op: []byte("op")}).AppendMarshal(nil)...))
	f.Add((&Flush{ID: 2, VolumeID: testVol, Epoch: 1}).AppendMarshal(nil))
	f.Fuzz(func(t *testing.T, p []byte) {
		s, err := NewServer(ServerConfig{Copies: oneCopy{newMemCopy(64 << 10)}, Epochs: newMemEpochs()})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		client, server := net.Pipe()
		go func() {
			client.Write(p)
			client.Close()
		}()
		go io.Copy(io.Discard, client)
		s.ServeConn(context.Background(), server)
	})
}
