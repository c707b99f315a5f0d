// Command tandem runs a Tandem node (`tandem serve`) and is the admin CLI
// for it (every other subcommand). It only parses flags, wires and prints;
// the logic is in appliance/.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"

	"tandem.io/tandem/appliance"
	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/volume"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `tandem: a redundant iSCSI SAN appliance

Usage:
  tandem serve [--data DIR] [--portal ADDR:PORT] [--api ADDR:PORT] [--name NAME]
               [--iqn-prefix IQN] [--log-level debug|info|warn|error]
               [--allow-unsafe-filesystem]
               [--cluster ADDR:PORT] [--link ADDR:PORT] [--join ADDR[,ADDR...]]
               [--cluster-key-file FILE] [--witness] [--insecure-links] [--lease DURATION]
               [--floating-address ADDR/PREFIX --interface IF] [--reprotect-after DURATION]
  tandem [--api URL] status
  tandem [--api URL] node list [-o json]
  tandem [--api URL] node remove NAME
  tandem [--api URL] volume create NAME --size SIZE [--copies N | --layout mirror:N] [--chap-user U --chap-secret S]
               [--mutual-user U --mutual-secret S] [--allow IQN]...
  tandem [--api URL] volume list [-o json]
  tandem [--api URL] volume show NAME [-o json]
  tandem [--api URL] volume delete NAME
  tandem [--api URL] volume revert VOLUME SNAPSHOT [--force]
  tandem [--api URL] volume clone SOURCE[@SNAPSHOT] NEW [-o json]
  tandem [--api URL] volume resize VOLUME --size SIZE
  tandem [--api URL] volume add-copy VOLUME --node NAME [--wait]
  tandem [--api URL] volume remove-copy VOLUME --node NAME
  tandem [--api URL] volume move VOLUME --primary NODE
  tandem [--api URL] volume verify VOLUME [-o json]
  tandem [--api URL] snapshot create VOLUME [NAME]
  tandem [--api URL] snapshot list VOLUME [-o json]
  tandem [--api URL] snapshot delete VOLUME SNAPSHOT
  tandem version

