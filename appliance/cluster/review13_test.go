package cluster

import (
	"strings"
	"testing"
	"time"
)

// TestReview13BadNameDoesNotPoisonBatch: renewals share one LeaseProof; a
// request naming a node the proof cannot carry (a name LeaseProof.apply
// refuses) must fail alone, not make the committed proof fail for every
// other node that joined the batch (their leases would lapse with it).
func TestReview13BadNameDoesNotPoisonBatch(t *testing.T) {
	tc := newTestCluster(t)
	g := map[string]*grants{"a": {}}
	tc.tweak = func(c *Config) { c.Grant = g[c.Name].grant }
	a := tc.bootstrapData("a")
	tc.leader("a")
	c := a.c
	// Hold the prover so that both requests join the same proof.
	c.prover.mu.Lock()
	c.prover.running = true
	c.prover.mu.Unlock()
	bad := strings.Repeat("x", 256)
	errs := make(chan error, 2)
	go func() { _, err := c.grantLease(bad); errs <- err }()
	good := make(chan error, 1)
	go func() { _, err := c.grantLease("a"); good <- err }()
	eventually(t, "both requests waiting for one proof", func() bool {
		c.prover.mu.Lock()
		defer c.prover.mu.Unlock()
		n := 0
		if c.prover.next != nil {
			n = len(c.prover.next.nodes)
		}
		select {
		case err := <-errs: // refused before joining: fine
			errs <- err
			return n == 1
		default:
		}
		return n == 2
	})
	if !c.track() {
		t.Fatal("closed")
	}
	go func() {
		defer c.wg.Done()
		c.runProofs()
	}()
	select {
	case err := <-good:
		if err != nil {
			t.Errorf("a's renewal failed with a bad name in its batch: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a's renewal did not end")
	}
	if err := <-errs; err == nil {
		t.Error("a lease granted to a node name no proof can carry")
	}
}
