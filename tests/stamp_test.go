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
	"maps"
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
	p := stampParser{h: stampHistory{writer: writer}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), stampMaxLine)
	for n := 1; sc.Scan(); n++ {
		if err := p.line(sc.Text()); err != nil {
			return p.h, fmt.Errorf("line %d %q: %w", n, sc.Text(), err)
		}
	}
	if err := sc.Err(); err != nil {
		return p.h, fmt.Errorf("reading the history: %w", err)
	}
	if !p.h.ended && p.failing {
		p.h.outageMax = max(p.h.outageMax, time.Duration(p.last-p.lastOK))
	}
	return p.h, nil
}

// stampParser builds a stampHistory line by line.
type stampParser struct {
	h       stampHistory
	lines   int
	last    int64 // time of the previous line
	open    byte  // 'W' or 'R' while a command awaits its answer
	lastOK  int64 // when the last operation succeeded
	failing bool  // an operation failed since
	counts  struct{ writes, acked, failed, reads uint64 }
}

// stampResult is how a line ends an operation.
type stampResult int

const (
	stampNoResult stampResult = iota
	stampSucceeded
	stampFailedOp
)

func (p *stampParser) line(line string) error {
	if p.h.ended {
		return errors.New("after the E line")
	}
	kind, rest, _ := strings.Cut(line, " ")
	var (
		t   int64
		res stampResult
		err error
	)
	switch kind {
	case "C", "D", "E":
		t, err = p.session(kind[0], rest)
	case "W", "R":
		t, err = p.issue(kind[0], rest)
	case "A", "F", "V", "X", "B":
		t, res, err = p.answer(kind[0], rest)
	case "":
		return errors.New("not an event")
	default:
		return errors.New("unknown event")
	}
	if err != nil {
		return err
	}
	if t < p.last {
		return fmt.Errorf("time goes back from %d", p.last)
	}
	if p.lines++; p.lines == 1 {
		p.h.first, p.lastOK = t, t
	}
	p.last = t
	switch res {
	case stampSucceeded:
		p.h.outageMax, p.lastOK, p.failing = max(p.h.outageMax, time.Duration(t-p.lastOK)), t, false
	case stampFailedOp:
		p.failing = true
	}
	return nil
}

// session reads C <t> <portal>, D <t> <reason> and E <t> <counters>.
func (p *stampParser) session(kind byte, rest string) (int64, error) {
	ts, text, _ := strings.Cut(rest, " ")
	t, err := stampTime(ts)
	switch {
	case err != nil:
		return 0, err
	case text == "":
		return 0, errors.New("nothing after the time")
	case p.open != 0:
		return 0, fmt.Errorf("the %c before it has no answer", p.open)
	case kind == 'C':
		p.h.connects++
		return t, nil
	case kind == 'D':
		p.h.losses++
		return t, nil
	}
	var e struct{ writes, acked, failed, reads, outage uint64 }
	const format = "writes=%d acked=%d failed=%d reads=%d outage_max_ms=%d"
	if _, err := fmt.Sscanf(text, format, &e.writes, &e.acked, &e.failed, &e.reads, &e.outage); err != nil ||
		fmt.Sprintf(format, e.writes, e.acked, e.failed, e.reads, e.outage) != text {
		return 0, errors.New("malformed counters")
	}
	if c := p.counts; e.writes != c.writes || e.acked != c.acked || e.failed != c.failed || e.reads != c.reads {
		return 0, fmt.Errorf("counters disagree with the lines: writes=%d acked=%d failed=%d reads=%d",
			c.writes, c.acked, c.failed, c.reads)
	}
	if e.outage > math.MaxInt64/uint64(time.Millisecond) {
		return 0, errors.New("outage out of range")
	}
	p.h.ended, p.h.outageMax = true, time.Duration(e.outage)*time.Millisecond
	return t, nil
}

