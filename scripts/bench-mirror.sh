#!/usr/bin/env bash
# The cost of mirroring (issue 9), run by scripts/bench.sh. Two two-node
# Tandem clusters on loopback, side by side: one with encrypted links (the
# default; nodes on 127.0.0.1 and 127.0.0.2), one with --insecure-links
# (127.0.0.3 and 127.0.0.4). Each serves a volume with two copies and one
# with a single copy, both with their primary on the cluster's first node
# (n1) and both filled with data first. qemu-img bench (libiscsi) measures
# each workload on the four volumes in interleaved rounds (1 copy, 2
# copies, 1 copy insecure, 2 copies insecure, 1 copy, ...), so that the
# machine's drift falls on none of them; each keeps its best round. Prints,
# per link mode, the ratio of 2 copies to 1, the QD1 write latency that
# mirroring adds, and the CPU time per I/O of the initiator, the primary
# and the replica; then what encryption costs on the 2-copy volume.
#   BENCH_SECONDS, BENCH_RUNS, BENCH_ONLY  as in bench.sh; BENCH_ONLY is
#                  matched against the row names printed here, which start
#                  with "mirror " (BENCH_ONLY=mirror runs only these rows)
#   BENCH_MIRROR_LINKS  which link modes (default "encrypted insecure")
#   BENCH_MIRROR_PIN=1  the replica on a core of its own: every n1 and
#                  qemu-img run on CPU 0, every n2 on CPU 1 (taskset), as
#                  if the replica were another machine; both volumes' runs
#                  then have one core for the initiator and the primary
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${BENCH_SECONDS:-5}
runs=${BENCH_RUNS:-3}
only=${BENCH_ONLY:-}
read -r -a modes <<<"${BENCH_MIRROR_LINKS:-encrypted insecure}"
pin=${BENCH_MIRROR_PIN:-0}
# on CPU: the command prefix that keeps a process on that CPU when pinned
on() { if [ "$pin" = 1 ]; then echo "taskset -c $1"; fi; }
if [ "$pin" = 1 ] && [ "$(nproc)" -lt 2 ]; then
	echo "bench-mirror: BENCH_MIRROR_PIN=1 needs 2 CPUs" >&2
	exit 1
fi
size=$((1 << 30))
# The same ports on each node's own loopback address; none is a default of
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
cleanup() {
	local p i alive
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	# A node hands its raft leadership over and closes its links before it
	# exits, which can take some seconds; give them up to 20 s.
	for i in $(seq 1 200); do
		alive=0
		for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ $alive = 0 ] && break
		sleep 0.1
	done
	for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

