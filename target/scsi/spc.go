package scsi

import (
	"context"

	"tandem.io/tandem/volume/block"
)

// padded returns s left-aligned in n bytes of spaces (SPC-4 ASCII fields).
func padded(s string, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = ' '
	}
	copy(b, s)
	return b
}

func (lu *LogicalUnit) inquiry(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	alloc := uint32(be16(cdb[3:]))
	if cdb[1]&0x02 != 0 {
		return Result{}, invalidField(1, 1) // CMDDT is obsolete
	}
	if cdb[1]&0x01 == 0 {
		if cdb[2] != 0 {
			return Result{}, invalidField(2, -1)
		}
		return Result{Data: clip(lu.standardInquiry(), alloc)}, nil
	}
	var page []byte
	switch cdb[2] {
	case 0x00:
		page = vpd(0x00, []byte{0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2})
	case 0x80:
		page = vpd(0x80, []byte(lu.cfg.Serial))
	case 0x83:
		page = vpd(0x83, lu.deviceIdentification(cmd.Nexus))
	case 0xb0:
		page = lu.blockLimits()
	case 0xb1:
		p := make([]byte, 0x3c)
		p[1] = 1 // medium rotation rate: non-rotating
		page = vpd(0xb1, p)
	case 0xb2:
		p := make([]byte, 4)
		if lu.unmapper != nil {
			p[1] = 0x80 | 0x40 | 0x20 | 0x04 // LBPU, LBPWS, LBPWS10, LBPRZ
			p[2] = 0x02                      // thin provisioned
		}
		page = vpd(0xb2, p)
	default:
		return Result{}, invalidField(2, -1)
	}
	return Result{Data: clip(page, alloc)}, nil
}

func vpd(code byte, body []byte) []byte {
	p := make([]byte, 4+len(body))
	p[1] = code
	put16(p[2:], uint16(len(body)))
	copy(p[4:], body)
	return p
}

func (lu *LogicalUnit) standardInquiry() []byte {
	d := make([]byte, 96)
	d[0] = 0x00 // connected, direct access block device
	d[2] = 0x06 // SPC-4
	d[3] = 0x12 // HISUP, response data format 2
	d[4] = byte(len(d) - 5)
	d[5] = 0x10 | 0x08 // TPGS 01b: implicit ALUA; 3PC: EXTENDED COPY
	d[7] = 0x02        // CMDQUE
	copy(d[8:], padded(lu.cfg.VendorID, 8))
	copy(d[16:], padded(lu.cfg.ProductID, 16))
	copy(d[32:], padded(lu.cfg.Revision, 4))
	// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
	for i, v := range []uint16{0x00a0, 0x0960, 0x0460, 0x04c0} {
		put16(d[58+2*i:], v)
	}
	return d
}

// inquiryNoLUN answers INQUIRY for a LUN that does not exist: peripheral
// qualifier 011b, device type 1Fh (SPC-4 §6.6.2).
func inquiryNoLUN(cmd *Command) Result {
	cdb := cmd.CDB
	if len(cdb) < 6 {
		return checkCondition(errInvalidOpcode)
	}
	if cdb[1]&0x01 != 0 {
		return checkCondition(errLUNotSupport)
	}
	d := make([]byte, 36)
	d[0] = 0x7f
	d[2] = 0x06
	d[3] = 0x12
	d[4] = 31
	return Result{Data: clip(d, uint32(be16(cdb[3:])))}
}

// deviceIdentification builds VPD 0x83 designators.
func (lu *LogicalUnit) deviceIdentification(n Nexus) []byte {
	var b []byte
	desig := func(proto, codeSet, assocType byte, piv bool, id []byte) {
		h := []byte{proto<<4 | codeSet, assocType, 0, byte(len(id))}
		if piv {
			h[1] |= 0x80
		}
		b = append(b, h...)
		b = append(b, id...)
	}
	const iscsiProto = 5
	desig(0, 1, 0x03, false, lu.cfg.NAA[:])                                                             // LU: NAA
	desig(0, 2, 0x01, false, append(padded(lu.cfg.VendorID, 8), lu.cfg.Serial...))                      // LU: T10 vendor ID
	desig(iscsiProto, 1, 0x14, true, []byte{0, 0, byte(n.RelativePortID >> 8), byte(n.RelativePortID)}) // port: relative port
	desig(iscsiProto, 1, 0x15, true, []byte{0, 0, byte(n.PortGroup >> 8), byte(n.PortGroup)})           // port: TPG
	if n.TargetPort != "" {
		name := append([]byte(n.TargetPort), 0)
		for len(name)%4 != 0 {
			name = append(name, 0)
		}
		if len(name) <= 252 {
			desig(iscsiProto, 3, 0x18, true, name) // port: SCSI name string
		}
	}
	return b
}

