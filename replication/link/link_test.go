package link

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	sizes := []int{1, 100, MaxFrame - 1, MaxFrame, MaxFrame + 1, 1<<20 + 3}
	for _, insecure := range []bool{false, true} {
		t.Run(fmt.Sprintf("insecure=%v", insecure), func(t *testing.T) {
			ccfg, _ := testConfig("node-a", testKey(1))
			scfg, _ := testConfig("node-b", testKey(1))
			ccfg.Insecure, scfg.Insecure = insecure, insecure
			c, s := dialPair(t, ccfg, scfg, PurposeReplication)
			if c.Peer() != "node-b" || s.Peer() != "node-a" {
				t.Fatalf("peers %q and %q, want node-b and node-a", c.Peer(), s.Peer())
			}
			if c.insecure != insecure || s.insecure != insecure {
				t.Fatalf("insecure = %v/%v, want %v", c.insecure, s.insecure, insecure)
			}
			go io.Copy(s, s) // echo
			for _, n := range sizes {
				msg := make([]byte, n)
				for i := range msg {
					msg[i] = byte(i * 7)
				}
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, n)
				if _, err := io.ReadFull(c, got); err != nil {
					t.Fatalf("%d bytes: %v", n, err)
				}
				if !bytes.Equal(got, msg) {
					t.Fatalf("%d bytes: echoed data differs", n)
				}
			}
			c.Close()
		})
	}
}

// TestInsecureNeedsBoth: a connection is raw only if both sides ask.
func TestInsecureNeedsBoth(t *testing.T) {
	for _, tt := range []struct{ client, server, want bool }{
		{false, false, false}, {true, false, false}, {false, true, false}, {true, true, true},
	} {
		t.Run(fmt.Sprintf("%v_%v", tt.client, tt.server), func(t *testing.T) {
			ccfg, _ := testConfig("a", testKey(1))
			scfg, _ := testConfig("b", testKey(1))
			ccfg.Insecure, scfg.Insecure = tt.client, tt.server
			c, s := dialPair(t, ccfg, scfg, PurposeRPC)
			if c.insecure != tt.want || s.insecure != tt.want {
				t.Fatalf("insecure = %v/%v, want %v", c.insecure, s.insecure, tt.want)
			}
			go c.Write([]byte("ping"))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("read %q, %v", buf, err)
			}
		})
	}
}

// TestFullDuplex: one reader and one writer at once on each side.
func TestFullDuplex(t *testing.T) {
	cfg, _ := testConfig("n", testKey(1))
	c, s := dialPair(t, cfg, cfg, PurposeReplication)
	const total = 8 << 20
	var wg sync.WaitGroup
	sums := make([][32]byte, 4)
	for i, conn := range []*Conn{c, s} {
		wg.Add(2)
		go func() { // writer: total bytes in writes of varying size
			defer wg.Done()
			h := sha256.New()
			buf := make([]byte, 300<<10)
			for sent := 0; sent < total; {
				n := min(total-sent, 1+(sent*31)%len(buf))
				for j := range buf[:n] {
					buf[j] = byte(sent + j + i)
				}
				if _, err := conn.Write(buf[:n]); err != nil {
					t.Error(err)
					return
				}
				h.Write(buf[:n])
				sent += n
			}
			h.Sum(sums[2*i][:0])
		}()
		go func() { // reader
			defer wg.Done()
			h := sha256.New()
			if _, err := io.CopyN(h, conn, total); err != nil {
				t.Error(err)
				return
			}
			h.Sum(sums[2*i+1][:0])
		}()
	}
	wg.Wait()
	if sums[0] != sums[3] || sums[2] != sums[1] {
		t.Fatal("data differs after a full-duplex exchange")
	}
}

