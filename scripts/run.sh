#!/usr/bin/env bash
# make run: one Tandem node on this machine with a 1 GiB thin volume "demo".
# Settings: TANDEM_DATA (./tandem-data), TANDEM_PORTAL (127.0.0.1:3260),
# TANDEM_API_ADDR (127.0.0.1:7480). Ctrl-C stops the node cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${TANDEM_DATA:-./tandem-data}
portal=${TANDEM_PORTAL:-127.0.0.1:3260}
api=${TANDEM_API_ADDR:-127.0.0.1:7480}
bin=./bin/tandem
export TANDEM_API="http://$api"

log=$(mktemp)
start() {
	$bin serve --data "$data" --portal "$portal" --api "$api" "$@" 2> >(tee "$log" >&2) &
	node=$!
}
start
trap 'kill -TERM $node 2>/dev/null; wait $node; rm -f "$log"' INT TERM
for i in $(seq 1 100); do
	if ! kill -0 $node 2>/dev/null; then
		wait $node || true
		if grep -q "cannot keep layers safe across a power loss" "$log"; then
			# A demo may run where a production node must not: say so, and
			# go on with the check overridden.
			echo "WARNING: $data is on a file system that may garble thin volumes at a power loss (see above)." >&2
			echo "WARNING: make run goes on with --allow-unsafe-filesystem; a production node must not." >&2
			start --allow-unsafe-filesystem
			continue
		fi
		echo "tandem serve exited; see the messages above (is the portal or API address in use?)" >&2
		exit 1
	fi
	# Ready: part of a cluster (its own, on a first start) and reconciled.
	curl -sf "http://$api/healthz" >/dev/null 2>&1 && break
	sleep 0.1
done
if ! $bin volume show demo >/dev/null 2>&1; then
	$bin volume create demo --size 1GiB
fi
iqn=$($bin volume show demo -o json | sed -n 's/.*"iqn": *"\([^"]*\)".*/\1/p' | head -1)
cat <<MSG

Tandem is serving volume "demo" (1 GiB, thin).
  LUN URL:    iscsi://$portal/$iqn/0
  Portal:     $portal        Admin API: $TANDEM_API

Try it from another terminal:
  iscsi-ls -s iscsi://$portal
  iscsi-inq iscsi://$portal/$iqn/0
  iscsi-readcapacity16 iscsi://$portal/$iqn/0
  qemu-img info iscsi://$portal/$iqn/0
  ./bin/tandem volume list

Press Ctrl-C to stop the node.
MSG
wait $node
