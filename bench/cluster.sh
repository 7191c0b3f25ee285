#!/usr/bin/env bash
# The cluster, measured: three test hosts (network, mount and PID namespaces) joined
# by a bridge with no route out, a daemon in each. Everything runs twice in one go,
# without --tls and with it (a test CA from `ax tls-certs`), and prints side by side:
# how long three fresh daemons take to see each other, gossip bytes per node per
# second when idle, cross-node iperf3 and redis-benchmark through ax next to native on
# the same hosts, the time from listen() on one node to a successful connect by name on
# another (median of 20), and the simulated convergence table. Run as root.
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
$AX tls-certs "$WORK/pki" n0 n1 n2 >/dev/null
DAEMONS=()
# start_cluster [tls]: three fresh daemons; prints the seconds until all three see three live nodes.
start_cluster() {
  local t0; t0=$(date +%s.%N)
  DAEMONS=()
  for i in 0 1 2; do
    local tls=()
    [ "${1:-}" = tls ] && tls=(--tls --tls-ca-cert "$WORK/pki/ca.pem" --tls-cert "$WORK/pki/n$i.pem" --tls-key "$WORK/pki/n$i.key")
    on $i $AX daemon --clean --node-interface ax0 --node-name n$i --neighbors 10.253.0.11,10.253.0.12,10.253.0.13 "${tls[@]}" >>"$WORK/d$i.log" 2>&1 &
    DAEMONS+=($!)
  done
  for i in 0 1 2; do for _ in $(seq 600); do on $i $AX get nodes -o json 2>/dev/null | grep -c '"live": true' | grep -q 3 && break; sleep 0.05; done; done
  awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }'
}
stop_cluster() {
  # nsenter forks into the PID namespace: signal the daemons themselves.
  for i in 0 1 2; do on $i pkill -f "iperf3|redis-server|python3" 2>/dev/null || true; on $i pkill -TERM -x ax 2>/dev/null || true; done
  for pid in "${DAEMONS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
# Bytes on node 0's wire (both ways) per second over 10 idle seconds: gossip alone.
wire_bytes() { on 0 awk '$1 == "ax0:" { printf "%.0f", $2 + $10 }' /proc/net/dev; }
gossip_bytes() {
  local a b
  a=$(wire_bytes); sleep 10; b=$(wire_bytes)
  echo $(( (b - a) / 10 ))
}

# The shared waits (testhost.sh) on node i: `IN=$(at i) wait_row ...`.
at() { echo nsenter -t ${INITS[$1]} -m -n -p --; }

# measure MODE: cross-node iperf3 and redis through ax, and listen -> connect by name.
measure() {
  local m=$1
  on 0 $AX run --ip 198.18.9.1 -- iperf3 -s -p 5201 >/dev/null 2>&1 & IN=$(at 1) wait_row 198.18.9.1:5201
  R[$m.iperf]=$(on 1 $AX run -- iperf3 -c 198.18.9.1 -p 5201 -t $T -J | gbps)
  on 0 $AX run --ip 198.18.9.2 -- redis-server --port 6379 --protected-mode no --save '' >/dev/null 2>&1 & IN=$(at 1) wait_row 198.18.9.2:6379
  local out; out=$(on 1 $AX run -- redis-benchmark -h 198.18.9.2 -p 6379 -c 50 -n $REQS -t get,set -k 1 --csv 2>/dev/null)
  R[$m.SET]=$(echo "$out" | rps SET); R[$m.GET]=$(echo "$out" | rps GET)
  local lat=() k t2
  for k in $(seq 20); do
    on 0 $AX run --name probe$k -- python3 -c "
import socket,time
s=socket.socket(); s.bind(('',8000)); s.listen()
open('$WORK/listen$k','w').write(repr(time.time()))
c,_=s.accept(); time.sleep(0.2)" >/dev/null 2>&1 &
    t2=$(on 2 $AX run -- python3 -c "
import socket,time
while True:
  try:
    socket.create_connection(('probe$k',8000),timeout=1); print(repr(time.time())); break
  except OSError: time.sleep(0.01)")
    lat+=($(awk -v a=$t2 -v b=$(cat $WORK/listen$k) 'BEGIN{printf "%.0f",(a-b)*1000}'))
  done
  R[$m.lat]=$(printf "%s\n" "${lat[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
}

echo "ax cluster benchmark: $(date -u +%FT%TZ), $(nproc) CPUs, kernel $(uname -r), 3 nodes, ${T}s per run"
REQS=$((T * 40000))
declare -A R
# Native on the same hosts, once.
on 0 iperf3 -s -B ${IP[0]} -p 5301 >/dev/null 2>&1 & IN=$(at 0) wait_port 5301
R[native.iperf]=$(on 1 iperf3 -c ${IP[0]} -p 5301 -t $T -J | gbps)
on 0 redis-server --bind ${IP[0]} --port 6390 --protected-mode no --save '' >/dev/null 2>&1 & IN=$(at 0) wait_port 6390
NR=$(on 1 redis-benchmark -h ${IP[0]} -p 6390 -c 50 -n $REQS -t get,set -k 1 --csv 2>/dev/null)
R[native.SET]=$(echo "$NR" | rps SET); R[native.GET]=$(echo "$NR" | rps GET)
on 0 pkill -f "iperf3|redis-server" || true
for m in plain tls; do
  R[$m.converge]=$(start_cluster $([ $m = tls ] && echo tls))
  R[$m.bytes]=$(gossip_bytes)
  measure $m
  stop_cluster
done
row5() { printf "%-40s %12s %12s %12s %10s\n" "$@"; }
row5 "" "native" "ax" "ax --tls" "tls/ax"
row5 "3 fresh daemons see each other (s)" "" "${R[plain.converge]}" "${R[tls.converge]}" "$(ratio ${R[tls.converge]} ${R[plain.converge]})"
row5 "idle gossip, bytes/s on a node's wire" "" "${R[plain.bytes]}" "${R[tls.bytes]}" "$(ratio ${R[tls.bytes]} ${R[plain.bytes]})"
row5 "cross-node iperf3 (Gbit/s)" "${R[native.iperf]}" "${R[plain.iperf]}" "${R[tls.iperf]}" "$(ratio ${R[tls.iperf]} ${R[plain.iperf]})"
for op in SET GET; do
  row5 "cross-node redis $op (req/s)" "${R[native.$op]}" "${R[plain.$op]}" "${R[tls.$op]}" "$(ratio ${R[tls.$op]} ${R[plain.$op]})"
done
row5 "listen -> connect by name, median (ms)" "" "${R[plain.lat]}" "${R[tls.lat]}" "$(ratio ${R[tls.lat]} ${R[plain.lat]})"

echo
$PWD/target/release/examples/convergence 10 100 300
