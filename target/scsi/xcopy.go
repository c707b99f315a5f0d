package scsi

import (
	"bytes"
	"context"
	"slices"
	"sync"

	"tandem.io/tandem/volume/block"
)

// EXTENDED COPY (LID1, SPC-4 §6.4) with block-to-block segments, and
// RECEIVE COPY RESULTS: the VAAI "full copy" ESX uses to clone and move
// virtual disks without the data crossing the network. The copy runs in
// the node, between logical units it serves (found through a CopyLocator),
// and is complete when the command returns GOOD.
//
// A copy is not a way around access control (LIO's CVE-2020-28374 was
// one): it touches only units the requesting initiator reaches itself —
// the unit the command was sent to, through the command's I_T nexus, and
// others through a nexus of that initiator's own logged-in sessions, which
// passed their target's authentication and allow list (the CopyLocator
// finds them) — and each unit gets, through that nexus, the checks a READ
// (source) or WRITE (destination) would get: port group access state,
// reservations, write protection. They are made for every unit before any
// byte is copied, and again for each chunk, so a reservation taken or a
// write protection set during a long copy stops it. Unit attentions are
// not reported (nor consumed) for the other units: they belong to the
// initiator's own commands there.

const (
	opExtendedCopy       = 0x83
	opReceiveCopyResults = 0x84

	rcrCopyStatus = 0x00
	rcrOpParams   = 0x03

	xcopyMaxCSCD     = 16   // target (CSCD) descriptors per command
	xcopyMaxSegments = 64   // segment descriptors per command
	xcopyMaxListLen  = 4096 // bytes of descriptors
	xcopyChunk       = 1 << 20

	descIdentification = 0xe4 // CSCD descriptor: identification descriptor
	segBlockToBlock    = 0x02

	ascTooManyTargetDescs    = 0x2606
	ascUnsupportedTargetDesc = 0x2607
	ascTooManySegmentDescs   = 0x2608
	ascUnsupportedSegment    = 0x2609
	ascCopyTargetUnreachable = 0x0d02
	keyCopyAborted           = 0x0a
)

// CopyLocator finds the logical units, other than its own, that an
// EXTENDED COPY may use as source or destination. Without one, a logical
// unit copies only within itself.
type CopyLocator interface {
	// LocateLU returns the logical unit whose designator (VPD page 0x83)
	// is naa, with the I_T nexuses through which the initiator of from,
	// the copy's own nexus, reaches it: those of its sessions logged in
	// to the unit's target, preferred first. No nexus means the initiator
	// may not use the unit in a copy (or there is no such unit); the unit
	// is then not returned either.
	LocateLU(naa [16]byte, from Nexus) (*LogicalUnit, []Nexus)
}

// copyUnit is a logical unit named by a CSCD descriptor, with the nexuses
// through which the copy may reach it, preferred first.
type copyUnit struct {
	lu  *LogicalUnit
	via []Nexus
	// reads and writes say whether a segment reads or writes the unit.
	reads, writes bool
	// n is the nexus the copy uses, once the checks passed through it.
	n Nexus
}

// admit picks the first nexus through which the unit may be used as the
// segments use it, or returns the refusal of the preferred one. (Any of
// the initiator's nexuses will do: it could send the READ or WRITE
// through that one itself.)
func (u *copyUnit) admit() *SenseError {
	if !u.reads && !u.writes {
		return nil
	}
	var first *SenseError
	for _, n := range u.via {
		e := u.lu.copyAccess(n, u.writes)
		if e == nil {
			u.n = n
			return nil
		}
		if first == nil {
			first = e
		}
	}
	return first
}

// copyAccess returns what a WRITE (write) or READ through n would be
// refused with before it ran — the port group's access state, a
// reservation conflict, write protection — nil if it would run. (A write
// is refused whenever a read is.)
func (lu *LogicalUnit) copyAccess(n Nexus, write bool) *SenseError {
	a, op := accessRead, byte(opRead16)
	if write {
		a, op = accessWrite, opWrite16
	}
	if e := lu.accessDenied(n, []byte{op}); e != nil {
		return e
	}
	if lu.pr.conflictOf(n, a, op) {
		return errReservationConflict
	}
	if write {
		return lu.writeProtected()
	}
	return nil
}

