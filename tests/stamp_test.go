package tests

// The stamped-block checker. Failover tests must trust no node: the
// program in testdata/stamp (a libiscsi initiator) writes 4 KiB blocks that
// each name their LBA, writer and sequence number, and prints every write
// it issued, every answer it got and every read's result to a file of the
// test process, one flushed line per event. checkStamps then holds each
// read during the run and the final contents of the volume to that
// history: a block must hold the last write acknowledged before it was
// read, or a later write whose outcome is unknown (failed, timed out, or
// cut off); anything else is data lost, resurrected or invented.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// stampRef names a stamp: the writer and its sequence number. seq 0 is an
// all-zero block (never written).
type stampRef struct {
	writer int
	seq    uint64
}

func (s stampRef) String() string {
	if s.seq == 0 {
		return "zeros"
	}
	return fmt.Sprintf("writer %d seq %d", s.writer, s.seq)
}

type stampOutcome int

const (
	stampPending stampOutcome = iota // no answer before the history ended
	stampAcked                       // completed GOOD
	stampFailed                      // failed or timed out: may or may not have landed
	stampValue                       // a read that returned a valid stamp or zeros
	stampBad                         // a read that returned an invalid block
)

// stampWrite is one W line and its answer. Times are the stamp process's
// CLOCK_MONOTONIC nanoseconds, comparable between processes on one host.
type stampWrite struct {
	seq     uint64
	lba     uint64
	issued  int64
	done    int64 // 0 while pending
	outcome stampOutcome
	reason  string // why it failed
}

// stampRead is one R line and its answer.
type stampRead struct {
	id      uint64
	lba     uint64
	issued  int64
	done    int64
	outcome stampOutcome // pending, failed, value or bad
	got     stampRef     // for stampValue
	reason  string       // why it failed, or what is wrong with the block
}

// stampHistory is what one `stamp run` process printed.
type stampHistory struct {
	writer   int
	writes   []stampWrite // writes[i].seq == i+1
	reads    []stampRead  // reads[i].id == i+1
	connects int
	losses   int
	first    int64 // time of the first line
	ended    bool  // the E line was read
	// outageMax is the longest time between two successful operations:
	// the E line's figure, or computed from the lines when the process
	// ended without one.
	outageMax time.Duration
}

// stampMaxLine bounds a history line (reasons are short).
const stampMaxLine = 4096

