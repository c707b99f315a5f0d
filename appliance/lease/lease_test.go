package lease

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestTermsValidate(t *testing.T) {
	for _, tc := range []struct {
		terms Terms
		ok    bool
	}{
		{Terms{Duration: time.Second, Drift: DefaultDrift}, true},
		{Terms{Duration: time.Second}, true},
		{Terms{Duration: 0, Drift: 0.01}, false},
		{Terms{Duration: time.Second, Drift: -0.1}, false},
		{Terms{Duration: time.Second, Drift: 0.5}, false},
	} {
		if err := tc.terms.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: Validate() = %v, want ok %v", tc.terms, err, tc.ok)
		}
	}
	w := Terms{Duration: time.Second, Drift: 0.01}.Wait()
	if w < 1020*time.Millisecond || w > 1022*time.Millisecond {
		t.Errorf("Wait() = %v for 1s at 1%%, want about 1.0202s", w)
	}
}

func TestHolder(t *testing.T) {
	h := NewHolder()
	t0 := time.Now()
	if h.Valid(t0) {
		t.Fatal("a new holder holds a lease")
	}
	changed := h.Changed()
	h.Extend(t0, time.Second)
	select {
	case <-changed:
	default:
		t.Fatal("Extend did not signal the change")
	}
	steps := []struct {
		at    time.Duration
		valid bool
	}{{0, true}, {999 * time.Millisecond, true}, {time.Second, false}, {2 * time.Second, false}}
	for _, s := range steps {
		if got := h.Valid(t0.Add(s.at)); got != s.valid {
			t.Errorf("Valid(t0+%v) = %v, want %v", s.at, got, s.valid)
		}
	}
	if r := h.Remaining(t0.Add(400 * time.Millisecond)); r != 600*time.Millisecond {
		t.Errorf("Remaining = %v, want 600ms", r)
	}
	// An answer to an older request does not shorten the lease.
	h.Extend(t0.Add(-500*time.Millisecond), time.Second)
	if !h.Valid(t0.Add(900 * time.Millisecond)) {
		t.Error("an older grant shortened the lease")
	}
	h.Extend(t0.Add(500*time.Millisecond), time.Second)
	if !h.Valid(t0.Add(1400 * time.Millisecond)) {
		t.Error("a newer grant did not extend the lease")
	}
	h.Drop()
	if h.Valid(t0.Add(time.Millisecond)) {
		t.Error("a dropped lease still holds")
	}
}

func TestGrantor(t *testing.T) {
	terms := Terms{Duration: time.Second, Drift: 0.01}
	t0 := time.Now()
	g := NewGrantor(terms, t0)
	// Nothing granted yet: any lease from an earlier leader may still run
	// until Wait after taking office.
	if g.Ended("a", t0.Add(terms.Wait()-time.Millisecond)) {
		t.Error("a lease of an earlier term counted ended before Wait")
	}
	if !g.Ended("a", t0.Add(terms.Wait())) {
		t.Error("a lease of an earlier term not counted ended after Wait")
	}
	if g.Holds("a", t0) {
		t.Error("a node granted nothing holds a lease")
	}
	g.Grant("a", t0.Add(2*time.Second))
	for _, tc := range []struct {
		at           time.Duration
		ended, holds bool
	}{
		{2 * time.Second, false, true},
		{2*time.Second + 999*time.Millisecond, false, true},
		{3 * time.Second, false, false},
		{2*time.Second + terms.Wait(), true, false},
	} {
		now := t0.Add(tc.at)
		if got := g.Ended("a", now); got != tc.ended {
			t.Errorf("at %v: Ended = %v, want %v", tc.at, got, tc.ended)
		}
		if got := g.Holds("a", now); got != tc.holds {
			t.Errorf("at %v: Holds = %v, want %v", tc.at, got, tc.holds)
		}
	}
	if d := g.EndsIn("a", t0.Add(2*time.Second)); d != terms.Wait() {
		t.Errorf("EndsIn right after a grant = %v, want %v", d, terms.Wait())
	}
	// A grant recorded late (an older time) does not move the last back.
	g.Grant("a", t0.Add(time.Second))
	if g.Ended("a", t0.Add(2*time.Second+terms.Wait()-time.Millisecond)) {
		t.Error("an older grant moved the last grant back")
	}
}

