package scsi

import (
	"bytes"
	"context"

	"tandem.io/tandem/volume/block"
)

// COMPARE AND WRITE (SBC-3 §5.2), the VAAI "atomic test and set" ESX uses
// for VMFS locks and heartbeats. It must be atomic against every other
// write to the same blocks, from any session: it holds its blocks (the
// logical unit's range lock, order.go) from the read through the write,
// and every command that changes blocks holds them too, so none lands
// between its compare and its write. Writes to other blocks do not wait
// for it.

const (
	opCompareAndWrite = 0x89
	// maxCompareBlocks is MAXIMUM COMPARE AND WRITE LENGTH (VPD 0xB0).
	maxCompareBlocks = 255
)

func (lu *LogicalUnit) compareAndWrite(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	lba, n := be64(cdb[2:]), uint64(cdb[13])
	size := int(n) * block.LogicalBlockSize
	res := Result{DataOutLength: 2 * size}
	wp := lu.writeProtected()
	switch {
	case cdb[1]>>5 != 0:
		return res, invalidField(1, 7) // WRPROTECT
	case wp != nil:
		return res, wp
	case n > maxCompareBlocks:
		return res, invalidField(13, -1)
	}
	if e := lu.checkRange(lba, n); e != nil {
		return res, e
	}
	if cmd.ExpectedLength != uint32(2*size) {
		// The data-out buffer is the verify data then the write data:
		// any other length means the two halves cannot be told apart
		// (or the block count was truncated to 8 bits).
		return res, invalidField(13, -1)
	}
	if n == 0 {
		return res, nil
	}
	if len(cmd.DataOut) < 2*size {
		return res, errParamLength
	}
	verify, data := cmd.DataOut[:size], cmd.DataOut[size:2*size]
	off := int64(lba) * block.LogicalBlockSize
	cur := make([]byte, size)
	c, e := lu.hold(ctx, off, int64(size))
	if e != nil {
		return res, e
	}
	defer lu.ranges.unlock(c)
	if err := lu.dev.ReadAt(ctx, cur, off); err != nil {
		return res, deviceError(ctx, err, false)
	}
	if !bytes.Equal(cur, verify) {
		i := 0
		for i < size && cur[i] == verify[i] {
			i++
		}
		return res, &SenseError{Key: KeyMiscompare, ASC: ascMiscompareVerify, InfoValid: true, Info: uint32(i)}
	}
	if err := lu.dev.WriteAt(ctx, data, off, cdb[1]&0x08 != 0 || lu.writeThrough.Load()); err != nil {
		return res, deviceError(ctx, err, true)
	}
	return res, nil
}
