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
