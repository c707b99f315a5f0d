package scsi

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync/atomic"

	"tandem.io/tandem/volume/block"
)

// Opcodes (SPC-4, SBC-3).
const (
	opTestUnitReady     = 0x00
	opRequestSense      = 0x03
	opRead6             = 0x08
	opWrite6            = 0x0a
	opInquiry           = 0x12
	opModeSense6        = 0x1a
	opStartStopUnit     = 0x1b
	opPreventAllow      = 0x1e
	opReadCapacity10    = 0x25
	opRead10            = 0x28
	opWrite10           = 0x2a
	opWriteVerify10     = 0x2e
	opVerify10          = 0x2f
	opPreFetch10        = 0x34
	opSyncCache10       = 0x35
	opWriteSame10       = 0x41
	opUnmap             = 0x42
	opModeSense10       = 0x5a
	opRead16            = 0x88
	opWrite16           = 0x8a
	opWriteVerify16     = 0x8e
	opVerify16          = 0x8f
	opPreFetch16        = 0x90
	opSyncCache16       = 0x91
	opWriteSame16       = 0x93
	opServiceActionIn16 = 0x9e
	opReportLUNs        = 0xa0
	opMaintenanceIn     = 0xa3
	opMaintenanceOut    = 0xa4
	opLogSelect         = 0x4c
	opLogSense          = 0x4d
	opReceiveDiagnostic = 0x1c
	opSendDiagnostic    = 0x1d
	opRead12            = 0xa8
	opWrite12           = 0xaa
	opWriteVerify12     = 0xae
	opVerify12          = 0xaf

	saReadCapacity16 = 0x10
	saGetLBAStatus   = 0x12
	saReportTPG      = 0x0a
	saReportOpcodes  = 0x0c
)

// Limits advertised in VPD 0xB0 and enforced.
const (
	maxTransferBlocks  = 65536   // 32 MiB per command
	optimalTransfer    = 2048    // 1 MiB
	granularityBlocks  = 8       // 4 KiB physical blocks
	maxUnmapBlocks     = 1 << 20 // 512 MiB per UNMAP command
	maxUnmapDescs      = 256
	maxWriteSameBlocks = 1 << 22
)

// LogicalUnit is one SCSI logical unit over a block.Device.
type LogicalUnit struct {
	cfg      LUConfig
	dev      block.Device
	unmapper block.Unmapper // nil when the device cannot give space back
	mapper   block.Mapper   // nil when the device cannot report allocation
	log      *slog.Logger
	handlers [256]handler
	ops      []opInfo // what REPORT SUPPORTED OPERATION CODES lists
	pr       *reservations
	// ranges orders the commands that change blocks (order.go): each
	// holds the blocks it changes while it calls the device.
	ranges rangeLock
	copies copyResults
	// writeThrough is WCE=0 (MODE SELECT): every write is FUA.
	writeThrough atomic.Bool
	// swp is SWP in the control page (MODE SELECT): writes are refused.
	swp atomic.Bool
	// descriptorSense is D_SENSE in the control page (MODE SELECT): sense
	// data in descriptor format.
	descriptorSense atomic.Bool
	// copyIns are the EXTENDED COPY commands received on other units that
	// write into this one (xcopy.go): this unit's fences stop them too.
	copyIns copyIns
	// ua establishes a unit attention for every nexus but skip (nil: all);
	// set by the Target.
	ua   func(skip *Nexus, asc uint16)
	alua alua
}

// handler executes one opcode; the CDB length was checked against cdbLen.
type handler struct {
	fn     func(lu *LogicalUnit, ctx context.Context, cmd *Command) (Result, *SenseError)
	cdbLen int
}

