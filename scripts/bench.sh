#!/usr/bin/env bash
# make bench: Tandem against tgtd (Debian's tgt) and istgt (Debian's istgt)
# on this machine, through QEMU's libiscsi driver (qemu-img bench), on
# loopback. Each serves a 1 GiB file-backed LUN that is first filled with
# data. Prints IOPS or MB/s per workload, the ratio of Tandem to the better
# of the two references, and each target process's CPU time per I/O.
#   BENCH_SECONDS  rough seconds per workload run (default 5)
#   BENCH_RUNS     interleaved rounds per workload; the best is kept (default 3)
#   BENCH_ONLY     only the workloads whose name matches this regular
#                  expression (e.g. QD1), here and in the mirror section,
#                  whose names start with "mirror " (BENCH_ONLY=mirror: only
#                  that section); skips the snapshot section
#   BENCH_MIRROR   0 skips the mirror section (scripts/bench-mirror.sh: a
#                  2-copy volume against a 1-copy one on a 2-node cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${BENCH_SECONDS:-5}
runs=${BENCH_RUNS:-3}
only=${BENCH_ONLY:-}
work=$(mktemp -d /tmp/tandem-bench.XXXXXX)
tport=13260 gport=13261 iport=13262 api=127.0.0.1:17480 cluster=127.0.0.1:17481
ctl=${BENCH_TGT_CONTROL:-17}  # tgtd control port number: its own instance
tgtadm() { command tgtadm -C "$ctl" "$@"; }
size=$((1 << 30))
# The workloads of the first table: name|unit|request size|step|depth|-w.
# A step of 7919 blocks (a prime) scatters 4 KiB requests over the LUN.
scatter=$((4096 * 7919))
workloads=(
	"4K random read QD1|IOPS|4096|$scatter|1|"
	"4K random read QD32|IOPS|4096|$scatter|32|"
	"4K random write QD1|IOPS|4096|$scatter|1|-w"
	"4K random write QD32|IOPS|4096|$scatter|32|-w"
	"1M sequential read QD8|MB/s|$((1 << 20))|$((1 << 20))|8|"
	"1M sequential write QD8|MB/s|$((1 << 20))|$((1 << 20))|8|-w"
)
if [ -n "$only" ]; then
	selected=()
	for w in "${workloads[@]}"; do [[ "${w%%|*}" =~ $only ]] && selected+=("$w"); done
	workloads=(${selected[@]+"${selected[@]}"})
