package tests

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tandem.io/tandem/target/iscsi"
	"tandem.io/tandem/target/iscsi/initiator"
	"tandem.io/tandem/target/iscsi/pdu"
)

// procMemory returns a process's resident size and its peak (VmRSS,
// VmHWM) in bytes.
func procMemory(t *testing.T, pid int) (rss, hwm int64) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/status %s: %v", pid, k, err)
		}
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	return rss, hwm
}

func read10(lba uint32, blocks uint16) []byte {
	c := write10(lba, blocks)
	c[0] = 0x28
	return c
}

// readLatencies runs 4 KiB READs one after the other, over the first span
// bytes of the volume, for d (and at least 1000 of them), and returns the
// latencies of those answered GOOD, sorted, and how many were not.
func readLatencies(t *testing.T, s *initiator.Session, d time.Duration, span uint32) ([]time.Duration, int) {
	t.Helper()
	var lat []time.Duration
	failed := 0
	for end := time.Now().Add(d); time.Now().Before(end) || len(lat)+failed < 1000; {
		i := len(lat) + failed
		lba := uint32(i*7919) % (span / 4096) * 8
		start := time.Now()
		r, err := s.Do(read10(lba, 8), nil, 4096)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("4 KiB READ %d: %v", i, err)
		}
		if r.Status != statusGood || len(r.Data) != 4096 {
			if failed == 0 {
				t.Errorf("4 KiB READ %d: status %#x, %d bytes", i, r.Status, len(r.Data))
			}
			failed++
			continue
		}
		lat = append(lat, took)
	}
	slices.Sort(lat)
	return lat, failed
}

func pct(lat []time.Duration, p int) time.Duration { return lat[len(lat)*p/100] }

// flood plays an initiator that sends everything it can, reading (and
// discarding) its responses: commands at the window's edge whatever
// MaxCmdSN says, commands far outside the window on either side,
// immediate commands beyond the allowance, pings with data and ABORT TASK
// for tasks that do not exist. It returns how many PDUs it sent.
func flood(ctx context.Context, r *initiator.Raw) int64 {
	var exp atomic.Uint32 // ExpCmdSN as the target last said
	exp.Store(r.CmdSN())
	go func() {
		for {
			h, _, err := r.Read()
			if err != nil {
				return
			}
			exp.Store(binary.BigEndian.Uint32(h[28:]))
		}
	}()
	ping := make([]byte, 4096)
	var sent int64
	itt := uint32(1 << 20)
	for ctx.Err() == nil {
		cmdSN := exp.Load()
		read := func(immediate bool, sn uint32) *pdu.SCSICommand {
			itt++
			c := &pdu.SCSICommand{Immediate: immediate, Final: true, Read: true, ITT: itt, ExpectedDataTransferLength: 4096, CmdSN: sn}
			copy(c.CDB[:], read10(itt%4096*8, 8))
			return c
		}
		batch := []struct {
			m    interface{ Marshal(*pdu.Header) }
			data []byte
		}{
			{read(false, cmdSN), nil}, {read(false, cmdSN+1), nil}, {read(false, cmdSN+2), nil}, {read(false, cmdSN+3), nil},
			{read(true, cmdSN), nil}, {read(true, cmdSN), nil}, {read(true, cmdSN), nil}, {read(true, cmdSN), nil},
			{read(true, cmdSN), nil}, {read(true, cmdSN), nil},
			{read(false, cmdSN+100000), nil}, {read(false, cmdSN-100000), nil},
			{&pdu.NOPOut{Immediate: true, ITT: itt + 1, TTT: 0xffffffff, CmdSN: cmdSN}, ping},
			{&pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFAbortTask, ITT: itt + 2, ReferencedTaskTag: 7, CmdSN: cmdSN, RefCmdSN: cmdSN - 1}, nil},
		}
		itt += 2
		for _, p := range batch {
			if err := r.Write(p.m, p.data); err != nil {
				return sent
			}
		}
		if err := r.Flush(); err != nil {
			return sent
		}
		sent += int64(len(batch))
	}
	return sent
}

// hog plays an initiator that never reads a byte and holds as much buffer
// memory as it can: WRITEs of 32 MiB sending only their first 64 KiB and
// READs of 1 MiB, ignoring the window, until the target stops reading it
// (its writes block) or ctx ends. It returns how many PDUs it sent.
func hog(ctx context.Context, r *initiator.Raw) int64 {
	first := make([]byte, 65536)
	var sent int64
	cmdSN, itt := r.CmdSN(), uint32(1<<20)
	for ctx.Err() == nil {
		itt++
		wr := &pdu.SCSICommand{Final: true, Write: true, ITT: itt, ExpectedDataTransferLength: 32 << 20, CmdSN: cmdSN}
		copy(wr.CDB[:], write10(0, 65535))
		cmdSN++
		itt++
		rd := &pdu.SCSICommand{Final: true, Read: true, ITT: itt, ExpectedDataTransferLength: 1 << 20, CmdSN: cmdSN}
		copy(rd.CDB[:], read10(0, 2048))
		cmdSN++
		if r.Write(wr, first) != nil || r.Write(rd, nil) != nil || r.Flush() != nil {
			return sent
		}
		sent += 2
	}
	return sent
}