// NewLogicalUnit returns a logical unit serving cfg.Device.
func NewLogicalUnit(cfg LUConfig) (*LogicalUnit, error) {
	if cfg.Device == nil {
		return nil, fmt.Errorf("scsi: logical unit needs a device")
	}
	if cfg.Device.Size()%block.LogicalBlockSize != 0 {
		return nil, fmt.Errorf("scsi: device size %d is not a multiple of %d", cfg.Device.Size(), block.LogicalBlockSize)
	}
	if cfg.VendorID == "" {
		cfg.VendorID = "TANDEM"
	}
	if cfg.ProductID == "" {
		cfg.ProductID = "VOLUME"
	}
	if cfg.Revision == "" {
		cfg.Revision = "0001"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	pr, err := newReservations(cfg.Reservations, cfg.Logger)
	if err != nil {
		return nil, err
	}
	lu := &LogicalUnit{cfg: cfg, dev: cfg.Device, log: cfg.Logger, pr: pr, ua: func(*Nexus, uint16) {}}
	lu.unmapper, _ = cfg.Device.(block.Unmapper)
	lu.mapper, _ = cfg.Device.(block.Mapper)
	lu.register()
	lu.ops = supportedOps()
	return lu, nil
}

func (lu *LogicalUnit) register() {
	set := func(op byte, n int, fn func(*LogicalUnit, context.Context, *Command) (Result, *SenseError)) {
		lu.handlers[op] = handler{fn: fn, cdbLen: n}
	}
	set(opTestUnitReady, 6, (*LogicalUnit).testUnitReady)
	set(opInquiry, 6, (*LogicalUnit).inquiry)
	set(opModeSense6, 6, (*LogicalUnit).modeSense)
	set(opModeSense10, 10, (*LogicalUnit).modeSense)
	set(opModeSelect6, 6, (*LogicalUnit).modeSelect)
	set(opModeSelect10, 10, (*LogicalUnit).modeSelect)
	set(opStartStopUnit, 6, (*LogicalUnit).startStopUnit)
	set(opPreventAllow, 6, (*LogicalUnit).preventAllow)
	set(opReadCapacity10, 10, (*LogicalUnit).readCapacity10)
	set(opServiceActionIn16, 16, (*LogicalUnit).serviceActionIn16)
	set(opMaintenanceIn, 12, (*LogicalUnit).maintenanceIn)
	for _, op := range []byte{opRead6, opRead10, opRead12, opRead16} {
		set(op, cdbLength(op), (*LogicalUnit).read)
	}
	for _, op := range []byte{opWrite6, opWrite10, opWrite12, opWrite16, opWriteVerify10, opWriteVerify12, opWriteVerify16} {
		set(op, cdbLength(op), (*LogicalUnit).write)
	}
	for _, op := range []byte{opVerify10, opVerify12, opVerify16} {
		set(op, cdbLength(op), (*LogicalUnit).verify)
	}
	set(opPreFetch10, 10, (*LogicalUnit).preFetch)
	set(opPreFetch16, 16, (*LogicalUnit).preFetch)
	set(opSyncCache10, 10, (*LogicalUnit).syncCache)
	set(opSyncCache16, 16, (*LogicalUnit).syncCache)
	if lu.unmapper != nil {
		set(opUnmap, 10, (*LogicalUnit).unmap)
	}
	set(opWriteSame10, 10, (*LogicalUnit).writeSame)
	set(opWriteSame16, 16, (*LogicalUnit).writeSame)
	set(opCompareAndWrite, 16, (*LogicalUnit).compareAndWrite)
	set(opExtendedCopy, 16, (*LogicalUnit).extendedCopy)
	set(opReceiveCopyResults, 16, (*LogicalUnit).receiveCopyResults)
	set(opPersistentReserveIn, 10, (*LogicalUnit).persistentReserveIn)
	set(opPersistentReserveOut, 10, (*LogicalUnit).persistentReserveOut)
	for _, op := range []byte{opReserve6, opRelease6, opReserve10, opRelease10} {
		set(op, cdbLength(op), (*LogicalUnit).reserveRelease)
	}
}

// cdbLength is the CDB length implied by the opcode's group (SPC-4 §4.2.5.1).
func cdbLength(op byte) int {
	switch op >> 5 {
	case 0:
		return 6
	case 1, 2:
		return 10
	case 4:
		return 16
	case 5:
		return 12
	}
	return 0
}

func (lu *LogicalUnit) execute(ctx context.Context, cmd *Command) Result {
	op := cmd.CDB[0]
	h := lu.handlers[op]
	if h.fn == nil {
		return checkCondition(errInvalidOpcode)
	}
	if len(cmd.CDB) < h.cdbLen {
		return checkCondition(invalidField(0, -1))
	}
	// NACA (control byte bit 2) asks for ACA, which is not supported.
	if cmd.CDB[h.cdbLen-1]&0x04 != 0 {
		return checkCondition(invalidField(h.cdbLen-1, 2))
	}
	if !cmd.Passed {
		if r, passed := lu.passReservations(ctx, cmd); passed {
			return r
		}
		if e := lu.accessDenied(cmd.Nexus, cmd.CDB); e != nil {
			return checkCondition(e)
		}
	}
	if lu.pr.conflict(cmd.Nexus, cmd.CDB) {
		return Result{Status: StatusReservationConflict}
	}
	res, err := h.fn(lu, ctx, cmd)
	if err == errReservationConflict {
		return Result{Status: StatusReservationConflict, DataOutLength: res.DataOutLength}
	}
	if err != nil {
		r := checkCondition(err)
		r.DataOutLength = res.DataOutLength
		return r
	}
	// PREEMPT AND ABORT: the transport aborts the preempted nexuses' own
	// tasks; copies they sent to other units that write into this one
	// are stopped here, before the status goes out.
	for i := range res.AbortNexuses {
		lu.copyIns.fence(&res.AbortNexuses[i])
	}
	return res
}

// writeProtected says why writes are refused, nil when they are not: a
// read-only volume, or SWP set by MODE SELECT.
func (lu *LogicalUnit) writeProtected() *SenseError {
	switch {
	case lu.cfg.ReadOnly:
		return errWriteProtect
	case lu.swp.Load():
		return errSoftwareWriteProtect
	}
	return nil
}

// blocks is the capacity in logical blocks.
func (lu *LogicalUnit) blocks() uint64 { return uint64(lu.dev.Size()) / block.LogicalBlockSize }

// checkRange reports LBA OUT OF RANGE unless [lba, lba+n) is on the medium.
func (lu *LogicalUnit) checkRange(lba, n uint64) *SenseError {
	b := lu.blocks()
	if lba > b || n > b-lba {
		return errLBARange
	}
	return nil
}

// rw decodes the LBA and transfer length of a READ/WRITE/VERIFY-style CDB.
func rw(cdb []byte) (lba, n uint64) {
	switch cdbLength(cdb[0]) {
	case 6:
		lba = uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		n = uint64(cdb[4])
		if n == 0 && (cdb[0] == opRead6 || cdb[0] == opWrite6) {
			n = 256
		}
	case 10:
		lba, n = uint64(be32(cdb[2:])), uint64(be16(cdb[7:]))
	case 12:
		lba, n = uint64(be32(cdb[2:])), uint64(be32(cdb[6:]))
	case 16:
		lba, n = be64(cdb[2:]), uint64(be32(cdb[10:]))
	}
	return
}

// minSend is the smallest read left to the transport to send from the
// device; below it, copying costs less than the extra system calls.
const minSend = 64 << 10

func (lu *LogicalUnit) read(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	lba, n := rw(cdb)
	if cdbLength(cdb[0]) != 6 && cdb[1]>>5 != 0 {
		return Result{}, invalidField(1, 7) // RDPROTECT: no protection information
	}
	if e := lu.checkRange(lba, n); e != nil {
		return Result{}, e
	}
	if n > maxTransferBlocks {
		return Result{}, invalidField(transferLenField(cdb[0]), -1)
	}
	size := int(n) * block.LogicalBlockSize
	if snd, ok := lu.dev.(block.Sender); ok && cmd.MaySend && size >= minSend {
		return Result{Send: Sending{Dev: snd, Off: int64(lba) * block.LogicalBlockSize, Len: int64(size)}}, nil
	}
	// Only what the initiator will receive is read: its expected length
	// may be shorter than the CDB's, and memory follows the expected
	// length (which the transport budgets), never the CDB alone.
	want := min(size, (int(cmd.ExpectedLength)+block.LogicalBlockSize-1)/block.LogicalBlockSize*block.LogicalBlockSize)
	var buf []byte
	if cap(cmd.Buf) >= want {
		buf = cmd.Buf[:want]
	} else {
		buf = make([]byte, want)
	}
	if want > 0 {
		if err := lu.dev.ReadAt(ctx, buf, int64(lba)*block.LogicalBlockSize); err != nil {
			return Result{}, deviceError(ctx, err, false)
		}
	}
	return Result{Data: buf, DataLen: size}, nil
}

func transferLenField(op byte) int {
	switch cdbLength(op) {
	case 6:
		return 4
	case 10:
		return 7
	case 12:
		return 6
	}
	return 10
}

func (lu *LogicalUnit) write(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	lba, n := rw(cdb)
	size := int(n) * block.LogicalBlockSize
	res := Result{DataOutLength: size}
	fua := false
	if cdbLength(cdb[0]) != 6 {
		if cdb[1]>>5 != 0 {
			return res, invalidField(1, 7) // WRPROTECT
		}
		fua = cdb[1]&0x08 != 0
	}
	switch cdb[0] {
	case opWriteVerify10, opWriteVerify12, opWriteVerify16:
		fua = true // verified means on the medium
	}
	fua = fua || lu.writeThrough.Load()
	if e := lu.writeProtected(); e != nil {
		return res, e
	}
	if e := lu.checkRange(lba, n); e != nil {
		return res, e
	}
	if n > maxTransferBlocks {
		return res, invalidField(transferLenField(cdb[0]), -1)
	}
	// The transport may have received less than the CDB asks for (the
	// initiator's expected length was shorter): write the whole blocks
	// that arrived (RFC 7143 §11.4.5 residuals; the initiator sees the
	// overflow).
	data := cmd.DataOut
	if len(data) > size {
		data = data[:size]
	}
	data = data[:len(data)/block.LogicalBlockSize*block.LogicalBlockSize]
	if len(data) == 0 {
		return res, nil
	}
	off := int64(lba) * block.LogicalBlockSize
	var c *claim
	if cmd.NoWait {
		var ok bool
		if c, ok = lu.ranges.tryLock(off, int64(len(data))); !ok {
			return Result{Busy: true}, nil
		}
	} else {
		var e *SenseError
		if c, e = lu.hold(ctx, off, int64(len(data))); e != nil {
			return res, e
		}
	}
	defer lu.ranges.unlock(c)
	if err := lu.dev.WriteAt(ctx, data, off, fua); err != nil {
		return res, deviceError(ctx, err, true)
	}
	return res, nil
}

func (lu *LogicalUnit) verify(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	lba, n := rw(cdb)
	bytchk := cdb[1] >> 1 & 3
	res := Result{}
	switch bytchk {
	case 1:
		res.DataOutLength = int(n) * block.LogicalBlockSize
	case 3:
		res.DataOutLength = block.LogicalBlockSize
	}
	if cdb[1]>>5 != 0 {
		return res, invalidField(1, 7) // VRPROTECT
	}
	if bytchk == 2 {
		return res, invalidField(1, 2)
	}
	if e := lu.checkRange(lba, n); e != nil {
		return res, e
	}
	if n > maxTransferBlocks {
		return res, invalidField(transferLenField(cdb[0]), -1)
	}
	if bytchk == 0 || n == 0 {
		return res, nil
	}
	if len(cmd.DataOut) < res.DataOutLength {
		return res, sense(KeyIllegalRequest, ascInvalidFieldInInfoUnit)
	}
	// The medium is read and compared a piece at a time: memory does not
	// follow the CDB's length (BYTCHK=3 sends one block for up to 32 MiB).
	size := int(n) * block.LogicalBlockSize
	got := make([]byte, min(size, verifyChunk))
	for done := 0; done < size; done += len(got) {
		p := got[:min(len(got), size-done)]
		if err := lu.dev.ReadAt(ctx, p, int64(lba)*block.LogicalBlockSize+int64(done)); err != nil {
			return res, deviceError(ctx, err, false)
		}
		for i := range p {
			want := byte(0)
			if bytchk == 3 {
				want = cmd.DataOut[(done+i)%block.LogicalBlockSize]
			} else {
				want = cmd.DataOut[done+i]
			}
			if p[i] != want {
				return res, &SenseError{Key: KeyMiscompare, ASC: ascMiscompareVerify, InfoValid: true, Info: uint32(done + i)}
			}
		}
	}
	return res, nil
}

// verifyChunk is how much of the medium VERIFY reads at a time.
const verifyChunk = 256 << 10

func (lu *LogicalUnit) preFetch(ctx context.Context, cmd *Command) (Result, *SenseError) {
	lba, n := rw(cmd.CDB)
	if cmd.CDB[0] == opPreFetch10 {
		lba, n = uint64(be32(cmd.CDB[2:])), uint64(be16(cmd.CDB[7:]))
	}
	if e := lu.checkRange(lba, n); e != nil {
		return Result{}, e
	}
	return Result{}, nil
}

func (lu *LogicalUnit) syncCache(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	var lba, n uint64
	if cdb[0] == opSyncCache10 {
		lba, n = uint64(be32(cdb[2:])), uint64(be16(cdb[7:]))
	} else {
		lba, n = be64(cdb[2:]), uint64(be32(cdb[10:]))
	}
	if e := lu.checkRange(lba, n); e != nil {
		return Result{}, e
	}
	if err := lu.dev.Flush(ctx); err != nil {
		return Result{}, deviceError(ctx, err, true)
	}
	return Result{}, nil
}

func (lu *LogicalUnit) unmap(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	plen := int(be16(cdb[7:]))
	res := Result{DataOutLength: plen}
	if cdb[1]&0x01 != 0 {
		return res, invalidField(1, 0) // ANCHOR
	}
	if e := lu.writeProtected(); e != nil {
		return res, e
	}
	if plen == 0 {
		return res, nil
	}
	p := cmd.DataOut
	if len(p) < plen {
		return res, errParamLength
	}
	p = p[:plen]
	if plen < 8 {
		return res, errParamLength
	}
	dataLen := int(be16(p[0:]))
	descLen := int(be16(p[2:]))
	if dataLen+2 > plen || descLen+8 > plen || descLen%16 != 0 {
		return res, errParamLength
	}
	if descLen/16 > maxUnmapDescs {
		return res, invalidParam(2)
	}
	type extent struct{ lba, n uint64 }
	var exts []extent
	total := uint64(0)
	for off := 8; off+16 <= 8+descLen; off += 16 {
		lba, n := be64(p[off:]), uint64(be32(p[off+8:]))
		if e := lu.checkRange(lba, n); e != nil {
			return res, e
		}
		total += n
		if total > maxUnmapBlocks {
			return res, invalidParam(off + 8)
		}
		if n > 0 {
			exts = append(exts, extent{lba, n})
		}
	}
	for _, e := range exts {
		if se := lu.unmapHeld(ctx, int64(e.lba)*block.LogicalBlockSize, int64(e.n)*block.LogicalBlockSize); se != nil {
			return res, se
		}
	}
	return res, nil
}

func (lu *LogicalUnit) writeSame(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	var lba, n uint64
	ndob := false
	if cdb[0] == opWriteSame10 {
		lba, n = uint64(be32(cdb[2:])), uint64(be16(cdb[7:]))
	} else {
		lba, n = be64(cdb[2:]), uint64(be32(cdb[10:]))
		ndob = cdb[1]&0x01 != 0
	}
	res := Result{DataOutLength: block.LogicalBlockSize}
	if ndob {
		res.DataOutLength = 0
	}
	unmapBit := cdb[1]&0x08 != 0
	wp := lu.writeProtected()
	switch {
	case cdb[1]>>5 != 0:
		return res, invalidField(1, 7) // WRPROTECT
	case cdb[1]&0x10 != 0:
		return res, invalidField(1, 4) // ANCHOR
	case ndob && !unmapBit:
		return res, invalidField(1, 0)
	case wp != nil:
		return res, wp
	}
	if e := lu.checkRange(lba, n); e != nil {
		return res, e
	}
	if n == 0 {
		// WSNZ=1 in VPD 0xB0: zero means "to the end" is not supported.
		return res, invalidField(transferLenField(cdb[0]), -1)
	}
	if n > maxWriteSameBlocks {
		return res, invalidField(transferLenField(cdb[0]), -1)
	}
	if ndob && cmd.ExpectedLength != 0 || !ndob && cmd.ExpectedLength > block.LogicalBlockSize {
		// The data-out buffer is exactly one block (none with NDOB);
		// anything else is a mistake in the CDB's companion, not data to guess at.
		return res, invalidField(transferLenField(cdb[0]), -1)
	}
	pattern := make([]byte, block.LogicalBlockSize)
	if !ndob {
		if len(cmd.DataOut) < block.LogicalBlockSize {
			return res, sense(KeyIllegalRequest, ascInvalidFieldInInfoUnit)
		}
		copy(pattern, cmd.DataOut)
	}
	off, length := int64(lba)*block.LogicalBlockSize, int64(n)*block.LogicalBlockSize
	if unmapBit && lu.unmapper != nil && allZero(pattern) {
		return res, lu.unmapHeld(ctx, off, length)
	}
	c, e := lu.hold(ctx, off, length)
	if e != nil {
		return res, e
	}
	defer lu.ranges.unlock(c)
	chunk := make([]byte, min(length, 1<<20))
	for i := 0; i < len(chunk); i += block.LogicalBlockSize {
		copy(chunk[i:], pattern)
	}
	for done := int64(0); done < length; {
		w := min(int64(len(chunk)), length-done)
		if err := lu.dev.WriteAt(ctx, chunk[:w], off+done, false); err != nil {
			return res, deviceError(ctx, err, true)
		}
		done += w
	}
	// With the write cache off (WCE=0) the data is on the medium before
	// GOOD: one flush for all the chunks.
	if lu.writeThrough.Load() {
		if err := lu.dev.Flush(ctx); err != nil {
			return res, deviceError(ctx, err, true)
		}
	}
	return res, nil
}

// unmapHeld unmaps length bytes at off holding their blocks.
func (lu *LogicalUnit) unmapHeld(ctx context.Context, off, length int64) *SenseError {
	c, e := lu.hold(ctx, off, length)
	if e != nil {
		return e
	}
	defer lu.ranges.unlock(c)
	if err := lu.unmapper.Unmap(ctx, off, length); err != nil {
		return deviceError(ctx, err, true)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func (lu *LogicalUnit) testUnitReady(ctx context.Context, cmd *Command) (Result, *SenseError) {
	return Result{}, nil
}

func (lu *LogicalUnit) startStopUnit(ctx context.Context, cmd *Command) (Result, *SenseError) {
	// A volume is always spinning; START/STOP and power conditions are
	// accepted. Ejecting (LOEJ without START) a fixed medium is refused.
	if cmd.CDB[4]&0x02 != 0 && cmd.CDB[4]&0x01 == 0 && cmd.CDB[4]>>4 == 0 {
		return Result{}, invalidField(4, 1)
	}
	return Result{}, nil
}

func (lu *LogicalUnit) preventAllow(ctx context.Context, cmd *Command) (Result, *SenseError) {
	return Result{}, nil
}

func (lu *LogicalUnit) readCapacity10(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	if cdb[8]&0x01 == 0 && be32(cdb[2:]) != 0 {
		return Result{}, invalidField(2, -1) // LBA without PMI
	}
	data := make([]byte, 8)
	last := lu.blocks() - 1
	if last > 0xffffffff {
		last = 0xffffffff
	}
	put32(data, uint32(last))
	put32(data[4:], block.LogicalBlockSize)
	return Result{Data: data}, nil
}

func (lu *LogicalUnit) serviceActionIn16(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	switch cdb[1] & 0x1f {
	case saReadCapacity16:
	case saGetLBAStatus:
		return lu.getLBAStatus(ctx, cmd)
	default:
		return Result{}, invalidField(1, 4)
	}
	data := make([]byte, 32)
	put64(data, lu.blocks()-1)
	put32(data[8:], block.LogicalBlockSize)
	data[13] = 3 // 2^3 logical blocks per physical block: 512e on 4 KiB
	if lu.unmapper != nil {
		data[14] = 0x80 | 0x40 // LBPME, LBPRZ
	}
	return Result{Data: clip(data, be32(cdb[10:]))}, nil
}

// getLBAStatus answers GET LBA STATUS (SBC-3 §5.6) from the device's real
// allocation: one descriptor per run of mapped or deallocated blocks,
// starting at the given LBA.
func (lu *LogicalUnit) getLBAStatus(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	lba, alloc := be64(cdb[2:]), be32(cdb[10:])
	if lba >= lu.blocks() {
		return Result{}, errLBARange
	}
	if alloc < 24 {
		// Room for the header and one descriptor is the least useful answer.
		if alloc == 0 {
			return Result{}, nil
		}
	}
	maxDescs := max(1, (int(min(alloc, 1<<20))-8)/16)
	data := make([]byte, 8, 8+16*min(maxDescs, 64))
	off := int64(lba) * block.LogicalBlockSize
	for n := 0; n < maxDescs && off < lu.dev.Size(); n++ {
		mapped, length := true, lu.dev.Size()-off
		if lu.mapper != nil {
			var err error
			mapped, length, err = lu.mapper.Mapping(ctx, off)
			if err != nil {
				return Result{}, deviceError(ctx, err, false)
			}
		}
		// Descriptors cover whole logical blocks; the first starts at lba.
		blocks := (off%block.LogicalBlockSize + length + block.LogicalBlockSize - 1) / block.LogicalBlockSize
		d := make([]byte, 16)
		put64(d, uint64(off/block.LogicalBlockSize))
		put32(d[8:], uint32(min(blocks, 0xffffffff)))
		if !mapped {
			d[12] = 1 // deallocated
		}
		data = append(data, d...)
		off = (off/block.LogicalBlockSize + blocks) * block.LogicalBlockSize
	}
	put32(data, uint32(len(data)-4))
	return Result{Data: clip(data, alloc)}, nil
}

func (lu *LogicalUnit) maintenanceIn(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	switch cdb[1] & 0x1f {
	case saReportTPG:
		return lu.reportTPG(cmd)
	case saReportOpcodes:
		return lu.reportOpcodes(ctx, cmd)
	}
	return Result{}, invalidField(1, 4)
}

func be16(b []byte) uint16     { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32     { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64     { return binary.BigEndian.Uint64(b) }
func put16(b []byte, v uint16) { binary.BigEndian.PutUint16(b, v) }
func put32(b []byte, v uint32) { binary.BigEndian.PutUint32(b, v) }
func put64(b []byte, v uint64) { binary.BigEndian.PutUint64(b, v) }
