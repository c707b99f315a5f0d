package scsi

import (
	"bytes"
	"context"

	"tandem.io/tandem/volume/block"
)

// COMPARE AND WRITE (SBC-3 §5.2), the VAAI "atomic test and set" ESX uses
// for VMFS locks and heartbeats. It must be atomic against every other
// write to the same blocks, from any session: writes hold the logical
// unit's atomic lock shared, COMPARE AND WRITE holds it exclusively. It is
// rare (a heartbeat every few seconds per host), so ordinary writes almost
// never wait, and they never wait for each other.

const (
	opCompareAndWrite = 0x89
	// maxCompareBlocks is MAXIMUM COMPARE AND WRITE LENGTH (VPD 0xB0).
	maxCompareBlocks = 255
)

// writesMedium reports the commands that change blocks and so must not
// interleave with a COMPARE AND WRITE.
func writesMedium(op byte) bool {
	switch op {
	case opWrite6, opWrite10, opWrite12, opWrite16, opWriteVerify10, opWriteVerify12, opWriteVerify16,
		opWriteSame10, opWriteSame16, opUnmap:
		return true
	}
	return false
}

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
	lu.atomic.Lock()
	defer lu.atomic.Unlock()
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
	if err := lu.dev.WriteAt(ctx, data, off, cdb[1]&0x08 != 0); err != nil {
		return res, deviceError(ctx, err, true)
	}
	return res, nil
}