// pile plays an initiator that never reads a byte and sends commands that
// each cost the target a task: immediate 4 KiB READs, and 4 KiB READs
// ignoring the window. None needs an R2T, so nothing it sends makes the
// target queue a PDU itself. It returns how many PDUs it sent.
func pile(ctx context.Context, r *initiator.Raw) int64 {
	var sent int64
	cmdSN, itt := r.CmdSN(), uint32(1<<20)
	for ctx.Err() == nil {
		for i := range 16 {
			itt++
			c := &pdu.SCSICommand{Immediate: i > 0, Final: true, Read: true, ITT: itt, ExpectedDataTransferLength: 4096, CmdSN: cmdSN}
			copy(c.CDB[:], read10(itt%4096*8, 8))
			if i == 0 {
				cmdSN++
			}
			if r.Write(c, nil) != nil {
				return sent
			}
		}
		if r.Flush() != nil {
			return sent
		}
		sent += 16
	}
	return sent
}

// Hostile initiators — one flooding commands in and out of the window,
// immediate ones too, two that never read their responses — cannot push
// the node's memory past the documented bound (iscsi.Config: per session
// InitiatorBufferBudget plus about 3 MiB), nor slow another session's 4 KiB
// reads beyond twice their idle latency (acceptance point 3 of issue 8).
//
// Speed is measured by benchmarks, not asserted by timed tests; the 2×
// bound is the one exception, an explicit acceptance point. To make it
// robust it compares medians of thousands of reads, one at a time, after
// a warm-up, measured the same way in each phase: idle for a second
// before the attack and a second after it (pooled, so that a burst of
// other load on a shared machine in one idle phase does not decide the
// outcome alone), and for four seconds under an attack that started half
// a second before. The attackers run unthrottled in this process, on the
// node's cores: the node has to keep what they cost it small — it
// ignores, rejects, throttles or stops reading them — or their CPU use
// would be what the good session waits for.
func TestHostileInitiators(t *testing.T) {
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "shared", "--size", "256MiB")
	good := n.session(t, "shared", "iqn.2026-11.test:good", 1)
	defer good.Close()
	const span = 16 << 20
	for off := 0; off < span; off += 256 << 10 {
		mustDo(t, good, "fill", write10(uint32(off/512), 512), make([]byte, 256<<10), 0, statusGood)
	}
	readLatencies(t, good, 200*time.Millisecond, span) // warm-up
	idle, _ := readLatencies(t, good, time.Second, span)
	pid := n.cmd.Process.Pid
	baseRSS, _ := procMemory(t, pid)

	attackers := []struct {
		name string
		play func(context.Context, *initiator.Raw) int64
	}{{"flooder", flood}, {"hog", hog}, {"pile", pile}}
	// The documented bound, for this test's sessions.
	const perSession = iscsi.DefaultMaxTransfer*4 + 3<<20 // InitiatorBufferBudget (1 GiB/8) + overhead
	bound := baseRSS + int64(1+len(attackers))*perSession

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	sent := make([]atomic.Int64, len(attackers))
	var raws []*initiator.Raw
	for i, a := range attackers {
		r := n.session(t, "shared", "iqn.2026-11.test:"+a.name, byte(2+i)).Raw()
		raws = append(raws, r)
		wg.Add(1)
		go func() { defer wg.Done(); sent[i].Store(a.play(ctx, r)) }()
	}
	var peakRSS atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			rss, _ := procMemory(t, pid)
			if rss > peakRSS.Load() {
				peakRSS.Store(rss)
			}
			if rss > bound {
				// Do not let an unbounded node eat the machine.
				cancel()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	stop := func() {
		cancel()
		for _, r := range raws {
			r.Close()
		}
		wg.Wait()
	}
	defer stop()
	time.Sleep(500 * time.Millisecond)
	attacked, failed := readLatencies(t, good, 4*time.Second, span)
	_, hwm := procMemory(t, pid)
	over := ctx.Err() != nil
	stop()
	time.Sleep(200 * time.Millisecond)
	after, _ := readLatencies(t, good, time.Second, span)
	before := idle
	idle = append(slices.Clone(idle), after...)
	slices.Sort(idle)

	if len(attacked) == 0 {
		t.Fatalf("all %d 4 KiB READs under attack failed", failed)
	}
	t.Logf("4 KiB READ latency idle: median %v p90 %v (%d reads; %v before the attack, %v after); under attack: median %v p90 %v (%d reads, %d failed; %.2f×)",
		pct(idle, 50), pct(idle, 90), len(idle), pct(before, 50), pct(after, 50),
		pct(attacked, 50), pct(attacked, 90), len(attacked), failed, float64(pct(attacked, 50))/float64(pct(idle, 50)))
	t.Logf("node memory: RSS %d MiB before, peak %d MiB during (VmHWM %d MiB); bound %d MiB",
		baseRSS>>20, peakRSS.Load()>>20, hwm>>20, bound>>20)
	for i, a := range attackers {
		t.Logf("%s sent %d PDUs", a.name, sent[i].Load())
	}
	if over || hwm > bound {
		t.Errorf("node memory went past the documented bound: peak RSS %d MiB, VmHWM %d MiB > %d MiB", peakRSS.Load()>>20, hwm>>20, bound>>20)
	}
	if pct(attacked, 50) > 2*pct(idle, 50) {
		t.Errorf("4 KiB READ median latency %v under attack, more than twice the idle %v", pct(attacked, 50), pct(idle, 50))
	}
}