func (lu *LogicalUnit) blockLimits() []byte {
	p := make([]byte, 0x3c)
	p[0] = 0x01 // WSNZ
	p[1] = maxCompareBlocks
	put16(p[2:], granularityBlocks)
	put32(p[4:], maxTransferBlocks)
	put32(p[8:], optimalTransfer)
	if lu.unmapper != nil {
		put32(p[16:], maxUnmapBlocks)
		put32(p[20:], maxUnmapDescs)
		put32(p[24:], granularityBlocks)
		put32(p[28:], 0x80000000) // UGAVALID, alignment 0
	}
	put64(p[32:], maxWriteSameBlocks)
	return vpd(0xb0, p)
}

// requestSense returns a pending unit attention, else NO SENSE (or the
// given error for a LUN that does not exist).
func requestSense(cmd *Command, ns *nexusState, lunErr *SenseError) Result {
	cdb := cmd.CDB
	if len(cdb) < 6 {
		return checkCondition(errInvalidOpcode)
	}
	alloc := uint32(cdb[4])
	var data []byte
	if lunErr != nil {
		data = lunErr.Fixed()
	} else if asc, ok := ns.takeUA(); ok {
		data = sense(KeyUnitAttention, asc).Fixed()
	} else {
		data = sense(KeyNoSense, ascNone).Fixed()
	}
	if cdb[1]&0x01 != 0 { // DESC
		data = descriptorSense(data)
	}
	return Result{Data: clip(data, alloc)}
}

// Mode pages (SBC-3 §6.4).
const (
	pageCaching  = 0x08
	pageControl  = 0x0a
	pageInfoExc  = 0x1c
	pageAll      = 0x3f
	pcCurrent    = 0
	pcChangeable = 1
	pcDefault    = 2
	pcSaved      = 3
)

func (lu *LogicalUnit) modePage(code byte, pc byte) []byte {
	switch code {
	case pageCaching:
		p := make([]byte, 20)
		p[0], p[1] = pageCaching, 18
		switch {
		case pc == pcChangeable:
			p[2] = 0x04 // WCE can be changed (MODE SELECT)
		case pc == pcDefault || !lu.writeThrough.Load():
			p[2] = 0x04 // WCE: the volume has a write cache (the page cache); flush makes it durable
		}
		return p
	case pageControl:
		p := make([]byte, 12)
		p[0], p[1] = pageControl, 10
		switch {
		case pc == pcChangeable:
			p[2] = 0x04 // D_SENSE
			p[4] = 0x08 // SWP
		default:
			p[3] = 0x10 // queue algorithm modifier 1: unrestricted reordering
			put16(p[8:], 0xffff)
			if pc == pcCurrent && lu.descriptorSense.Load() {
				p[2] |= 0x04
			}
			if pc == pcCurrent && lu.swp.Load() {
				p[4] |= 0x08
			}
		}
		return p
	case pageInfoExc:
		p := make([]byte, 12)
		p[0], p[1] = pageInfoExc, 10
		return p
	}
	return nil
}

func (lu *LogicalUnit) modeSense(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	six := cdb[0] == opModeSense6
	dbd := cdb[1]&0x08 != 0
	llbaa := !six && cdb[1]&0x10 != 0
	pc, code, sub := cdb[2]>>6, cdb[2]&0x3f, cdb[3]
	var alloc uint32
	if six {
		alloc = uint32(cdb[4])
	} else {
		alloc = uint32(be16(cdb[7:]))
	}
	if pc == pcSaved {
		return Result{}, sense(KeyIllegalRequest, ascSavingNotSupported)
	}
	if sub != 0 && sub != 0xff {
		return Result{}, invalidField(3, -1)
	}
	var pages []byte
	switch code {
	case pageAll:
		for _, c := range []byte{pageCaching, pageControl, pageInfoExc} {
			pages = append(pages, lu.modePage(c, pc)...)
		}
	case pageCaching, pageControl, pageInfoExc:
		pages = lu.modePage(code, pc)
	default:
		return Result{}, invalidField(2, 5)
	}
	var desc []byte
	if !dbd {
		blocks := lu.blocks()
		if llbaa {
			desc = make([]byte, 16)
			put64(desc, blocks)
			put32(desc[12:], block.LogicalBlockSize)
		} else {
			desc = make([]byte, 8)
			if blocks > 0xffffffff {
				put32(desc, 0xffffffff)
			} else {
				put32(desc, uint32(blocks))
			}
			bs := uint32(block.LogicalBlockSize)
			desc[5], desc[6], desc[7] = byte(bs>>16), byte(bs>>8), byte(bs)
		}
	}
	devSpecific := byte(0x10) // DPOFUA
	if lu.writeProtected() != nil {
		devSpecific |= 0x80
	}
	var hdr []byte
	if six {
		hdr = []byte{0, 0, devSpecific, byte(len(desc))}
	} else {
		hdr = make([]byte, 8)
		hdr[3] = devSpecific
		if llbaa && len(desc) > 0 {
			hdr[4] = 0x01
		}
		put16(hdr[6:], uint16(len(desc)))
	}
	data := append(append(hdr, desc...), pages...)
	if six {
		data[0] = byte(len(data) - 1)
	} else {
		put16(data, uint16(len(data)-2))
	}
	return Result{Data: clip(data, alloc)}, nil
}