// TestWrongKey: with different keys neither side gets a connection, both
// get ErrAuth, and the impostor receives nothing but the handshake.
func TestWrongKey(t *testing.T) {
	tests := []struct {
		name     string
		impostor string // which side has the wrong key
	}{
		{"impostor client", "client"},
		{"impostor server", "server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ckey, skey := testKey(1), testKey(1)
			if tt.impostor == "client" {
				ckey = testKey(9)
			} else {
				skey = testKey(9)
			}
			ccfg, _ := testConfig("client", ckey)
			scfg, slogs := testConfig("server", skey)
			l := listen(t, scfg)
			acc := acceptOne(l.Accept(PurposeReplication))
			px := newProxy(t, l.Addr().String(), -1, -1)
			c, err := Dial(context.Background(), px.addr(), PurposeReplication, ccfg)
			if err == nil {
				c.Write([]byte("written data"))
				t.Fatal("Dial succeeded with different keys")
			}
			if !errors.Is(err, ErrAuth) {
				t.Fatalf("Dial: %v, want ErrAuth", err)
			}
			mustContain(t, err.Error(), "link: dial ")
			mustContain(t, err.Error(), "peer failed cluster-key authentication (wrong or missing --cluster-key-file?)")
			waitFor(t, "the server to log the failure", func() bool { return strings.Contains(slogs.String(), "handshake failed") })
			logs := slogs.String()
			mustContain(t, logs, "peer failed cluster-key authentication")
			mustContain(t, logs, "remote=127.0.0.1:")
			l.Close()
			if r := <-acc; r.err == nil {
				t.Fatalf("the server accepted a connection from %q", r.c.(*Conn).Peer())
			}
			px.ln.Close()
			px.wg.Wait() // both directions done
			// What went over the wire: the hellos, the client's refusal, nothing else.
			toServer, toClient := px.recorded(toServer), px.recorded(toClient)
			hello := helloFixed + len("client")
			if want := hello + finishLen; len(toServer) != want {
				t.Fatalf("the server received %d bytes, want %d (hello and finish)", len(toServer), want)
			}
			if fin := toServer[hello:]; fin[0] != statusAuth || !bytes.Equal(fin[1:], make([]byte, macLen)) {
				t.Fatalf("the client's finish is %x, want a refusal without MAC", fin)
			}
			if want := helloFixed + len("server") + macLen; len(toClient) != want {
				t.Fatalf("the client received %d bytes, want %d (server hello)", len(toClient), want)
			}
		})
	}
}

// TestForgedFinish: a client that sends a made-up proof is refused, gets
// one status byte and nothing else.
func TestForgedFinish(t *testing.T) {
	scfg, slogs := testConfig("server", testKey(1))
	l := listen(t, scfg)
	acc := acceptOne(l.Accept(PurposeRPC))
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hello := sampleClientHello()
	hello.Purpose = PurposeRPC
	nc.Write(hello.appendMarshal(nil))
	sh := make([]byte, helloFixed+len("server")+macLen)
	if _, err := io.ReadFull(nc, sh); err != nil {
		t.Fatal(err)
	}
	fin := finish{Status: statusOK}
	copy(fin.MAC[:], sh[len(sh)-macLen:]) // the server's own proof, reflected
	nc.Write(fin.appendMarshal(nil))
	got, _ := readUntilClosed(t, nc)
	if !bytes.Equal(got, []byte{statusAuth}) {
		t.Fatalf("after a forged finish the client got %x, want only the refusal", got)
	}
	waitFor(t, "the failure logged", func() bool { return strings.Contains(slogs.String(), "handshake failed") })
	mustContain(t, slogs.String(), "peer failed cluster-key authentication")
	l.Close()
	if r := <-acc; r.err == nil {
		t.Fatal("the server accepted a forged finish")
	}
}

// TestReplayedServerHello: a fake server replaying a real server's hello
// (captured on the wire) fails: the client's nonce is new.
func TestReplayedServerHello(t *testing.T) {
	cfg, _ := testConfig("node", testKey(1))
	l := listen(t, cfg)
	acc := acceptOne(l.Accept(PurposeRPC))
	px := newProxy(t, l.Addr().String(), -1, -1)
	c, err := Dial(context.Background(), px.addr(), PurposeRPC, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	(<-acc).c.Close()
	waitFor(t, "the server hello captured", func() bool { return len(px.recorded(toClient)) >= helloFixed+len("node")+macLen })
	captured := px.recorded(toClient)[:helloFixed+len("node")+macLen+resultLen]

	fake, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	received := make(chan []byte, 1)
	go func() {
		nc, err := fake.Accept()
		if err != nil {
			received <- nil
			return
		}
		defer nc.Close()
		nc.Write(captured)
		got, _ := readUntilClosed(t, nc)
		received <- got
	}()
	_, err = Dial(context.Background(), fake.Addr().String(), PurposeRPC, cfg)
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("Dial to a replaying server: %v, want ErrAuth", err)
	}
	got := <-received
	hello := helloFixed + len("node")
	if len(got) != hello+finishLen || got[hello] != statusAuth {
		t.Fatalf("the fake server received %d bytes (%x), want the hello and a refusal", len(got), got)
	}
}

