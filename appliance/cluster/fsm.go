package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"tandem.io/tandem/appliance/lease"
)

// maxSnapshot bounds a catalog snapshot read by Restore.
const maxSnapshot = 256 << 20

// snapshotVersion is the version of the snapshot encoding.
const snapshotVersion = 1

// fsm is the catalog as a raft state machine. raft calls Apply, Snapshot and
// Restore from one goroutine; State and waitApplied may run concurrently
// with them.
type fsm struct {
	mu sync.RWMutex // protects state and applied
	// state is the catalog; Apply changes it in place, so readers get
	// clones.
	state State
	// applied is closed (and replaced) whenever an entry is applied or a
	// snapshot restored, waking waitApplied.
	applied chan struct{}
	// changes gets a token after each change that took effect (buffered 1:
	// notifications coalesce).
	changes chan struct{}
	// restores counts Restore calls (tests check snapshot installs).
	restores int
	// proofs are when this node applied LeaseProof entries: not catalog
	// state (they differ from node to node), read by a new leader.
	proofs proofTimes
}

// proofTimes records, on this node's monotonic clock, when it applied the
// entries that proved lease grants (LeaseProof).
type proofTimes struct {
	floor   time.Time          // process start, or the last Restore
	nodes   map[string]proofAt // the proofs naming each node
	leaders map[string]uint64  // the last term each leader committed a proof in
}

// proofAt is when proofs were applied: the last one, and the last one of a
// term before the last one's.
type proofAt struct {
	term   uint64
	last   time.Time
	before time.Time
}

func (p *proofAt) record(term uint64, now time.Time) {
	if term > p.term {
		p.term, p.before = term, p.last
	}
	p.last = now
}

// until is when the last proof of a term before term was applied.
func (p proofAt) until(term uint64) time.Time {
	if p.term < term {
		return p.last
	}
	return p.before
}

// record notes a proof of term by leader naming nodes, applied at now.
func (p *proofTimes) record(term uint64, leader string, nodes []string, now time.Time) {
	for _, n := range nodes {
		at := p.nodes[n]
		at.record(term, now)
		p.nodes[n] = at
	}
	if leader != "" {
		p.leaders[leader] = max(p.leaders[leader], term)
	}
}

// applyResult is what Apply returns to raft's ApplyFuture on the leader.
type applyResult struct {
	err error
}

func newFSM() *fsm {
	return &fsm{state: newState(), applied: make(chan struct{}), changes: make(chan struct{}, 1),
		proofs: proofTimes{floor: time.Now(), nodes: map[string]proofAt{}, leaders: map[string]uint64{}}}
}

var _ raft.FSM = (*fsm)(nil)

// Apply implements raft.FSM: it applies one committed command. A command
// that cannot be decoded or does not apply changes nothing but the index;
// its error is the result.
func (f *fsm) Apply(l *raft.Log) any {
	cmd, err := decodeCommand(l.Data)
	if p, ok := cmd.(LeaseProof); ok && err == nil {
		// Not catalog state: the index stays (a renewal does not wait for
		// its holder to apply its own proof) and nobody is notified.
		now := time.Now()
		f.mu.Lock()
		if err = p.apply(&f.state); err == nil {
			f.proofs.record(l.Term, p.Leader, p.Nodes, now)
		}
		f.mu.Unlock()
		return applyResult{err: err}
	}
	f.mu.Lock()
	if err == nil {
		err = cmd.apply(&f.state)
	}
	f.state.Index = l.Index
	woken := f.applied
	f.applied = make(chan struct{})
	f.mu.Unlock()
	if err == nil {
		f.notify()
	}
	close(woken) // after notify: a proposer woken here finds the notification
	return applyResult{err: err}
}

// notify sends a change notification unless one is pending.
func (f *fsm) notify() {
	select {
	case f.changes <- struct{}{}:
	default:
	}
}

// State returns a deep copy of the catalog.
func (f *fsm) State() State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.Clone()
}

// volume returns a copy of one volume and of the node records, without
// copying the rest of the catalog.
func (f *fsm) volume(name string) (Volume, map[string]Node, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	v, ok := f.state.Volumes[name]
	if !ok {
		return Volume{}, nil, false
	}
	nodes := make(map[string]Node, len(f.state.Nodes))
	for k, n := range f.state.Nodes {
		nodes[k] = n
	}
	return v.Clone(), nodes, true
}