// issue reads W <seq> <lba> <t> and R <id> <lba> <t>.
func (p *stampParser) issue(kind byte, rest string) (int64, error) {
	g := strings.Split(rest, " ")
	if len(g) != 3 {
		return 0, errors.New("want 4 fields")
	}
	num, err := stampUint(g[0])
	if err != nil {
		return 0, err
	}
	lba, err := stampUint(g[1])
	if err != nil {
		return 0, err
	}
	t, err := stampTime(g[2])
	if err != nil {
		return 0, err
	}
	if p.open != 0 {
		return 0, fmt.Errorf("the %c before it has no answer (one command at a time)", p.open)
	}
	if kind == 'W' {
		if num != uint64(len(p.h.writes))+1 {
			return 0, fmt.Errorf("seq %d follows %d", num, len(p.h.writes))
		}
		p.h.writes = append(p.h.writes, stampWrite{seq: num, lba: lba, issued: t})
		p.counts.writes++
	} else {
		if num != uint64(len(p.h.reads))+1 {
			return 0, fmt.Errorf("read %d follows %d", num, len(p.h.reads))
		}
		p.h.reads = append(p.h.reads, stampRead{id: num, lba: lba, issued: t})
		p.counts.reads++
	}
	p.open = kind
	return t, nil
}

// answer reads A <seq> <t>, F <seq> <t> <reason>, V <id> <t> <writer>
// <seq>, X <id> <t> <reason> and B <id> <t> <what>.
func (p *stampParser) answer(kind byte, rest string) (int64, stampResult, error) {
	g := strings.SplitN(rest, " ", 3)
	if len(g) < 2 {
		return 0, 0, errors.New("too few fields")
	}
	num, err := stampUint(g[0])
	if err != nil {
		return 0, 0, err
	}
	t, err := stampTime(g[1])
	if err != nil {
		return 0, 0, err
	}
	extra := ""
	if len(g) == 3 {
		extra = g[2]
	}
	isWrite := kind == 'A' || kind == 'F'
	outstanding, open, what := uint64(len(p.h.reads)), byte('R'), "read"
	if isWrite {
		outstanding, open, what = uint64(len(p.h.writes)), 'W', "write"
	}
	if p.open != open || num != outstanding {
		return 0, 0, fmt.Errorf("answers %s %d, which is not outstanding", what, num)
	}
	switch {
	case kind == 'A' && len(g) != 2:
		return 0, 0, errors.New("A has 3 fields")
	case kind != 'A' && extra == "":
		return 0, 0, errors.New("no reason given")
	}
	p.open = 0
	if isWrite {
		w := &p.h.writes[num-1]
		w.done = t
		if kind == 'A' {
			w.outcome = stampAcked
			p.counts.acked++
			return t, stampSucceeded, nil
		}
		w.outcome, w.reason = stampFailed, extra
		p.counts.failed++
		return t, stampFailedOp, nil
	}
	rd := &p.h.reads[num-1]
	rd.done = t
	switch kind {
	case 'X':
		rd.outcome, rd.reason = stampFailed, extra
		return t, stampFailedOp, nil
	case 'B': // the read worked; the block is wrong
		rd.outcome, rd.reason = stampBad, extra
		return t, stampSucceeded, nil
	}
	v := strings.Split(extra, " ")
	if len(v) != 2 {
		return 0, 0, errors.New("V wants a writer and a seq")
	}
	w, err := stampUint(v[0])
	if err != nil {
		return 0, 0, err
	}
	s, err := stampUint(v[1])
	if err != nil {
		return 0, 0, err
	}
	if w > math.MaxUint32 || (s == 0 && w != 0) {
		return 0, 0, fmt.Errorf("impossible stamp writer %d seq %d", w, s)
	}
	rd.outcome, rd.got = stampValue, stampRef{int(w), s}
	return t, stampSucceeded, nil
}

func stampUint(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || s[0] == '+' {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return v, nil
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
	readEvery int    // every R-th operation reads (0: none)
	timeout   int    // per command, seconds (0: stamp's default, 5)
	maxOutage int    // seconds without a login before stamp gives up (0: 30)
	netns     string // the network namespace stamp runs in ("": this one)
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
	if c.netns != "" {
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.netns, bin}, args...)...)
	}
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
	if c.netns != "" {
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.netns, bin}, c.args("dump")...)...)
	}
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