// TestTamper: a bit flipped anywhere on the wire fails the handshake or
// the frame it hits, and closes the connection.
func TestTamper(t *testing.T) {
	const name = "node" // both sides
	hello := helloFixed + len(name)
	serverHelloLen := hello + macLen
	afterHandshake := hello + finishLen // client-to-server offset of the first frame
	afterServer := serverHelloLen + resultLen
	tests := []struct {
		name     string
		dir      int
		off      int
		insecure bool
		dialErr  error // the handshake fails with this
		readErr  error // else the frame reader fails with this
	}{
		{"hello nonce", toServer, 20, false, ErrAuth, nil},
		{"hello purpose", toServer, 5, false, ErrNoListener, nil},
		{"hello flags", toServer, 6, true, ErrAuth, nil},
		{"hello name", toServer, helloFixed + 1, false, ErrAuth, nil},
		{"hello magic", toServer, 0, false, ErrHandshake, nil},
		{"server nonce", toClient, 10, false, ErrAuth, nil},
		{"server flags", toClient, 6, true, ErrAuth, nil},
		{"server MAC", toClient, serverHelloLen - 1, false, ErrAuth, nil},
		{"client MAC", toServer, hello + 5, false, ErrAuth, nil},
		{"client MAC insecure", toServer, hello + 5, true, ErrAuth, nil},
		{"frame length", toServer, afterHandshake, false, nil, ErrFrameSize},
		{"frame data", toServer, afterHandshake + frameHeader + 3, false, nil, ErrFrameAuth},
		{"frame tag", toServer, afterHandshake + frameHeader + 40 + 2, false, nil, ErrFrameAuth},
		{"second frame", toServer, afterHandshake + frameHeader + 40 + tagLen + frameHeader + 1, false, nil, ErrFrameAuth},
		{"frame to client", toClient, afterServer + frameHeader + 1, false, nil, ErrFrameAuth},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%d_%s", i, tt.name), func(t *testing.T) {
			cfg, _ := testConfig(name, testKey(1))
			cfg.Insecure = tt.insecure
			l := listen(t, cfg)
			acc := acceptOne(l.Accept(PurposeRPC))
			flips := [2]int{-1, -1}
			flips[tt.dir] = tt.off
			px := newProxy(t, l.Addr().String(), flips[0], flips[1])
			c, err := Dial(context.Background(), px.addr(), PurposeRPC, cfg)
			if tt.dialErr != nil {
				if !errors.Is(err, tt.dialErr) {
					t.Fatalf("Dial: %v, want %v", err, tt.dialErr)
				}
				l.Close()
				if r := <-acc; r.err == nil {
					t.Fatal("the server accepted a tampered handshake")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := <-acc
			if r.err != nil {
				t.Fatal(r.err)
			}
			s := r.c.(*Conn)
			defer s.Close()
			writer, reader := c, s
			if tt.dir == toClient {
				writer, reader = s, c
			}
			msg := bytes.Repeat([]byte("x"), 40)
			go func() {
				writer.Write(msg)
				writer.Write(msg)
			}()
			got, err := readUntilClosed(t, reader)
			if !errors.Is(err, tt.readErr) {
				t.Fatalf("read %d bytes, then %v; want %v", len(got), err, tt.readErr)
			}
			if tt.name == "second frame" && !bytes.Equal(got, msg) {
				t.Fatalf("read %q before the tampered frame, want the first frame", got)
			}
			// The reader closed the connection: the writer's side sees it.
			if _, err := readUntilClosed(t, writer); err == nil {
				t.Fatal("the connection stayed open")
			}
		})
	}
}

