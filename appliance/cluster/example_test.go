package cluster_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/hashicorp/raft"

	"tandem.io/tandem/appliance/cluster"
)

// A one-node cluster: bootstrap, wait for the cluster ID, record the node
// and create a volume on it.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "cluster-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	addr, transport := raft.NewInmemTransport("127.0.0.1:7482")
	c, err := cluster.Open(cluster.Config{
		Name: "a", Dir: dir, Transport: transport, Bootstrap: true,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for c.State().ClusterID == "" {
		select {
		case <-c.Changes():
		case <-ctx.Done():
			log.Fatal("no cluster ID")
		}
	}
	if err := c.Admit(ctx, cluster.Node{Name: "a", Role: cluster.RoleData, Link: string(addr)}); err != nil {
		log.Fatal(err)
	}
	_, err = c.Propose(ctx, cluster.CreateVolume{Name: "vol", ID: "4c6b", NAA: [16]byte{0x60, 15: 1},
		Size: 1 << 30, Copies: 1, Placement: []string{"a"}})
	if err != nil {
		log.Fatal(err)
	}
	v := c.State().Volumes["vol"]
	fmt.Println(v.Primary, v.Epoch, v.InSync)
	_, err = c.Propose(ctx, cluster.SetReservations{Volume: "vol", Epoch: 0})
	fmt.Println(err)
	// Output:
	// a 1 [a]
	// set reservations of volume vol: stale epoch: epoch 0, the volume is at 1
}