// The node frozen (SIGSTOP) for 3 s under two writers with a 1 s command
// timeout: each writer's command in flight times out, the writer drops the
// connection and logs in again once the node runs, and the histories,
// writes of unknown outcome included, still check clean against the dump.
func TestStampThroughAFreeze(t *testing.T) {
	bin := buildStamp(t)
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "stamp", "--size", "64MiB")
	c := stampConfig{portals: []string{n.portal}, target: "iqn.2026-11.io.tandem:stamp", writers: 2, blocks: 512,
		seconds: 6, readEvery: 4, timeout: 1}
	runs := []*stampRun{startStampRun(t, bin, c, 0), startStampRun(t, bin, c, 1)}
	time.Sleep(time.Second)
	n.freeze()
	time.Sleep(3 * time.Second)
	n.thaw()
	var hs []stampHistory
	for _, r := range runs {
		h, err := r.wait(t)
		if err != nil {
			t.Fatal(err)
		}
		// Nothing completes while the node is stopped, so the gap
		// spans the freeze.
		if h.losses == 0 || h.connects < 2 || h.outageMax < 2*time.Second {
			t.Errorf("writer %d: %d losses, %d logins, longest outage %v; want the freeze to show", h.writer, h.losses, h.connects, h.outageMax)
		}
		hs = append(hs, h)
	}
	sum := summarizeStamps(hs)
	t.Logf("stamp through a 3 s freeze: %v", sum)
	dump := stampDumpOf(t, bin, c)
	if v := checkStamps(hs, &dump); len(v) > 0 {
		t.Fatalf("%d violations:\n%s", len(v), strings.Join(v[:min(len(v), 20)], "\n"))
	}
}