// TestRawClients: connections that are not links are closed, and their
// goroutines end.
func TestRawClients(t *testing.T) {
	hello := sampleClientHello()
	helloBytes := hello.appendMarshal(nil)
	longName := append(bytes.Clone(helloBytes[:helloFixed-1]), 255)
	tests := []struct {
		name string
		send []byte
		log  string
	}{
		{"nothing", nil, "i/o timeout"},
		{"http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "bad magic"},
		{"huge frame length", []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, "bad magic"},
		{"huge name length", longName, "name of 255 bytes"},
		{"stalls after magic", []byte(magic), "i/o timeout"},
		{"stalls in the name", helloBytes[:helloFixed+2], "i/o timeout"},
		{"stalls before finish", helloBytes, "i/o timeout"},
		{"unknown version", append([]byte(magic), 9, 3, 0), "unsupported link protocol version"},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%d_%s", i, tt.name), func(t *testing.T) {
			cfg, logs := testConfig("server", testKey(1))
			cfg.HandshakeTimeout = 200 * time.Millisecond
			l := listen(t, cfg)
			l.Accept(PurposeReplication)
			nc, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if tt.name == "unknown version" {
				nc.Write(append(tt.send, make([]byte, 100)...))
			} else {
				nc.Write(tt.send)
			}
			got, _ := readUntilClosed(t, nc)
			if tt.name == "unknown version" {
				sh, _, err := parseServerHello(got)
				if err != nil || sh.Status != statusVersion || sh.Version != version {
					t.Fatalf("answer %x (%+v, %v), want a version refusal", got, sh, err)
				}
			} else if len(got) > helloFixed+len("server")+macLen {
				t.Fatalf("the server sent %d bytes", len(got))
			}
			waitFor(t, "the handshake goroutine to end", func() bool { return l.pendingCount() == 0 })
			waitFor(t, "the failure logged", func() bool { return strings.Contains(logs.String(), "handshake failed") })
			mustContain(t, logs.String(), "remote="+nc.LocalAddr().String())
			mustContain(t, logs.String(), tt.log)
		})
	}
}

// TestHandshakeSlots: idle connections cannot take more than the handshake
// slots, nor lock a node out: the oldest make room.
func TestHandshakeSlots(t *testing.T) {
	cfg, _ := testConfig("server", testKey(1))
	cfg.HandshakeTimeout = time.Minute
	l := listen(t, cfg)
	pl := l.Accept(PurposeRPC)
	const extra = 5
	idle := make([]net.Conn, maxHandshakes+extra)
	for i := range idle {
		nc, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		idle[i] = nc
		// Wait for the listener to admit it, so "oldest" is well defined.
		waitFor(t, "admission", func() bool { return l.pendingCount() == min(i+1, maxHandshakes) })
	}
	for i, nc := range idle[:extra] {
		if _, err := readUntilClosed(t, nc); err == nil {
			t.Fatalf("idle connection %d not closed", i)
		}
	}
	if n := l.pendingCount(); n != maxHandshakes {
		t.Fatalf("%d connections in handshake, want %d", n, maxHandshakes)
	}
	acc := acceptOne(pl)
	c, err := Dial(context.Background(), l.Addr().String(), PurposeRPC, cfg)
	if err != nil {
		t.Fatalf("a node could not connect while the slots were full: %v", err)
	}
	c.Close()
	if r := <-acc; r.err != nil {
		t.Fatal(r.err)
	}
}

// TestPurposes: each connection reaches the listener of its purpose.
func TestPurposes(t *testing.T) {
	cfg, _ := testConfig("n", testKey(1))
	l := listen(t, cfg)
	purposes := []Purpose{PurposeRaft, PurposeReplication, PurposeRPC}
	const perPurpose = 5
	var wg sync.WaitGroup
	for _, p := range purposes {
		pl := l.Accept(p)
		if l.Accept(p) != pl {
			t.Fatalf("Accept(%s) twice gave two listeners", p)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perPurpose {
				c, err := pl.Accept()
				if err != nil {
					t.Error(err)
					return
				}
				b := make([]byte, 1)
				if _, err := io.ReadFull(c, b); err != nil || Purpose(b[0]) != p {
					t.Errorf("%s listener got a connection saying %v (%v)", p, b, err)
				}
				c.Close()
			}
		}()
	}
	for i := range perPurpose * len(purposes) {
		p := purposes[(i*7)%len(purposes)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Dial(context.Background(), l.Addr().String(), p, cfg)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.Write([]byte{byte(p)})
			c.Read(make([]byte, 1)) // until the acceptor closes
		}()
	}
	wg.Wait()
}

