#!/usr/bin/env bash
# The cost of mirroring (issue 9), run by scripts/bench.sh: a two-node
# Tandem cluster on loopback (n1 on 127.0.0.1, n2 on 127.0.0.2) serves a
# volume with two copies and one with a single copy, both with their
# primary on n1 and both filled with data first. qemu-img bench (libiscsi)
# measures each workload on the two volumes in interleaved rounds (1 copy,
# 2 copies, 1 copy, ...); each keeps its best round. Prints the ratio of 2
# copies to 1, the QD1 write latency that mirroring adds, and the CPU time
# per I/O of the initiator, the primary and the replica. All of it once
# with encrypted links (the default) and once with --insecure-links, each
# on a fresh cluster, so that the difference is what encryption costs.
#   BENCH_SECONDS, BENCH_RUNS, BENCH_ONLY  as in bench.sh; BENCH_ONLY is
#                  matched against the row names printed here, which start
#                  with "mirror " (BENCH_ONLY=mirror runs only these rows)
#   BENCH_MIRROR_LINKS  which link modes, in order (default
#                  "encrypted insecure")
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${BENCH_SECONDS:-5}
runs=${BENCH_RUNS:-3}
only=${BENCH_ONLY:-}
modes=${BENCH_MIRROR_LINKS:-encrypted insecure}
size=$((1 << 30))
# The same ports on two loopback addresses; none is the default of
# `tandem serve` or used by bench.sh's own targets.
portal=13270 api=17490 gossip=17491 # the link port is gossip + 1

# The rows: name, unit, request size, step, depth, -w for writes.
# A step of 7919 blocks (a prime) scatters 4 KiB requests over the LUN.
scatter=$((4096 * 7919))
allrows=(
	"mirror 4K random write QD1|IOPS|4096|$scatter|1|-w"
	"mirror 4K random write QD32|IOPS|4096|$scatter|32|-w"
	"mirror 1M sequential write QD8|MB/s|$((1 << 20))|$((1 << 20))|8|-w"
	"mirror 4K random read QD32|IOPS|4096|$scatter|32|"
)
rows=()
for r in "${allrows[@]}"; do
	name=${r%%|*}
	if [ -z "$only" ] || [[ "$name" =~ $only ]]; then rows+=("$r"); fi