// stampText joins hand-written history or dump lines.
func stampText(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

// stampHistoryCases are histories for the parser's table test and the
// fuzzer's seeds: err is "" for a valid one, else part of the error.
var stampHistoryCases = []struct {
	name, text, err string
}{
	{"1 a whole run", stampText("C 10 127.0.0.1:3260", "W 1 0 100", "A 1 110", "R 1 0 120", "V 1 130 0 1",
		"W 2 8 140", "F 2 150 timeout after 5 s", "D 151 timeout after 5 s", "C 300 127.0.0.1:3261",
		"R 2 8 310", "X 2 320 connection lost: reset", "D 321 connection lost: reset", "C 400 127.0.0.1:3260",
		"R 3 0 410", "B 3 420 bad magic 0000000000000001", "W 3 0 430", "A 3 440",
		"E 450 writes=3 acked=2 failed=1 reads=3 outage_max_ms=0"), ""},
	{"2 killed with a write outstanding", stampText("C 10 p", "W 1 0 100", "A 1 110", "W 2 0 120"), ""},
	{"3 empty", "", ""},
	{"4 unknown event", stampText("Q 1 2 3"), "unknown event"},
	{"5 not a number", stampText("W x 0 1"), "not a number"},
	{"6 leading plus", stampText("W +1 0 1"), "not a number"},
	{"7 seq gap", stampText("W 2 0 1"), "seq 2 follows 0"},
	{"8 answer to nothing", stampText("A 1 5"), "not outstanding"},
	{"9 two answers", stampText("W 1 0 1", "A 1 2", "F 1 3 timeout"), "not outstanding"},
	{"10 answer to the wrong seq", stampText("W 1 0 1", "A 2 2"), "not outstanding"},
	{"11 a read answered as a write", stampText("R 1 0 1", "A 1 2"), "not outstanding"},
	{"12 failure without a reason", stampText("W 1 0 1", "F 1 2"), "no reason"},
	{"13 two commands at once", stampText("W 1 0 1", "R 1 0 2"), "one command at a time"},
	{"14 time goes back", stampText("W 1 0 100", "A 1 50"), "time goes back"},
	{"15 counters disagree", stampText("W 1 0 1", "A 1 2", "E 3 writes=2 acked=1 failed=0 reads=0 outage_max_ms=0"), "counters disagree"},
	{"16 malformed counters", stampText("E 3 writes=0 acked=0 failed=0 reads=0 outage_max_ms=0 more"), "malformed"},
	{"17 line after E", stampText("E 3 writes=0 acked=0 failed=0 reads=0 outage_max_ms=0", "C 4 p"), "after the E line"},
	{"18 E with a command outstanding", stampText("W 1 0 1", "E 3 writes=1 acked=0 failed=0 reads=0 outage_max_ms=0"), "no answer"},
	{"19 D with a command outstanding", stampText("W 1 0 1", "D 3 lost"), "no answer"},
	{"20 impossible stamp", stampText("R 1 0 1", "V 1 2 3 0"), "impossible stamp"},
	{"21 V without a seq", stampText("R 1 0 1", "V 1 2 3"), "V wants"},
	{"22 A with a reason", stampText("W 1 0 1", "A 1 2 fine"), "3 fields"},
	{"23 empty line", stampText(""), "not an event"},
	{"24 C without a portal", stampText("C 1 "), "nothing after"},
	{"25 line too long", stampText("F 1 2 " + strings.Repeat("x", stampMaxLine)), "too long"},
	{"26 time out of range", stampText("C 9223372036854775808 p"), "not a count"},
}

func TestParseStampHistory(t *testing.T) {
	for _, tc := range stampHistoryCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseStampHistory(strings.NewReader(tc.text), 0)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("valid history refused: %v", err)
			case tc.err != "" && err == nil:
				t.Fatalf("invalid history accepted, want an error with %q", tc.err)
			case tc.err != "" && !strings.Contains(err.Error(), tc.err):
				t.Fatalf("error %q, want one with %q", err, tc.err)
			}
		})
	}
	// What the first history holds.
	h, err := parseStampHistory(strings.NewReader(stampHistoryCases[0].text), 3)
	if err != nil {
		t.Fatal(err)
	}
	wantWrites := []stampWrite{
		{seq: 1, lba: 0, issued: 100, done: 110, outcome: stampAcked},
		{seq: 2, lba: 8, issued: 140, done: 150, outcome: stampFailed, reason: "timeout after 5 s"},
		{seq: 3, lba: 0, issued: 430, done: 440, outcome: stampAcked},
	}
	wantReads := []stampRead{
		{id: 1, lba: 0, issued: 120, done: 130, outcome: stampValue, got: stampRef{0, 1}},
		{id: 2, lba: 8, issued: 310, done: 320, outcome: stampFailed, reason: "connection lost: reset"},
		{id: 3, lba: 0, issued: 410, done: 420, outcome: stampBad, reason: "bad magic 0000000000000001"},
	}
	if h.writer != 3 || !slices.Equal(h.writes, wantWrites) || !slices.Equal(h.reads, wantReads) ||
		h.connects != 3 || h.losses != 2 || h.first != 10 || !h.ended || h.outageMax != 0 {
		t.Fatalf("parsed %+v", h)
	}
	// Without E the outage comes from the lines: the longest time between
	// two successful operations, and to the end when it ends failing.
	for _, tc := range []struct {
		name, text string
		want       time.Duration
	}{
		{"gap between successes", stampText("C 10 p", "W 1 0 100", "A 1 110", "W 2 0 120", "F 2 5000 timeout",
			"D 5001 timeout", "C 6000 p", "W 3 0 6010", "A 3 7000", "W 4 0 7010", "A 4 7020"), 6890},
		{"ends failing", stampText("C 10 p", "W 1 0 100", "A 1 110", "W 2 0 120", "F 2 9000 timeout"), 8890},
		{"the E line's figure", stampText("C 10 p", "W 1 0 100", "A 1 110",
			"E 120 writes=1 acked=1 failed=0 reads=0 outage_max_ms=7"), 7 * time.Millisecond},
	} {
		h, err := parseStampHistory(strings.NewReader(tc.text), 0)
		if err != nil || h.outageMax != tc.want {
			t.Errorf("%s: outage %v (%v), want %v", tc.name, h.outageMax, err, tc.want)
		}
	}
}