// TestNoListener: a purpose nobody accepts is refused in the handshake;
// after its listener closes, Accept makes a new one.
func TestNoListener(t *testing.T) {
	cfg, _ := testConfig("n", testKey(1))
	l := listen(t, cfg)
	addr := l.Addr().String()
	if _, err := Dial(context.Background(), addr, PurposeRaft, cfg); !errors.Is(err, ErrNoListener) {
		t.Fatalf("Dial without a raft listener: %v, want ErrNoListener", err)
	}
	pl := l.Accept(PurposeRaft)
	pl.Close()
	if _, err := pl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if _, err := Dial(context.Background(), addr, PurposeRaft, cfg); !errors.Is(err, ErrNoListener) {
		t.Fatalf("Dial after the raft listener closed: %v, want ErrNoListener", err)
	}
	acc := acceptOne(l.Accept(PurposeRaft))
	c, err := Dial(context.Background(), addr, PurposeRaft, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if r := <-acc; r.err != nil {
		t.Fatal(r.err)
	}
}

// TestCloseUnblocks: Listener.Close ends Accept and handshakes in
// progress; Conn.Close ends a blocked Read and Write.
func TestCloseUnblocks(t *testing.T) {
	t.Run("listener", func(t *testing.T) {
		cfg, _ := testConfig("n", testKey(1))
		cfg.HandshakeTimeout = time.Hour
		l := listen(t, cfg)
		acc := acceptOne(l.Accept(PurposeRPC))
		nc, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.Write([]byte(magic)) // and stalls
		waitFor(t, "the handshake to start", func() bool { return l.pendingCount() == 1 })
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if r := <-acc; !errors.Is(r.err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", r.err)
		}
		if _, err := readUntilClosed(t, nc); err == nil {
			t.Fatal("handshake connection left open")
		}
		if n := l.pendingCount(); n != 0 {
			t.Fatalf("%d handshakes after Close", n)
		}
		if err := l.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := l.Accept(PurposeRaft).Accept(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept on a closed Listener: %v", err)
		}
	})
	for _, insecure := range []bool{false, true} {
		t.Run(fmt.Sprintf("conn insecure=%v", insecure), func(t *testing.T) {
			cfg, _ := testConfig("n", testKey(1))
			cfg.Insecure = insecure
			c, _ := dialPair(t, cfg, cfg, PurposeRPC)
			readDone, writeDone := make(chan error, 1), make(chan error, 1)
			go func() { _, err := c.Read(make([]byte, 10)); readDone <- err }()
			go func() { // the peer does not read: this blocks once buffers fill
				buf := make([]byte, 1<<20)
				for {
					if _, err := c.Write(buf); err != nil {
						writeDone <- err
						return
					}
				}
			}()
			c.Close()
			if err := <-readDone; err == nil {
				t.Fatal("Read returned no error after Close")
			}
			if err := <-writeDone; err == nil {
				t.Fatal("Write returned no error after Close")
			}
		})
	}
}

// TestDialCanceled: canceling the context ends a handshake the server
// does not answer.
func TestDialCanceled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		nc, err := ln.Accept()
		if err == nil {
			accepted <- nc
		}
		close(accepted)
	}()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		if nc := <-accepted; nc != nil {
			defer nc.Close()
			io.ReadFull(nc, make([]byte, helloFixed)) // the hello arrived: give up
			cancel()
			io.Copy(io.Discard, nc)
		}
	}()
	cfg, _ := testConfig("n", testKey(1))
	cfg.HandshakeTimeout = time.Hour
	_, err = Dial(ctx, ln.Addr().String(), PurposeRPC, cfg)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial: %v, want context.Canceled", err)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		err  string
	}{
		{"no key", Config{Name: "n"}, "no cluster key"},
		{"long name", Config{Key: testKey(1), Name: strings.Repeat("x", MaxNameLen+1)}, "at most 128"},
		{"bad name", Config{Key: testKey(1), Name: "\xff"}, "not UTF-8"},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%d_%s", i, tt.name), func(t *testing.T) {
			if _, err := Listen("127.0.0.1:0", tt.cfg); err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Listen: %v, want %q", err, tt.err)
			}
			if _, err := Dial(context.Background(), "127.0.0.1:1", PurposeRPC, tt.cfg); err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Dial: %v, want %q", err, tt.err)
			}
		})
	}
}
