#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks drive, if missing:
# libiscsi's tools and compliance suite, QEMU's iSCSI driver, QEMU's x86
# system emulator with kmod and cpio (the Linux kernel initiator test boots a
# VM), gcc and libiscsi's headers (the tests build a stamped-block initiator,
# tests/testdata/stamp/stamp.c), iptables (failover tests cut links inside
# network namespaces they make), and tgt and istgt (the benchmark's reference
# targets).
set -euo pipefail
need=()
command -v iscsi-ls >/dev/null 2>&1 || need+=(libiscsi-bin)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so ] || ls /usr/lib/*/qemu/block-iscsi.so >/dev/null 2>&1 || need+=(qemu-block-extra)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v depmod >/dev/null 2>&1 || need+=(kmod)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -e /usr/include/iscsi/iscsi.h ] || need+=(libiscsi-dev)
if [ "${1:-}" = bench ]; then
	command -v tgtd >/dev/null 2>&1 || need+=(tgt)
	command -v istgt >/dev/null 2>&1 || need+=(istgt)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing: ${need[*]}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's tgt package starts a system tgtd on 0.0.0.0:3260, the portal
# `make run` uses; the benchmark runs its own instance, so stop that one.
if [[ " ${need[*]} " == *" tgt "* ]]; then
	$SUDO invoke-rc.d tgt stop >/dev/null 2>&1 || $SUDO pkill -x tgtd || true
fi
# Debian's istgt starts a system istgt only if /etc/istgt/istgt.conf exists
# (the package ships none); should one be configured, stop it the same way.
if [[ " ${need[*]} " == *" istgt "* ]]; then
	$SUDO invoke-rc.d istgt stop >/dev/null 2>&1 || true
	[ -s /var/run/istgt.pid ] && $SUDO kill "$(cat /var/run/istgt.pid)" 2>/dev/null || true
fi