// parseStampHistory reads the stdout of one `stamp run --writer writer`.
// It is strict: the history is the only witness, so a line out of place
// (an answer to nothing, two answers, a new command while one is
// outstanding, time going backwards, counts in E that disagree) is an
// error, not something to skip. A history may end without E, its last
// command unanswered: the process was killed.
func parseStampHistory(r io.Reader, writer int) (stampHistory, error) {
	h := stampHistory{writer: writer}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), stampMaxLine)
	var (
		last    int64
		open    byte // 'W' or 'R' while a command awaits its answer
		lastOK  int64
		failing bool
		counts  struct{ writes, acked, failed, reads uint64 }
	)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if h.ended {
			return h, fmt.Errorf("line %d %q: after the E line", n, line)
		}
		f := strings.SplitN(line, " ", 3)
		if len(f) < 3 || len(f[0]) != 1 {
			return h, fmt.Errorf("line %d %q: not an event", n, line)
		}
		kind, rest := f[0][0], f[1:]
		var (
			t    int64
			err  error
			ok   bool // the line completes a successful operation
			fail bool // the line completes a failed one
		)
		switch kind {
		case 'C', 'D', 'E': // C <t> <portal>, D <t> <reason>, E <t> <counters>
			t, err = stampTime(rest[0])
			switch {
			case err != nil:
			case rest[1] == "":
				err = errors.New("nothing after the time")
			case open != 0:
				err = fmt.Errorf("the %c before it has no answer", open)
			case kind == 'C':
				h.connects++
			case kind == 'D':
				h.losses++
			default:
				var e struct{ writes, acked, failed, reads, outage uint64 }
				_, err = fmt.Sscanf(rest[1], "writes=%d acked=%d failed=%d reads=%d outage_max_ms=%d",
					&e.writes, &e.acked, &e.failed, &e.reads, &e.outage)
				if err == nil && fmt.Sprintf("writes=%d acked=%d failed=%d reads=%d outage_max_ms=%d",
					e.writes, e.acked, e.failed, e.reads, e.outage) != rest[1] {
					err = errors.New("malformed counters")
				}
				if err == nil && (e.writes != counts.writes || e.acked != counts.acked || e.failed != counts.failed || e.reads != counts.reads) {
					err = fmt.Errorf("counters disagree with the lines: writes=%d acked=%d failed=%d reads=%d",
						counts.writes, counts.acked, counts.failed, counts.reads)
				}
				if err == nil && e.outage > math.MaxInt64/uint64(time.Millisecond) {
					err = errors.New("outage out of range")
				}
				h.ended, h.outageMax = true, time.Duration(e.outage)*time.Millisecond
			}
		case 'W', 'R': // W <seq> <lba> <t>, R <id> <lba> <t>
			var num, lba uint64
			g := strings.Split(line, " ")
			if len(g) != 4 {
				err = errors.New("want 4 fields")
				break
			}
			if num, err = stampUint(g[1]); err != nil {
				break
			}
			if lba, err = stampUint(g[2]); err != nil {
				break
			}
			if t, err = stampTime(g[3]); err != nil {
				break
			}
			if open != 0 {
				err = fmt.Errorf("the %c before it has no answer (one command at a time)", open)
				break
			}
			if kind == 'W' {
				if num != uint64(len(h.writes))+1 {
					err = fmt.Errorf("seq %d follows %d", num, len(h.writes))
					break
				}
				h.writes = append(h.writes, stampWrite{seq: num, lba: lba, issued: t})
				counts.writes++
			} else {
				if num != uint64(len(h.reads))+1 {
					err = fmt.Errorf("read %d follows %d", num, len(h.reads))
					break
				}
				h.reads = append(h.reads, stampRead{id: num, lba: lba, issued: t})
				counts.reads++
			}
			open = kind
		case 'A', 'F', 'V', 'X', 'B': // <kind> <seq|id> <t> [...]
			var num uint64
			g := strings.SplitN(line, " ", 4)
			if len(g) < 3 {
				err = errors.New("too few fields")
				break
			}
			if num, err = stampUint(g[1]); err != nil {
				break
			}
			if t, err = stampTime(g[2]); err != nil {
				break
			}
			extra := ""
			if len(g) == 4 {
				extra = g[3]
			}
			want, what := byte('W'), "write"
			if kind != 'A' && kind != 'F' {
				want, what = 'R', "read"
			}
			var cur uint64
			if want == 'W' {
				cur = uint64(len(h.writes))
			} else {
				cur = uint64(len(h.reads))
			}
			if open != want || num != cur {
				err = fmt.Errorf("answers %s %d, which is not outstanding", what, num)
				break
			}
			open = 0
			switch kind {
			case 'A':
				if len(g) != 3 {
					err = errors.New("A has 3 fields")
					break
				}
				w := &h.writes[cur-1]
				w.done, w.outcome = t, stampAcked
				counts.acked++
				ok = true
			case 'F', 'X', 'B':
				if extra == "" {
					err = errors.New("no reason given")
					break
				}
				if kind == 'F' {
					w := &h.writes[cur-1]
					w.done, w.outcome, w.reason = t, stampFailed, extra
					counts.failed++
					fail = true
					break
				}
				rd := &h.reads[cur-1]
				rd.done, rd.reason, rd.outcome = t, extra, stampFailed
				if kind == 'B' {
					rd.outcome, ok = stampBad, true // the read worked; the block is wrong
				} else {
					fail = true
				}
			case 'V':
				v := strings.Split(extra, " ")
				var w, s uint64
				if len(v) != 2 {
					err = errors.New("V wants a writer and a seq")
					break
				}
				if w, err = stampUint(v[0]); err != nil {
					break
				}
				if s, err = stampUint(v[1]); err != nil {
					break
				}
				if w > math.MaxUint32 || (s == 0 && w != 0) {
					err = fmt.Errorf("impossible stamp writer %d seq %d", w, s)
					break
				}
				rd := &h.reads[cur-1]
				rd.done, rd.outcome, rd.got = t, stampValue, stampRef{int(w), s}
				ok = true
			}
		default:
			err = errors.New("unknown event")
		}
		if err != nil {
			return h, fmt.Errorf("line %d %q: %w", n, line, err)
		}
		if t < last {
			return h, fmt.Errorf("line %d %q: time goes back from %d", n, line, last)
		}
		if n == 1 {
			h.first, lastOK = t, t
		}
		last = t
		if ok {
			h.outageMax, lastOK, failing = max(h.outageMax, time.Duration(t-lastOK)), t, false
		}
		failing = failing || fail
	}
	if err := sc.Err(); err != nil {
		return h, fmt.Errorf("reading the history: %w", err)
	}
	if !h.ended && failing {
		h.outageMax = max(h.outageMax, time.Duration(last-lastOK))
	}
	return h, nil
}