done
[ ${#rows[@]} -eq 0 ] && exit 0

work=$(mktemp -d /tmp/tandem-bench-mirror.XXXXXX)
pids=()
stop() {
	local p i alive
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	# A node hands its raft leadership over and closes its links before it
	# exits, which can take some seconds; give both up to 20 s.
	for i in $(seq 1 200); do
		alive=0
		for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ $alive = 0 ] && break
		sleep 0.1
	done
	for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
}
cleanup() {
	stop
	rm -rf "$work"
}
trap cleanup EXIT

api1=http://127.0.0.1:$api
n1() { ./bin/tandem --api "$api1" "$@"; }
# serve NAME IP [FLAGS...]: starts a node in the background
serve() {
	local name=$1 ip=$2
	shift 2
	# --allow-unsafe-filesystem: the data is thrown away, see bench.sh.
	./bin/tandem serve --name "$name" --data "$work/$name" --portal "$ip:$portal" --api "$ip:$api" \
		--cluster "$ip:$gossip" --log-level warn --allow-unsafe-filesystem "$@" >>"$work/$name.log" 2>&1 &
	pids+=($!)
}
# until SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds
until_ok() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		if [ $SECONDS -ge $deadline ]; then
			echo "bench-mirror: timed out waiting for: $*" >&2
			tail -n 20 "$work"/n*.log >&2 || true
			return 1
		fi
		sleep 0.2
	done
}
# create VOLUME COPIES: creates the volume unless it exists (a retry after
# an answer that did not arrive)
create() { n1 volume show "$1" >/dev/null 2>&1 || n1 volume create "$1" --size 1GiB --copies "$2"; }
# primary_on VOLUME [NODE]: the volume's primary is NODE (any node if
# empty) and every copy is in sync
primary_on() {
	n1 volume show "$1" -o json | jq -e --arg n "$2" \
		'.primary != "" and ($n == "" or .primary == $n) and all(.copies[]; .state == "in-sync")' >/dev/null
}
# start MODE: a fresh two-node cluster with links MODE, volumes c1 (one
# copy) and c2 (two copies), both with their primary on n1, both filled.
start() {
	local flags=()
	[ "$1" = insecure ] && flags=(--insecure-links)
	rm -rf "$work/n1" "$work/n2"
	serve n1 127.0.0.1 "${flags[@]}"
	pid1=${pids[-1]}
	until_ok 20 n1 node list
	serve n2 127.0.0.2 --join 127.0.0.1:$gossip --cluster-key-file "$work/n1/cluster.key" "${flags[@]}"
	pid2=${pids[-1]}
	# Creating c2 waits for n2 to have joined as a data node. The cluster
	# places c1's single copy where it likes (the node with the fewest
	# primaries): if that is n2, c1 gets a copy on n1, becomes n1's, and
	# loses the one on n2; c2's primary moves to n1 if it is not there.
	until_ok 60 create c2 2
	until_ok 20 create c1 1
	local v
	for v in c1 c2; do
		until_ok 60 primary_on "$v" ""
		until_ok 120 ensure_copy "$v" n1
		until_ok 60 primary_on "$v" ""
		until_ok 60 ensure_primary "$v" n1
	done
	until_ok 60 drop_copy c1 n2
	until_ok 60 copies c1 1
	until_ok 60 copies c2 2
	for v in c1 c2; do qemu-img convert -n -f raw -O raw "$work/fill.img" "$(url "$v")"; done
}
# holds VOLUME NODE: NODE has a copy of VOLUME
holds() { n1 volume show "$1" -o json | jq -e --arg n "$2" 'any(.copies[]; .node == $n)' >/dev/null; }
ensure_copy() { holds "$1" "$2" || n1 volume add-copy "$1" --node "$2" --wait; }
ensure_primary() { primary_on "$1" "$2" || n1 volume move "$1" --primary "$2"; }
drop_copy() { ! holds "$1" "$2" || n1 volume remove-copy "$1" --node "$2"; }
# copies VOLUME N: N copies, primary on n1, all in sync
copies() { primary_on "$1" n1 && n1 volume show "$1" -o json | jq -e --argjson n "$2" '.copies | length == $n' >/dev/null; }
url() { echo "iscsi://127.0.0.1:$portal/iqn.2026-11.io.tandem:$1/0"; }

# bench URL COUNT DEPTH SIZE STEP [-w]  -> seconds
bench() {
	local url=$1 count=$2 depth=$3 bs=$4 step=$5 rw=${6:-}
	qemu-img bench -f raw $rw -c "$count" -d "$depth" -s "$bs" -S "$step" "$url" 2>&1 |
		sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p'
}
# requests URL DEPTH SIZE STEP [-w]: how many requests take about $secs
requests() {
	local probe
	probe=$(bench "$1" 2000 "$2" "$3" "$4" ${5:-})
	awk -v p="$probe" -v s="$secs" 'BEGIN{c=int(2000*s/(p>0?p:0.001)); if(c<2000)c=2000; print c}'
}
# cputicks PID: the process's user+system CPU time so far, in clock ticks
# (fields 14 and 15 of /proc/PID/stat).
cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# childticks: user+system time of this shell's waited-for children (fields
# 16 and 17 of its stat): qemu-img's, once bench has returned.
childticks() { awk '{print $16 + $17}' "/proc/$$/stat"; }
# machine: busy and total clock ticks of all CPUs (busy = not idle, not
# waiting for I/O), from /proc/stat.
machine() { awk '/^cpu /{t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit}' /proc/stat; }
hz=$(getconf CLK_TCK)
ncpu=$(nproc)