fi
# Only the mirror section's workloads selected: no targets to start here.
if [ ${#workloads[@]} = 0 ]; then
	[ "${BENCH_MIRROR:-1}" = 0 ] && exit 0
	exec ./scripts/bench-mirror.sh
fi
pids=()
cleanup() {
	tgtadm --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
	tgtadm --op delete --mode system >/dev/null 2>&1 || true
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	# istgt takes a second or two to stop; give each up to 5 s.
	for i in $(seq 1 50); do
		local alive=0
		for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ $alive = 0 ] && break
		sleep 0.1
	done
	for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# The data is thrown away at the end, so a temporary directory on a file
# system the node would refuse for production (ext4 without a journal, as
# on the CI machines) will do: --allow-unsafe-filesystem skips only that
# check, not anything on the I/O path. A one-node cluster: its gossip
# (--cluster) and link (that port + 1) ports are the bench's own too.
./bin/tandem serve --data "$work/tandem" --portal 127.0.0.1:$tport --api $api --cluster $cluster \
	--log-level warn --allow-unsafe-filesystem &
pids+=($!)
tpid=$!
export TANDEM_API=http://$api
# The API answers before the node's raft has elected it, which a volume
# create waits for.
for i in $(seq 1 100); do ./bin/tandem volume list >/dev/null 2>&1 && break; sleep 0.1; done
for i in $(seq 1 100); do
	./bin/tandem volume show bench >/dev/null 2>&1 && break
	./bin/tandem volume create bench --size 1GiB >/dev/null 2>&1 && break
	sleep 0.1
done
./bin/tandem volume show bench >/dev/null
turl="iscsi://127.0.0.1:$tport/iqn.2026-11.io.tandem:bench/0"

truncate -s $size "$work/tgt.img"
tgtd -f -C "$ctl" --iscsi portal=127.0.0.1:$gport >"$work/tgtd.log" 2>&1 &
pids+=($!)
gpid=$!
for i in $(seq 1 50); do tgtadm --lld iscsi --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.io.tandem.bench:tgtd
tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$work/tgt.img"
tgtadm --lld iscsi --op bind --mode target --tid 1 -I ALL
gurl="iscsi://127.0.0.1:$gport/iqn.2026-11.io.tandem.bench:tgtd/1"

# istgt: its own instance in the foreground (-D, so that its PID is ours),
# one portal on loopback only, no unit-control portal, no authentication.
# Its defaults otherwise (write cache on, so no forced sync, like the
# others).
truncate -s $size "$work/istgt.img"
touch "$work/istgt-auth.conf"
cat >"$work/istgt.conf" <<CONF
[Global]
  NodeBase "iqn.2026-11.io.tandem.bench"
  PidFile $work/istgt.pid
  AuthFile $work/istgt-auth.conf
  MediaDirectory $work
  DiscoveryAuthMethod None
  MaxSessions 16
  MaxConnections 4
  MaxR2T 32
  MaxOutstandingR2T 16
  FirstBurstLength 262144
  MaxBurstLength 1048576
  MaxRecvDataSegmentLength 262144
  InitialR2T Yes
  ImmediateData Yes
[UnitControl]
  AuthMethod None
[PortalGroup1]
  Portal DA1 127.0.0.1:$iport
[InitiatorGroup1]
  InitiatorName "ALL"
  Netmask 127.0.0.1
[LogicalUnit1]
  TargetName istgt
  Mapping PortalGroup1 InitiatorGroup1
  AuthMethod None
  UseDigest Auto
  UnitType Disk
  QueueDepth 64
  LUN0 Storage $work/istgt.img Auto
CONF
istgt -c "$work/istgt.conf" -D >"$work/istgt.log" 2>&1 &
pids+=($!)
ipid=$!
iurl="iscsi://127.0.0.1:$iport/iqn.2026-11.io.tandem.bench:istgt/0"
for i in $(seq 1 50); do qemu-img info "$iurl" >/dev/null 2>&1 && break; sleep 0.1; done

# Fill the LUNs so that reads hit data, not holes.
head -c $size /dev/urandom >"$work/fill.img"
for u in "$turl" "$gurl" "$iurl"; do qemu-img convert -n -f raw -O raw "$work/fill.img" "$u"; done

. scripts/bench-lib.sh
hz=$(getconf CLK_TCK)

# row NAME UNIT SIZE STEP DEPTH [-w]: the three targets in interleaved
# rounds (tandem, tgtd, istgt, tandem, ...), all with the request count
# calibrated on Tandem. Prints the row of the result table and keeps the
# CPU figures for the second table.
names=(tandem tgtd istgt)
urls=("$turl" "$gurl" "$iurl")
tpids=("$tpid" "$gpid" "$ipid")
cpurows=()
row() {
	local name=$1 unit=$2 bs=$3 step=$4 depth=$5 rw=${6:-}
	local count r i t v c0 c1 rounds=""
	local -a best=(0 0 0) ticks=(0 0 0)
	count=$(requests "$turl" "$depth" "$bs" "$step" $rw)
	for r in $(seq 1 "$runs"); do
		for i in 0 1 2; do
			c0=$(cputicks "${tpids[$i]}")
			t=$(bench "${urls[$i]}" "$count" "$depth" "$bs" "$step" $rw)
			c1=$(cputicks "${tpids[$i]}")
			ticks[$i]=$((ticks[i] + c1 - c0))
			v=$(awk -v c="$count" -v t="$t" -v b="$bs" 'BEGIN{ if (b>=1048576) printf "%.0f", c*b/1e6/t; else printf "%.0f", c/t }')
			[ "$v" -gt "${best[$i]}" ] && best[$i]=$v
			rounds+=" $v"
		done
	done
	# ratio: Tandem's best over the better reference's best; per round: the
	# same ratio within each round, lowest and highest.
	awk -v name="$name ($unit)" -v a="${best[0]}" -v b="${best[1]}" -v c="${best[2]}" -v rounds="$rounds" 'BEGIN{
		n = split(rounds, v, " ")
		for (k = 1; k + 2 <= n; k += 3) {
			ref = v[k+1] > v[k+2] ? v[k+1] : v[k+2]; x = v[k] / ref
			if (k == 1 || x < lo) lo = x; if (x > hi) hi = x
		}
		printf "%-28s %9s %9s %9s %7.2fx  %.2f-%.2fx\n", name, a, b, c, a / (b > c ? b : c), lo, hi
	}'
	cpurows+=("$(awk -v name="$name" -v n=$((count * runs)) -v hz="$hz" -v a="${ticks[0]}" -v b="${ticks[1]}" -v c="${ticks[2]}" \
		'BEGIN{f = 1e6 / hz / n; printf "%-28s %9.1f %9.1f %9.1f", name, a * f, b * f, c * f}')")
}
printf '%-28s %9s %9s %9s %8s  %s\n' workload tandem tgtd istgt ratio "per round"
for w in "${workloads[@]}"; do
	IFS='|' read -r name unit bs step depth rw <<<"$w"
	row "$name" "$unit" "$bs" "$step" "$depth" $rw
done
echo
echo "CPU time per I/O (µs; the target process's user+system time over all rounds / requests):"
printf '%-28s %9s %9s %9s\n' workload tandem tgtd istgt
printf '%s\n' "${cpurows[@]}"

# mirror: the mirror section, on a cluster of its own once these targets
# have stopped.
mirror() {
	cleanup
	trap - EXIT
	[ "${BENCH_MIRROR:-1}" = 0 ] && exit 0
	exec ./scripts/bench-mirror.sh
}
[ -n "$only" ] && mirror

# Snapshots under the volume (issue 4): the same 4 KiB random workloads at
# QD32 on three volumes filled with the same data, with 0, 1 and 20
# snapshots below the head (each snapshot holds data of its own). The
# volumes are measured in interleaved rounds (0, 1, 20, 0, 1, 20, ...) so
# that the machine's drift over a minute does not fall on one row; each row
# keeps its best round. Reads come first, while every block is still held
# by the snapshots; the first write round then allocates the heads.
echo
echo "Tandem with snapshots below the volume (4K random, QD32, IOPS, best of $runs interleaved rounds):"
snapcounts="0 1 20"
snapurl() { echo "iscsi://127.0.0.1:$tport/iqn.2026-11.io.tandem:snap$1/0"; }
for n in $snapcounts; do
	./bin/tandem volume create "snap$n" --size 1GiB >/dev/null
	qemu-img convert -n -f raw -O raw "$work/fill.img" "$(snapurl "$n")"
done
rm -f "$work/fill.img"
./bin/tandem snapshot create snap1 s1 >/dev/null
./bin/tandem snapshot create snap20 s1 >/dev/null
for i in $(seq 2 20); do
	qemu-io -f raw -c "write -P $i $(((i * 48 % 1000) << 20)) 16M" "$(snapurl 20)" >/dev/null
	./bin/tandem snapshot create snap20 "s$i" >/dev/null
done
# rounds [-w]: prints "N best" for each snapshot count
rounds() {
	local rw=${1:-} count n t v
	declare -A best
	count=$(requests "$(snapurl 0)" 32 4096 $scatter $rw)
	for r in $(seq 1 "$runs"); do
		for n in $snapcounts; do
			t=$(bench "$(snapurl "$n")" "$count" 32 4096 $scatter $rw)
			v=$(awk -v c="$count" -v t="$t" 'BEGIN{printf "%.0f", c/t}')
			[ "$v" -gt "${best[$n]:-0}" ] && best[$n]=$v
		done
	done
	for n in $snapcounts; do echo "$n ${best[$n]}"; done
}
reads=$(rounds)
writes=$(rounds -w)
printf '%-12s %12s %12s\n' snapshots read write
join <(echo "$reads") <(echo "$writes") | awk '
	{ printf "%-12s %12s %12s\n", $1, $2, $3
	  if (NR == 1 || $2 < rmin) rmin = $2; if ($2 > rmax) rmax = $2
	  if (NR == 1 || $3 < wmin) wmin = $3; if ($3 > wmax) wmax = $3 }
	END { printf "spread (slowest below fastest): read %.1f%%, write %.1f%%\n", 100*(1-rmin/rmax), 100*(1-wmin/wmax) }'

# Snapshot, clone and revert of a 1 GiB and a 1 TiB volume: the same time
# (ns per snapshot+clone+revert cycle, in process).
echo
echo "Layer operations, one snapshot+clone+revert cycle:"
go test -run '^$' -bench 'BenchmarkLayerOps' -benchtime 50x ./volume | awk '/^BenchmarkLayerOps/ {printf "  %-28s %10.2f ms\n", $1, $3/1e6}'
mirror
