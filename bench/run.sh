#!/usr/bin/env bash
# ax vs native, side by side in one run, on a test host of its own (a network, mount
# and PID namespace with a veth node interface; nothing leaves it). Run as root.
#
#   bench/run.sh            # all benchmarks
#   SECONDS_PER_RUN=10 bench/run.sh
#   AX_BIN=... AXB_BIN=... bench/run.sh   # other builds of ax and ax-bench (bench/compare.sh)
#
# Prints each figure for native host networking and for ax, and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${SECONDS_PER_RUN:-5}
. bench/testhost.sh
bench_prelude iperf3 redis-server redis-benchmark nsenter unshare setpriv
NODE=10.252.0.1
bench_host axb-$$ $NODE
RUN="$IN $AX run"

row() { printf "%-34s %14s %14s %8s\n" "$1" "$2" "$3" "$4"; }

echo "ax benchmark: $(date -u +%FT%TZ), $(nproc) CPUs, kernel $(uname -r), ${T}s per run"
row "benchmark" "native" "ax" "ax/native"
row "---------" "------" "--" "---------"

# iperf3: client to server, one stream.
$IN iperf3 -s -B $NODE -p 5301 >/dev/null 2>&1 & wait_port 5301
$RUN --ip 198.18.9.1 -- iperf3 -s -p 5201 >/dev/null 2>&1 & wait_row 198.18.9.1:5201
N1=$($IN iperf3 -c $NODE -p 5301 -t $T -J | gbps)
A1=$($RUN -- iperf3 -c 198.18.9.1 -p 5201 -t $T -J | gbps)
N2=$($IN iperf3 -c $NODE -p 5301 -t $T -J | gbps)
A2=$($RUN -- iperf3 -c 198.18.9.1 -p 5201 -t $T -J | gbps)
N=$(awk -v a=$N1 -v b=$N2 'BEGIN{printf "%.2f",(a+b)/2}'); A=$(awk -v a=$A1 -v b=$A2 'BEGIN{printf "%.2f",(a+b)/2}')
row "iperf3 throughput (Gbit/s)" "$N" "$A" "$(ratio $A $N)"

# redis-benchmark: GET and SET, 50 clients, keep-alive.
$IN redis-server --bind $NODE --port 6390 --protected-mode no --save '' >/dev/null 2>&1 & wait_port 6390
$RUN --ip 198.18.9.2 -- redis-server --port 6379 --protected-mode no --save '' >/dev/null 2>&1 & wait_row 198.18.9.2:6379
REQS=$((T * 40000))
NR=$($IN redis-benchmark -h $NODE -p 6390 -c 50 -n $REQS -t get,set -k 1 --csv 2>/dev/null)
AR=$($RUN -- redis-benchmark -h 198.18.9.2 -p 6379 -c 50 -n $REQS -t get,set -k 1 --csv 2>/dev/null)
for op in SET GET; do
  n=$(echo "$NR" | rps $op); a=$(echo "$AR" | rps $op)
  row "redis-benchmark $op (req/s)" "$n" "$a" "$(ratio $a $n)"
done

# One trapped call: getsockname on a bound socket, answered by a write into the app.
NS_=$($IN $AXB syscall 200000 | sed 's/median_ns=\([0-9]*\).*/\1/')
AS_=$($RUN --ip 198.18.9.3 -- $AXB syscall 200000 | sed 's/median_ns=\([0-9]*\).*/\1/')
row "getsockname median (ns)" "$NS_" "$AS_" "$(ratio $AS_ $NS_)"
printf "%-34s %14s %14s\n" "  added by the trap (us)" "" "$(awk -v a=$AS_ -v n=$NS_ 'BEGIN{printf "%.2f",(a-n)/1000}')"

# New TCP connections per second: connect, read EOF, close; the server accepts and closes.
$IN $AXB serve $NODE:7300 & wait_port 7300
$RUN --ip 198.18.9.4 -- $AXB serve 0.0.0.0:7200 & wait_row 198.18.9.4:7200
NC=$($IN $AXB connect $NODE:7300 $T | sed 's/conns_per_sec=//')
AC=$($RUN -- $AXB connect 198.18.9.4:7200 $T | sed 's/conns_per_sec=//')
row "new TCP connections (conn/s)" "$NC" "$AC" "$(ratio $AC $NC)"

# A closed listener leaving the service table: from close() in the app to the row's
# absence in `ax get servers` (polled; includes one CLI round trip).
FLAG=$WORK/close-now
$RUN --ip 198.18.9.5 -- python3 -c "
import socket,os,time
s=socket.socket(); s.bind(('',7500)); s.listen()
while not os.path.exists('$FLAG'): time.sleep(0.005)
s.close(); open('$WORK/closed-at','w').write(repr(time.time())); time.sleep(30)" >/dev/null 2>&1 &
wait_row 198.18.9.5:7500
touch "$FLAG"
while [ ! -s "$WORK/closed-at" ]; do sleep 0.002; done
while $IN $AX get servers | grep -q 198.18.9.5:7500; do :; done
GONE=$(date +%s.%N)
printf "%-34s %14s %14s\n" "closed listener leaves table (ms)" "" "$(awk -v g=$GONE -v c=$(cat "$WORK/closed-at") 'BEGIN{printf "%.0f",(g-c)*1000}')"