func stampUint(s string) (uint64, error) {
	if s == "" || s[0] == '+' {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return strconv.ParseUint(s, 10, 64)
}

func stampTime(s string) (int64, error) {
	v, err := stampUint(s)
	if err != nil || v > math.MaxInt64 {
		return 0, fmt.Errorf("time %q: not a count of nanoseconds", s)
	}
	return int64(v), nil
}

// stampDump is what `stamp dump` printed: every block's stamp, or what is
// wrong with it.
type stampDump struct {
	blocks map[uint64]stampRef // LBA -> stamp (seq 0: zeros)
	bad    map[uint64]string   // LBA -> what is wrong
}

// parseStampDump reads the stdout of `stamp dump`; a block listed twice
// is an error.
func parseStampDump(r io.Reader) (stampDump, error) {
	d := stampDump{blocks: map[uint64]stampRef{}, bad: map[uint64]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), stampMaxLine)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		err := func() error {
			g := strings.SplitN(line, " ", 3)
			if len(g) != 3 || (g[0] != "S" && g[0] != "B") {
				return errors.New("not S or B")
			}
			lba, err := stampUint(g[1])
			if err != nil {
				return err
			}
			if _, dup := d.blocks[lba]; dup {
				return fmt.Errorf("LBA %d listed twice", lba)
			}
			if _, dup := d.bad[lba]; dup {
				return fmt.Errorf("LBA %d listed twice", lba)
			}
			if g[0] == "B" {
				if g[2] == "" {
					return errors.New("no reason given")
				}
				d.bad[lba] = g[2]
				return nil
			}
			v := strings.Split(g[2], " ")
			if len(v) != 2 {
				return errors.New("S wants an LBA, a writer and a seq")
			}
			w, err := stampUint(v[0])
			if err != nil {
				return err
			}
			s, err := stampUint(v[1])
			if err != nil {
				return err
			}
			if w > math.MaxUint32 || (s == 0 && w != 0) {
				return fmt.Errorf("impossible stamp writer %d seq %d", w, s)
			}
			d.blocks[lba] = stampRef{int(w), s}
			return nil
		}()
		if err != nil {
			return d, fmt.Errorf("dump line %d %q: %w", n, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return d, fmt.Errorf("reading the dump: %w", err)
	}
	return d, nil
}

// stampChecker holds the histories indexed for checkStamps.
type stampChecker struct {
	byWriter map[int]*stampHistory
	byLBA    map[uint64][]stampRef // the writes to each LBA, in seq order
	t0       int64                 // earliest time in any history: times print relative to it
}

// checkStamps returns every violation of the histories by the reads they
// contain and by the final dump (nil: check the reads only), each in words
// with the block and the writes involved:
//
//	(a) a read or the dump found a block that is neither zeros nor a
//	    valid stamp of that LBA;
//	(b) a read returned something other than the last write to that block
//	    acknowledged before the read was issued, or a later write issued
//	    before the read was answered (its outcome unknown, or acknowledged
//	    after the read was issued);
//	(c) the dump holds something other than the block's last acknowledged
//	    write or a later one whose outcome is unknown;
//	(d) a stamp names a write never issued, or one issued to another LBA;
//	(e) zeros where a write had been acknowledged.
//
// Every block must have one writer (stamp run gives each writer its own);
// a block written by two is reported too.
func checkStamps(histories []stampHistory, dump *stampDump) []string {
	c := stampChecker{byWriter: map[int]*stampHistory{}, byLBA: map[uint64][]stampRef{}, t0: math.MaxInt64}
	var bad []string
	for i := range histories {
		h := &histories[i]
		if _, dup := c.byWriter[h.writer]; dup {
			bad = append(bad, fmt.Sprintf("two histories of writer %d", h.writer))
			continue
		}
		c.byWriter[h.writer] = h
		if len(h.writes)+len(h.reads) > 0 || h.connects > 0 {
			c.t0 = min(c.t0, h.first)
		}
		for _, w := range h.writes {
			c.byLBA[w.lba] = append(c.byLBA[w.lba], stampRef{h.writer, w.seq})
		}
	}
	lbas := make([]uint64, 0, len(c.byLBA))
	for lba, ws := range c.byLBA {
		lbas = append(lbas, lba)
		if writers := c.writersOf(ws); len(writers) > 1 {
			bad = append(bad, fmt.Sprintf("LBA %d: written by writers %v; a block must have one writer", lba, writers))
		}
	}
	slices.Sort(lbas)

	// (a), (b), (d), (e) for the reads during the run.
	for _, h := range histories {
		for _, rd := range h.reads {
			what := fmt.Sprintf("LBA %d: read %d of writer %d (issued %s, answered %s)", rd.lba, rd.id, h.writer,
				c.at(rd.issued), c.at(rd.done))
			switch rd.outcome {
			case stampBad:
				bad = append(bad, fmt.Sprintf("%s found an invalid block: %s (a)", what, rd.reason))
			case stampValue:
				if v := c.judge(what+" returned", rd.lba, rd.got, rd.issued, rd.done); v != "" {
					bad = append(bad, v)
				}
			}
		}
	}
	if dump == nil {
		return bad
	}

	// (a), (c), (d), (e) for the final contents.
	dumped := make([]uint64, 0, len(dump.bad)+len(dump.blocks))
	for lba := range dump.bad {
		dumped = append(dumped, lba)
	}
	for lba := range dump.blocks {
		dumped = append(dumped, lba)
	}
	slices.Sort(dumped)
	for _, lba := range dumped {
		if why, ok := dump.bad[lba]; ok {
			bad = append(bad, fmt.Sprintf("LBA %d: the final dump found an invalid block: %s; last acknowledged: %s (a)", lba, why,
				c.describeLast(lba)))
			continue
		}
		if v := c.judge(fmt.Sprintf("LBA %d: the final dump holds", lba), lba, dump.blocks[lba], math.MaxInt64, math.MaxInt64); v != "" {
			bad = append(bad, v)
		}
	}
	for _, lba := range lbas {
		_, isBad := dump.bad[lba]
		if _, ok := dump.blocks[lba]; !ok && !isBad {
			bad = append(bad, fmt.Sprintf("LBA %d: written (last acknowledged: %s) but not in the final dump", lba, c.describeLast(lba)))
		}
	}
	return bad
}

func (c *stampChecker) writersOf(ws []stampRef) []int {
	var writers []int
	for _, w := range ws {
		if !slices.Contains(writers, w.writer) {
			writers = append(writers, w.writer)
		}
	}
	return writers
}

// write returns the write a stamp names, nil if it was never issued.
func (c *stampChecker) write(s stampRef) *stampWrite {
	h := c.byWriter[s.writer]
	if h == nil || s.seq == 0 || s.seq > uint64(len(h.writes)) {
		return nil
	}
	return &h.writes[s.seq-1]
}

// judge checks that got may be read at lba by a read issued at from and
// answered at to (math.MaxInt64 for the final dump): it returns "" or the
// violation, prefixed by what.
func (c *stampChecker) judge(what string, lba uint64, got stampRef, from, to int64) string {
	ws := c.byLBA[lba]
	if got.seq != 0 {
		w := c.write(got)
		switch {
		case w == nil:
			return fmt.Sprintf("%s %s, which was never issued (d)", what, got)
		case w.lba != lba:
			return fmt.Sprintf("%s %s, which was written to LBA %d: %s (d)", what, got, w.lba, c.describe(got))
		}
	}
	// base: the last write acknowledged before the read was issued.
	base := -1
	for i, s := range ws {
		if w := c.write(s); w.outcome == stampAcked && w.done < from {
			base = i
		}
	}
	if got.seq == 0 {
		if base < 0 {
			return ""
		}
		return fmt.Sprintf("%s zeros, but %s had been acknowledged (e)", what, c.describe(ws[base]))
	}
	j := slices.Index(ws, got)
	if j == base || (j > base && c.write(got).issued < to) {
		return ""
	}
	rule := "(b)"
	if to == math.MaxInt64 {
		rule = "(c)"
	}
	if j > base {
		return fmt.Sprintf("%s %s, issued only after the read was answered %s", what, c.describe(got), rule)
	}
	why := fmt.Sprintf("%s %s, older than the last acknowledged write, %s", what, c.describe(got), c.describe(ws[base]))
	var later []string
	for _, s := range ws[base+1:] {
		if c.write(s).issued < to {
			later = append(later, c.describe(s))
		}
	}
	if len(later) > 0 {
		why += "; later writes allowed: " + strings.Join(later, ", ")
	}
	return why + " " + rule
}

// describe tells a write's story: when it was issued and answered.
func (c *stampChecker) describe(s stampRef) string {
	w := c.write(s)
	if w == nil {
		return s.String() + " (never issued)"
	}
	switch w.outcome {
	case stampAcked:
		return fmt.Sprintf("%s (issued %s, acknowledged %s)", s, c.at(w.issued), c.at(w.done))
	case stampFailed:
		return fmt.Sprintf("%s (issued %s, failed %s: %s)", s, c.at(w.issued), c.at(w.done), w.reason)
	}
	return fmt.Sprintf("%s (issued %s, no answer)", s, c.at(w.issued))
}

// describeLast names the last acknowledged write to lba.
func (c *stampChecker) describeLast(lba uint64) string {
	ws := c.byLBA[lba]
	for i := len(ws) - 1; i >= 0; i-- {
		if c.write(ws[i]).outcome == stampAcked {
			return c.describe(ws[i])
		}
	}
	return "none"
}

func (c *stampChecker) at(t int64) string {
	return "at " + time.Duration(t-c.t0).String()
}

// stampSummary counts what the histories did, for the test log (and the
// failover time table).
type stampSummary struct {
	writes, acked, failed, pending int
	reads, readsFailed, badReads   int
	connects, losses               int
	maxOutage                      time.Duration
}

func summarizeStamps(histories []stampHistory) stampSummary {
	var s stampSummary
	for _, h := range histories {
		for _, w := range h.writes {
			s.writes++
			switch w.outcome {
			case stampAcked:
				s.acked++
			case stampFailed:
				s.failed++
			default:
				s.pending++
			}
		}
		for _, r := range h.reads {
			s.reads++
			switch r.outcome {
			case stampFailed:
				s.readsFailed++
			case stampBad:
				s.badReads++
			}
		}
		s.connects += h.connects
		s.losses += h.losses
		s.maxOutage = max(s.maxOutage, h.outageMax)
	}
	return s
}

func (s stampSummary) String() string {
	return fmt.Sprintf("writes=%d acked=%d failed=%d unanswered=%d reads=%d failed-reads=%d bad-reads=%d connects=%d losses=%d max-outage=%v",
		s.writes, s.acked, s.failed, s.pending, s.reads, s.readsFailed, s.badReads, s.connects, s.losses, s.maxOutage)
}

// The stamp program, built once per test binary into TestMain's directory
// (removed when the tests end).
var stampBuild struct {
	once    sync.Once
	path    string
	missing string
	err     error
}

// buildStamp compiles testdata/stamp/stamp.c and returns the binary. It
// skips the test when gcc or libiscsi's headers are missing, unless CI is
// set: there `make test` installed them, so their absence fails.
func buildStamp(t *testing.T) string {
	t.Helper()
	stampBuild.once.Do(func() {
		var missing []string
		if _, err := exec.LookPath("gcc"); err != nil {
			missing = append(missing, "gcc")
		}
		if _, err := os.Stat("/usr/include/iscsi/iscsi.h"); err != nil {
			missing = append(missing, "libiscsi-dev (/usr/include/iscsi/iscsi.h)")
		}
		if len(missing) > 0 {
			stampBuild.missing = strings.Join(missing, " and ")
			return
		}
		path := filepath.Join(filepath.Dir(tandemBin), "stamp")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "gcc", "-O2", "-Wall", "-Werror", "-o", path, "testdata/stamp/stamp.c", "-liscsi").CombinedOutput()
		if err != nil {
			stampBuild.err = fmt.Errorf("gcc testdata/stamp/stamp.c: %w\n%s", err, out)
			return
		}
		stampBuild.path = path
	})
	if stampBuild.missing != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed, so the stamp program cannot be built (make test installs them)", stampBuild.missing)
		}
		t.Skipf("%s not installed, so the stamp program cannot be built; run make deps", stampBuild.missing)
	}
	if stampBuild.err != nil {
		t.Fatal(stampBuild.err)
	}
	return stampBuild.path
}

