package tests

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"tandem.io/tandem/target/scsi"
	"tandem.io/tandem/volume"
	"tandem.io/tandem/volume/vfs"
)

// Acceptance 2 of issue 8: power loss at random points through a mix of
// SCSI writes, flushes, FUA writes, UNMAP, WRITE SAME, and the store's
// snapshot, clone, revert, merge (snapshot delete) and resize. The real
// store and the real SCSI command set run on vfs.Mem, which loses every
// write not synced (and, at random, keeps some of them, an overwrite torn at
// a sector), catalog commits included. After each cut the store must open,
// every volume be healthy, every flushed or FUA write read back, and every
// sector hold either its last durable data or data written after it —
// never anything else; a snapshot that exists holds exactly what the volume
// held when it was taken.
//
// TANDEM_POWERLOSS_CUTS sets the number of cuts (default 250; make
// powerloss runs 5000).
func TestPowerLoss(t *testing.T) {
	cuts := 250
	if v, err := strconv.Atoi(os.Getenv("TANDEM_POWERLOSS_CUTS")); err == nil && v > 0 {
		cuts = v
	}
	seed := time.Now().UnixNano()
	if v, err := strconv.ParseInt(os.Getenv("TANDEM_POWERLOSS_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("seed %d (TANDEM_POWERLOSS_SEED=%d to replay)", seed, seed)
	p := newPowerRig(t, rand.New(rand.NewSource(seed)))
	for i := 0; i < 3; i++ {
		p.create(fmt.Sprintf("v%d", i))
	}
	for p.stats.cuts < cuts {
		p.mem.PowerCutAfter(int64(1 + p.rng.Intn(80)))
		for !p.mem.PowerLost() {
			p.step()
		}
		p.stats.cuts++
		p.restart()
		p.verify()
	}
	t.Logf("%d power cuts; %d operations completed (%d writes, %d FUA writes, %d flushes, %d unmaps, %d write sames, %d snapshots, %d clones, %d reverts, %d merges, %d resizes, %d deletes); %d sectors of flushed data verified, %d of them written since the previous cut; 0 lost, 0 unopenable",
		p.stats.cuts, p.stats.ops, p.stats.n["write"], p.stats.n["fua"], p.stats.n["flush"], p.stats.n["unmap"], p.stats.n["writesame"],
		p.stats.n["snapshot"], p.stats.n["clone"], p.stats.n["revert"], p.stats.n["merge"], p.stats.n["resize"], p.stats.n["delete"],
		p.stats.verified, p.stats.flushedSince)
}

const (
	sector     = 512
	volSize    = 1 << 20
	maxVolumes = 6
	anyLBA     = ^uint64(0) // the LBA field of a WRITE SAME pattern
)

// model is what one volume (or snapshot) may hold per sector: the stamp of
// its last durable write, and the stamps written since (each may or may
// not have reached the disk). Stamp 0 is zeros.
type model struct {
	size    int64
	durable []uint64
	pending []map[uint64]bool
}

func newModel(size int64) *model {
	n := size / sector
	return &model{size: size, durable: make([]uint64, n), pending: make([]map[uint64]bool, n)}
}

func (m *model) write(lba, n int64, stamp uint64, durable bool) {
	for s := lba; s < lba+n; s++ {
		if durable {
			m.durable[s], m.pending[s] = stamp, nil
			continue
		}
		if m.pending[s] == nil {
			m.pending[s] = map[uint64]bool{}
		}
		m.pending[s][stamp] = true
	}
}

// current is the content the volume shows now (the newest stamp).
func (m *model) flushAll(current []uint64) {
	copy(m.durable, current)
	clear(m.pending)
}

// exact is a model with no pending writes of size bytes holding stamps
// (zeros past them): a snapshot, or the state read back after a restart.
func exact(stamps []uint64, size int64) *model {
	m := newModel(size)
	copy(m.durable, stamps)
	return m
}

type powerStats struct {
	cuts, ops, verified, flushedSince int
	n                                 map[string]int
}

type powerRig struct {
	t       *testing.T
	rng     *rand.Rand
	mem     *vfs.Mem
	catalog string
	store   *volume.Store
	lus     map[string]*scsi.Target
	stamp   uint64
	tags    map[string]uint64 // a tag per volume, stamped into its sectors
	// vols are the models of the volumes; cur their current content.
	vols  map[string]*model
	cur   map[string][]uint64
	snaps map[string]map[string][]uint64 // volume -> snapshot -> content
	// committed: snapshots whose creation returned (or that a restart
	// listed) and that no merge has been started on: they must be listed.
	committed map[string]map[string]bool
	// since: sectors made durable since the last restart.
	since map[string]map[int64]bool
	// An operation cut short that may or may not have happened.
	buf         []byte // Data-In buffer
	deleteMaybe string
	revertMaybe *maybeRevert
	cloneMaybe  *maybeClone
	stats       powerStats
}

func newPowerRig(t *testing.T, rng *rand.Rand) *powerRig {
	p := &powerRig{t: t, rng: rng, mem: vfs.NewMem(), catalog: filepath.Join(t.TempDir(), "catalog.db"),
		tags: map[string]uint64{}, vols: map[string]*model{}, cur: map[string][]uint64{},
		snaps: map[string]map[string][]uint64{}, since: map[string]map[int64]bool{}, committed: map[string]map[string]bool{},
		stats: powerStats{n: map[string]int{}}, buf: make([]byte, 1<<20)}
	p.open()
	t.Cleanup(func() { p.store.Close() })
	return p
}

var silent = slog.New(slog.NewTextHandler(io.Discard, nil))

func (p *powerRig) open() {
	p.t.Helper()
	s, err := volume.Open(context.Background(), volume.Config{Dir: "/data", FS: p.mem, CatalogPath: p.catalog, Logger: silent})
	if err != nil {
		p.t.Fatalf("after power cut %d the store does not open: %v", p.stats.cuts, err)
	}
	p.store = s
	p.lus = map[string]*scsi.Target{}
}

// target serves a volume's device through the SCSI command set.
func (p *powerRig) target(vol string) *scsi.Target {
	if t := p.lus[vol]; t != nil {
		return t
	}
	dev, err := p.store.Device(vol)
	if err != nil {
		p.t.Fatalf("volume %s: %v", vol, err)
	}
	info, _ := p.store.Get(vol)
	lu, err := scsi.NewLogicalUnit(scsi.LUConfig{Device: dev, NAA: info.NAA, Serial: info.Serial, Logger: silent})
	if err != nil {
		p.t.Fatal(err)
	}
	t, err := scsi.NewTarget(scsi.TargetConfig{LUNs: map[uint64]*scsi.LogicalUnit{0: lu}, Logger: silent})
	if err != nil {
		p.t.Fatal(err)
	}
	p.lus[vol] = t
	p.exec(vol, []byte{0, 0, 0, 0, 0, 0}, nil) // takes the power-on unit attention
	return t
}

var powerNexus = scsi.Nexus{InitiatorPort: "iqn.test:power,i,0x000000000001", TargetPort: "iqn.test:t,t,0x1", RelativePortID: 1, PortGroup: 1}

func (p *powerRig) exec(vol string, cdb, out []byte) scsi.Result {
	expected := uint32(1 << 20) // reads
	if out != nil {
		expected = uint32(len(out))
	}
	return p.target(vol).Execute(context.Background(), &scsi.Command{Nexus: powerNexus, CDB: cdb, DataOut: out, ExpectedLength: expected, Buf: p.buf})
}

// sectorData is the content of one sector written with stamp.
func (p *powerRig) sectorData(vol string, lba uint64, stamp uint64) []byte {
	b := make([]byte, sector)
	binary.BigEndian.PutUint64(b, stamp)
	binary.BigEndian.PutUint64(b[8:], lba)
	binary.BigEndian.PutUint64(b[16:], p.tags[vol])
	copy(b[24:], fills[byte(stamp)][24:])
	return b
}

var zeroSector [sector]byte

// fills[x] is the filler of a sector whose stamp's low byte is x: byte i
// (from 24 on) is x^i.
var fills = func() (f [256][sector]byte) {
	for x := range f {
		for i := 24; i < sector; i++ {
			f[x][i] = byte(x) ^ byte(i)
		}
	}
	return
}()

// stampOf decodes a sector read back, or fails the test on data that no
// write put there.
func (p *powerRig) stampOf(vol string, lba uint64, b []byte) uint64 {
	stamp := binary.BigEndian.Uint64(b)
	var good bool
	if stamp == 0 {
		good = bytes.Equal(b, zeroSector[:])
	} else {
		l := binary.BigEndian.Uint64(b[8:])
		good = (l == lba || l == anyLBA) && binary.BigEndian.Uint64(b[16:]) == p.tags[vol] &&
			bytes.Equal(b[24:], fills[byte(stamp)][24:])
	}
	if !good {
		p.t.Fatalf("after power cut %d: volume %s sector %d holds data no write put there: % x...", p.stats.cuts, vol, lba, b[:24])
	}
	return stamp
}

func (p *powerRig) ok(what string, r scsi.Result) bool {
	if r.Status == scsi.StatusGood {
		return true
	}
	if !p.mem.PowerLost() {
		p.t.Fatalf("%s failed with the power on: status %#x sense % x", what, r.Status, r.Sense)
	}
	return false
}

func (p *powerRig) okErr(what string, err error) bool {
	if err == nil {
		return true
	}
	if !p.mem.PowerLost() {
		p.t.Fatalf("%s failed with the power on: %v", what, err)
	}
	return false
}

func (p *powerRig) names() []string {
	var out []string
	for n := range p.vols {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (p *powerRig) create(name string) {
	if _, err := p.store.Create(context.Background(), volume.Spec{Name: name, Size: volSize}); err != nil {
		p.t.Fatal(err)
	}
	p.tags[name] = p.rng.Uint64()
	p.vols[name], p.cur[name], p.snaps[name] = newModel(volSize), make([]uint64, volSize/sector), map[string][]uint64{}
}

func cdb16(op byte, lba uint64, n uint32) []byte {
	c := make([]byte, 16)
	c[0] = op
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], n)
	return c
}

func (p *powerRig) markDurable(vol string, lba, n int64) {
	if p.since[vol] == nil {
		p.since[vol] = map[int64]bool{}
	}
	for s := lba; s < lba+n; s++ {
		p.since[vol][s] = true
	}
}

// step runs one random operation and, if it completed, records it in the
// model; an operation cut short by the power loss is recorded as what it
// may have done.
func (p *powerRig) step() {
	ctx := context.Background()
	names := p.names()
	vol := names[p.rng.Intn(len(names))]
	m, cur := p.vols[vol], p.cur[vol]
	sectors := m.size / sector
	lba := p.rng.Int63n(sectors)
	n := min(1+p.rng.Int63n(64), sectors-lba)
	if p.rng.Intn(3) == 0 { // often whole 4 KiB blocks, as file systems write
		lba, n = lba&^7, max(8, n&^7)
		n = min(n, sectors-lba)
	}
	done := false
	var kind string
	switch r := p.rng.Intn(100); {
	case r < 40: // WRITE(16), FUA one time in four
		fua := p.rng.Intn(4) == 0
		kind = "write"
		if fua {
			kind = "fua"
		}
		p.stamp++
		data := make([]byte, 0, n*sector)
		for s := lba; s < lba+n; s++ {
			data = append(data, p.sectorData(vol, uint64(s), p.stamp)...)
		}
		c := cdb16(0x8a, uint64(lba), uint32(n))
		if fua {
			c[1] |= 0x08
		}
		m.write(lba, n, p.stamp, false)
		if done = p.ok(kind, p.exec(vol, c, data)); done {
			for s := lba; s < lba+n; s++ {
				cur[s] = p.stamp
			}
			if fua {
				m.write(lba, n, p.stamp, true)
				p.markDurable(vol, lba, n)
			}
		}
	case r < 52: // SYNCHRONIZE CACHE(10)
		kind = "flush"
		if done = p.ok(kind, p.exec(vol, []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil)); done {
			for s := int64(0); s < sectors; s++ {
				if m.pending[s] != nil {
					p.markDurable(vol, s, 1)
				}
			}
			m.flushAll(cur)
		}
	case r < 62: // UNMAP
		kind = "unmap"
		param := make([]byte, 24)
		binary.BigEndian.PutUint16(param, 22)
		binary.BigEndian.PutUint16(param[2:], 16)
		binary.BigEndian.PutUint64(param[8:], uint64(lba))
		binary.BigEndian.PutUint32(param[16:], uint32(n))
		m.write(lba, n, 0, false)
		if done = p.ok(kind, p.exec(vol, []byte{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, param)); done {
			for s := lba; s < lba+n; s++ {
				cur[s] = 0
			}
		}
	case r < 70: // WRITE SAME(16): zeros with UNMAP, or a pattern
		kind = "writesame"
		c := cdb16(0x93, uint64(lba), uint32(n))
		pattern := make([]byte, sector)
		stamp := uint64(0)
		if p.rng.Intn(2) == 0 {
			c[1] |= 0x08 // UNMAP
		} else {
			p.stamp++
			stamp = p.stamp
			pattern = p.sectorData(vol, anyLBA, stamp)
		}
		m.write(lba, n, stamp, false)
		if done = p.ok(kind, p.exec(vol, c, pattern)); done {
			for s := lba; s < lba+n; s++ {
				cur[s] = stamp
			}
		}
	case r < 78 && len(p.snaps[vol]) < 3: // snapshot: flushes, then freezes
		kind = "snapshot"
		name := fmt.Sprintf("s%d", p.stamp)
		p.stamp++
		_, err := p.store.Snapshot(ctx, vol, name)
		if done = p.okErr(kind, err); done {
			for s := int64(0); s < sectors; s++ {
				if m.pending[s] != nil {
					p.markDurable(vol, s, 1)
				}
			}
			m.flushAll(cur)
			p.snaps[vol][name] = append([]uint64(nil), cur...)
			if p.committed[vol] == nil {
				p.committed[vol] = map[string]bool{}
			}
			p.committed[vol][name] = true
		} else {
			// Cut short: the snapshot may exist; it would hold cur.
			p.snaps[vol][name] = append([]uint64(nil), cur...)
		}
	case r < 84 && len(p.snaps[vol]) > 0: // merge: delete a snapshot
		kind = "merge"
		name := p.anySnapshot(vol)
		delete(p.committed[vol], name) // a merge cut short may or may not have removed it
		err := p.store.DeleteSnapshot(ctx, vol, name)
		if errors.Is(err, volume.ErrInUse) {
			return // it has clones
		}
		if done = p.okErr(kind, err); done {
			delete(p.snaps[vol], name)
		}
	case r < 89 && len(p.snaps[vol]) > 0: // revert
		kind = "revert"
		name := p.anySnapshot(vol)
		err := p.store.Revert(ctx, vol, name, nil)
		delete(p.lus, vol)
		if done = p.okErr(kind, err); done {
			// The volume keeps its size; past the snapshot's, zeros.
			snap := p.snaps[vol][name]
			clear(cur)
			copy(cur, snap)
			p.vols[vol] = exact(cur, m.size)
		} else {
			p.revertMaybe = &maybeRevert{vol: vol, to: p.snaps[vol][name]}
		}
	case r < 94 && len(p.snaps[vol]) > 0 && len(p.vols) < maxVolumes: // clone
		kind = "clone"
		name := p.anySnapshot(vol)
		clone := fmt.Sprintf("c%d", p.stamp)
		p.stamp++
		snap := p.snaps[vol][name]
		_, err := p.store.Clone(ctx, vol, name, volume.Spec{Name: clone})
		p.tags[clone] = p.tags[vol] // the clone's sectors carry the source's stamps
		if done = p.okErr(kind, err); done {
			p.vols[clone], p.cur[clone], p.snaps[clone] = exact(snap, int64(len(snap))*sector), append([]uint64(nil), snap...), map[string][]uint64{}
		} else {
			p.cloneMaybe = &maybeClone{name: clone, content: snap}
		}
	case r < 97 && m.size < 4*volSize: // resize
		kind = "resize"
		size := m.size + 1<<20
		_, err := p.store.Resize(ctx, vol, size)
		delete(p.lus, vol)
		if done = p.okErr(kind, err); done {
			p.grow(vol, size)
		}
	case r < 99 && len(p.vols) == maxVolumes: // delete a clone
		kind = "delete"
		var clones []string
		for _, n := range names {
			if n[0] == 'c' {
				clones = append(clones, n)
			}
		}
		if len(clones) == 0 {
			return
		}
		victim := clones[p.rng.Intn(len(clones))]
		err := p.store.Delete(ctx, victim, nil)
		if errors.Is(err, volume.ErrInUse) {
			return // its snapshots have clones
		}
		delete(p.lus, victim)
		if done = p.okErr(kind, err); done {
			p.forget(victim)
		} else {
			p.deleteMaybe = victim
		}
	default:
		return
	}
	if done {
		p.stats.ops++
		p.stats.n[kind]++
	}
}

// What a cut-short revert or clone may have left; resolved at verify.
type maybeRevert struct {
	vol string
	to  []uint64
}

type maybeClone struct {
	name    string
	content []uint64
}

func (p *powerRig) forget(vol string) {
	delete(p.vols, vol)
	delete(p.cur, vol)
	delete(p.snaps, vol)
	delete(p.tags, vol)
	delete(p.committed, vol)
}

func (p *powerRig) anySnapshot(vol string) string {
	var names []string
	for n := range p.snaps[vol] {
		names = append(names, n)
	}
	sort.Strings(names)
	return names[p.rng.Intn(len(names))]
}

func (p *powerRig) grow(vol string, size int64) {
	m := p.vols[vol]
	extra := (size - m.size) / sector
	m.durable = append(m.durable, make([]uint64, extra)...)
	m.pending = append(m.pending, make([]map[uint64]bool, extra)...)
	m.size = size
	p.cur[vol] = append(p.cur[vol], make([]uint64, extra)...)
}

func (p *powerRig) restart() {
	p.store.Close()
	var rng *rand.Rand
	if p.rng.Intn(4) != 0 {
		rng = rand.New(rand.NewSource(p.rng.Int63()))
	}
	p.mem.Restart(rng)
	p.open()
}

// read returns the stamps of every sector of a volume, checking each.
func (p *powerRig) read(vol string, size int64) []uint64 {
	out := make([]uint64, 0, size/sector)
	for off := int64(0); off < size; off += 1 << 20 {
		n := min(1<<20, size-off) / sector
		r := p.exec(vol, cdb16(0x88, uint64(off/sector), uint32(n)), nil)
		if r.Status != scsi.StatusGood {
			p.t.Fatalf("after power cut %d: reading volume %s at %d: status %#x sense % x", p.stats.cuts, vol, off, r.Status, r.Sense)
		}
		for i := int64(0); i < n; i++ {
			out = append(out, p.stampOf(vol, uint64(off/sector+i), r.Data[i*sector:(i+1)*sector]))
		}
	}
	return out
}

// verify checks the store after a restart against the models, then makes
// the models what was read (all of it is durable now).
func (p *powerRig) verify() {
	ctx := context.Background()
	infos := map[string]volume.Info{}
	for _, in := range p.store.List() {
		if in.Error != "" {
			p.t.Fatalf("after power cut %d: volume %s is damaged: %s", p.stats.cuts, in.Name, in.Error)
		}
		infos[in.Name] = in
	}
	if c := p.cloneMaybe; c != nil {
		if _, ok := infos[c.name]; ok {
			p.vols[c.name], p.cur[c.name], p.snaps[c.name] = exact(c.content, int64(len(c.content))*sector), append([]uint64(nil), c.content...), map[string][]uint64{}
		}
		p.cloneMaybe = nil
	}
	if d := p.deleteMaybe; d != "" {
		if _, ok := infos[d]; !ok {
			p.forget(d)
		}
		p.deleteMaybe = ""
	}
	for name := range infos {
		if p.vols[name] == nil {
			p.t.Fatalf("after power cut %d: volume %s appeared from nowhere", p.stats.cuts, name)
		}
	}
	for _, vol := range p.names() {
		info, ok := infos[vol]
		if !ok {
			p.t.Fatalf("after power cut %d: volume %s is gone", p.stats.cuts, vol)
		}
		m := p.vols[vol]
		if info.Size != m.size {
			// A resize cut short may or may not have been committed.
			if info.Size != m.size+1<<20 {
				p.t.Fatalf("after power cut %d: volume %s is %d bytes, want %d", p.stats.cuts, vol, info.Size, m.size)
			}
			p.grow(vol, info.Size)
		}
		got := p.read(vol, info.Size)
		if r := p.revertMaybe; r != nil && r.vol == vol && equalStamps(got, r.to) {
			m = exact(r.to, info.Size)
		}
		for s, stamp := range got {
			if stamp != m.durable[s] && !m.pending[s][stamp] {
				p.t.Fatalf("after power cut %d: volume %s sector %d holds write %d; durable was %d, written since %v",
					p.stats.cuts, vol, s, stamp, m.durable[s], m.pending[s])
			}
			if m.pending[s] == nil || m.durable[s] == stamp {
				p.stats.verified++
				if p.since[vol][int64(s)] {
					p.stats.flushedSince++
				}
			}
		}
		p.vols[vol], p.cur[vol] = exact(got, info.Size), got
		// Snapshots: those listed hold exactly what they were given.
		listed := map[string]bool{}
		for _, sn := range info.Snapshots {
			want, ok := p.snaps[vol][sn.Name]
			if !ok {
				p.t.Fatalf("after power cut %d: volume %s has snapshot %s nobody took", p.stats.cuts, vol, sn.Name)
			}
			listed[sn.Name] = true
			probe := fmt.Sprintf("probe%d", p.stamp)
			p.stamp++
			if _, err := p.store.Clone(ctx, vol, sn.Name, volume.Spec{Name: probe}); err != nil {
				p.t.Fatal(err)
			}
			p.tags[probe] = p.tags[vol]
			got := p.read(probe, int64(len(want))*sector)
			if !equalStamps(got, want) {
				p.t.Fatalf("after power cut %d: snapshot %s of %s does not hold what the volume held when it was taken", p.stats.cuts, sn.Name, vol)
			}
			delete(p.lus, probe)
			if err := p.store.Delete(ctx, probe, nil); err != nil {
				p.t.Fatal(err)
			}
			delete(p.tags, probe)
		}
		for name := range p.committed[vol] {
			if !listed[name] {
				p.t.Fatalf("after power cut %d: snapshot %s of %s was created (the call returned) and is gone", p.stats.cuts, name, vol)
			}
		}
		p.committed[vol] = listed
		for name := range p.snaps[vol] {
			if !listed[name] {
				delete(p.snaps[vol], name) // never committed, or merged
			}
		}
	}
	p.revertMaybe = nil
	p.since = map[string]map[int64]bool{}
}

func equalStamps(a, b []uint64) bool {
	if len(a) < len(b) {
		return false
	}
	for i := range b {
		if a[i] != b[i] {
			return false
		}
	}
	for _, x := range a[len(b):] {
		if x != 0 {
			return false
		}
	}
	return true
}
