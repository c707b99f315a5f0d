#!/bin/sh
# /init of the test VM: the Linux kernel initiator against a Tandem target.
# Kernel command line: tandem.portal=ADDR:PORT tandem.iqn=IQN tandem.ip=CIDR
# The portal is the address the guest reaches the node by (QEMU's user
# network forwards it to the node's loopback portal on the host); the node's
# SendTargets reply names its own address instead, which the guest prints
# ("TANDEM-VM: discovered ...") for the host to check, and cannot reach: the
# guest logs in through a node record it creates for the portal it can reach.
# Prints "TANDEM-VM: step ..." lines and, last, "TANDEM-VM: PASS" or
# "TANDEM-VM: FAIL <why>", then powers off. At "TANDEM-VM: wait <what>" it
# stops until the host sends a line on the second serial port (ttyS1), so
# that the host can look at the volume at that point.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /run/lock/iscsi /var/lock/iscsi /var/lib/iscsi/nodes /var/lib/iscsi/send_targets

fail() {
	echo "TANDEM-VM: FAIL $*"
	poweroff -f
}
step() { echo "TANDEM-VM: step $*"; }
# ttyS1 stays open from here on: a serial port that nothing holds open drops
# what arrives, and the host answers a wait as soon as it reads the line, often
# before a reader started only then would have opened the port.
exec 3</dev/ttyS1 || fail "cannot open ttyS1"
wait_host() {
	echo "TANDEM-VM: wait $1"
	read -r _ <&3 || fail "no answer from the host on ttyS1"
}

for a in $(cat /proc/cmdline); do
	case $a in
	tandem.portal=*) portal=${a#tandem.portal=} ;;
	tandem.iqn=*) iqn=${a#tandem.iqn=} ;;
	tandem.ip=*) ip=${a#tandem.ip=} ;;
	tandem.portals=*) portals=${a#tandem.portals=} ;;
	tandem.scenario=*) scenario=${a#tandem.scenario=} ;;
	esac
done
[ -n "$portal" ] && [ -n "$iqn" ] && [ -n "$ip" ] || fail "missing tandem.* kernel arguments"

for m in $(cat /modules.order); do
	insmod /lib/modules/$m 2>/dev/null || grep -q "^${m%.ko} " /proc/modules || fail "insmod $m"
done
step "kernel $(cat /proc/sys/kernel/osrelease)"

ip link set lo up
ip link set eth0 up || fail "no eth0"
ip addr add "$ip" dev eth0 || fail "ip addr $ip"

echo "InitiatorName=iqn.2026-11.io.tandem.test:linux-vm" >/etc/iscsi/initiatorname.iscsi
iscsid || fail "iscsid did not start"
sleep 1

# multipath_scenario: dm-multipath over one path per portal in
# tandem.portals (each node's own target port), with the ALUA device
# handler; path groups in the order of their ALUA states (active/optimized
# first), I/O queued while no path serves (queue_if_no_path), and a path
# checker as multipathd runs one: a failed path whose disk reads again is
# reinstated. A writer stamps blocks through the multipath device and
# reports each write ("TANDEM-VM: w <n>"); the host kills the primary
# meanwhile. Any write error fails the run; at the end every block must
# hold its last write.
multipath_scenario() {
	step "multipath: logging in to every portal"
	for p in $(echo "$portals" | tr , ' '); do
		iscsiadm -m node -o new -T "$iqn" -p "$p" >/dev/null || fail "node record for $p"
		# A dead node's session fails its I/O to dm-multipath after 1 s;
		# NOP-Outs find a silent one.
		for kv in node.session.timeo.replacement_timeout=1 node.conn[0].timeo.noop_out_interval=1 \
			node.conn[0].timeo.noop_out_timeout=2; do
			iscsiadm -m node -T "$iqn" -p "$p" -o update -n "${kv%%=*}" -v "${kv#*=}" || fail "setting $kv"
		done
		iscsiadm -m node -T "$iqn" -p "$p" --login || fail "login at $p"
	done
	paths=""
	for i in $(seq 1 100); do
		paths=""
		for d in /sys/block/sd*; do
			[ -e "$d/device/vendor" ] && grep -q TANDEM "$d/device/vendor" && paths="$paths ${d##*/}"
		done
		[ "$(echo $paths | wc -w)" -ge 2 ] && break
		sleep 0.1
	done
	[ "$(echo $paths | wc -w)" -ge 2 ] || fail "fewer than two paths: $paths"
	active="" standby="" sectors=0
	for p in $paths; do
		state=$(cat /sys/block/$p/device/access_state 2>/dev/null)
		handler=$(cat /sys/block/$p/device/dh_state 2>/dev/null)
		step "path $p ($(cat /sys/block/$p/dev)): ALUA state $state, device handler $handler, $(cat /sys/block/$p/size) sectors"
		[ "$handler" = alua ] || fail "path $p has device handler '$handler', not alua"
		case $state in
		active/optimized) active="$active $(cat /sys/block/$p/dev)" ;;
		*) standby="$standby $(cat /sys/block/$p/dev)" ;;
		esac
		s=$(cat /sys/block/$p/size)
		[ "$s" -gt "$sectors" ] && sectors=$s
	done
	[ "$(echo $active | wc -w)" -eq 1 ] || fail "want one active/optimized path, have '$active' (others '$standby')"
	pg() { echo "round-robin 0 $(echo $1 | wc -w) 1 $(for d in $1; do printf '%s 1000 ' $d; done)"; }
	table="0 $sectors multipath 1 queue_if_no_path 1 alua 2 1 $(pg "$active") $(pg "$standby")"
	step "dmsetup table: $table"
	dmsetup create mp --table "$table" || fail "dmsetup create"
	[ -b /dev/mapper/mp ] || dmsetup mknodes mp
	[ -b /dev/mapper/mp ] || fail "no /dev/mapper/mp"

	# The path checker, as multipathd's: a failed path is reinstated once
	# its port serves again. The ALUA handler rejects I/O to a path whose
	# state it last saw as standby without sending it, so the checker has
	# it read the state again (a rescan runs REPORT TARGET PORT GROUPS)
	# rather than reading the disk.
	(
		while :; do
			for p in $paths; do
				dev=$(cat /sys/block/$p/dev)
				dmsetup status mp | grep -q " $dev F " || continue
				# A path whose session is down keeps the state it last had.
				[ "$(cat /sys/block/$p/device/state)" = running ] || continue
				echo 1 >/sys/block/$p/device/rescan 2>/dev/null
				case $(cat /sys/block/$p/device/access_state 2>/dev/null) in
				active/optimized | active/non-optimized)
					dmsetup message mp 0 reinstate_path "$dev" &&
						echo "TANDEM-VM: step path $p reinstated ($(cat /sys/block/$p/device/access_state))"
					;;
				esac
			done
			sleep 0.25
		done
	) &
	checker=$!

	blocks=256
	i=0
	wait_host "multipath ready"
	# The host sends "stop" on ttyS1 when it has seen enough.
	(read -r _ <&3; touch /tmp/stop) &
	while [ ! -e /tmp/stop ]; do
		i=$((i + 1))
		printf 'tandem-mp %08d\n' "$i" | dd of=/dev/mapper/mp bs=4096 seek=$((i % blocks)) conv=sync,notrunc oflag=direct 2>/tmp/dd.err ||
			fail "write $i: $(cat /tmp/dd.err)"
		echo "TANDEM-VM: w $i"
	done
	kill $checker
	step "checking $blocks blocks"
	b=0
	while [ $b -lt $blocks ]; do
		last=$((i - ((i - b) % blocks + blocks) % blocks))
		want=$(printf 'tandem-mp %08d' "$last")
		[ $last -le 0 ] && want=""
		got=$(dd if=/dev/mapper/mp bs=4096 skip=$b count=1 iflag=direct 2>/dev/null | head -c 18)
		[ "$got" = "$want" ] || fail "block $b holds '$got', want '$want' (last write $i)"
		b=$((b + 1))
	done
	step "status: $(dmsetup status mp)"
	# The kernel's account of the path switch, for the host's log.
	dmesg | grep -E 'connection|session|alua|multipath|sd [0-9:]+|device-mapper' | grep -v 'detected conn error' | tail -30 |
		while read -r line; do echo "TANDEM-VM: kernel $line"; done
	dmsetup remove mp || fail "dmsetup remove"
	echo "TANDEM-VM: PASS"
}