# UDP request/response (unconnected sendto/recvfrom on both sides).
$IN python3 $PWD/bench/udploop.py serve 9400 & wait_port 9400 udp
$RUN --ip 198.18.9.6 -- python3 $PWD/bench/udploop.py serve 9401 >/dev/null 2>&1 & wait_row 198.18.9.6:9401
UN=$($IN python3 $PWD/bench/udploop.py ping $NODE 9400 $((T * 4000)) | sed 's/rtt_per_sec=//')
UA=$($RUN -- python3 $PWD/bench/udploop.py ping 198.18.9.6 9401 $((T * 4000)) | sed 's/rtt_per_sec=//')
row "UDP request/response (round trips/s)" "$UN" "$UA" "$(ratio $UA $UN)"

# Name resolution: ax's DNS answering one of its own names, next to dnsmasq answering
# one of its own (--address) on loopback, and ax forwarding to that dnsmasq.
if command -v dnsmasq >/dev/null; then
  $IN dnsmasq --no-daemon --port 5354 --listen-address 127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
    --address /own.test/203.0.113.8 --pid-file=$WORK/dnsmasq.pid >/dev/null 2>&1 &
  sleep 0.5
  $RUN --name benchname -- sleep 600 >/dev/null 2>&1 &
  for _ in $(seq 100); do $IN $AX get apps | grep -q benchname && break; sleep 0.05; done
  Q=$((T * 2000))
  D=$($IN python3 $PWD/bench/dnsloop.py 127.0.0.1 5354 own.test $Q)
  X=$($IN python3 $PWD/bench/dnsloop.py $NODE 53 benchname.appswitch.local $Q)
  printf "%-34s %14s %14s %8s\n" "DNS own name, median (us)" "$(echo $D | sed 's/median_us=\([0-9.]*\).*/\1/')" \
    "$(echo $X | sed 's/median_us=\([0-9.]*\).*/\1/')" "(dnsmasq / ax)"
  printf "%-34s %14s %14s\n" "DNS own name (queries/s)" "$(echo $D | sed 's/.*qps=//')" "$(echo $X | sed 's/.*qps=//')"
else
  echo "dnsmasq is not installed: DNS comparison skipped (apt-get install dnsmasq-base)"
fi

# vservices (issue 4): iperf3 and new connections through a vservice, next to native
# direct and to HAProxy doing the same L4 balancing on loopback; and the relay of an
# --external port. (iperf3 opens a control and a data connection that must meet one
# server, so its vservice and HAProxy backend lists have one server each.)
if command -v haproxy >/dev/null; then
  $RUN --ip 198.18.9.11 -- iperf3 -s -p 5201 >/dev/null 2>&1 & wait_row 198.18.9.11:5201
  $RUN --ip 198.18.9.13 -- $AXB serve 0.0.0.0:7200 & wait_row 198.18.9.13:7200
  $RUN --ip 198.18.9.14 -- $AXB serve 0.0.0.0:7200 & wait_row 198.18.9.14:7200
  $IN $AX create vservice ipf --ip 198.18.9.20 --ports 5201 --backends 198.18.9.11 --external
  $IN $AX create vservice conn --ip 198.18.9.21 --ports 7200 --backends 198.18.9.13,198.18.9.14 --lbtype RoundRobin
  $IN $AXB serve $NODE:7301 & $IN $AXB serve $NODE:7302 & wait_port 7302
  { haproxy_head; cat; } > $WORK/haproxy.cfg <<CFG
frontend ipf
  bind 127.0.0.1:15201
  default_backend ipf
backend ipf
  server a $NODE:5301
frontend conn
  bind 127.0.0.1:17200
  default_backend conn
backend conn
  balance roundrobin
  server a $NODE:7301
  server b $NODE:7302
CFG
  $IN haproxy -f $WORK/haproxy.cfg -db >/dev/null 2>&1 & wait_port 15201
  VT=$($RUN -- iperf3 -c 198.18.9.20 -p 5201 -t $T -J | gbps)
  HT=$($IN iperf3 -c 127.0.0.1 -p 15201 -t $T -J | gbps)
  RT=$($IN iperf3 -c $NODE -p 5201 -t $T -J | gbps)
  VC=$($RUN -- $AXB connect 198.18.9.21:7200 $T | sed 's/conns_per_sec=//')
  HC=$($IN $AXB connect 127.0.0.1:17200 $T | sed 's/conns_per_sec=//')
  echo
  row "through a vservice" "native" "ax" "ax/native"
  row "iperf3 via vservice (Gbit/s)" "$N" "$VT" "$(ratio $VT $N)"
  row "  HAProxy L4 on loopback (Gbit/s)" "" "$HT" "ax/haproxy $(ratio $VT $HT)"
  row "new conns via vservice (conn/s)" "$NC" "$VC" "$(ratio $VC $NC)"
  row "  HAProxy L4 on loopback (conn/s)" "" "$HC" "ax/haproxy $(ratio $VC $HC)"
  row "relay of an --external port (Gbit/s)" "$N" "$RT" "$(ratio $RT $N)"
else
  echo "haproxy is not installed: vservice comparison skipped (apt-get install haproxy)"
fi