// copyResults remembers the outcome of held copy operations for RECEIVE
// COPY RESULTS, per I_T nexus and list identifier (bounded).
type copyResults struct {
	mu   sync.Mutex
	held map[copyKey]copyStatus
}

type copyKey struct {
	n    itNexus
	list byte
}

type copyStatus struct {
	failed   bool
	segments uint16
	bytes    uint64
}

func (lu *LogicalUnit) extendedCopy(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	if cdb[1]&0x1f != 0 {
		return Result{}, invalidField(1, 4) // only LID1 EXTENDED COPY
	}
	plen := be32(cdb[10:])
	res := Result{DataOutLength: int(plen)}
	if plen == 0 {
		return res, nil
	}
	if e := lu.writeProtected(); e != nil {
		return res, e
	}
	if plen < 16 || uint32(len(cmd.DataOut)) < plen {
		return res, errParamLength
	}
	p := cmd.DataOut[:plen]
	listID, usage := p[0], p[1]>>3&0x03
	tdl, sdl, inline := int(be16(p[2:])), int(be32(p[8:])), be32(p[12:])
	switch {
	case inline != 0:
		return res, invalidParam(12) // no inline data
	case tdl+sdl > xcopyMaxListLen:
		return res, errParamLength
	case 16+tdl+sdl > len(p):
		return res, errParamLength
	case tdl%32 != 0:
		return res, invalidParam(2)
	case tdl/32 > xcopyMaxCSCD:
		return res, sense(KeyIllegalRequest, ascTooManyTargetDescs)
	}
	// CSCD descriptors.
	var units []copyUnit
	for off := 16; off < 16+tdl; off += 32 {
		d := p[off : off+32]
		if d[0] != descIdentification {
			return res, sense(KeyIllegalRequest, ascUnsupportedTargetDesc)
		}
		// LU ID TYPE (d[1] bits 7-6) is not checked: the designator alone
		// names the logical unit, and libiscsi 1.19 expects a copy with a
		// reserved LU ID TYPE to work.
		switch {
		case d[1]&0x20 != 0: // NUL: a null device we cannot copy to or from
			return res, sense(keyCopyAborted, ascCopyTargetUnreachable)
		case d[1]&0x1f != 0: // peripheral device type: block only
			return res, sense(KeyIllegalRequest, ascUnsupportedTargetDesc)
		}
		if bs := uint32(d[29])<<16 | uint32(d[30])<<8 | uint32(d[31]); bs != block.LogicalBlockSize {
			return res, invalidParam(off + 29)
		}
		u, ok := lu.locate(d[4:24], cmd.Nexus)
		if !ok {
			return res, sense(keyCopyAborted, ascCopyTargetUnreachable)
		}
		units = append(units, u)
	}
	// Segment descriptors.
	type segment struct {
		src, dst         *copyUnit
		n, srcLBA, dstLB uint64
	}
	var segs []segment
	for off := 16 + tdl; off < 16+tdl+sdl; {
		if off+4 > len(p) {
			return res, errParamLength
		}
		d := p[off:]
		dlen := 4 + int(be16(d[2:]))
		if d[0] != segBlockToBlock {
			return res, sense(KeyIllegalRequest, ascUnsupportedSegment)
		}
		if len(segs) == xcopyMaxSegments {
			return res, sense(KeyIllegalRequest, ascTooManySegmentDescs)
		}
		if dlen != 28 || off+dlen > 16+tdl+sdl {
			return res, errParamLength
		}
		// Segment errors abort the copy (SPC-4 §6.4.5): COPY ABORTED with
		// the reason.
		si, di := int(be16(d[4:])), int(be16(d[6:]))
		if si >= len(units) || di >= len(units) {
			// No such CSCD: the copy target cannot be reached.
			return res, &SenseError{Key: keyCopyAborted, ASC: ascCopyTargetUnreachable, FieldValid: true, InParam: true, Field: uint16(off + 4)}
		}
		s := segment{src: &units[si], dst: &units[di], n: uint64(be16(d[10:])), srcLBA: be64(d[12:]), dstLB: be64(d[20:])}
		s.src.reads, s.dst.writes = true, true
		if s.src.lu.checkRange(s.srcLBA, s.n) != nil || s.dst.lu.checkRange(s.dstLB, s.n) != nil {
			// Beyond a device's capacity: COPY ABORTED with the segment
			// as the field in error (the ASCs initiators accept here
			// are only "none" and the two unreachable-target ones).
			return res, &SenseError{Key: keyCopyAborted, ASC: ascNone, FieldValid: true, InParam: true, Field: uint16(off + 10)}
		}
		segs = append(segs, s)
		off += dlen
	}
	// A copy writing into another unit than its own is a task that unit's
	// fences do not find among its sessions' tasks: it registers with the
	// unit (before its access is checked, so no fence can fall between),
	// and a LUN or target reset of it, a PREEMPT AND ABORT there of the
	// copy's nexus, or the loss of that nexus stops the copy and waits
	// until its write in progress has returned.
	ctx, cancel := context.WithCancel(ctx)
	in := &copyIn{cancel: cancel, done: make(chan struct{})}
	var into []*LogicalUnit
	for i := range units {
		if u := &units[i]; u.writes && u.lu != lu && !slices.Contains(into, u.lu) {
			into = append(into, u.lu)
			in.via = append(in.via, u.via...)
		}
	}
	for _, u := range into {
		u.copyIns.add(in)
	}
	defer func() {
		for _, u := range into {
			u.copyIns.remove(in)
		}
		close(in.done)
		cancel()
	}()
	// Access: every unit as the segments use it, before any byte moves.
	for i := range units {
		if e := units[i].admit(); e != nil {
			return res, e
		}
	}
	// Copy.
	st := copyStatus{}
	buf := make([]byte, min(xcopyChunk, 65535*block.LogicalBlockSize))
	var failure *SenseError
	for _, s := range segs {
		off, dst, length := int64(s.srcLBA)*block.LogicalBlockSize, int64(s.dstLB)*block.LogicalBlockSize, int64(s.n)*block.LogicalBlockSize
		for done := int64(0); done < length && failure == nil; {
			k := min(int64(len(buf)), length-done)
			if failure = s.src.read(ctx, buf[:k], off+done); failure != nil {
				break
			}
			if failure = s.dst.write(ctx, buf[:k], dst+done); failure != nil {
				break
			}
			done += k
			st.bytes += uint64(k)
		}
		if failure != nil {
			break
		}
		st.segments++
	}
	st.failed = failure != nil
	if usage == 0 { // hold the results for RECEIVE COPY RESULTS
		lu.copies.hold(copyKey{itOf(cmd.Nexus), listID}, st)
	}
	if failure != nil {
		return res, failure
	}
	return res, nil
}

