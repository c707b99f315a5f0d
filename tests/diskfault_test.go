package tests

import (
	"context"
	"net/http"
	"syscall"
	"testing"
	"time"

	"tandem.io/tandem/appliance"
	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/target/iscsi/initiator"
	"tandem.io/tandem/volume/vfs"
)

// inProcessNode is an appliance.Node run in the test process, so that its
// data directory can be on a vfs.Faulty; initiators reach it over real
// sockets as they reach a `tandem serve` process.
type inProcessNode struct {
	t      *testing.T
	fs     *vfs.Faulty
	data   string
	portal string
	api    *admin.Client
	stop   context.CancelFunc
	done   chan error
}

func startInProcess(t *testing.T, data string) *inProcessNode {
	t.Helper()
	n := &inProcessNode{t: t, fs: vfs.NewFaulty(vfs.OS{}), data: data, portal: freePort(t)}
	apiAddr := freePort(t)
	node, err := appliance.New(appliance.Config{DataDir: data, Portal: n.portal, API: apiAddr, Name: "t",
		IQNPrefix: "iqn.2026-11.io.tandem", Logger: silent, FS: n.fs, AllowUnsafeFilesystem: true,
		Cluster: freeGossipPort(t, "127.0.0.1"), Link: freePort(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.stop, n.done = cancel, make(chan error, 1)
	go func() { n.done <- node.Run(ctx) }()
	n.api = &admin.Client{BaseURL: "http://" + apiAddr, HTTPClient: &http.Client{Timeout: 10 * time.Second}}
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if _, err := n.api.Health(ctx); err == nil {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("in-process node not healthy after 10s")
		}
	}
	t.Cleanup(n.shutdown)
	return n
}

func (n *inProcessNode) shutdown() {
	if n.stop == nil {
		return
	}
	n.stop()
	if err := <-n.done; err != nil {
		n.t.Logf("node stopped: %v", err)
	}
	n.stop = nil
}

func (n *inProcessNode) session(vol string) *initiator.Session {
	n.t.Helper()
	s, err := initiator.Dial(context.Background(), initiator.Config{Addr: n.portal, Target: "iqn.2026-11.io.tandem:" + vol,
		Name: "iqn.2026-11.test:faults", ISID: [6]byte{0x40, 0, 0, 0, 0, 1}, Timeout: 20 * time.Second})
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { s.Close() })
	// The new nexus's power-on unit attention.
	s.Do([]byte{0, 0, 0, 0, 0, 0}, nil, 0)
	return s
}

// Issue 8: each disk error reaches the initiator as the sense a disk would
// give (MEDIUM ERROR for I/O errors, SPACE ALLOCATION FAILED for ENOSPC),
// never as GOOD; and after a failed flush the volume keeps reporting errors
// — no later flush is GOOD — until it is reopened (PostgreSQL's
// "fsyncgate"), when what was flushed before is there.
func TestDiskErrorsReachTheInitiator(t *testing.T) {
	data := t.TempDir()
	n := startInProcess(t, data)
	ctx := context.Background()
	if _, err := n.api.CreateVolume(ctx, admin.CreateVolumeRequest{Name: "v", Size: admin.Size{Text: "16MiB"}}); err != nil {
		t.Fatal(err)
	}
	s := n.session("v")
	block := func(v byte) []byte {
		p := make([]byte, 4096)
		for i := range p {
			p[i] = v
		}
		return p
	}
	// A flushed write that must survive everything below.
	mustDo(t, s, "write", write10(0, 8), block(1), 0, statusGood)
	mustDo(t, s, "flush", []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0, statusGood)
	fua := func(c []byte) []byte { c[1] |= 0x08; return c }
	unmap := func(lba uint32) ([]byte, []byte) {
		p := make([]byte, 24)
		p[1], p[3] = 22, 16
		p[12], p[13], p[14], p[15] = byte(lba>>24), byte(lba>>16), byte(lba>>8), byte(lba)
		p[19] = 8
		return []byte{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, p
	}
	um, up := unmap(64)
	const (
		medium, dataProtect = 0x03, 0x07
		readError           = 0x1100
		writeError          = 0x0c00
		spaceAllocFailed    = 0x2707
	)
	tests := []struct {
		name  string
		fault vfs.Fault
		cdb   []byte
		out   []byte
		read  uint32
		key   byte
		asc   uint16
	}{
		{"1 EIO reading", vfs.Fault{Op: vfs.OpRead, Err: syscall.EIO}, read10(0, 8), nil, 4096, medium, readError},
		// 1 MiB: its data goes from the device to the socket as it is read.
		{"1b EIO reading 1 MiB", vfs.Fault{Op: vfs.OpRead, Err: syscall.EIO}, read10(0, 2048), nil, 1 << 20, medium, readError},
		{"2 EIO writing", vfs.Fault{Op: vfs.OpWrite, Err: syscall.EIO}, write10(8, 8), block(2), 0, medium, writeError},
		{"3 ENOSPC writing", vfs.Fault{Op: vfs.OpWrite, Err: syscall.ENOSPC}, write10(8, 8), block(2), 0, dataProtect, spaceAllocFailed},
		{"4 EIO punching (UNMAP)", vfs.Fault{Op: vfs.OpPunch, Err: syscall.EIO}, um, up, 0, medium, writeError},
		{"5 ENOSPC syncing a FUA write", vfs.Fault{Op: vfs.OpSync, Err: syscall.ENOSPC}, fua(write10(16, 8)), block(3), 0, dataProtect, spaceAllocFailed},
	}
	for _, tc := range tests {
		hits := n.fs.Hits()
		remove := n.fs.Inject(tc.fault)
		r, err := s.Do(tc.cdb, tc.out, tc.read)
		remove()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		key, asc := r.SenseKey()
		if r.Status != statusCheckCondition || key != tc.key || asc != tc.asc {
			t.Fatalf("%s: status %#x sense key %#x ASC %#04x, want CHECK CONDITION %#x/%#04x", tc.name, r.Status, key, asc, tc.key, tc.asc)
		}
		if n.fs.Hits() == hits {
			t.Fatalf("%s: the fault was never hit", tc.name)
		}
		// ENOSPC on a sync (case 5) fails the volume like any failed sync:
		// reopen it before the next case.
		if tc.fault.Op == vfs.OpSync {
			s.Close()
			n.shutdown()
			n = startInProcess(t, data)
			s = n.session("v")
		}
	}
	// fsyncgate: one failed flush, then the disk is fine again.
	mustDo(t, s, "write", write10(24, 8), block(4), 0, statusGood)
	remove := n.fs.Inject(vfs.Fault{Op: vfs.OpSync, Err: syscall.EIO, Times: 1})
	r := mustDo(t, s, "flush with EIO", []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0, statusCheckCondition)
	if key, asc := r.SenseKey(); key != medium || asc != writeError {
		t.Fatalf("failed flush: sense %#x/%#04x", key, asc)
	}
	remove()
	for i, c := range []struct {
		what string
		cdb  []byte
		out  []byte
		read uint32
	}{
		{"flush", []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0},
		{"write", write10(32, 8), block(5), 0},
		{"FUA write", fua(write10(32, 8)), block(5), 0},
		{"read", read10(0, 8), nil, 4096},
	} {
		r, err := s.Do(c.cdb, c.out, c.read)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status == statusGood {
			t.Fatalf("%d: %s after a failed flush answered GOOD", i+1, c.what)
		}
	}
	v, err := n.api.GetVolume(ctx, "v")
	if err != nil || v.Error == "" {
		t.Fatalf("volume show after a failed flush: error %q (%v), want it to say the volume failed", v.Error, err)
	}
	// Reopened (the node restarts): served again, flushed data there.
	s.Close()
	n.shutdown()
	n = startInProcess(t, data)
	s = n.session("v")
	r = mustDo(t, s, "read after reopening", read10(0, 8), nil, 4096, statusGood)
	if string(r.Data) != string(block(1)) {
		t.Fatal("data flushed before the faults is gone")
	}
	mustDo(t, s, "flush after reopening", []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0, statusGood)
	if v, _ := n.api.GetVolume(ctx, "v"); v.Error != "" {
		t.Fatalf("volume still failed after reopening: %s", v.Error)
	}
}