# The cluster being set up: its first node's admin API.
capi=""
cli() { ./bin/tandem --api "$capi" "$@"; }
# serve DIR NAME IP [FLAGS...]: starts a node in the background (n2 on
# CPU 1 when pinned, n1 on CPU 0)
serve() {
	local dir=$1 name=$2 ip=$3 cpu=0
	shift 3
	[ "$name" = n2 ] && cpu=1
	# --allow-unsafe-filesystem: the data is thrown away, see bench.sh.
	$(on $cpu) ./bin/tandem serve --name "$name" --data "$dir" --portal "$ip:$portal" --api "$ip:$api" \
		--cluster "$ip:$gossip" --log-level warn --allow-unsafe-filesystem "$@" >>"$dir.log" 2>&1 &
	pids+=($!)
}
# until_ok SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds
until_ok() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		if [ $SECONDS -ge $deadline ]; then
			echo "bench-mirror: timed out waiting for: $*" >&2
			tail -n 20 "$work"/*.log >&2 || true
			return 1
		fi
		sleep 0.2
	done
}
# create VOLUME COPIES: creates the volume unless it exists (a retry after
# an answer that did not arrive)
create() { cli volume show "$1" >/dev/null 2>&1 || cli volume create "$1" --size 1GiB --copies "$2"; }
# primary_on VOLUME [NODE]: the volume's primary is NODE (any node if
# empty) and every copy is in sync
primary_on() {
	cli volume show "$1" -o json | jq -e --arg n "$2" \
		'.primary != "" and ($n == "" or .primary == $n) and all(.copies[]; .state == "in-sync")' >/dev/null
}
# holds VOLUME NODE: NODE has a copy of VOLUME
holds() { cli volume show "$1" -o json | jq -e --arg n "$2" 'any(.copies[]; .node == $n)' >/dev/null; }
ensure_copy() { holds "$1" "$2" || cli volume add-copy "$1" --node "$2" --wait; }
ensure_primary() { primary_on "$1" "$2" || cli volume move "$1" --primary "$2"; }
drop_copy() { ! holds "$1" "$2" || cli volume remove-copy "$1" --node "$2"; }
# copies VOLUME N: N copies, primary on n1, all in sync
copies() { primary_on "$1" n1 && cli volume show "$1" -o json | jq -e --argjson n "$2" '.copies | length == $n' >/dev/null; }

# start K MODE: cluster K (nodes n1 on 127.0.0.(2K+1) and n2 on
# 127.0.0.(2K+2)) with links MODE; volumes c1 (one copy) and c2 (two
# copies), both with their primary on n1, both filled. Sets pid1[K],
# pid2[K], url1[K] and url2[K].
declare -a pid1 pid2 url1 url2
start() {
	local k=$1 mode=$2 ip1=127.0.0.$((2 * $1 + 1)) ip2=127.0.0.$((2 * $1 + 2)) flags=() v
	[ "$mode" = insecure ] && flags=(--insecure-links)
	capi=http://$ip1:$api
	serve "$work/$mode-n1" n1 "$ip1" "${flags[@]}"
	pid1[k]=${pids[-1]}
	until_ok 20 cli node list
	serve "$work/$mode-n2" n2 "$ip2" --join "$ip1:$gossip" --cluster-key-file "$work/$mode-n1/cluster.key" "${flags[@]}"
	pid2[k]=${pids[-1]}
	# Creating c2 waits for n2 to have joined as a data node. The cluster
	# places c1's single copy where it likes (on the node with the fewest
	# primaries): if that is n2, c1 gets a copy on n1, moves there, and
	# loses the one on n2; c2's primary moves to n1 if it is not there.
	until_ok 60 create c2 2
	until_ok 20 create c1 1
	for v in c1 c2; do
		until_ok 60 primary_on "$v" ""
		until_ok 120 ensure_copy "$v" n1
		until_ok 60 primary_on "$v" ""
		until_ok 60 ensure_primary "$v" n1
	done
	until_ok 60 drop_copy c1 n2
	until_ok 60 copies c1 1
	until_ok 60 copies c2 2
	url1[k]="iscsi://$ip1:$portal/iqn.2026-11.io.tandem:c1/0"
	url2[k]="iscsi://$ip1:$portal/iqn.2026-11.io.tandem:c2/0"
	for v in "${url1[k]}" "${url2[k]}"; do qemu-img convert -n -f raw -O raw "$work/fill.img" "$v"; done
}

bench_prefix=$(on 0)
. scripts/bench-lib.sh
# childticks: user+system time of this shell's waited-for children (fields
# 16 and 17 of its stat): qemu-img's, once bench has returned.
childticks() { awk '{print $16 + $17}' "/proc/$$/stat"; }
# machine: "busy:total" clock ticks of all CPUs (busy: neither idle nor
# waiting for I/O), from /proc/stat.
machine() { awk '/^cpu /{t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6 ":" t; exit}' /proc/stat; }
hz=$(getconf CLK_TCK)
ncpu=$(nproc)

# row SPEC: the volumes in interleaved rounds, the request count calibrated
# on the first mode's 2-copy volume. Appends to the output of each mode
# (res, cpu, lat) and to enc (what encryption costs).
declare -a res cpu lat
enc=()
row() {
	local name unit bs step depth rw
	IFS='|' read -r name unit bs step depth rw <<<"$1"
	local nv=$((2 * ${#modes[@]})) count r j k t v c0 c1 p0 p1 q0 q1 m0 m1
	# Per volume j (2k: mode k's 1-copy volume, 2k+1: its 2-copy one).
	local -a urls best ticks rticks qticks busy total timed rounds
	for k in "${!modes[@]}"; do urls+=("${url1[k]}" "${url2[k]}"); done
	for j in $(seq 0 $((nv - 1))); do best[j]=0 ticks[j]=0 rticks[j]=0 qticks[j]=0 busy[j]=0 total[j]=0 timed[j]=0 rounds[j]=""; done
	count=$(requests "${urls[1]}" "$depth" "$bs" "$step" $rw)
	for r in $(seq 1 "$runs"); do
		for j in $(seq 0 $((nv - 1))); do
			k=$((j / 2))
			m0=$(machine) c0=$(cputicks "${pid1[k]}") p0=$(cputicks "${pid2[k]}") q0=$(childticks)
			t=$(bench "${urls[j]}" "$count" "$depth" "$bs" "$step" $rw)
			c1=$(cputicks "${pid1[k]}") p1=$(cputicks "${pid2[k]}") q1=$(childticks) m1=$(machine)
			ticks[j]=$((ticks[j] + c1 - c0))
			rticks[j]=$((rticks[j] + p1 - p0))
			qticks[j]=$((qticks[j] + q1 - q0))
			busy[j]=$((busy[j] + ${m1%:*} - ${m0%:*}))
			total[j]=$((total[j] + ${m1#*:} - ${m0#*:}))
			timed[j]=$(awk -v a="${timed[j]}" -v b="$t" 'BEGIN{print a + b}')
			v=$(awk -v c="$count" -v t="$t" -v b="$bs" 'BEGIN{ if (b>=1048576) printf "%.0f", c*b/1e6/t; else printf "%.0f", c/t }')
			[ "$v" -gt "${best[j]}" ] && best[j]=$v
			rounds[j]+=" $v"
		done
	done
	for k in "${!modes[@]}"; do
		local a=$((2 * k)) b=$((2 * k + 1))
		# ratio: best over best; per round: the ratio within each round,
		# lowest and highest.
		res[k]+=$(awk -v name="$name ($unit)" -v x="${best[a]}" -v y="${best[b]}" -v ra="${rounds[a]}" -v rb="${rounds[b]}" 'BEGIN{
			n = split(ra, u, " "); split(rb, w, " ")
			for (i = 1; i <= n; i++) { q = w[i] / u[i]; if (i == 1 || q < lo) lo = q; if (q > hi) hi = q }
			printf "%-38s %9s %9s %7.2fx  %.2f-%.2fx\n", name, x, y, y / x, lo, hi
		}')$'\n'
		# CPU per request over all rounds. cores: the CPU of the nodes and
		# qemu-img over the seconds qemu-img timed (its login and final
		# flush fall outside those, their CPU inside: a slight
		# overestimate); others: the CPU everything else on the machine
		# used over the whole runs (kernel writeback, other processes).
		cpu[k]+=$(awk -v name="${name#mirror }" -v n=$((count * runs)) -v hz="$hz" -v ncpu="$ncpu" \
			-v p1="${ticks[a]}" -v r1="${rticks[a]}" -v q1="${qticks[a]}" -v b1="${busy[a]}" -v t1="${total[a]}" -v s1="${timed[a]}" \
			-v p2="${ticks[b]}" -v r2="${rticks[b]}" -v q2="${qticks[b]}" -v b2="${busy[b]}" -v t2="${total[b]}" -v s2="${timed[b]}" 'BEGIN{
			f = 1e6 / hz / n
			printf "%-24s %8.1f %8.1f %5.2f %6.2f  %8.1f %8.1f %8.1f %8.1f %5.2f %6.2f\n", name,
				p1 * f, q1 * f, (p1 + r1 + q1) / hz / s1, ncpu * (b1 - p1 - r1 - q1) / t1,
				p2 * f, r2 * f, q2 * f, (p2 + r2 + q2) * f, (p2 + r2 + q2) / hz / s2, ncpu * (b2 - p2 - r2 - q2) / t2
		}')$'\n'
		if [ "$depth" = 1 ] && [ -n "$rw" ]; then
			lat[k]=$(awk -v x="${best[a]}" -v y="${best[b]}" 'BEGIN{
				printf "QD1 write latency added by mirroring: %.1f µs (mean %.1f µs with 1 copy, %.1f µs with 2; 1e6/IOPS)", 1e6/y - 1e6/x, 1e6/x, 1e6/y }')
		fi
	done
	# Encryption: the 2-copy volume with encrypted links (mode 0) against
	# insecure ones (mode 1).
	if [ ${#modes[@]} = 2 ] && [ "${modes[0]}" = encrypted ] && [ "${modes[1]}" = insecure ]; then
		enc+=("$(awk -v name="$name ($unit)" -v x="${best[1]}" -v y="${best[3]}" -v n=$((count * runs)) -v hz="$hz" \
			-v e1="${ticks[1]}" -v e2="${rticks[1]}" -v i1="${ticks[3]}" -v i2="${rticks[3]}" 'BEGIN{
			f = 1e6 / hz / n
			printf "%-38s %9s %9s %7.2fx  %8.1f %8.1f", name, x, y, x / y, (e1 - i1) * f, (e2 - i2) * f
		}')")
	fi
}

echo
echo "Mirroring: 2-node clusters on loopback, a volume with 2 copies against one with 1, both with n1 as primary"
[ "$pin" = 1 ] && echo "pinned (BENCH_MIRROR_PIN=1): n1 and qemu-img on CPU 0, n2 on CPU 1"
echo "(load average $(cut -d' ' -f1-3 /proc/loadavg) before the setup)"
head -c $size /dev/urandom >"$work/fill.img"
for k in "${!modes[@]}"; do start "$k" "${modes[k]}"; done
rm -f "$work/fill.img"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for r in "${rows[@]}"; do row "$r"; done
echo "(load average $load0 before the rows, $(cut -d' ' -f1-3 /proc/loadavg) after)"
# A replica dropped during the rows (an answer later than the replica
# timeout) would make the 2-copy figures those of one copy: say so, with
# what the nodes logged.
for k in "${!modes[@]}"; do
	capi=http://127.0.0.$((2 * k + 1)):$api
	if ! copies c2 2; then
		echo "WARNING: ${modes[k]} cluster: c2 no longer has 2 copies in sync; its figures are not those of a mirror:"
		cli volume show c2 || true
	fi
done
for f in "$work"/*.log; do
	if grep -v -e 'unsafe-filesystem' -e '^$' "$f" | grep -q .; then
		echo "$(basename "$f" .log) logged:"
		grep -v -e 'unsafe-filesystem' -e '^$' "$f" | tail -n 5
	fi
done
for k in "${!modes[@]}"; do
	echo
	echo "${modes[k]} links (best of $runs interleaved rounds; ratio = 2 copies / 1 copy):"
	printf '%-38s %9s %9s %8s  %s\n' workload "1 copy" "2 copies" ratio "per round"
	printf '%s' "${res[k]}"
	[ -n "${lat[k]:-}" ] && echo "${lat[k]}"
	echo "CPU time per I/O (µs; user+system time over all rounds / requests); cores: the CPU of the nodes and qemu-img"
	echo "over qemu-img's timed seconds; others: the CPU of everything else on the machine (of $ncpu cores):"
	printf '%-24s %30s  %48s\n' "" "----------- 1 copy -----------" "------------------ 2 copies --------------------"
	printf '%-24s %8s %8s %5s %6s  %8s %8s %8s %8s %5s %6s\n' workload n1 qemu-img cores others n1 n2 qemu-img total cores others
	printf '%s' "${cpu[k]}"
done
if [ ${#enc[@]} -gt 0 ]; then
	echo
	echo "What encryption costs, 2 copies (same rounds): encrypted / insecure, and the CPU per I/O it adds (µs):"
	printf '%-38s %9s %9s %8s  %8s %8s\n' workload encrypted insecure ratio "n1 +" "n2 +"
	printf '%s\n' "${enc[@]}"
fi
