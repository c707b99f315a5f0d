package scsi

import "context"

// opInfo describes one supported command for REPORT SUPPORTED OPERATION
// CODES (SPC-4 §6.35): its opcode, service action, the CDB usage map (a 1
// bit for every CDB bit the command looks at) and its timeouts.
type opInfo struct {
	op    byte
	sa    uint16
	hasSA bool
	usage []byte
	// nominal and recommended timeouts in seconds (command timeouts
	// descriptor): what one command normally takes here, and what an
	// initiator should wait before it gives up.
	nominal, recommended uint32
	// available reports whether this LU serves the command (UNMAP needs a
	// device that can give space back); nil means always.
	available func(lu *LogicalUnit) bool
}

func canUnmap(lu *LogicalUnit) bool { return lu.unmapper != nil }

// Masks for the common CDB shapes: opcode, flags, LBA, transfer length,
// group number, control byte.
var (
	usageRW10  = []byte{0, 0xfe, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07}
	usageRW12  = []byte{0, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07}
	usageRW16  = []byte{0, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07}
	usagePROUT = []byte{0, 0, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07}
)

func usage(op byte, mask []byte) []byte {
	u := append([]byte(nil), mask...)
	u[0] = op
	return u
}

// supportedOps lists every command the target implements, in opcode order.
// A test checks it against the dispatch table, so the two cannot drift.
func supportedOps() []opInfo {
	io := func(op byte, mask []byte) opInfo {
		return opInfo{op: op, usage: usage(op, mask), nominal: 1, recommended: 30}
	}
	sa := func(op byte, s uint16, mask []byte) opInfo {
		o := io(op, mask)
		o.sa, o.hasSA = s, true
		o.usage[1] = byte(s) | o.usage[1]&0xe0
		return o
	}
	ops := []opInfo{
		io(opTestUnitReady, []byte{0, 0, 0, 0, 0, 0x07}),
		io(opRequestSense, []byte{0, 0x01, 0, 0, 0xff, 0x07}),
		io(opRead6, []byte{0, 0x1f, 0xff, 0xff, 0xff, 0x07}),
		io(opWrite6, []byte{0, 0x1f, 0xff, 0xff, 0xff, 0x07}),
		io(opInquiry, []byte{0, 0x01, 0xff, 0xff, 0xff, 0x07}),
		io(opReserve6, []byte{0, 0, 0, 0, 0, 0x07}),
		io(opRelease6, []byte{0, 0, 0, 0, 0, 0x07}),
		io(opModeSense6, []byte{0, 0x08, 0xff, 0xff, 0xff, 0x07}),
		io(opModeSelect6, []byte{0, 0x11, 0, 0, 0xff, 0x07}),
		io(opStartStopUnit, []byte{0, 0x01, 0, 0x0f, 0xf7, 0x07}),
		io(opPreventAllow, []byte{0, 0, 0, 0, 0x03, 0x07}),
		io(opReadCapacity10, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07}),
		io(opRead10, usageRW10),
		io(opWrite10, usageRW10),
		io(opWriteVerify10, usageRW10),
		io(opVerify10, usageRW10),
		io(opPreFetch10, usageRW10),
		io(opSyncCache10, usageRW10),
		io(opWriteSame10, usageRW10),
		io(opUnmap, []byte{0, 0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0x07}),
		io(opModeSelect10, []byte{0, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07}),
		sa(opPersistentReserveIn, 0, []byte{0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07}),
		sa(opPersistentReserveIn, 1, []byte{0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07}),
		sa(opPersistentReserveIn, 2, []byte{0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07}),
		sa(opPersistentReserveIn, 3, []byte{0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07}),
		io(opReserve10, []byte{0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x07}),
		io(opRelease10, []byte{0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x07}),
		io(opModeSense10, []byte{0, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x07}),
		sa(opPersistentReserveOut, proRegister, usagePROUT),
		sa(opPersistentReserveOut, proReserve, usagePROUT),
		sa(opPersistentReserveOut, proRelease, usagePROUT),
		sa(opPersistentReserveOut, proClear, usagePROUT),
		sa(opPersistentReserveOut, proPreempt, usagePROUT),
		sa(opPersistentReserveOut, proPreemptAbort, usagePROUT),
		sa(opPersistentReserveOut, proRegisterIgnore, usagePROUT),
		sa(opPersistentReserveOut, proRegisterMove, usagePROUT),
		sa(opExtendedCopy, 0, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07}),
		sa(opReceiveCopyResults, rcrCopyStatus, []byte{0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07}),
		sa(opReceiveCopyResults, rcrOpParams, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07}),
		io(opRead16, usageRW16),
		io(opCompareAndWrite, []byte{0, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0x07}),
		io(opWrite16, usageRW16),
		io(opWriteVerify16, usageRW16),
		io(opVerify16, usageRW16),
		io(opPreFetch16, usageRW16),
		io(opSyncCache16, usageRW16),
		io(opWriteSame16, usageRW16),
		sa(opServiceActionIn16, saReadCapacity16, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07}),
		sa(opServiceActionIn16, saGetLBAStatus, []byte{0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07}),
		io(opReportLUNs, []byte{0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07}),
		sa(opMaintenanceIn, saReportTPG, []byte{0, 0xe0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07}),
		sa(opMaintenanceIn, saReportOpcodes, []byte{0, 0, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07}),
		io(opRead12, usageRW12),
		io(opWrite12, usageRW12),
		io(opWriteVerify12, usageRW12),
		io(opVerify12, usageRW12),
	}
	for i := range ops {
		switch ops[i].op {
		case opUnmap:
			ops[i].available = canUnmap
		case opSyncCache10, opSyncCache16:
			ops[i].nominal, ops[i].recommended = 5, 60
		}
	}
	return ops
}