// read reads one chunk of a copy's source, if the unit may still be read
// through the copy's nexus; a device error aborts the copy.
func (u *copyUnit) read(ctx context.Context, p []byte, off int64) *SenseError {
	if e := u.lu.copyAccess(u.n, false); e != nil {
		return e
	}
	if err := u.lu.dev.ReadAt(ctx, p, off); err != nil {
		return copyAborted(deviceError(ctx, err, false))
	}
	return nil
}

// write writes one chunk of a copy's destination holding its blocks
// (order.go), if the unit may still be written through the copy's nexus.
// One chunk at a time: a copy never holds two claims at once.
func (u *copyUnit) write(ctx context.Context, p []byte, off int64) *SenseError {
	c, e := u.lu.hold(ctx, off, int64(len(p)))
	if e != nil {
		return copyAborted(e)
	}
	defer u.lu.ranges.unlock(c)
	if e := u.lu.copyAccess(u.n, true); e != nil {
		return e
	}
	if err := u.lu.dev.WriteAt(ctx, p, off, u.lu.writeThrough.Load()); err != nil {
		return copyAborted(deviceError(ctx, err, true))
	}
	return nil
}

// copyAborted is e as COPY ABORTED, the sense key of a copy that failed
// under way (e may be a shared sentinel: it is copied, not changed).
func copyAborted(e *SenseError) *SenseError {
	c := *e
	c.Key = keyCopyAborted
	return &c
}