disk() { # waits for the iSCSI disk and prints its device
	for i in $(seq 1 100); do
		for d in /sys/block/sd*; do
			[ -e "$d/device/vendor" ] || continue
			grep -q TANDEM "$d/device/vendor" && { echo "/dev/${d##*/}"; return 0; }
		done
		sleep 0.1
	done
	return 1
}

[ "$scenario" = multipath ] && { multipath_scenario; poweroff -f; }

step "discovery"
found=$(iscsiadm -m discovery -t sendtargets -p "$portal" -o nonpersistent) || fail "discovery"
echo "$found" | while read -r line; do echo "TANDEM-VM: discovered $line"; done
echo "$found" | grep -q " $iqn\$" || fail "discovery did not list $iqn"

step "login"
iscsiadm -m node -o new -T "$iqn" -p "$portal" >/dev/null || fail "creating the node record for $portal"
iscsiadm -m node -T "$iqn" -p "$portal" --login || fail "login"
dev=$(disk) || fail "no SCSI disk after login"
step "disk $dev $(cat /sys/block/${dev#/dev/}/size) sectors, discard_max $(cat /sys/block/${dev#/dev/}/queue/discard_max_bytes)"

step "mkfs"
mkfs.ext4 -q -F "$dev" || fail "mkfs.ext4"
e2fsck -fn "$dev" || fail "e2fsck after mkfs"
wait_host formatted
mount -t ext4 "$dev" /mnt || fail "mount"
dd if=/dev/urandom of=/mnt/data bs=1M count=64 2>/dev/null || fail "write file"
sync
wait_host written
sum=$(md5sum /mnt/data | awk '{print $1}')
umount /mnt || fail "umount"
e2fsck -fn "$dev" || fail "e2fsck after writing"

step "logout and login again"
iscsiadm -m node -T "$iqn" -p "$portal" --logout || fail "logout"
sleep 1
iscsiadm -m node -T "$iqn" -p "$portal" --login || fail "second login"
dev=$(disk) || fail "no SCSI disk after the second login"
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 "$dev" /mnt || fail "mount after second login"
got=$(md5sum /mnt/data | awk '{print $1}')
[ "$got" = "$sum" ] || fail "file changed across logout/login: $sum != $got"
step "file intact after re-login"

step "fstrim"
rm /mnt/data
sync
fstrim -v /mnt || fail "fstrim"
umount /mnt || fail "umount after fstrim"
e2fsck -fn "$dev" || fail "e2fsck after fstrim"
wait_host trimmed
iscsiadm -m node -T "$iqn" -p "$portal" --logout || fail "final logout"
echo "TANDEM-VM: PASS"
poweroff -f