// TestDriftBound runs a holder and a grantor on clocks whose rates differ
// from true time by up to the stated drift, each way, with the grant made
// some time after the request: at no true time does the holder think it
// holds the lease while the grantor thinks it has ended. With the drift
// understated (clocks further off than Terms.Drift), the overlap shows.
func TestDriftBound(t *testing.T) {
	const drift = 0.01
	terms := Terms{Duration: time.Second, Drift: drift}
	rng := rand.New(rand.NewPCG(1, 2))
	overlap := func(holderRate, leaderRate float64, delay time.Duration) bool {
		base := time.Now()
		// clock returns what a clock of rate r reads at true time real.
		clock := func(r float64, real time.Duration) time.Time {
			return base.Add(time.Duration(float64(real) * r))
		}
		h := NewHolder()
		g := NewGrantor(terms, clock(leaderRate, 0))
		asked := 10 * time.Millisecond
		h.Extend(clock(holderRate, asked), terms.Duration)
		g.Grant("p", clock(leaderRate, asked+delay))
		for real := asked; real < asked+delay+2*terms.Duration; real += time.Millisecond / 4 {
			if h.Valid(clock(holderRate, real)) && g.Ended("p", clock(leaderRate, real)) {
				return true
			}
		}
		return false
	}
	extremes := []float64{1 - drift, 1 + drift}
	for _, hr := range extremes {
		for _, lr := range extremes {
			if overlap(hr, lr, 0) {
				t.Errorf("holder rate %v, leader rate %v: both believed at once", hr, lr)
			}
		}
	}
	for i := 0; i < 200; i++ {
		hr := 1 + (rng.Float64()*2-1)*drift
		lr := 1 + (rng.Float64()*2-1)*drift
		delay := time.Duration(rng.IntN(300)) * time.Millisecond
		if overlap(hr, lr, delay) {
			t.Errorf("holder rate %v, leader rate %v, grant %v after the request: both believed at once", hr, lr, delay)
		}
	}
	// The bound is what keeps them apart: clocks 3% apart each way break
	// a 1% Wait.
	if !overlap(1-3*drift, 1+3*drift, 0) {
		t.Error("clocks outside the stated drift did not overlap: the test cannot fail")
	}
}

func TestGrantorLapsed(t *testing.T) {
	terms := Terms{Duration: time.Second, Drift: 0.01}
	t0 := time.Now()
	g := NewGrantor(terms, t0)
	g.Grant("b", t0)
	g.Grant("a", t0.Add(500*time.Millisecond))
	g.Grant("c", t0.Add(2*time.Second))
	known := []string{"a", "b", "c", "d"} // d: never granted in this term
	if got := g.Lapsed(t0.Add(time.Second), known); len(got) != 0 {
		t.Errorf("Lapsed one lease in = %v, want none (d's lease of an earlier term may still run)", got)
	}
	if got := g.Lapsed(t0.Add(2*time.Second), known); !slices.Equal(got, []string{"a", "b", "d"}) {
		t.Errorf("Lapsed at 2s = %v, want [a b d]", got)
	}
	g.Grant("a", t0.Add(2*time.Second))
	if got := g.Lapsed(t0.Add(2100*time.Millisecond), known); !slices.Equal(got, []string{"b", "d"}) {
		t.Errorf("Lapsed after a renewed = %v, want [b d]", got)
	}
}

