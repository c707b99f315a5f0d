package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"tandem.io/tandem/appliance/admin"
)

// status prints the cluster's health on one screen: nodes, volumes not
// fully protected, resyncs with their progress, and whether losing any one
// node would still leave room to rebuild every copy it held (N+1).
func status(c *admin.Client, args []string, out io.Writer) error {
	if len(args) != 0 {
		return usageError{"status takes no arguments"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes, err := c.ListNodes(ctx)
	if err != nil {
		return err
	}
	vols, err := c.ListVolumes(ctx)
	if err != nil {
		return err
	}
	alive, leader := 0, "none"
	for _, n := range nodes {
		if n.State == "alive" {
			alive++
		}
		if n.Raft == "leader" {
			leader = n.Name
		}
	}
	fmt.Fprintf(out, "Cluster: %d nodes, %d alive; raft leader %s\n", len(nodes), alive, leader)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tSTATE\tRAFT\tUSED\tFREE\tCOPIES\tPRIMARIES")
	for _, n := range nodes {
		raft := n.Raft
		if raft == "" {
			raft = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", n.Name, n.Role, n.State, raft, humanBytes(n.UsedBytes), humanBytes(n.FreeBytes),
			len(n.Volumes), len(n.Primaries))
	}
	tw.Flush()

	var problems, resyncs []string
	for _, v := range vols {
		if p := volumeProblem(v); p != "" {
			problems = append(problems, fmt.Sprintf("  %s: %s", v.Name, p))
		}
		for _, cp := range v.Copies {
			if p := cp.Progress; p != nil && p.RegionsTotal > 0 && (cp.State == "resyncing" || cp.State == "building") {
				resyncs = append(resyncs, fmt.Sprintf("  %s on %s  %s %3d%%  %d of %d regions, %s copied", v.Name, cp.Node,
					bar(p.RegionsCopied, p.RegionsTotal, 20), 100*p.RegionsCopied/p.RegionsTotal, p.RegionsCopied, p.RegionsTotal,
					humanBytes(p.BytesCopied)))
			}
		}
	}
	fmt.Fprintf(out, "\nVolumes: %d, %d not fully protected\n", len(vols), len(problems))
	for _, p := range problems {
		fmt.Fprintln(out, p)
	}
	if len(resyncs) > 0 {
		fmt.Fprintf(out, "\nResyncs and rebuilds: %d\n", len(resyncs))
		for _, r := range resyncs {
			fmt.Fprintln(out, r)
		}
	}
	fmt.Fprintf(out, "\n%s\n", headroom(nodes, vols))
	return nil
}

// volumeProblem says what keeps v from being fully protected, "" if
// nothing does.
func volumeProblem(v admin.Volume) string {
	var why []string
	if v.Error != "" {
		why = append(why, "not served: "+v.Error)
	}
	inSync := 0
	var out []string
	for _, cp := range v.Copies {
		if cp.State == "in-sync" {
			inSync++
		} else {
			out = append(out, cp.Node+" "+cp.State)
		}
	}
	if v.CopiesWanted == 1 && len(v.Copies) == 1 {
		why = append(why, "one copy only: lost with its node ("+v.Copies[0].Node+")")
	}
	if inSync < v.CopiesWanted {
		s := fmt.Sprintf("%d of %d copies in sync", inSync, v.CopiesWanted)
		if len(out) > 0 {
			s += " (" + strings.Join(out, ", ") + ")"
		}
		if len(v.Copies) < v.CopiesWanted {
			s += fmt.Sprintf("; %d copies placed", len(v.Copies))
		}
		why = append(why, s)
	}
	return strings.Join(why, "; ")
}

func bar(done, total int64, width int) string {
	n := 0
	if total > 0 {
		n = int(min(max(done, 0), total) * int64(width) / total)
	}
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "]"
}

// headroom says whether the cluster could lose any one alive data node and
// still rebuild every copy that node holds on another alive data node with
// room (one that does not hold a copy of that volume already), with the
// numbers. A rebuild needs the volume's allocated bytes; the other copies
// placed, greedily, the largest first, on the node with the most room.
func headroom(nodes []admin.Node, vols []admin.Volume) string {
	var data []admin.Node
	for _, n := range nodes {
		if n.Role == "data" && n.State == "alive" {
			data = append(data, n)
		}
	}
	if len(data) == 0 {
		return "N+1: no alive data node"
	}
	byName := map[string]admin.Volume{}
	for _, v := range vols {
		byName[v.Name] = v
	}
	type loss struct {
		node    string
		rebuild int64
		stuck   []string
	}
	var worst *loss
	var fails []loss
	for _, x := range data {
		free := map[string]int64{}
		for _, n := range data {
			if n.Name != x.Name {
				free[n.Name] = n.FreeBytes
			}
		}
		held := slices.Clone(x.Volumes)
		sort.Slice(held, func(i, j int) bool { return byName[held[i]].AllocatedBytes > byName[held[j]].AllocatedBytes })
		l := loss{node: x.Name}
		for _, name := range held {
			v := byName[name]
			need := v.AllocatedBytes
			l.rebuild += need
			// Something to rebuild from: an in-sync copy on another alive
			// data node.
			if !slices.ContainsFunc(v.Copies, func(c admin.Copy) bool {
				return c.Node != x.Name && c.State == "in-sync" && slices.ContainsFunc(data, func(n admin.Node) bool { return n.Name == c.Node })
			}) {
				l.stuck = append(l.stuck, fmt.Sprintf("%s (no other copy in sync to rebuild from)", name))
				continue
			}
			best := ""
			for n, f := range free {
				if f < need || slices.ContainsFunc(v.Copies, func(c admin.Copy) bool { return c.Node == n }) {
					continue
				}
				if best == "" || f > free[best] || f == free[best] && n < best {
					best = n
				}
			}
			if best == "" {
				l.stuck = append(l.stuck, fmt.Sprintf("%s (%s: no other node with room; add a node or free space)", name, humanBytes(need)))
				continue
			}
			free[best] -= need
		}
		if len(l.stuck) > 0 {
			fails = append(fails, l)
		} else if worst == nil || l.rebuild > worst.rebuild {
			worst = &l
		}
	}
	if len(fails) > 0 {
		var b strings.Builder
		b.WriteString("N+1: NO — the cluster cannot lose every node and still re-protect every volume:")
		for _, f := range fails {
			fmt.Fprintf(&b, "\n  losing %s loses or cannot rebuild: %s", f.node, strings.Join(f.stuck, ", "))
		}
		return b.String()
	}
	var total int64
	for _, n := range data {
		total += n.FreeBytes
	}
	return fmt.Sprintf("N+1: yes — losing any one of %d data nodes, every copy it held can be rebuilt on another (worst: %s, %s to rebuild; %s free in all)",
		len(data), worst.node, humanBytes(worst.rebuild), humanBytes(total))
}
