// Package lease keeps a primary from serving once the cluster may have
// promoted another node in its place.
//
// A node holds a lease while the raft leader keeps granting it: the node
// asks, the leader first has a quorum commit an entry it appended after
// the request came in (proof it still leads) and answers. The node's lease runs for Terms.Duration
// from the moment it sent the request, on its own monotonic clock, so it
// ends before the leader believes it does. The leader's controller promotes
// a replica in place of a primary only once the primary's lease has surely
// ended: Terms.Wait after the last grant it made to that node, or after an
// earlier leader's grant to it. The leader proves it still leads by
// committing an entry naming the nodes it is about to grant, appended after
// their requests came in; every node notes when it applied each such entry
// (Earlier), so a new leader, once it has applied every entry of earlier
// terms, knows each earlier grant ended within Wait of when it applied that
// grant's entry. A dead leader's own primaries are thus replaced about a
// lease after their last renewal, not a lease after the next leader took
// office. Until it has those times (Grantor.Settle), a leader counts every
// earlier grant from its taking office.
//
// The only clock assumption is a bound on how far each node's monotonic
// clock's rate may be from true time's (Terms.Drift); wall clocks and their
// steps play no part. A frozen process (SIGSTOP) finds its lease over when
// it resumes, because the monotonic clock kept running; a VM the
// hypervisor pauses may not (its guest clock can stop with it), which is
// why data nodes must not run in VMs that get paused.
package lease

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultDrift is the clock rate bound Tandem states: every node's
// monotonic clock runs within 1% of true time's rate. A quartz clock
// without NTP is within 0.01% or so, NTP slews at most 0.05%; 1% leaves
// room.
const DefaultDrift = 0.01

// Terms are the cluster's lease terms. Leader and holders must use the
// same; a holder never uses a longer Duration than its grant states.
type Terms struct {
	// Duration is how long a grant lets its holder serve, counted from
	// when the holder asked.
	Duration time.Duration
	// Drift bounds how far a node's clock rate is from true time's
	// (0.01: 1%).
	Drift float64
}

// Validate says what is wrong with t.
func (t Terms) Validate() error {
	switch {
	case t.Duration <= 0:
		return fmt.Errorf("lease duration %v: must be positive", t.Duration)
	case t.Drift < 0 || t.Drift >= 0.5:
		return fmt.Errorf("lease clock drift %v: must be in [0, 0.5)", t.Drift)
	}
	return nil
}

// Wait is how long, on the leader's clock, after the last grant to a node
// (or after taking office) its lease has surely ended: a holder whose
// clock runs slow by Drift serves at most Duration/(1-Drift) of real time,
// which a leader whose clock runs fast by Drift counts as
// Duration*(1+Drift)/(1-Drift). A millisecond is added for rounding.
func (t Terms) Wait() time.Duration {
	return time.Duration(float64(t.Duration)*(1+t.Drift)/(1-t.Drift)) + time.Millisecond
}

// Renewal is how often a holder asks: four times per lease, so that three
// lost or late answers in a row still leave it serving.
func (t Terms) Renewal() time.Duration { return t.Duration / 4 }

// Holder is a node's own lease. Its zero value holds no lease; it is safe
// for concurrent use.
type Holder struct {
	base  time.Time    // origin of until, with a monotonic reading
	until atomic.Int64 // ns after base at which the lease ends; 0: none

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when the lease is extended
}

// NewHolder returns a Holder with no lease.
func NewHolder() *Holder {
	return &Holder{base: time.Now(), changed: make(chan struct{})}
}

// Extend records a grant of d for a request sent at asked (the time taken
// just before sending it). A grant older than the current lease changes
// nothing.
func (h *Holder) Extend(asked time.Time, d time.Duration) {
	end := asked.Add(d).Sub(h.base).Nanoseconds()
	for {
		cur := h.until.Load()
		if end <= cur {
			return
		}
		if h.until.CompareAndSwap(cur, end) {
			break
		}
	}
	h.mu.Lock()
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
}

// Drop ends the lease now (the node leaves or was removed).
func (h *Holder) Drop() { h.until.Store(0) }

// Valid reports whether the lease holds at now.
func (h *Holder) Valid(now time.Time) bool {
	return now.Sub(h.base).Nanoseconds() < h.until.Load()
}

// Remaining is how long the lease still holds after now (0 if it does not).
func (h *Holder) Remaining(now time.Time) time.Duration {
	return max(time.Duration(h.until.Load()-now.Sub(h.base).Nanoseconds()), 0)
}

// Changed returns a channel closed at the next extension.
func (h *Holder) Changed() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.changed
}