// clusterID returns the cluster's ID, empty before Init.
func (f *fsm) clusterID() string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.ClusterID
}

// lease is the catalog's lease in milliseconds, and whether the cluster
// is initialized.
func (f *fsm) lease() (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.LeaseMS, f.state.ClusterID != ""
}

// earlier returns what this node knows of lease grants proved in terms
// before term (complete once it has applied every entry before term's).
func (f *fsm) earlier(term uint64) lease.Earlier {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p := f.proofs
	e := lease.Earlier{Floor: p.floor, Nodes: make(map[string]time.Time, len(p.nodes))}
	for k, v := range p.nodes {
		if t := v.until(term); !t.IsZero() {
			e.Nodes[k] = t
		}
	}
	for k, t := range p.leaders {
		if t < term {
			e.Leaders = append(e.Leaders, k)
		}
	}
	slices.Sort(e.Leaders)
	return e
}

// index is the index of the last catalog entry applied (lease proofs are
// not catalog entries).
func (f *fsm) index() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.Index
}

// waitApplied waits until the entry at index is applied here.
func (f *fsm) waitApplied(ctx context.Context, index uint64) error {
	for {
		f.mu.RLock()
		done, woken := f.state.Index >= index, f.applied
		f.mu.RUnlock()
		if done {
			return nil
		}
		select {
		case <-woken:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Snapshot implements raft.FSM: a copy of the state, written out later.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{state: f.State()}, nil
}

// Restore implements raft.FSM: it replaces the state with a snapshot's.
// Anything that is not a well-formed snapshot is refused with an error and
// leaves the state as it was.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	p, err := io.ReadAll(io.LimitReader(rc, maxSnapshot+1))
	if err != nil {
		return fmt.Errorf("restore catalog snapshot: %w", err)
	}
	if len(p) > maxSnapshot {
		return fmt.Errorf("restore catalog snapshot: %w: more than %d bytes", ErrTooLarge, maxSnapshot)
	}
	s, err := decodeSnapshot(p)
	if err != nil {
		return fmt.Errorf("restore catalog snapshot: %w", err)
	}
	f.mu.Lock()
	f.state = s
	f.restores++
	// The snapshot holds entries this node never applied one by one: the
	// grants they proved count from now.
	f.proofs.floor = time.Now()
	woken := f.applied
	f.applied = make(chan struct{})
	f.mu.Unlock()
	f.notify()
	close(woken)
	return nil
}

// snapshotFile is the encoded snapshot: {"v":1,"state":{...}}.
type snapshotFile struct {
	V     int   `json:"v"`
	State State `json:"state"`
}

func encodeSnapshot(s State) ([]byte, error) {
	return json.Marshal(snapshotFile{V: snapshotVersion, State: s})
}

// decodeSnapshot decodes and checks a snapshot.
func decodeSnapshot(p []byte) (State, error) {
	var sf snapshotFile
	if err := strictUnmarshal(p, &sf); err != nil {
		return State{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if sf.V != snapshotVersion {
		return State{}, fmt.Errorf("%w: snapshot version %d (this node knows %d)", ErrUnsupported, sf.V, snapshotVersion)
	}
	s := sf.State
	if s.Nodes == nil {
		s.Nodes = map[string]Node{}
	}
	if s.Volumes == nil {
		s.Volumes = map[string]Volume{}
	}
	for k, n := range s.Nodes {
		if k != n.Name {
			return State{}, fmt.Errorf("%w: node %q recorded as %q", ErrInvalid, n.Name, k)
		}
	}
	for k, v := range s.Volumes {
		if k != v.Name {
			return State{}, fmt.Errorf("%w: volume %q recorded as %q", ErrInvalid, v.Name, k)
		}
	}
	return s, nil
}

// fsmSnapshot is a point-in-time copy of the state being persisted.
type fsmSnapshot struct {
	state State
}

// Persist implements raft.FSMSnapshot.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	p, err := encodeSnapshot(s.state)
	if err == nil {
		_, err = io.Copy(sink, bytes.NewReader(p))
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist catalog snapshot: %w", err)
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot.
func (s *fsmSnapshot) Release() {}
