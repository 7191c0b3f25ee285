#!/usr/bin/env bash
# Egress through a gateway, measured: iperf3 from node a to a host outside the cluster
# natively, through the egress gateway without --tls (the app's socket is connected to
# the gateway, which splices), and with --tls (the app's socket goes to a's forwarder,
# which carries the bytes to the gateway over TLS 1.3; userspace crypto, no kTLS), in
# one run. Five test hosts (network, mount and PID namespaces) on a bridge with no
# route out: a1+gw1 (a cluster without TLS), a2+gw2 (one with TLS), and the outside
# host (no daemon). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${SECONDS_PER_RUN:-5}
[ "$(id -u)" = 0 ] || { echo "bench/egress.sh needs root (it makes network namespaces)" >&2; exit 1; }
cargo build --release -q -p ax
AX=$PWD/target/release/ax
P=axe-$$
WORK=$(mktemp -d)
. bench/testhost.sh
trap 'testhost_cleanup; rm -rf "$WORK"' EXIT
testhost_wire $P-sw
ip -n $P-sw link add br0 type bridge; ip -n $P-sw link set br0 up
INITS=()
IP=()
for i in 0 1 2 3 4; do
  IP+=(10.254.0.$((11 + i)))
  testhost $P-$i $P-sw ${IP[$i]}
  ip -n $P-sw link set $PEER master br0
  INITS+=($INIT)
done
on() { local i=$1; shift; nsenter -t ${INITS[$i]} -m -n -p -- "$@"; }
OUT=4
$AX tls-certs "$WORK/pki" a2 gw2 >/dev/null
tls() { echo --tls --tls-ca-cert "$WORK/pki/ca.pem" --tls-cert "$WORK/pki/$1.pem" --tls-key "$WORK/pki/$1.key"; }
# host: node name, neighbors, extra flags.
daemon() { local i=$1 name=$2 all=$3; shift 3; on $i $AX daemon --node-interface ax0 --node-name $name --neighbors $all "$@" >"$WORK/$name.log" 2>&1 & }
daemon 0 a1 ${IP[0]},${IP[1]}
daemon 1 gw1 ${IP[0]},${IP[1]} --egress-gateway
daemon 2 a2 ${IP[2]},${IP[3]} $(tls a2)
daemon 3 gw2 ${IP[2]},${IP[3]} --egress-gateway $(tls gw2)
for i in 0 2; do
  for _ in $(seq 300); do on $i $AX get nodes -o json 2>/dev/null | grep -q '"egress-gateway"' && break; sleep 0.1; done
done
on $OUT iperf3 -s -B ${IP[$OUT]} -p 5201 >"$WORK/outside.log" 2>&1 &
for _ in $(seq 200); do on $OUT ss -ltn | grep -q ":5201 " && break; sleep 0.05; done

row() { printf "%-44s %14s %10s\n" "$1" "$2" "$3"; }
iperf() { on $1 "${@:2}" iperf3 -c ${IP[$OUT]} -p 5201 -t $T -J; }

echo "ax egress benchmark: $(date -u +%FT%TZ), $(nproc) CPUs, kernel $(uname -r), ${T}s per run"
row "iperf3 a -> outside host" "Gbit/s" "x native"
N=$(iperf 0 | gbps)
row "native (a1, not under ax)" "$N" "1.000"
G=$(iperf 0 $AX run -- | gbps)
row "through the gateway, no TLS (splice)" "$G" "$(ratio $G $N)"
# CPU time of a2's and gw2's daemons (user+system, ticks) around the --tls run: per GB
# carried, a figure the machine's other load disturbs less than Gbit/s.
ticks() { local t=0 p; for p in $(pgrep -f "^$AX daemon .*--node-name (a2|gw2) "); do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
C0=$(ticks)
iperf 2 $AX run -- >"$WORK/tls.json"
C1=$(ticks)
S=$(gbps <"$WORK/tls.json")
row "through the gateway, --tls (forwarder+TLS)" "$S" "$(ratio $S $N)"
python3 -c 'import json,sys; b=json.load(open(sys.argv[1]))["end"]["sum_received"]["bytes"]; print("--tls: the two daemons used %.2f CPU-seconds per GB carried" % ((int(sys.argv[3]) - int(sys.argv[2])) / 100 / (b / 1e9)))' "$WORK/tls.json" $C0 $C1
echo "the outside host saw: $(grep -o 'Accepted connection from [0-9.]*' "$WORK/outside.log" | awk '{print $4}' | tr '\n' ' ')(a1, gw1, gw2 expected)"
awk -v s="$S" -v n="$N" 'BEGIN { r = s / n; printf "TLS egress / native = %.3f: %s the floor of 0.5\n", r, (r >= 0.5 ? "above" : "BELOW") }'