// stampConfig is a load of `stamp run` writers on one LUN, and the dump
// of it.
type stampConfig struct {
	portals   []string
	target    string
	writers   int
	blocks    int
	seconds   int
	readEvery int // every R-th operation reads (0: none)
	timeout   int // per command, seconds (0: stamp's default, 5)
	maxOutage int // seconds without a login before stamp gives up (0: 30)
}

func (c stampConfig) args(cmd string) []string {
	a := []string{cmd, "--portals", strings.Join(c.portals, ","), "--target", c.target, "--blocks", strconv.Itoa(c.blocks)}
	if c.timeout > 0 {
		a = append(a, "--timeout", strconv.Itoa(c.timeout))
	}
	if c.maxOutage > 0 {
		a = append(a, "--max-outage", strconv.Itoa(c.maxOutage))
	}
	return a
}

// limit is how long a stamp process may take before the test kills it.
func (c stampConfig) limit() time.Duration {
	outage := c.maxOutage
	if outage == 0 {
		outage = 30
	}
	return time.Duration(c.seconds+outage)*time.Second + time.Minute
}

// stampRun is one `stamp run` process. Its history goes straight to a file
// in the test's temporary directory, outside every node.
type stampRun struct {
	writer int
	out    string
	stderr *logBuffer
	done   chan struct{} // closed when the process has exited
	exit   error         // how it exited, once done is closed
}