// Earlier is what a leader knows of the grants of earlier leaders: the
// times, on its own clock, at which it applied the entries that proved them
// (each grant was asked for before its entry was appended, and the entry
// was committed before the grant, so the leader applied it after the ask).
// It is complete only once the leader has applied every entry of the terms
// before its own.
type Earlier struct {
	// Floor is when this process started, or last restored a snapshot:
	// entries applied before (by an earlier run, or folded into the
	// snapshot) count from it.
	Floor time.Time
	// Nodes is when the last entry of an earlier term proving a grant to
	// each node was applied.
	Nodes map[string]time.Time
	// Leaders are the nodes that committed such entries: the earlier
	// leaders that granted leases, themselves included.
	Leaders []string
}

// of is when an earlier grant to node was last proved (Floor if later).
func (e Earlier) of(node string) time.Time {
	if t := e.Nodes[node]; t.After(e.Floor) {
		return t
	}
	return e.Floor
}

// Grantor is the leader's record of the leases it granted in one term of
// office. A new term needs a new Grantor: grants of another leader are not
// in it. It is safe for concurrent use.
type Grantor struct {
	terms Terms
	since time.Time // taking office, or later

	mu      sync.Mutex
	grants  map[string]time.Time // the last grant to each node
	settled bool                 // earlier is complete
	earlier Earlier
}

// Settle gives g the times of earlier leaders' grants, read once this
// leader has applied every entry of the terms before its own. From then on
// an earlier grant counts from when its proof was applied here rather than
// from taking office.
func (g *Grantor) Settle(e Earlier) {
	nodes := make(map[string]time.Time, len(e.Nodes))
	for k, v := range e.Nodes {
		nodes[k] = v
	}
	e.Nodes = nodes
	e.Leaders = slices.Clone(e.Leaders)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.earlier, g.settled = e, true
}

// Settled reports whether Settle was called.
func (g *Grantor) Settled() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.settled
}

// fromEarlier is when node's earlier grants count from; g.mu held.
func (g *Grantor) fromEarlier(node string) time.Time {
	if !g.settled {
		return g.since
	}
	return g.earlier.of(node)
}

// LeadersEnded reports whether the lease of every earlier leader but self
// has surely ended at now (false until Settle), and Wait has passed since
// the floor (an earlier leader whose proofs came before it is unknown): a
// leader that holds something only while it leads with a lease it granted
// itself (the floating address) has given it up.
func (g *Grantor) LeadersEnded(self string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.settled || now.Sub(g.earlier.Floor) < g.terms.Wait() {
		return false
	}
	for _, l := range g.earlier.Leaders {
		if l != self && now.Sub(g.earlier.of(l)) < g.terms.Wait() {
			return false
		}
	}
	return true
}

// NewGrantor returns the Grantor of a leader that took office at or before
// since.
func NewGrantor(terms Terms, since time.Time) *Grantor {
	return &Grantor{terms: terms, since: since, grants: map[string]time.Time{}}
}

// Grant records a grant to node at now, after the leader checked it still
// leads. It returns the duration granted.
func (g *Grantor) Grant(node string, now time.Time) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.After(g.grants[node]) {
		g.grants[node] = now
	}
	return g.terms.Duration
}

// last is the last grant to node, or when earlier grants to it count from
// if later.
func (g *Grantor) last(node string) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, e := g.grants[node], g.fromEarlier(node)
	if t.Before(e) {
		return e
	}
	return t
}

// Ended reports whether node's lease has surely ended at now: no node can
// be serving under it any more.
func (g *Grantor) Ended(node string, now time.Time) bool {
	return now.Sub(g.last(node)) >= g.terms.Wait()
}

// EndsIn is how long after now node's lease has surely ended (0 if it has).
func (g *Grantor) EndsIn(node string, now time.Time) time.Duration {
	return max(g.terms.Wait()-now.Sub(g.last(node)), 0)
}

// Holds reports whether this leader granted node a lease that still runs
// at now: the node reached the leader recently, so it is alive and
// connected (a candidate to promote).
func (g *Grantor) Holds(node string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, ok := g.grants[node]
	return ok && now.Sub(t) < g.terms.Duration
}

// Lapsed returns, sorted, the nodes whose leases have surely ended at now:
// those this leader granted one whose lease ended (and no earlier grant
// runs), and those of known it never granted one once Wait has passed
// since their earlier grants count from (any lease an earlier leader gave
// them has ended).
func (g *Grantor) Lapsed(now time.Time, known []string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for node, t := range g.grants {
		if e := g.fromEarlier(node); e.After(t) {
			t = e
		}
		if now.Sub(t) >= g.terms.Wait() {
			out = append(out, node)
		}
	}
	for _, node := range known {
		if _, ok := g.grants[node]; !ok && !slices.Contains(out, node) && now.Sub(g.fromEarlier(node)) >= g.terms.Wait() {
			out = append(out, node)
		}
	}
	slices.Sort(out)
	return out
}

// EndedFor is how long node's lease has surely been over at now (0 if it
// may still run): a node gone that long is gone for good, as far as this
// leader knows.
func (g *Grantor) EndedFor(node string, now time.Time) time.Duration {
	return max(now.Sub(g.last(node))-g.terms.Wait(), 0)
}