# row SPEC: the two volumes in interleaved rounds (c1, c2, c1, ...), the
# request count calibrated on c2. Prints the result row; keeps the CPU row.
cpurows=() lat=""
row() {
	local name unit bs step depth rw
	IFS='|' read -r name unit bs step depth rw <<<"$1"
	local count r i t v c0 c1 q0 q1 p0 p1 m0 m1 rounds=""
	local -a best=(0 0) ticks=(0 0) rticks=(0 0) qticks=(0 0) busy=(0 0) total=(0 0)
	local -a urls=("$(url c1)" "$(url c2)")
	count=$(requests "${urls[1]}" "$depth" "$bs" "$step" $rw)
	for r in $(seq 1 "$runs"); do
		for i in 0 1; do
			m0=$(machine | tr ' ' :)
			c0=$(cputicks "$pid1") p0=$(cputicks "$pid2") q0=$(childticks)
			t=$(bench "${urls[$i]}" "$count" "$depth" "$bs" "$step" $rw)
			c1=$(cputicks "$pid1") p1=$(cputicks "$pid2") q1=$(childticks)
			m1=$(machine | tr ' ' :)
			ticks[$i]=$((ticks[i] + c1 - c0))
			rticks[$i]=$((rticks[i] + p1 - p0))
			qticks[$i]=$((qticks[i] + q1 - q0))
			busy[$i]=$((busy[i] + ${m1%:*} - ${m0%:*}))
			total[$i]=$((total[i] + ${m1#*:} - ${m0#*:}))
			v=$(awk -v c="$count" -v t="$t" -v b="$bs" 'BEGIN{ if (b>=1048576) printf "%.0f", c*b/1e6/t; else printf "%.0f", c/t }')
			[ "$v" -gt "${best[$i]}" ] && best[$i]=$v
			rounds+=" $v"
		done
	done
	awk -v name="$name ($unit)" -v a="${best[0]}" -v b="${best[1]}" -v rounds="$rounds" 'BEGIN{
		n = split(rounds, v, " ")
		for (k = 1; k + 1 <= n; k += 2) {
			x = v[k+1] / v[k]
			if (k == 1 || x < lo) lo = x; if (x > hi) hi = x
		}
		printf "%-38s %9s %9s %7.2fx  %.2f-%.2fx\n", name, a, b, b / a, lo, hi
	}'
	# CPU per request over all rounds; the cores the nodes and qemu-img kept
	# busy on average, and the cores busy machine-wide (the difference is
	# other work: kernel threads, other processes).
	cpurows+=("$(awk -v name="${name#mirror }" -v n=$((count * runs)) -v hz="$hz" -v ncpu="$ncpu" \
		-v p1="${ticks[0]}" -v r1="${rticks[0]}" -v q1="${qticks[0]}" -v b1="${busy[0]}" -v t1="${total[0]}" \
		-v p2="${ticks[1]}" -v r2="${rticks[1]}" -v q2="${qticks[1]}" -v b2="${busy[1]}" -v t2="${total[1]}" 'BEGIN{
		f = 1e6 / hz / n
		printf "%-24s %8.1f %8.1f %5.2f %5.2f  %8.1f %8.1f %8.1f %8.1f %5.2f %5.2f", name,
			p1 * f, q1 * f, ncpu * (p1 + r1 + q1) / t1, ncpu * b1 / t1,
			p2 * f, r2 * f, q2 * f, (p2 + r2 + q2) * f, ncpu * (p2 + r2 + q2) / t2, ncpu * b2 / t2
	}')")
	if [ "$depth" = 1 ] && [ -n "$rw" ]; then
		lat=$(awk -v a="${best[0]}" -v b="${best[1]}" 'BEGIN{
			printf "QD1 write latency added by mirroring: %.1f µs (mean %.1f µs with 1 copy, %.1f µs with 2; 1e6/IOPS)", 1e6/b - 1e6/a, 1e6/a, 1e6/b }')
	fi
}

head -c $size /dev/urandom >"$work/fill.img"
for mode in $modes; do
	start "$mode"
	echo
	echo "Mirroring: a volume with 2 copies against one with 1, both primary on n1, 2-node cluster on loopback,"
	echo "$mode links (best of $runs interleaved rounds; ratio = 2 copies / 1 copy; load average $(cut -d' ' -f1-3 /proc/loadavg)):"
	printf '%-38s %9s %9s %8s  %s\n' workload "1 copy" "2 copies" ratio "per round"
	cpurows=() lat=""
	for r in "${rows[@]}"; do row "$r"; done
	[ -n "$lat" ] && echo "$lat"
	echo "CPU time per I/O (µs; user+system time over all rounds / requests); cores: those the nodes and qemu-img"
	echo "kept busy on average, busy: those busy machine-wide (of $ncpu):"
	printf '%-24s %29s  %47s\n' "" "----------- 1 copy ----------" "------------------ 2 copies -------------------"
	printf '%-24s %8s %8s %5s %5s  %8s %8s %8s %8s %5s %5s\n' workload n1 qemu-img cores busy n1 n2 qemu-img total cores busy
	printf '%s\n' "${cpurows[@]}"
	stop
done
