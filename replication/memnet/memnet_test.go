package memnet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func dialPair(t *testing.T, n *Network, from, to string) (client, server net.Conn) {
	client, server, _ = dialPairL(t, n, from, to)
	return client, server
}

func dialPairL(t *testing.T, n *Network, from, to string) (client, server net.Conn, l net.Listener) {
	t.Helper()
	l, err := n.Listen(to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = n.Dialer(from).Dial(context.Background(), to)
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server, l
}

func TestTransfer(t *testing.T) {
	n := New(1024)
	c, s := dialPair(t, n, "a", "b")
	want := bytes.Repeat([]byte("0123456789"), 1000) // more than the buffer: the writer blocks
	go func() {
		c.Write(want)
		c.Close()
	}()
	got, err := io.ReadAll(s)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, %v; want %d", len(got), err, len(want))
	}
	if _, err := s.Write([]byte("x")); err == nil {
		t.Error("write to a closed peer succeeded")
	}
	if s.RemoteAddr().String() != "a" || s.LocalAddr().String() != "b" {
		t.Errorf("addresses %v %v", s.LocalAddr(), s.RemoteAddr())
	}
}

func TestRefused(t *testing.T) {
	n := New(0)
	if _, err := n.Dialer("a").Dial(context.Background(), "nobody"); !errors.Is(err, ErrRefused) {
		t.Fatalf("dial without listener: %v", err)
	}
}

func TestDisconnect(t *testing.T) {
	n := New(0)
	c, s, l := dialPairL(t, n, "a", "b")
	readErr := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 1))
		readErr <- err
	}()
	n.Disconnect("b", "a")
	if err := <-readErr; !errors.Is(err, ErrLinkDown) {
		t.Errorf("read on a cut link: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, ErrLinkDown) {
		t.Errorf("write on a cut link: %v", err)
	}
	if _, err := n.Dialer("a").Dial(context.Background(), "b"); !errors.Is(err, ErrLinkDown) {
		t.Errorf("dial on a cut link: %v", err)
	}
	n.Reconnect("a", "b")
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	if c, err := n.Dialer("a").Dial(context.Background(), "b"); err != nil {
		t.Errorf("dial after reconnect: %v", err)
	} else {
		c.Close()
	}
}

func TestPartitionAndHeal(t *testing.T) {
	n := New(0)
	l, _ := n.Listen("c")
	defer l.Close()
	n.Partition([]string{"a", "b"}, []string{"c"})
	if _, err := n.Dialer("a").Dial(context.Background(), "c"); !errors.Is(err, ErrLinkDown) {
		t.Errorf("dial across the partition: %v", err)
	}
	n.Heal()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	if c, err := n.Dialer("a").Dial(context.Background(), "c"); err != nil {
		t.Errorf("dial after heal: %v", err)
	} else {
		c.Close()
	}
}

func TestDeadlines(t *testing.T) {
	n := New(4)
	c, s := dialPair(t, n, "a", "b")
	s.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past its deadline: %v", err)
	}
	c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
	if k, err := c.Write([]byte("123456")); !errors.Is(err, os.ErrDeadlineExceeded) || k != 4 {
		t.Errorf("write into a full buffer past its deadline: %d, %v", k, err)
	}
}

func TestDelay(t *testing.T) {
	n := New(0)
	c, s := dialPair(t, n, "a", "b")
	n.SetDelay("a", "b", 20*time.Millisecond)
	c.Write([]byte("late"))
	// Before the delay the bytes are not readable.
	s.SetReadDeadline(time.Now().Add(time.Millisecond))
	if _, err := s.Read(make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read before the delay: %v", err)
	}
	s.SetReadDeadline(time.Time{})
	b := make([]byte, 4)
	if _, err := io.ReadFull(s, b); err != nil || string(b) != "late" {
		t.Errorf("read after the delay: %q %v", b, err)
	}
}