// reportOpcodes answers REPORT SUPPORTED OPERATION CODES.
func (lu *LogicalUnit) reportOpcodes(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	rctd := cdb[2]&0x80 != 0
	reqOp, reqSA := cdb[3], be16(cdb[4:])
	alloc := be32(cdb[6:])
	timeouts := func(o opInfo) []byte {
		d := make([]byte, 12)
		put16(d, 0x0a)
		put32(d[4:], o.nominal)
		put32(d[8:], o.recommended)
		return d
	}
	var ops []opInfo
	exists, hasSA := false, false
	for _, o := range lu.ops {
		if o.available != nil && !o.available(lu) {
			continue
		}
		ops = append(ops, o)
		if o.op == reqOp {
			exists, hasSA = true, o.hasSA
		}
	}
	switch cdb[2] & 0x07 {
	case 0: // all commands
		data := make([]byte, 4)
		for _, o := range ops {
			d := make([]byte, 8)
			d[0] = o.op
			put16(d[2:], o.sa)
			if o.hasSA {
				d[5] |= 0x01 // SERVACTV
			}
			if rctd {
				d[5] |= 0x02 // CTDP
			}
			put16(d[6:], uint16(len(o.usage)))
			data = append(data, d...)
			if rctd {
				data = append(data, timeouts(o)...)
			}
		}
		put32(data, uint32(len(data)-4))
		return Result{Data: clip(data, alloc)}, nil
	case 1: // one command without service action
		if hasSA {
			return Result{}, invalidField(3, -1)
		}
	case 2: // one command with service action
		if exists && !hasSA {
			return Result{}, invalidField(2, 2)
		}
	case 3: // one command, service action if it has them
	default:
		return Result{}, invalidField(2, 2)
	}
	var found *opInfo
	for i, o := range ops {
		if o.op == reqOp && (!o.hasSA || o.sa == reqSA) {
			found = &ops[i]
			break
		}
	}
	data := make([]byte, 4)
	if found == nil {
		data[1] = 0x01 // SUPPORT: not supported
		return Result{Data: clip(data, alloc)}, nil
	}
	data[1] = 0x03 // SUPPORT: supported as the standard says
	if rctd {
		data[1] |= 0x80 // CTDP
	}
	put16(data[2:], uint16(len(found.usage)))
	data = append(data, found.usage...)
	if rctd {
		data = append(data, timeouts(*found)...)
	}
	return Result{Data: clip(data, alloc)}, nil
}