// TestGrantorSettle: once settled, an earlier leader's grant to a node
// counts from when its proof was applied here (or the floor, if later),
// not from taking office; nodes never proved count from the floor.
func TestGrantorSettle(t *testing.T) {
	terms := Terms{Duration: time.Second, Drift: DefaultDrift}
	w := terms.Wait()
	t0 := time.Now()
	office := t0.Add(800 * time.Millisecond) // elected 800 ms after the floor
	e := Earlier{
		Floor: t0,
		Nodes: map[string]time.Time{
			"old-leader": t0.Add(100 * time.Millisecond), // its last proof
			"busy":       t0.Add(900 * time.Millisecond), // proof applied after office (during Settle)
			"stale":      t0.Add(-time.Hour),             // before the floor: the floor counts
			"me":         t0.Add(200 * time.Millisecond), // a leader of an earlier term too
		},
		Leaders: []string{"old-leader", "me"},
	}
	for _, tc := range []struct {
		node string
		at   time.Duration // after t0
		want bool          // Ended
	}{
		{"old-leader", 100*time.Millisecond + w - time.Millisecond, false},
		{"old-leader", 100*time.Millisecond + w, true},
		{"busy", 900*time.Millisecond + w - time.Millisecond, false},
		{"busy", 900*time.Millisecond + w, true},
		{"stale", w - time.Millisecond, false},
		{"stale", w, true},
		{"never", w, true}, // no proof since the floor
	} {
		g := NewGrantor(terms, office)
		now := t0.Add(tc.at)
		if g.Ended(tc.node, now) && now.Sub(office) < w {
			t.Errorf("%s: ended before settling, %v after office", tc.node, now.Sub(office))
		}
		g.Settle(e)
		if got := g.Ended(tc.node, now); got != tc.want {
			t.Errorf("%s at t0+%v: Ended = %v, want %v", tc.node, tc.at, got, tc.want)
		}
	}

	// A grant of this term later than the proof counts from the grant.
	g := NewGrantor(terms, office)
	g.Settle(e)
	g.Grant("old-leader", t0.Add(2*time.Second))
	if g.Ended("old-leader", t0.Add(2*time.Second+w-time.Millisecond)) {
		t.Error("a grant of this term was ignored once settled")
	}

	// Lapsed names known nodes without grants by their earlier proofs.
	if got := g.Lapsed(t0.Add(100*time.Millisecond+w), []string{"old-leader", "busy", "never"}); !slices.Equal(got, []string{"never"}) {
		t.Errorf("Lapsed = %v, want [never] (old-leader was granted again, busy's proof is later)", got)
	}
	if got := g.Lapsed(t0.Add(900*time.Millisecond+w), []string{"busy", "never"}); !slices.Equal(got, []string{"busy", "never"}) {
		t.Errorf("Lapsed = %v, want [busy never]", got)
	}

	// The floating address: every earlier leader's lease but self's, and
	// Wait since the floor.
	g = NewGrantor(terms, office)
	if g.LeadersEnded("me", t0.Add(time.Hour)) {
		t.Error("LeadersEnded before Settle")
	}
	g.Settle(e)
	if g.LeadersEnded("me", t0.Add(100*time.Millisecond+w-time.Millisecond)) {
		t.Error("LeadersEnded before the old leader's proof + Wait")
	}
	if !g.LeadersEnded("me", t0.Add(100*time.Millisecond+w)) {
		t.Error("not LeadersEnded at the old leader's proof + Wait (self's own is not waited for)")
	}
	if g.LeadersEnded("other", t0.Add(100*time.Millisecond+w)) {
		t.Error("LeadersEnded for another node while me, an earlier leader, may hold its lease")
	}
	late := e
	late.Floor = t0.Add(time.Second) // restored a snapshot at t0+1s
	g = NewGrantor(terms, office)
	g.Settle(late)
	if g.LeadersEnded("me", t0.Add(time.Second+w-time.Millisecond)) {
		t.Error("LeadersEnded before Floor+Wait")
	}
	if g.Ended("old-leader", t0.Add(time.Second+w-time.Millisecond)) {
		t.Error("a grant counted from a proof older than the floor")
	}

	// Settle copies: the caller's map may change afterwards.
	g = NewGrantor(terms, office)
	g.Settle(e)
	e.Nodes["old-leader"] = t0.Add(time.Hour)
	if !g.Ended("old-leader", t0.Add(100*time.Millisecond+w)) {
		t.Error("Settle kept the caller's map")
	}
}