The admin commands talk to --api URL (default $TANDEM_API, else http://127.0.0.1:7480).
`

// usageError is a mistake in the command line: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	os.Exit(code)
}

func run(args []string, stdout, stderr io.Writer) int {
	err := dispatch(args, stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "tandem: %s\nRun 'tandem help' for usage.\n", ue.msg)
		return 2
	default:
		fmt.Fprintf(stderr, "tandem: %s\n", err)
		return 1
	}
}

func dispatch(args []string, stdout, stderr io.Writer) error {
	global := flag.NewFlagSet("tandem", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	apiURL := global.String("api", envOr("TANDEM_API", "http://127.0.0.1:7480"), "admin API URL")
	if err := global.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	rest := global.Args()
	if len(rest) == 0 {
		fmt.Fprint(stdout, usage)
		return nil
	}
	client := &admin.Client{BaseURL: *apiURL}
	switch rest[0] {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "version":
		fmt.Fprintln(stdout, "tandem", version)
		return nil
	case "serve":
		return serve(rest[1:], stderr)
	case "status":
		return status(client, rest[1:], stdout)
	case "node":
		if len(rest) < 2 {
			return usageError{"node needs a subcommand: list or remove"}
		}
		return nodeCmd(client, rest[1], rest[2:], stdout)
	case "volume":
		if len(rest) < 2 {
			return usageError{"volume needs a subcommand: create, list, show, delete, revert, clone, resize, add-copy, remove-copy, move or verify"}
		}
		return volumeCmd(client, rest[1], rest[2:], stdout)
	case "snapshot":
		if len(rest) < 2 {
			return usageError{"snapshot needs a subcommand: create, list or delete"}
		}
		return snapshotCmd(client, rest[1], rest[2:], stdout)
	}
	return usageError{fmt.Sprintf("unknown command %q", rest[0])}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func serve(args []string, stderr io.Writer) error {
	cfg := appliance.DefaultConfig()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.DataDir, "data", cfg.DataDir, "data directory")
	fs.StringVar(&cfg.Portal, "portal", cfg.Portal, "iSCSI portal address")
	fs.StringVar(&cfg.API, "api", cfg.API, "admin API address")
	fs.StringVar(&cfg.Name, "name", cfg.Name, "node name")
	fs.StringVar(&cfg.IQNPrefix, "iqn-prefix", cfg.IQNPrefix, "IQN prefix of targets")
	fs.BoolVar(&cfg.AllowUnsafeFilesystem, "allow-unsafe-filesystem", os.Getenv("TANDEM_ALLOW_UNSAFE_FILESYSTEM") == "1",
		"serve from a file system that may garble layers at a power loss (labs and tests only)")
	fs.StringVar(&cfg.Cluster, "cluster", cfg.Cluster, "gossip address of this node (TCP and UDP)")
	fs.StringVar(&cfg.Link, "link", "", "address for raft and replication links (default: the cluster port + 1)")
	join := fs.String("join", "", "cluster addresses of nodes to join, comma-separated")
	fs.StringVar(&cfg.ClusterKeyFile, "cluster-key-file", "", "the cluster key (default DATA/cluster.key, made on first start)")
	fs.BoolVar(&cfg.Witness, "witness", false, "a voter that holds no volume data")
	fs.BoolVar(&cfg.InsecureLinks, "insecure-links", false, "authenticate cluster links but do not encrypt them (trusted networks only)")
	fs.StringVar(&cfg.FloatingAddress, "floating-address", "", "a portal address (ADDR/PREFIX) the cluster moves to a live node, for single-path initiators (with --interface)")
	fs.StringVar(&cfg.FloatingInterface, "interface", "", "the network interface the floating address goes on")
	fs.DurationVar(&cfg.ReprotectAfter, "reprotect-after", appliance.DefaultReprotectAfter, "how long after a node is lost its copies are rebuilt on other nodes with room (the leader's setting counts)")
	fs.DurationVar(&cfg.Lease, "lease", 0, "for a new cluster: how long a primary serves without renewing its lease (default 1s; fixed for the cluster's life; a failed primary's volumes move about this long after it stops)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parseInterspersed(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("serve takes no arguments, got %q", fs.Args())}
	}
	if *join != "" {
		for _, a := range strings.Split(*join, ",") {
			if a = strings.TrimSpace(a); a != "" {
				cfg.Join = append(cfg.Join, a)
			}
		}
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return usageError{fmt.Sprintf("--log-level %q: use debug, info, warn or error", *level)}
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	n, err := appliance.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// A stop that takes longer than it should leaves the goroutines'
	// stacks in the log: what it waits for.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
			return
		case <-ctx.Done():
		}
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			fmt.Fprintln(stderr, "tandem: still stopping after 15 s; goroutines:")
			pprof.Lookup("goroutine").WriteTo(stderr, 2)
		}
	}()
	return n.Run(ctx)
}

// parseInterspersed parses flags that may come before or after positional
// arguments (the stdlib stops at the first positional one).
func parseInterspersed(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	return fs.Parse(append([]string{"--"}, pos...))
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func volumeCmd(c *admin.Client, sub string, args []string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fs := flag.NewFlagSet("volume "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	output := fs.String("o", "table", "output format: table or json")
	switch sub {
	case "create":
		var req admin.CreateVolumeRequest
		size := fs.String("size", "", "size, e.g. 10GiB")
		fs.StringVar(&req.CHAPUser, "chap-user", "", "CHAP user name")
		fs.StringVar(&req.CHAPSecret, "chap-secret", "", "CHAP secret (12 to 255 characters)")
		fs.StringVar(&req.MutualUser, "mutual-user", "", "mutual CHAP user name (the target's)")
		fs.StringVar(&req.MutualSecret, "mutual-secret", "", "mutual CHAP secret")
		allow := stringList{}
		fs.Var(&allow, "allow", "initiator IQN allowed to log in (repeatable)")
		fs.IntVar(&req.Copies, "copies", 0, "number of copies on distinct nodes (default 2 once the cluster has two data nodes)")
		fs.StringVar(&req.Layout, "layout", "", "how the data is spread: mirror:N (N copies, as --copies N)")
		if err := parseInterspersed(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return usageError{"volume create needs exactly one NAME"}
		}
		if req.Copies < 0 || req.Copies > 5 {
			return usageError{fmt.Sprintf("--copies %d: use 1 to 5", req.Copies)}
		}
		if *size == "" {
			return usageError{"volume create needs --size, e.g. --size 10GiB"}
		}
		if _, err := volume.ParseSize(*size); err != nil {
			return usageError{err.Error()}
		}
		req.Name, req.Size, req.Allow = fs.Arg(0), admin.Size{Text: *size}, allow
		v, err := c.CreateVolume(ctx, req)
		if err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(out, v)
		}
		fmt.Fprintf(out, "created volume %s (%s, %s on %s, primary %s): %s\n", v.Name, humanBytes(v.Size), v.Layout,
			strings.Join(copyNodes(v), ", "), v.Primary, v.URL)
		return nil
	case "list":
		if err := parseInterspersed(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 0 {
			return usageError{"volume list takes no arguments"}
		}
		vols, err := c.ListVolumes(ctx)
		if err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(out, vols)
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSIZE\tALLOCATED\tPRIMARY\tCOPIES\tSESSIONS\tTARGET")
		for _, v := range vols {
			target := v.IQN
			if v.Error != "" {
				target = "UNAVAILABLE: " + v.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", v.Name, humanBytes(v.Size), humanBytes(v.AllocatedBytes),
				v.Primary, copySummary(v), len(v.Sessions), target)
		}
		return tw.Flush()
	case "show":
		if err := parseInterspersed(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return usageError{"volume show needs exactly one NAME"}
		}
		v, err := c.GetVolume(ctx, fs.Arg(0))
		if err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(out, v)
		}
		printVolume(out, v)
		return nil
	case "delete":
		if err := parseInterspersed(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return usageError{"volume delete needs exactly one NAME"}
		}
		if err := c.DeleteVolume(ctx, fs.Arg(0)); err != nil {
			return err
		}
		fmt.Fprintf(out, "deleted volume %s\n", fs.Arg(0))
		return nil
	case "revert":
		force := fs.Bool("force", false, "close the sessions of logged-in initiators first")
		if err := parseInterspersed(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 2 {
			return usageError{"volume revert needs VOLUME and SNAPSHOT"}
		}
		if _, err := c.RevertVolume(ctx, fs.Arg(0), admin.RevertRequest{Snapshot: fs.Arg(1), Force: *force}); err != nil {
			return err
		}
		fmt.Fprintf(out, "reverted volume %s to snapshot %s\n", fs.Arg(0), fs.Arg(1))
		return nil
	case "clone":
		if err := parseInterspersed(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 2 {
			return usageError{"volume clone needs SOURCE[@SNAPSHOT] and NEW"}
		}
		source, snap, _ := strings.Cut(fs.Arg(0), "@")
		v, err := c.CloneVolume(ctx, source, admin.CloneRequest{Name: fs.Arg(1), Snapshot: snap})
		if err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(out, v)
		}
		fmt.Fprintf(out, "created volume %s from %s: %s\n", v.Name, fs.Arg(0), v.URL)
		return nil
	case "resize":
		size := fs.String("size", "", "new size, e.g. 20GiB (volumes only grow)")
		if err := parseInterspersed(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 || *size == "" {
			return usageError{"volume resize needs VOLUME and --size, e.g. --size 20GiB"}
		}
		if _, err := volume.ParseSize(*size); err != nil {
			return usageError{err.Error()}
		}
		v, err := c.ResizeVolume(ctx, fs.Arg(0), admin.Size{Text: *size})
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "volume %s is now %s\n", v.Name, humanBytes(v.Size))
		return nil
	case "add-copy", "remove-copy":
		node := fs.String("node", "", "the node")
		wait := fs.Bool("wait", false, "wait for the new copy to be in sync, with a progress bar")
		if err := parseInterspersed(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 || *node == "" {
			return usageError{fmt.Sprintf("volume %s needs VOLUME and --node NAME", sub)}
		}
		var v admin.Volume
		var err error
		if sub == "add-copy" {
			v, err = c.AddCopy(ctx, fs.Arg(0), admin.CopyRequest{Node: *node})
		} else {
			v, err = c.RemoveCopy(ctx, fs.Arg(0), *node)
		}
		if err != nil {
			return err
		}
		if sub == "remove-copy" {
			fmt.Fprintf(out, "removed the copy of volume %s on %s; copies now on %s\n", v.Name, *node, strings.Join(copyNodes(v), ", "))
			return nil
		}
		fmt.Fprintf(out, "adding a copy of volume %s on %s\n", v.Name, *node)
		if *wait {
			return waitInSync(c, v.Name, *node, out)
		}
		return nil
	case "move":
		primary := fs.String("primary", "", "the node to become primary (an in-sync copy)")
		if err := parseInterspersed(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 || *primary == "" {
			return usageError{"volume move needs VOLUME and --primary NODE"}
		}
		v, err := c.MoveVolume(ctx, fs.Arg(0), admin.MoveRequest{Primary: *primary})
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "volume %s: primary is now %s (epoch %d); multipath initiators switch to its port (single-path ones log in again)\n", v.Name, v.Primary, v.Epoch)
		return nil
	case "verify":
		if err := parseInterspersed(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return usageError{"volume verify needs VOLUME"}
		}
		r, err := c.VerifyVolume(ctx, fs.Arg(0))
		if err != nil {
			return err
		}
		if *output == "json" {
			if err := printJSON(out, r); err != nil || len(r.Differences) == 0 {
				return err
			}
			return fmt.Errorf("volume %s: %d region(s) differ between copies", r.Volume, len(r.Differences))
		}
		if len(r.Differences) == 0 {
			fmt.Fprintf(out, "volume %s: %d copies (%s) identical over %d regions of %s\n", r.Volume, len(r.Copies),
				strings.Join(r.Copies, ", "), r.Regions, humanBytes(r.RegionSize))
			return nil
		}
		for _, d := range r.Differences {
			fmt.Fprintf(out, "volume %s: the copy on %s differs at offset %d (%d bytes)\n", r.Volume, d.Node, d.Offset, d.Length)
		}
		return fmt.Errorf("volume %s: %d region(s) differ between copies", r.Volume, len(r.Differences))
	}
	return usageError{fmt.Sprintf("unknown volume subcommand %q (create, list, show, delete, revert, clone, resize, add-copy, remove-copy, move, verify)", sub)}
}

// copyNodes lists the nodes holding a copy, primary first.
func copyNodes(v admin.Volume) []string {
	var out []string
	for _, c := range v.Copies {
		out = append(out, c.Node)
	}
	return out
}

// copySummary is "2/2 in sync" (copies in sync / copies), with what is
// missing when fewer copies are placed than the layout wants.
func copySummary(v admin.Volume) string {
	in := 0
	for _, c := range v.Copies {
		if c.State == "in-sync" {
			in++
		}
	}
	s := fmt.Sprintf("%d/%d in sync", in, len(v.Copies))
	if v.CopiesWanted > len(v.Copies) {
		s += fmt.Sprintf(", %d of %d copies placed (add one: volume add-copy)", len(v.Copies), v.CopiesWanted)
	}
	return s
}

// waitInSync shows a progress bar until the copy of volume on node is in
// sync.
func waitInSync(c *admin.Client, volume, node string, out io.Writer) error {
	var bar *progressbar.ProgressBar
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		v, err := c.GetVolume(ctx, volume)
		cancel()
		if err != nil {
			return err
		}
		var cp *admin.Copy
		for i := range v.Copies {
			if v.Copies[i].Node == node {
				cp = &v.Copies[i]
			}
		}
		if cp == nil {
			return fmt.Errorf("volume %s has no copy on %s any more", volume, node)
		}
		if cp.State == "in-sync" {
			if bar != nil {
				bar.Finish()
			}
			fmt.Fprintf(out, "\nthe copy of volume %s on %s is in sync\n", volume, node)
			return nil
		}
		if p := cp.Progress; p != nil && p.RegionsTotal > 0 {
			if bar == nil {
				bar = progressbar.NewOptions64(p.RegionsTotal, progressbar.OptionSetWriter(out),
					progressbar.OptionSetDescription(fmt.Sprintf("%s on %s", volume, node)), progressbar.OptionShowCount())
			}
			bar.ChangeMax64(p.RegionsTotal)
			bar.Set64(p.RegionsCopied)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func nodeCmd(c *admin.Client, sub string, args []string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fs := flag.NewFlagSet("node "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	output := fs.String("o", "table", "output format: table or json")
	if err := parseInterspersed(fs, args); err != nil {
		return err
	}
	switch sub {
	case "list":
		if fs.NArg() != 0 {
			return usageError{"node list takes no arguments"}
		}
		nodes, err := c.ListNodes(ctx)
		if err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(out, nodes)
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tRAFT\tSTATE\tPORTAL\tAPI\tLINK\tUSED\tFREE\tVOLUMES")
		for _, n := range nodes {
			vols := make([]string, 0, len(n.Volumes))
			for _, v := range n.Volumes {
				if slices.Contains(n.Primaries, v) {
					v += "*"
				}
				vols = append(vols, v)
			}
			raft := n.Raft
			if raft == "" {
				raft = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Role, raft, n.State, n.Portal, n.API, n.Link,
				humanBytes(n.UsedBytes), humanBytes(n.FreeBytes), strings.Join(vols, ","))
		}
		tw.Flush()
		fmt.Fprintln(out, "(* = primary)")
		return nil
	case "remove":
		if fs.NArg() != 1 {
			return usageError{"node remove needs NAME"}
		}
		if err := c.RemoveNode(ctx, fs.Arg(0)); err != nil {
			return err
		}
		fmt.Fprintf(out, "removed node %s from the cluster\n", fs.Arg(0))
		return nil
	}
	return usageError{fmt.Sprintf("unknown node subcommand %q (list, remove)", sub)}
}

func snapshotCmd(c *admin.Client, sub string, args []string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	fs := flag.NewFlagSet("snapshot "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	output := fs.String("o", "table", "output format: table or json")
	if err := parseInterspersed(fs, args); err != nil {
		return err
	}
	switch sub {
	case "create":
		if fs.NArg() < 1 || fs.NArg() > 2 {
			return usageError{"snapshot create needs VOLUME and optionally a NAME"}
		}
		s, err := c.CreateSnapshot(ctx, fs.Arg(0), fs.Arg(1))
		if err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(out, s)
		}
		fmt.Fprintf(out, "created snapshot %s of volume %s\n", s.Name, fs.Arg(0))
		return nil
	case "list":
		if fs.NArg() != 1 {
			return usageError{"snapshot list needs VOLUME"}
		}
		snaps, err := c.ListSnapshots(ctx, fs.Arg(0))
		if err != nil {
			return err
		}
		if *output == "json" {
			return printJSON(out, snaps)
		}
		printSnapshots(out, snaps)
		return nil
	case "delete":
		if fs.NArg() != 2 {
			return usageError{"snapshot delete needs VOLUME and SNAPSHOT"}
		}
		if err := c.DeleteSnapshot(ctx, fs.Arg(0), fs.Arg(1)); err != nil {
			return err
		}
		fmt.Fprintf(out, "deleted snapshot %s of volume %s\n", fs.Arg(1), fs.Arg(0))
		return nil
	}
	return usageError{fmt.Sprintf("unknown snapshot subcommand %q (create, list, delete)", sub)}
}

func printSnapshots(out io.Writer, snaps []admin.Snapshot) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCREATED\tSIZE\tHOLDS\tCLONES")
	for _, s := range snaps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, s.Created.Format(time.RFC3339), humanBytes(s.Size), humanBytes(s.OwnBytes), strings.Join(s.Clones, ","))
	}
	tw.Flush()
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printVolume(out io.Writer, v admin.Volume) {
	tw := tabwriter.NewWriter(out, 0, 4, 1, ' ', 0)
	p := func(k, f string, a ...any) { fmt.Fprintf(tw, "%s:\t"+f+"\n", append([]any{k}, a...)...) }
	p("Name", "%s", v.Name)
	if v.Error != "" {
		p("Error", "%s", v.Error)
	}
	p("Target", "%s", v.IQN)
	p("URL", "%s", v.URL)
	p("Provisioned", "%s (%d bytes)", humanBytes(v.Size), v.Size)
	p("Allocated", "%s (%d bytes)", humanBytes(v.AllocatedBytes), v.AllocatedBytes)
	p("NAA", "%s", v.NAA)
	p("Serial", "%s", v.Serial)
	p("Created", "%s", v.Created.Format(time.RFC3339))
	p("Layout", "%s, epoch %d", v.Layout, v.Epoch)
	p("Copies", "%s", copySummary(v))
	for _, c := range v.Copies {
		fmt.Fprintf(tw, "  %s\t%s, %s", c.Node, c.Role, c.State)
		if p := c.Progress; p != nil && p.RegionsTotal > 0 {
			fmt.Fprintf(tw, " (%d of %d regions, %s copied)", p.RegionsCopied, p.RegionsTotal, humanBytes(p.BytesCopied))
		}
		fmt.Fprintln(tw)
	}
	chap := "none"
	if v.CHAP {
		chap = "one-way (user " + v.CHAPUser + ")"
		if v.MutualCHAP {
			chap = "mutual (user " + v.CHAPUser + ")"
		}
	}
	p("CHAP", "%s", chap)
	allow := "any initiator"
	if len(v.Allow) > 0 {
		allow = strings.Join(v.Allow, ", ")
	}
	p("Allowed", "%s", allow)
	p("Snapshots", "%d", len(v.Snapshots))
	for _, s := range v.Snapshots {
		fmt.Fprintf(tw, "  %s\tcreated %s, size %s, holds %s", s.Name, s.Created.Format(time.RFC3339), humanBytes(s.Size), humanBytes(s.OwnBytes))
		if len(s.Clones) > 0 {
			fmt.Fprintf(tw, ", clones %s", strings.Join(s.Clones, ", "))
		}
		fmt.Fprintln(tw)
	}
	p("Sessions", "%d", len(v.Sessions))
	for _, s := range v.Sessions {
		fmt.Fprintf(tw, "  %s\tisid %s, tsih %d, from %s, since %s\n", s.Initiator, s.ISID, s.TSIH,
			strings.Join(s.Connections, ","), s.Since.Format(time.RFC3339))
	}
	tw.Flush()
}

func humanBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
