package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
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

// TestReview13ProposeLeaseProof: only the leader's prover commits lease
// proofs. Proposed like a catalog command, one would commit (any node
// could forge one) and then Propose would wait for the catalog index to
// reach it, which a proof never moves: until its context ends.
func TestReview13ProposeLeaseProof(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.bootstrapData("a")
	tc.leader("a")
	for _, propose := range []func(ctx context.Context) (uint64, error){
		func(ctx context.Context) (uint64, error) {
			return a.c.Propose(ctx, LeaseProof{Leader: "a", Nodes: []string{"a"}})
		},
		func(ctx context.Context) (uint64, error) {
			return a.c.ProposeAsLeader(ctx, a.c.Term(), LeaseProof{Leader: "a", Nodes: []string{"a"}})
		},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		start := time.Now()
		_, err := propose(ctx)
		cancel()
		if !errors.Is(err, ErrInvalid) || time.Since(start) > time.Second {
			t.Errorf("proposing a lease proof: %v after %v; want ErrInvalid at once", err, time.Since(start).Round(time.Millisecond))
		}
	}
	// Forwarded by a follower (or anything speaking the RPC): refused too.
	data, err := encodeCommand(LeaseProof{Leader: "z", Nodes: []string{"z"}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := json.Marshal(rpcRequest{V: rpcVersion, Op: opPropose, Cmd: data, TimeoutMS: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if resp := a.c.handleRequest(context.Background(), p); resp.Code == "" {
		t.Errorf("a forwarded lease proof was committed at index %d", resp.Index)
	}
	if e := a.c.fsm.earlier(a.c.Term() + 1); slices.Contains(e.Leaders, "z") {
		t.Errorf("a forged proof recorded: leaders %v", e.Leaders)
	}
}
