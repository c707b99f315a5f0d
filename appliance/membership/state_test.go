package membership

import (
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// bare returns a Membership without gossip, to drive its hooks directly.
func bare(name string) *Membership {
	return &Membership{
		name:    name,
		log:     slog.New(slog.DiscardHandler),
		forget:  time.Hour,
		changes: make(chan struct{}, 1),
		members: make(map[string]*entry),
	}
}

func mlNode(t *testing.T, name string, port uint16, meta Meta) *memberlist.Node {
	b, err := meta.marshal()
	if err != nil {
		t.Fatal(err)
	}
	return &memberlist.Node{Name: name, Addr: net.IPv4(127, 0, 0, 1), Port: port, Meta: b}
}

func TestStateTransitions(t *testing.T) {
	meta := Meta{Role: RoleData, Link: "127.0.0.1:7482"}
	b := func(t *testing.T) *memberlist.Node { return mlNode(t, "b", 7481, meta) }
	h := func(m *Membership) hooks { return hooks{m} }
	for i, tc := range []struct {
		events []func(*testing.T, *Membership)
		want   []State // b's states in order ("" = unknown at the end)
	}{
		{ // joined
			[]func(*testing.T, *Membership){
				func(t *testing.T, m *Membership) { h(m).NotifyJoin(b(t)) },
			}, []State{StateAlive}},
		{ // a probe failed, then it answered
			[]func(*testing.T, *Membership){
				func(t *testing.T, m *Membership) { h(m).NotifyJoin(b(t)) },
				func(t *testing.T, m *Membership) { m.suspected("b") },
				func(t *testing.T, m *Membership) { m.suspected("b") },
				func(t *testing.T, m *Membership) { h(m).NotifyPingComplete(b(t), time.Millisecond, nil) },
			}, []State{StateAlive, StateSuspect, StateAlive}},
		{ // suspect, then declared dead; late probe noise changes nothing
			[]func(*testing.T, *Membership){
				func(t *testing.T, m *Membership) { h(m).NotifyJoin(b(t)) },
				func(t *testing.T, m *Membership) { m.suspected("b") },
				func(t *testing.T, m *Membership) { h(m).NotifyLeave(b(t)) },
				func(t *testing.T, m *Membership) { m.suspected("b") },
				func(t *testing.T, m *Membership) { h(m).NotifyPingComplete(b(t), time.Millisecond, nil) },
			}, []State{StateAlive, StateSuspect, StateDead}},
		{ // it said it is leaving, then left
			[]func(*testing.T, *Membership){
				func(t *testing.T, m *Membership) { h(m).NotifyJoin(b(t)) },
				func(t *testing.T, m *Membership) { h(m).NotifyMsg(appendMsg(nil, msgLeaving, "b")) },
				func(t *testing.T, m *Membership) { h(m).NotifyLeave(b(t)) },
			}, []State{StateAlive, StateLeft}},
		{ // the departure overtook the notice
			[]func(*testing.T, *Membership){
				func(t *testing.T, m *Membership) { h(m).NotifyJoin(b(t)) },
				func(t *testing.T, m *Membership) { h(m).NotifyLeave(b(t)) },
				func(t *testing.T, m *Membership) { h(m).NotifyMsg(appendMsg(nil, msgLeaving, "b")) },
			}, []State{StateAlive, StateDead, StateLeft}},
		{ // left, came back, then failed: the old notice no longer counts
			[]func(*testing.T, *Membership){
				func(t *testing.T, m *Membership) { h(m).NotifyJoin(b(t)) },
				func(t *testing.T, m *Membership) { h(m).NotifyMsg(appendMsg(nil, msgLeaving, "b")) },
				func(t *testing.T, m *Membership) { h(m).NotifyLeave(b(t)) },
				func(t *testing.T, m *Membership) { h(m).NotifyJoin(b(t)) },
				func(t *testing.T, m *Membership) { h(m).NotifyLeave(b(t)) },
			}, []State{StateAlive, StateLeft, StateAlive, StateDead}},
		{ // an update from a suspect is proof of life
			[]func(*testing.T, *Membership){
				func(t *testing.T, m *Membership) { h(m).NotifyJoin(b(t)) },
				func(t *testing.T, m *Membership) { m.suspected("b") },
				func(t *testing.T, m *Membership) { h(m).NotifyUpdate(mlNode(t, "b", 7481, Meta{Role: RoleWitness})) },
			}, []State{StateAlive, StateSuspect, StateAlive}},
		{ // unknown members and garbage messages change nothing
			[]func(*testing.T, *Membership){
				func(t *testing.T, m *Membership) { m.suspected("b") },
				func(t *testing.T, m *Membership) { h(m).NotifyPingComplete(b(t), time.Millisecond, nil) },
				func(t *testing.T, m *Membership) { h(m).NotifyMsg(appendMsg(nil, msgLeaving, "b")) },
				func(t *testing.T, m *Membership) { h(m).NotifyMsg([]byte{1, 200}) },
			}, nil},
	} {
		m := bare("a")
		var seen []State
		m.observe = func(mb Member) {
			if mb.Name == "b" {
				seen = append(seen, mb.State)
			}
		}
		for _, ev := range tc.events {
			ev(t, m)
		}
		if !slices.Equal(seen, tc.want) {
			t.Errorf("%d: b went through %q, want %q", i, seen, tc.want)
		}
		got, ok := m.Member("b")
		if ok != (len(tc.want) > 0) || ok && got.State != tc.want[len(tc.want)-1] {
			t.Errorf("%d: Member(b) = %+v, %v", i, got, ok)
		}
	}
}

func TestSelfStates(t *testing.T) {
	m := bare("a")
	a := mlNode(t, "a", 7481, Meta{Role: RoleData})
	h := hooks{m}
	h.NotifyJoin(a)
	m.suspected("a") // memberlist never suspects itself; nor do we
	h.NotifyMsg(appendMsg(nil, msgLeaving, "a"))
	if got, _ := m.Member("a"); got.State != StateAlive {
		t.Fatalf("self is %s, want alive", got.State)
	}
	m.leaving = true
	h.NotifyLeave(a)
	if got, _ := m.Member("a"); got.State != StateLeft {
		t.Fatalf("self after leaving is %s, want left", got.State)
	}
}

func TestMemberFields(t *testing.T) {
	m := bare("a")
	meta := Meta{Role: RoleData, Link: "127.0.0.1:7482", CapacityBytes: 10, FreeBytes: 5}
	before := time.Now()
	hooks{m}.NotifyJoin(mlNode(t, "b", 7481, meta))
	select {
	case <-m.Changes():
	default:
		t.Fatal("no change notified")
	}
	got, ok := m.Member("b")
	if !ok || got.Name != "b" || got.Addr != "127.0.0.1:7481" || got.Meta != meta || got.State != StateAlive || got.Since.Before(before) {
		t.Fatalf("Member(b) = %+v, %v", got, ok)
	}
	// Nothing new, nothing notified.
	hooks{m}.NotifyUpdate(mlNode(t, "b", 7481, meta))
	select {
	case <-m.Changes():
		t.Fatal("change notified for an update that changed nothing")
	default:
	}
	meta.FreeBytes = 4
	hooks{m}.NotifyUpdate(mlNode(t, "b", 7481, meta))
	// Since is when the state began, not the last update.
	if again, _ := m.Member("b"); again.Meta != meta || !again.Since.Equal(got.Since) {
		t.Fatalf("after update: %+v, first seen %+v", again, got)
	}
	<-m.Changes()
}

func TestForget(t *testing.T) {
	m := bare("a")
	h := hooks{m}
	for i, n := range []string{"a", "b", "c", "d"} {
		h.NotifyJoin(mlNode(t, n, uint16(7000+i), Meta{Role: RoleData}))
	}
	h.NotifyLeave(mlNode(t, "c", 7002, Meta{Role: RoleData}))
	h.NotifyMsg(appendMsg(nil, msgLeaving, "d"))
	h.NotifyLeave(mlNode(t, "d", 7003, Meta{Role: RoleData}))
	m.leaving = true
	h.NotifyLeave(mlNode(t, "a", 7000, Meta{Role: RoleData}))

	names := func() []string {
		var ns []string
		for _, mb := range m.Members() {
			ns = append(ns, mb.Name+"="+string(mb.State))
		}
		return ns
	}
	if got, want := names(), []string{"a=left", "b=alive", "c=dead", "d=left"}; !slices.Equal(got, want) {
		t.Fatalf("members %q, want %q", got, want)
	}
	m.forget = time.Nanosecond
	time.Sleep(time.Millisecond)
	// The dead and left are forgotten; this node never is.
	if got, want := names(), []string{"a=left", "b=alive"}; !slices.Equal(got, want) {
		t.Fatalf("members %q, want %q", got, want)
	}
	if _, ok := m.Member("c"); ok {
		t.Fatal("Member(c) still known")
	}
	// A forgotten member that fails again is listed again.
	m.forget = time.Hour
	h.NotifyLeave(mlNode(t, "c", 7002, Meta{Role: RoleData}))
	if got, ok := m.Member("c"); !ok || got.State != StateDead || got.Addr != "127.0.0.1:7002" {
		t.Fatalf("Member(c) = %+v, %v", got, ok)
	}
}

func TestNotifyAliveRejectsBadMeta(t *testing.T) {
	h := hooks{bare("a")}
	if err := h.NotifyAlive(mlNode(t, "b", 1, Meta{Role: RoleWitness})); err != nil {
		t.Fatal(err)
	}
	if err := h.NotifyAlive(&memberlist.Node{Name: "b", Addr: net.IPv4(127, 0, 0, 1), Port: 1, Meta: []byte("junk")}); err == nil {
		t.Fatal("node with junk metadata admitted")
	}
}