func TestParseStampDump(t *testing.T) {
	for _, tc := range []struct {
		name, text, err string
		blocks          map[uint64]stampRef
		bad             map[uint64]string
	}{
		{"1 stamps, zeros and a bad block", stampText("S 0 1 7", "S 8 0 0", "B 16 bad checksum: stored 1 computed 2"), "",
			map[uint64]stampRef{0: {1, 7}, 8: {0, 0}}, map[uint64]string{16: "bad checksum: stored 1 computed 2"}},
		{"2 empty", "", "", map[uint64]stampRef{}, map[uint64]string{}},
		{"3 listed twice", stampText("S 0 1 7", "B 0 bad magic"), "twice", nil, nil},
		{"4 zeros with a writer", stampText("S 0 1 0"), "impossible stamp", nil, nil},
		{"5 writer beyond 32 bits", stampText("S 0 4294967296 1"), "impossible stamp", nil, nil},
		{"6 B without a reason", stampText("B 0 "), "no reason", nil, nil},
		{"7 missing seq", stampText("S 0 1"), "S wants", nil, nil},
		{"8 a history line", stampText("W 1 0 1"), "not S or B", nil, nil},
		{"9 extra field", stampText("S 0 1 2 3"), "S wants", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := parseStampDump(strings.NewReader(tc.text))
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("valid dump refused: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want one with %q", err, tc.err)
			case tc.err == "" && (!maps.Equal(d.blocks, tc.blocks) || !maps.Equal(d.bad, tc.bad)):
				t.Fatalf("parsed %+v", d)
			}
		})
	}
}

