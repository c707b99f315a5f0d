# Helpers shared by bench.sh and bench-mirror.sh (sourced). They read
# $secs (seconds a calibrated run should take) and $bench_prefix (a
# command prefix for qemu-img, e.g. "taskset -c 0"; empty by default).

# bench URL COUNT DEPTH SIZE STEP [-w]  -> seconds
bench() {
	local url=$1 count=$2 depth=$3 bs=$4 step=$5 rw=${6:-}
	${bench_prefix:-} qemu-img bench -f raw $rw -c "$count" -d "$depth" -s "$bs" -S "$step" "$url" 2>&1 |
		sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p'
}
# requests URL DEPTH SIZE STEP [-w]: how many requests take about $secs
requests() {
	local probe
	probe=$(bench "$1" 2000 "$2" "$3" "$4" ${5:-})
	awk -v p="$probe" -v s="$secs" 'BEGIN{c=int(2000*s/(p>0?p:0.001)); if(c<2000)c=2000; print c}'
}
# cputicks PID: the process's user+system CPU time so far, all threads, in
# clock ticks (fields 14 and 15 of /proc/PID/stat; the name in field 2 has
# no spaces for the processes measured).
cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