func startStampRun(t *testing.T, bin string, c stampConfig, writer int) *stampRun {
	t.Helper()
	r := &stampRun{writer: writer, out: filepath.Join(t.TempDir(), fmt.Sprintf("stamp-%d.history", writer)),
		stderr: new(logBuffer), done: make(chan struct{})}
	f, err := os.Create(r.out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), c.limit())
	args := append(c.args("run"), "--writer", strconv.Itoa(writer), "--writers", strconv.Itoa(c.writers),
		"--seconds", strconv.Itoa(c.seconds), "--read-every", strconv.Itoa(c.readEvery))
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = f, r.stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		r.exit = cmd.Wait()
		cancel()
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel() // kills the process if the test ends first
		<-r.done
	})
	return r
}

// wait waits for the process and returns its history, and its exit
// error: a history is worth checking however the process ended.
func (r *stampRun) wait(t *testing.T) (stampHistory, error) {
	t.Helper()
	<-r.done
	exit := r.exit
	if exit != nil {
		exit = fmt.Errorf("stamp run --writer %d: %w: %s", r.writer, exit, r.stderr)
	}
	f, err := os.Open(r.out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := parseStampHistory(f, r.writer)
	if err != nil {
		t.Fatalf("history of writer %d (%s): %v", r.writer, r.out, err)
	}
	return h, exit
}

// runStampWriters runs c.writers writers to the end and returns their
// histories; a writer that does not exit 0 fails the test.
func runStampWriters(t *testing.T, bin string, c stampConfig) []stampHistory {
	t.Helper()
	runs := make([]*stampRun, c.writers)
	for w := range runs {
		runs[w] = startStampRun(t, bin, c, w)
	}
	hs := make([]stampHistory, c.writers)
	for w, r := range runs {
		var err error
		if hs[w], err = r.wait(t); err != nil {
			t.Fatal(err)
		}
	}
	return hs
}

// stampDumpOf reads every block of the load with `stamp dump`.
func stampDumpOf(t *testing.T, bin string, c stampConfig) stampDump {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), c.limit())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, c.args("dump")...)
	var stderr logBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("stamp dump: %v\n%s", err, &stderr)
	}
	d, err := parseStampDump(strings.NewReader(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(d.blocks) + len(d.bad); got != c.blocks {
		t.Fatalf("stamp dump listed %d blocks, want %d", got, c.blocks)
	}
	return d
}

// lastAcked returns the LBA of the last acknowledged write in h.
func lastAcked(t *testing.T, h stampHistory) uint64 {
	t.Helper()
	for i := len(h.writes) - 1; i >= 0; i-- {
		if h.writes[i].outcome == stampAcked {
			return h.writes[i].lba
		}
	}
	t.Fatalf("writer %d had no write acknowledged", h.writer)
	return 0
}

// Two writers and their reads against one node for 3 s, then a dump: the
// checker finds nothing. Then two acknowledged blocks are damaged behind
// the writers' backs, one zeroed and one with a byte flipped, and the
// checker reports exactly those two.
func TestStampAgainstOneNode(t *testing.T) {
	bin := buildStamp(t)
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "stamp", "--size", "64MiB")
	c := stampConfig{portals: []string{n.portal}, target: "iqn.2026-11.io.tandem:stamp", writers: 2, blocks: 512,
		seconds: 3, readEvery: 4}
	hs := runStampWriters(t, bin, c)
	sum := summarizeStamps(hs)
	t.Logf("stamp: %v", sum)
	if sum.acked == 0 || sum.reads == sum.readsFailed {
		t.Fatalf("want acknowledged writes and answered reads: %v", sum)
	}
	dump := stampDumpOf(t, bin, c)
	if v := checkStamps(hs, &dump); len(v) > 0 {
		t.Fatalf("%d violations against one healthy node:\n%s", len(v), strings.Join(v[:min(len(v), 20)], "\n"))
	}

	zeroed, flipped := lastAcked(t, hs[0]), lastAcked(t, hs[1])
	s := n.session(t, "stamp", "iqn.2026-11.test:stamp-damage", 1)
	defer s.Close()
	// 4 KiB is 8 of the volume's 512-byte logical blocks.
	mustDo(t, s, "zeroing a block", write16(zeroed, 8), make([]byte, 4096), 0, statusGood)
	p := mustDo(t, s, "reading a block", read16(flipped, 8), nil, 4096, statusGood).Data
	p[100] ^= 0x01
	mustDo(t, s, "writing a block with a flipped bit", write16(flipped, 8), p, 0, statusGood)
	dump = stampDumpOf(t, bin, c)
	v := checkStamps(hs, &dump)
	want := []string{fmt.Sprintf("LBA %d: the final dump holds zeros, but writer 0 seq ", zeroed),
		fmt.Sprintf("LBA %d: the final dump found an invalid block: bad checksum", flipped)}
	if len(v) != len(want) {
		t.Fatalf("after damaging LBAs %d and %d: %d violations, want %d:\n%s", zeroed, flipped, len(v), len(want), strings.Join(v, "\n"))
	}
	for _, w := range want {
		if !slices.ContainsFunc(v, func(s string) bool { return strings.HasPrefix(s, w) }) {
			t.Errorf("no violation starts %q:\n%s", w, strings.Join(v, "\n"))
		}
	}
	t.Logf("the damage reported:\n%s", strings.Join(v, "\n"))
}