const (
	opModeSelect6  = 0x15
	opModeSelect10 = 0x55
)

// modeSelect applies MODE SELECT (6/10). The changeable parameters are WCE
// in the caching page (with it cleared every write is forced to stable
// storage), and D_SENSE (descriptor-format sense data) and SWP (software
// write protect) in the control page. Any other difference from the current
// values is refused, byte by byte, with INVALID FIELD IN PARAMETER LIST;
// other nexuses see MODE PARAMETERS CHANGED.
func (lu *LogicalUnit) modeSelect(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	six := cdb[0] == opModeSelect6
	var plen int
	if six {
		plen = int(cdb[4])
	} else {
		plen = int(be16(cdb[7:]))
	}
	res := Result{DataOutLength: plen}
	switch {
	case cdb[1]&0x01 != 0:
		return res, invalidField(1, 0) // SP: parameters cannot be saved
	case cdb[1]&0x10 == 0 && plen > 0:
		return res, invalidField(1, 4) // PF: only page format
	case plen == 0:
		return res, nil
	case len(cmd.DataOut) < plen:
		return res, errParamLength
	}
	p := cmd.DataOut[:plen]
	hdrLen, bdl := 4, 0
	if six {
		if plen < 4 {
			return res, errParamLength
		}
		bdl = int(p[3])
	} else {
		if plen < 8 {
			return res, errParamLength
		}
		hdrLen, bdl = 8, int(be16(p[6:]))
	}
	if hdrLen+bdl > plen {
		return res, errParamLength
	}
	// A block descriptor may restate the capacity and block length, not
	// change them.
	if bdl != 0 {
		d := p[hdrLen : hdrLen+bdl]
		if bdl != 8 && bdl != 16 {
			return res, invalidParam(hdrLen - 1)
		}
		if bl := uint32(d[bdl-3])<<16 | uint32(d[bdl-2])<<8 | uint32(d[bdl-1]); bl != block.LogicalBlockSize {
			return res, invalidParam(hdrLen + bdl - 3)
		}
	}
	wce := !lu.writeThrough.Load()
	dsense, swp := lu.descriptorSense.Load(), lu.swp.Load()
	for off := hdrLen + bdl; off < plen; {
		if off+2 > plen {
			return res, errParamLength
		}
		code, spf := p[off]&0x3f, p[off]&0x40 != 0
		if spf {
			return res, invalidParam(off)
		}
		cur := lu.modePage(code, pcCurrent)
		if cur == nil {
			return res, invalidParam(off)
		}
		n := 2 + int(p[off+1])
		if n != len(cur) {
			return res, invalidParam(off + 1)
		}
		if off+n > plen {
			return res, errParamLength
		}
		mask := lu.modePage(code, pcChangeable)
		for i := 2; i < n; i++ {
			if (p[off+i]^cur[i])&^mask[i] != 0 {
				return res, invalidParam(off + i)
			}
		}
		switch code {
		case pageCaching:
			wce = p[off+2]&0x04 != 0
		case pageControl:
			dsense, swp = p[off+2]&0x04 != 0, p[off+4]&0x08 != 0
		}
		off += n
	}
	changed := false
	if wce == lu.writeThrough.Load() {
		if !wce {
			// Going write-through: what is cached becomes durable now.
			if err := lu.dev.Flush(ctx); err != nil {
				return res, deviceError(ctx, err, true)
			}
		}
		lu.writeThrough.Store(!wce)
		changed = true
	}
	if lu.descriptorSense.Swap(dsense) != dsense {
		changed = true
	}
	if lu.swp.Swap(swp) != swp {
		changed = true
	}
	if changed {
		lu.ua(&cmd.Nexus, ascModeParamsChanged)
	}
	return res, nil
}
