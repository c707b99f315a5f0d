package volume

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	"tandem.io/tandem/volume/block"
	"tandem.io/tandem/volume/layer"
)

// Volume is one volume's data as a device: its layer chain (a writable
// head on read-only snapshots). It implements block.Device, block.Unmapper
// and block.Mapper. Snapshot, revert and resize switch the chain while no
// I/O is in flight.
type Volume struct {
	name string

	mu sync.RWMutex // held shared by every I/O, exclusively to switch chain or close
	// chain is switched only with mu held exclusively; it is an atomic
	// pointer so that Err can read it without waiting for I/O to drain.
	chain  atomic.Pointer[layer.Chain]
	closed bool
	// failed, once set, fails all I/O until the store is reopened: an
	// operation's catalog commit ended with an unknown outcome, so which
	// layer is the volume's head is not known.
	failed atomic.Pointer[error]
	// size is read by the SCSI layer on every command: kept apart so that
	// reading it takes no lock.
	size atomic.Int64
}

func newVolume(name string, chain *layer.Chain) *Volume {
	v := &Volume{name: name}
	v.chain.Store(chain)
	v.size.Store(chain.Size())
	return v
}

var (
	_ block.Device   = (*Volume)(nil)
	_ block.Unmapper = (*Volume)(nil)
	_ block.Mapper   = (*Volume)(nil)
	_ block.Sender   = (*Volume)(nil)
)

// Size is the provisioned size in bytes.
func (v *Volume) Size() int64 { return v.size.Load() }

func (v *Volume) lock() (*layer.Chain, error) {
	v.mu.RLock()
	if v.closed {
		v.mu.RUnlock()
		return nil, fmt.Errorf("volume %q: %w", v.name, block.ErrClosed)
	}
	if p := v.failed.Load(); p != nil {
		v.mu.RUnlock()
		return nil, *p
	}
	return v.chain.Load(), nil
}

// fail stops the volume's I/O for good (until the store is reopened).
func (v *Volume) fail(err error) {
	err = fmt.Errorf("volume %q: %w: %v", v.name, block.ErrMedium, err)
	v.failed.CompareAndSwap(nil, &err)
}

// ReadAt reads p at off; never-written ranges read as zeros.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	c, err := v.lock()
	if err != nil {
		return err
	}
	defer v.mu.RUnlock()
	return c.ReadAt(ctx, p, off)
}

// WriteAt writes p at off; with fua it is on stable storage on return.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	c, err := v.lock()
	if err != nil {
		return err
	}
	defer v.mu.RUnlock()
	return c.WriteAt(ctx, p, off, fua)
}

// Flush makes every completed write durable.
func (v *Volume) Flush(ctx context.Context) error {
	c, err := v.lock()
	if err != nil {
		return err
	}
	defer v.mu.RUnlock()
	return c.Flush(ctx)
}

// Unmap gives the range's space back where no snapshot holds it; the range
// then reads as zeros.
func (v *Volume) Unmap(ctx context.Context, off, length int64) error {
	c, err := v.lock()
	if err != nil {
		return err
	}
	defer v.mu.RUnlock()
	return c.Unmap(ctx, off, length)
}

// Mapping reports whether the range at off holds data in some layer.
func (v *Volume) Mapping(ctx context.Context, off int64) (bool, int64, error) {
	c, err := v.lock()
	if err != nil {
		return false, 0, err
	}
	defer v.mu.RUnlock()
	return c.Mapping(ctx, off)
}

// SendTo sends n bytes at off to the socket dst straight from the layer
// files (sendfile), never through a buffer.
func (v *Volume) SendTo(ctx context.Context, dst syscall.Conn, off, n int64) (int64, error) {
	c, err := v.lock()
	if err != nil {
		return 0, err
	}
	// The plan pins the files it reads; the socket, which may block for
	// as long as the initiator does not read, is written without the
	// volume's lock, so it holds up no snapshot and no other I/O.
	p, err := c.PlanSend(off, n)
	v.mu.RUnlock()
	if err != nil {
		return 0, err
	}
	defer p.Release()
	return p.SendTo(ctx, dst)
}

// exclusive runs fn with no I/O in flight and none starting.
func (v *Volume) exclusive(fn func() error) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return fmt.Errorf("volume %q: %w", v.name, block.ErrClosed)
	}
	return fn()
}

// hold drains the volume's I/O and keeps new I/O waiting until the
// returned function is called.
func (v *Volume) hold() func() {
	v.mu.Lock()
	return v.mu.Unlock
}

// Err says why the volume's data can no longer be trusted (a sync of one
// of its layers failed; it stays so until the store is reopened), nil
// if it can.
func (v *Volume) Err() error {
	if p := v.failed.Load(); p != nil {
		return *p
	}
	return v.chain.Load().Err()
}

// lockBlock keeps writes out of block b of the head while a merge copies
// into it; the rest of the volume's I/O goes on.
func (v *Volume) lockBlock(b uint64) (func(), error) {
	v.mu.RLock()
	if v.closed {
		v.mu.RUnlock()
		return nil, fmt.Errorf("volume %q: %w", v.name, block.ErrClosed)
	}
	unlock := v.chain.Load().LockBlock(b)
	return func() { unlock(); v.mu.RUnlock() }, nil
}

// close flushes the head; later I/O gets block.ErrClosed. The layer files
// are closed by the store, which may share them between volumes.
func (v *Volume) close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	return v.chain.Load().Flush(context.Background())
}

// reopen serves a closed volume again (its deletion failed).
func (v *Volume) reopen() {
	v.mu.Lock()
	v.closed = false
	v.mu.Unlock()
}