func TestCheckStamps(t *testing.T) {
	// Writer 0 writes LBA 0: seq 1 acknowledged at 110, seq 2 timed out
	// (issued 120, failed 200), seq 3 acknowledged at 310; LBA 8: seq 4
	// acknowledged. Then seq 5 to LBA 0 is cut off by the end.
	w0 := []string{"C 10 p", "W 1 0 100", "A 1 110", "W 2 0 120", "F 2 200 timeout after 5 s", "D 201 timeout after 5 s",
		"C 250 p", "W 3 0 300", "A 3 310", "W 4 8 320", "A 4 330"}
	cutOff := append(slices.Clip(w0), "W 5 0 400")
	read := func(lines ...string) []string { return append(slices.Clip(w0), lines...) }
	for _, tc := range []struct {
		name      string
		histories [][]string // by writer
		dump      []string   // nil: no dump
		want      []string   // each violation holds one of these, in order
	}{
		{"1 the last acknowledged everywhere", [][]string{read("R 1 0 400", "V 1 410 0 3", "R 2 8 420", "V 2 430 0 4")},
			[]string{"S 0 0 3", "S 8 0 4", "S 16 0 0"}, nil},
		{"2 a timed-out write that landed, read before the next", [][]string{append(slices.Clip(w0[:5]), "R 1 0 210", "V 1 220 0 2")},
			nil, nil},
		{"3 a timed-out write that did not land", [][]string{append(slices.Clip(w0[:5]), "R 1 0 210", "V 1 220 0 1")}, nil, nil},
		{"4 a cut-off write that landed", [][]string{cutOff}, []string{"S 0 0 5", "S 8 0 4"}, nil},
		{"5 a cut-off write that did not", [][]string{cutOff}, []string{"S 0 0 3", "S 8 0 4"}, nil},
		{"6 zeros where nothing was acknowledged", [][]string{{"W 1 0 100", "F 1 110 timeout", "R 1 0 120", "V 1 130 0 0"}},
			[]string{"S 0 0 0"}, nil},
		{"7 a write that failed yet landed", [][]string{{"W 1 0 100", "F 1 110 connection lost"}}, []string{"S 0 0 1"}, nil},
		{"8 another writer's reads during writes", [][]string{w0, {"R 1 0 150", "V 1 160 0 2", "R 2 0 170", "V 2 180 0 1",
			"R 3 0 305", "V 3 306 0 3", "R 4 0 307", "V 4 308 0 2"}}, nil, nil},

		{"9 a read found a bad block", [][]string{read("R 1 0 400", "B 1 410 bad magic 0000000000000001")}, nil,
			[]string{"LBA 0: read 1 of writer 0 (issued at 390ns, answered at 400ns) found an invalid block: bad magic 0000000000000001 (a)"}},
		{"10 the dump found a bad block", [][]string{w0}, []string{"S 0 0 3", "B 8 bad checksum: stored 1 computed 2"},
			[]string{"LBA 8: the final dump found an invalid block: bad checksum: stored 1 computed 2; last acknowledged: writer 0 seq 4 (issued at 310ns, acknowledged at 320ns) (a)"}},
		{"11 a read went back to an older acknowledged write", [][]string{read("R 1 0 400", "V 1 410 0 1")}, nil,
			[]string{"LBA 0: read 1 of writer 0 (issued at 390ns, answered at 400ns) returned writer 0 seq 1 (issued at 90ns, acknowledged at 100ns), older than the last acknowledged write, writer 0 seq 3 (issued at 290ns, acknowledged at 300ns) (b)"}},
		{"12 a read found a failed write older than the last acknowledged", [][]string{read("R 1 0 400", "V 1 410 0 2")}, nil,
			[]string{"returned writer 0 seq 2 (issued at 110ns, failed at 190ns: timeout after 5 s), older than the last acknowledged write, writer 0 seq 3 (issued at 290ns, acknowledged at 300ns) (b)"}},
		{"13 a read saw a write issued after it was answered", [][]string{w0, {"R 1 0 280", "V 1 290 0 3"}}, nil,
			[]string{"LBA 0: read 1 of writer 1 (issued at 270ns, answered at 280ns) returned writer 0 seq 3 (issued at 290ns, acknowledged at 300ns), issued only after the read was answered (b)"}},
		{"14 the dump went back to an older acknowledged write", [][]string{w0}, []string{"S 0 0 1", "S 8 0 4"},
			[]string{"LBA 0: the final dump holds writer 0 seq 1 (issued at 90ns, acknowledged at 100ns), older than the last acknowledged write, writer 0 seq 3 (issued at 290ns, acknowledged at 300ns) (c)"}},
		{"15 the dump went back to a failed write", [][]string{cutOff}, []string{"S 0 0 2", "S 8 0 4"},
			[]string{"LBA 0: the final dump holds writer 0 seq 2 (issued at 110ns, failed at 190ns: timeout after 5 s), older than the last acknowledged write, writer 0 seq 3 (issued at 290ns, acknowledged at 300ns); later writes allowed: writer 0 seq 5 (issued at 390ns, no answer) (c)"}},
		{"16 a stamp of an unknown writer", [][]string{w0}, []string{"S 0 0 3", "S 8 0 4", "S 16 7 1"},
			[]string{"LBA 16: the final dump holds writer 7 seq 1, which was never issued (d)"}},
		{"17 a seq never issued", [][]string{w0}, []string{"S 0 0 9", "S 8 0 4"},
			[]string{"LBA 0: the final dump holds writer 0 seq 9, which was never issued (d)"}},
		{"18 a stamp at the wrong LBA", [][]string{w0}, []string{"S 0 0 3", "S 8 0 1"},
			[]string{"LBA 8: the final dump holds writer 0 seq 1, which was written to LBA 0: writer 0 seq 1 (issued at 90ns, acknowledged at 100ns) (d)"}},
		{"19 a read of a stamp never issued", [][]string{read("R 1 8 400", "V 1 410 2 4")}, nil,
			[]string{"returned writer 2 seq 4, which was never issued (d)"}},
		{"20 zeros in the dump after an acknowledgement", [][]string{w0}, []string{"S 0 0 3", "S 8 0 0"},
			[]string{"LBA 8: the final dump holds zeros, but writer 0 seq 4 (issued at 310ns, acknowledged at 320ns) had been acknowledged (e)"}},
		{"21 a read of zeros after an acknowledgement", [][]string{read("R 1 0 400", "V 1 410 0 0")}, nil,
			[]string{"returned zeros, but writer 0 seq 3 (issued at 290ns, acknowledged at 300ns) had been acknowledged (e)"}},
		{"22 a written block missing from the dump", [][]string{w0}, []string{"S 0 0 3"},
			[]string{"LBA 8: written (last acknowledged: writer 0 seq 4 (issued at 310ns, acknowledged at 320ns)) but not in the final dump"}},
		{"23 a block with two writers", [][]string{w0, {"W 1 8 500", "A 1 510"}}, nil,
			[]string{"LBA 8: written by writers [0 1]; a block must have one writer"}},
		{"24 every rule at once, in order", [][]string{read("R 1 0 400", "V 1 410 0 1", "R 2 8 420", "B 2 430 bad magic 0")},
			[]string{"S 0 0 2", "S 8 0 0", "S 16 0 7"},
			[]string{"read 1 of writer 0", "read 2 of writer 0", "LBA 0: the final dump holds writer 0 seq 2", "LBA 8: the final dump holds zeros",
				"LBA 16: the final dump holds writer 0 seq 7, which was never issued"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hs []stampHistory
			for w, lines := range tc.histories {
				h, err := parseStampHistory(strings.NewReader(stampText(lines...)), w)
				if err != nil {
					t.Fatal(err)
				}
				hs = append(hs, h)
			}
			var dump *stampDump
			if tc.dump != nil {
				d, err := parseStampDump(strings.NewReader(stampText(tc.dump...)))
				if err != nil {
					t.Fatal(err)
				}
				dump = &d
			}
			got := checkStamps(hs, dump)
			ok := len(got) == len(tc.want)
			for i := 0; ok && i < len(got); i++ {
				ok = strings.Contains(got[i], tc.want[i])
			}
			if !ok {
				t.Fatalf("violations:\n%s\nwant, in order, ones with:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
	// The same writer's history twice is a mistake of the test.
	h, err := parseStampHistory(strings.NewReader(stampText(w0...)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := checkStamps([]stampHistory{h, h}, nil); !slices.Equal(got, []string{"two histories of writer 0"}) {
		t.Fatalf("two histories of one writer: %q", got)
	}
}

func TestSummarizeStamps(t *testing.T) {
	var hs []stampHistory
	for w, text := range []string{stampHistoryCases[0].text, stampHistoryCases[1].text} {
		h, err := parseStampHistory(strings.NewReader(text), w)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	got := summarizeStamps(hs)
	want := stampSummary{writes: 5, acked: 3, failed: 1, pending: 1, reads: 3, readsFailed: 1, badReads: 1,
		connects: 4, losses: 2, maxOutage: 100}
	if got != want {
		t.Fatalf("summary %v, want %v", got, want)
	}
}

// FuzzParseStampHistory: no input panics the parser or the checker, and
// what the parser accepts keeps its invariants.
func FuzzParseStampHistory(f *testing.F) {
	for _, tc := range stampHistoryCases {
		f.Add([]byte(tc.text))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := parseStampHistory(strings.NewReader(string(data)), 0)
		if err != nil {
			return
		}
		for i, w := range h.writes {
			if w.seq != uint64(i)+1 || (w.outcome == stampPending && i != len(h.writes)-1) || (w.done != 0 && w.done < w.issued) {
				t.Fatalf("write %d: %+v", i, w)
			}
		}
		for i, r := range h.reads {
			if r.id != uint64(i)+1 || (r.outcome == stampPending && i != len(h.reads)-1) || (r.done != 0 && r.done < r.issued) {
				t.Fatalf("read %d: %+v", i, r)
			}
		}
		checkStamps([]stampHistory{h}, &stampDump{blocks: map[uint64]stampRef{0: {0, 1}, 8: {0, 0}}, bad: map[uint64]string{16: "x"}})
		summarizeStamps([]stampHistory{h})
	})
}

// FuzzParseStampDump: no input panics the parser or the checker, and no
// block is both valid and bad.
func FuzzParseStampDump(f *testing.F) {
	f.Add([]byte(stampText("S 0 1 7", "S 8 0 0", "B 16 bad checksum: stored 1 computed 2")))
	f.Add([]byte(stampText("S 0 1 7", "B 0 bad magic")))
	f.Add([]byte(stampText("S 0 1 0")))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := parseStampDump(strings.NewReader(string(data)))
		if err != nil {
			return
		}
		for lba := range d.bad {
			if _, ok := d.blocks[lba]; ok {
				t.Fatalf("LBA %d both valid and bad", lba)
			}
		}
		h, err := parseStampHistory(strings.NewReader(stampHistoryCases[0].text), 0)
		if err != nil {
			t.Fatal(err)
		}
		checkStamps([]stampHistory{h}, &d)
	})
}