// locate finds the logical unit named by a designation descriptor from a
// CSCD descriptor, with the nexuses through which the copy by from may
// reach it; false if it may not (or there is no such unit).
func (lu *LogicalUnit) locate(desig []byte, from Nexus) (copyUnit, bool) {
	codeSet, typ, n := desig[0]&0x0f, desig[1]&0x0f, int(desig[3])
	if codeSet != 1 || typ != 3 || n != 16 || desig[1]>>4&0x03 != 0 {
		return copyUnit{}, false // only the binary NAA designator of a logical unit
	}
	var naa [16]byte
	copy(naa[:], desig[4:20])
	if bytes.Equal(naa[:], lu.cfg.NAA[:]) {
		return copyUnit{lu: lu, via: []Nexus{from}}, true
	}
	if lu.cfg.Copy == nil {
		return copyUnit{}, false
	}
	other, via := lu.cfg.Copy.LocateLU(naa, from)
	if other == nil || len(via) == 0 {
		return copyUnit{}, false
	}
	return copyUnit{lu: other, via: via}, true
}

// copyIns are the copies writing into a unit from commands received on
// other units.
type copyIns struct {
	mu sync.Mutex // protects m
	m  map[*copyIn]struct{}
}

// copyIn is one such copy: the nexuses through which it may write the
// unit, how to stop it, and done, closed once it no longer writes.
type copyIn struct {
	via    []Nexus
	cancel context.CancelFunc
	done   chan struct{}
}

func (c *copyIns) add(in *copyIn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[*copyIn]struct{})
	}
	c.m[in] = struct{}{}
}

func (c *copyIns) remove(in *copyIn) {
	c.mu.Lock()
	delete(c.m, in)
	c.mu.Unlock()
}

// fence stops the copies writing into the unit through nexus n (every
// copy with n nil; n's initiator port through every target port when n
// names none, as PREEMPT AND ABORT of an ALL_TG_PT registration does) and
// waits until none of them writes any more. The
// caller holds no range claim or reservation lock (a stopping copy may
// need them to return).
func (c *copyIns) fence(n *Nexus) {
	c.mu.Lock()
	var hit []*copyIn
	for in := range c.m {
		if n == nil || slices.ContainsFunc(in.via, func(v Nexus) bool {
			return v.InitiatorPort == n.InitiatorPort && (n.TargetPort == "" || v.TargetPort == n.TargetPort)
		}) {
			in.cancel()
			hit = append(hit, in)
		}
	}
	c.mu.Unlock()
	for _, in := range hit {
		<-in.done
	}
}

func (c *copyResults) hold(k copyKey, st copyStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == nil {
		c.held = make(map[copyKey]copyStatus)
	}
	if len(c.held) >= 1024 {
		clear(c.held) // bounded: old results are dropped, not hoarded
	}
	c.held[k] = st
}

func (c *copyResults) get(k copyKey) (copyStatus, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.held[k]
	return st, ok
}

// receiveCopyResults answers RECEIVE COPY RESULTS (LID1).
func (lu *LogicalUnit) receiveCopyResults(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	alloc := be32(cdb[10:])
	switch cdb[1] & 0x1f {
	case rcrOpParams:
		d := make([]byte, 44+2)
		put32(d, uint32(len(d)-4))
		d[4] = 0x01 // SNLID: list identifiers are supported
		put16(d[8:], xcopyMaxCSCD)
		put16(d[10:], xcopyMaxSegments)
		put32(d[12:], xcopyMaxListLen)
		put32(d[16:], 65535*block.LogicalBlockSize) // maximum segment length
		put32(d[20:], 0)                            // no inline data
		put32(d[24:], 0)                            // no held data
		put16(d[34:], 1)                            // total concurrent copies
		d[36] = 1                                   // maximum concurrent copies
		d[37] = 9                                   // data segment granularity 2^9
		d[43] = 2
		d[44], d[45] = segBlockToBlock, descIdentification
		return Result{Data: clip(d, alloc)}, nil
	case rcrCopyStatus:
		st, ok := lu.copies.get(copyKey{itOf(cmd.Nexus), cdb[2]})
		if !ok {
			return Result{}, invalidField(2, -1) // no such list identifier
		}
		d := make([]byte, 12)
		put32(d, 8)
		d[4] = 0x01 // completed, good
		if st.failed {
			d[4] = 0x02
		}
		put16(d[5:], st.segments)
		d[7] = 0 // transfer count in bytes
		put32(d[8:], uint32(min(st.bytes, 0xffffffff)))
		return Result{Data: clip(d, alloc)}, nil
	}
	return Result{}, invalidField(1, 4)
}
