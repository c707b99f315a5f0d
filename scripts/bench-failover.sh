#!/usr/bin/env bash
# Failover times (issue 10), run by make bench after the throughput tables:
# the failover tests of tests/failover_test.go with BENCH_FAILOVER_TRIALS
# trials each (default 10), three data nodes on loopback or in network
# namespaces, stamp writers (libiscsi) keeping their histories outside the
# nodes. For each fault, the longest time any writer went without a
# completed I/O (the pause an initiator with every node's portal sees: it
# moves to another path when its own fails or answers ALUA NOT READY),
# median and maximum over the trials; every trial also passed the checker.
# Then the kill of the primary with Linux dm-multipath in a VM (two paths,
# ALUA device handler) and with QEMU through the floating address: the
# longest pause between two writes the initiator completed.
#   BENCH_FAILOVER=0        skips this section
#   BENCH_FAILOVER_TRIALS   trials per fault (default 10)
#   BENCH_ONLY              runs this section only if it matches "failover"
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${BENCH_FAILOVER:-1}" = 0 ] && exit 0
if [ -n "${BENCH_ONLY:-}" ] && ! [[ failover =~ ${BENCH_ONLY} ]]; then exit 0; fi
trials=${BENCH_FAILOVER_TRIALS:-10}
log=$(mktemp /tmp/tandem-bench-failover.XXXXXX)
trap 'rm -f "$log"' EXIT
echo
echo "Failover: the longest pause of stamped writers across the fault, $trials trials each (median, max):"
if ! TANDEM_FAILOVER_TRIALS=$trials go test -count=1 -v -timeout 3h \
	-run 'TestFailover(KillPrimary|FreezePrimary|FreezeReplica|Partition|FloatingAddressQEMU)$|TestLinuxMultipathFailover$' ./tests/ >"$log" 2>&1; then
	grep -E -- '--- FAIL|violation|failover_test' "$log" | head -40
	echo "bench-failover: a failover test failed (log above)" >&2
	exit 1
fi
grep -E 'trials, pause median' "$log" | sed -E 's/^ *[a-z_]+_test.go:[0-9]+: /  /'
