#!/usr/bin/env bash
# The cluster, measured: three test hosts (network, mount and PID namespaces) joined
# by a bridge with no route out, a daemon in each. Prints cross-node iperf3 and
# redis-benchmark through ax next to native on the same hosts, the time from listen()
# on one node to a successful connect by name on another (median of 20), and the
# simulated convergence table. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${SECONDS_PER_RUN:-5}
[ "$(id -u)" = 0 ] || { echo "bench/cluster.sh needs root (it makes network namespaces)" >&2; exit 1; }
cargo build --release -q -p ax -p ax-bench
cargo build --release -q -p ax-cluster --example convergence
AX=$PWD/target/release/ax
P=axc-$$
WORK=$(mktemp -d)
. bench/testhost.sh
trap 'testhost_cleanup; rm -rf "$WORK"' EXIT
testhost_wire $P-sw
ip -n $P-sw link add br0 type bridge; ip -n $P-sw link set br0 up
INITS=()
for i in 0 1 2; do
  testhost $P-$i $P-sw 10.253.0.$((11 + i))
  ip -n $P-sw link set $PEER master br0
  INITS+=($INIT)
done
IP=(10.253.0.11 10.253.0.12 10.253.0.13)
on() { local i=$1; shift; nsenter -t ${INITS[$i]} -m -n -p -- "$@"; }
for i in 0 1 2; do
  on $i $AX daemon --node-interface ax0 --node-name n$i --neighbors 10.253.0.11,10.253.0.12,10.253.0.13 >"$WORK/d$i.log" 2>&1 &
done
for i in 0 1 2; do for _ in $(seq 200); do on $i $AX get nodes -o json 2>/dev/null | grep -c '"live": true' | grep -q 3 && break; sleep 0.1; done; done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
row() { printf "%-38s %14s %14s %8s\n" "$1" "$2" "$3" "$4"; }
gbps() { python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
wait_row() { for _ in $(seq 200); do on $2 $AX get servers | grep -q "$1" && return 0; sleep 0.05; done; echo "no row for $1 on node $2" >&2; return 1; }
wait_port() { for _ in $(seq 200); do on $1 ss -ltn | grep -q ":$2 " && return 0; sleep 0.05; done; return 1; }

echo "ax cluster benchmark: $(date -u +%FT%TZ), $(nproc) CPUs, kernel $(uname -r), 3 nodes, ${T}s per run"
row "cross-node (node 0 serves, node 1 asks)" "native" "ax" "ax/native"
on 0 iperf3 -s -B ${IP[0]} -p 5301 >/dev/null 2>&1 & wait_port 0 5301
on 0 $AX run --ip 198.18.9.1 -- iperf3 -s -p 5201 >/dev/null 2>&1 & wait_row 198.18.9.1:5201 1
N=$(on 1 iperf3 -c ${IP[0]} -p 5301 -t $T -J | gbps)
A=$(on 1 $AX run -- iperf3 -c 198.18.9.1 -p 5201 -t $T -J | gbps)
row "iperf3 (Gbit/s)" "$N" "$A" "$(ratio $A $N)"
on 0 redis-server --bind ${IP[0]} --port 6390 --protected-mode no --save '' >/dev/null 2>&1 & wait_port 0 6390
on 0 $AX run --ip 198.18.9.2 -- redis-server --port 6379 --protected-mode no --save '' >/dev/null 2>&1 & wait_row 198.18.9.2:6379 1
REQS=$((T * 40000))
rps() { awk -F, -v t="\"$1\"" '$1==t {gsub(/"/,"",$2); print $2}'; }
NR=$(on 1 redis-benchmark -h ${IP[0]} -p 6390 -c 50 -n $REQS -t get,set -k 1 --csv 2>/dev/null)
AR=$(on 1 $AX run -- redis-benchmark -h 198.18.9.2 -p 6379 -c 50 -n $REQS -t get,set -k 1 --csv 2>/dev/null)
for op in SET GET; do
  n=$(echo "$NR" | rps $op); a=$(echo "$AR" | rps $op)
  row "redis-benchmark $op (req/s)" "$n" "$a" "$(ratio $a $n)"
done

# listen() on node 0 to a successful connect by name from node 2.
LAT=()
for k in $(seq 20); do
  on 0 $AX run --name probe$k -- python3 -c "
import socket,time
s=socket.socket(); s.bind(('',8000)); s.listen()
open('$WORK/listen$k','w').write(repr(time.time()))
c,_=s.accept(); time.sleep(0.2)" >/dev/null 2>&1 &
  T2=$(on 2 $AX run -- python3 -c "
import socket,time
while True:
  try:
    socket.create_connection(('probe$k',8000),timeout=1); print(repr(time.time())); break
  except OSError: time.sleep(0.01)")
  LAT+=($(awk -v a=$T2 -v b=$(cat $WORK/listen$k) 'BEGIN{printf "%.0f",(a-b)*1000}'))
done
MED=$(printf "%s\n" "${LAT[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf "%-38s %14s   (20 trials: %s)\n" "listen -> connect by name, median (ms)" "$MED" "$(printf "%s " "${LAT[@]}")"

echo
$PWD/target/release/examples/convergence 10 100 300
