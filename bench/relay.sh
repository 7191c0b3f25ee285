#!/usr/bin/env bash
# The relay of an --external vservice port, measured: iperf3 throughput (one stream),
# new connections/s (ax-bench, one at a time) and HTTP/1.0 requests/s (`ab -c 50`, a
# new connection each, to nginx), each (1) native direct to the backend, (2) through
# ax's relay on the node port, (3) through HAProxy `mode tcp` on the same backends, in
# one run on a test host of its own (network, mount and PID namespaces; nothing leaves
# it). All three reach the very same servers (native ones on the node address; the
# vservice dials them as outside backends). Run as root.
#
#   bench/relay.sh
#   SECONDS_PER_RUN=10 ROUNDS=3 bench/relay.sh
#   ROWS=iperf bench/relay.sh               # some rows only (iperf conn ab calls)
#   ROWS=calls bench/relay.sh               # system calls per new connection (strace)
#   AX_BIN=... AXB_BIN=... bench/relay.sh   # another build (no cargo build then)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${SECONDS_PER_RUN:-5}
ROUNDS=${ROUNDS:-2}
ROWS=${ROWS:-iperf conn ab}
. bench/testhost.sh
bench_prelude iperf3 haproxy nginx ab nsenter unshare setpriv $([[ " $ROWS " == *" calls "* ]] && echo strace)
NODE=10.252.0.1
bench_host axr-$$ $NODE
mean() { awk '{ s += $1; n++ } END { if (n) printf "%.2f", s / n; else print 0 }'; }

# The backends, native, on the node address: iperf3, ax-bench's accept-and-close, nginx.
$IN iperf3 -s -B $NODE -p 5301 >/dev/null 2>&1 &
$IN $AXB serve $NODE:7301 &
mkdir -p $WORK/www && echo ok >$WORK/www/index.html
cat >$WORK/nginx.conf <<CFG
daemon off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log stderr crit;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen $NODE:8301; root $WORK/www; }
}
CFG
$IN nginx -c $WORK/nginx.conf >/dev/null 2>&1 &
for p in 5301 7301 8301; do wait_port $p; done

# (2) ax: one --external vservice per backend; its port on the node is the relay.
ext() { $IN $AX create vservice $1 --ip $2 --ports $3:$4 --backends $NODE:$4 --allow-external-backends --external >/dev/null; }
ext ipf 198.18.9.20 5201 5301
ext conn 198.18.9.21 7201 7301
ext web 198.18.9.22 8201 8301
# (3) HAProxy in mode tcp, one process, as a distribution runs it.
{ haproxy_head; cat; } >$WORK/haproxy.cfg <<CFG
listen ipf
  bind $NODE:5401
  server a $NODE:5301
listen conn
  bind $NODE:7401
  server a $NODE:7301
listen web
  bind $NODE:8401
  server a $NODE:8301
CFG
$IN haproxy -f $WORK/haproxy.cfg -db >$WORK/haproxy.log 2>&1 &
for p in 5201 7201 8201 5401 7401 8401; do wait_port $p || { cat $WORK/haproxy.log $WORK/daemon.log >&2; exit 1; }; done

# The relaying process's CPU time (ticks): per GB carried, a figure that the machine's
# other load disturbs less than Gbit/s.
dpid() { pgrep -f "^$AX daemon --node-interface ax0" | head -1; }
ticks() {
  local p
  case $1 in ax) p=$(dpid) ;; haproxy) p=$(hpid) ;; *) echo 0; return ;; esac
  awk '{print $14 + $15}' /proc/$p/stat
}
hpid() { pgrep -f "haproxy -f $WORK/haproxy.cfg" | tail -1; }
# The whole machine's busy ticks (user, nice, system, irq, softirq; not idle, iowait,
# steal): what the client, the server, the relay and the kernel's work for them cost.
busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# Softirq ticks, machine-wide (loopback delivery; nearly all of it the benchmark's own).
softirq() { awk '$1 == "cpu" { print $8 }' /proc/stat; }
# The system calls (all threads) process $1 makes per connection while ax-bench opens
# them one at a time to port $2 (slowed by strace: the count is the figure).
calls() {
  strace -c -f -qq -o $WORK/strace.out -p $1 2>/dev/null & local s=$!
  sleep 1
  local rate; rate=$($IN $AXB connect $NODE:$2 $T | sed 's/conns_per_sec=//')
  kill -INT $s; wait $s 2>/dev/null || true
  awk -v n="$(awk -v r=$rate -v t=$T 'BEGIN { print r * t }')" '$NF == "total" { printf "%.1f\n", $4 / n }' $WORK/strace.out
}
for col in native ax haproxy; do : >$WORK/cpu.$col; done
echo "relay benchmark: $(date -u +%FT%TZ), $(nproc) CPUs, kernel $(uname -r), ${T}s per run, $ROUNDS rounds (mean)"
printf "%-30s %12s %12s %12s %10s %10s\n" "benchmark" "native" "ax relay" "HAProxy" "ax/native" "ax/HAProxy"
for what in $ROWS; do
  for col in native ax haproxy; do : >$WORK/$what.$col; done
  for _ in $(seq $ROUNDS); do
    for col in native ax haproxy; do
      case $col in native) off=3 ;; ax) off=2 ;; haproxy) off=4 ;; esac
      case $what in
        iperf)
          c0=$(ticks $col) m0=$(busy) s0=$(softirq)
          $IN iperf3 -c $NODE -p 5${off}01 -t $T -J >$WORK/iperf.json
          c1=$(ticks $col) m1=$(busy) s1=$(softirq)
          gbps <$WORK/iperf.json >>$WORK/$what.$col
          python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]; u=e["cpu_utilization_percent"]; s=e["sum_received"]
print(s["bytes"], sys.argv[2], sys.argv[3], (u["host_total"] + u["remote_total"]) / 100 * s["seconds"] * int(sys.argv[4]), sys.argv[5])' \
            $WORK/iperf.json $((c1 - c0)) $((m1 - m0)) $(getconf CLK_TCK) $((s1 - s0)) >>$WORK/cpu.$col ;;
        conn) $IN $AXB connect $NODE:7${off}01 $T | sed 's/conns_per_sec=//' >>$WORK/$what.$col ;;
        ab) $IN ab -q -c 50 -t $T -n 10000000 http://$NODE:8${off}01/ 2>/dev/null |
          awk '/^Requests per second/ {print $4}' >>$WORK/$what.$col ;;
        calls) case $col in ax) calls $(dpid) 7201 ;; haproxy) calls $(hpid) 7401 ;; esac >>$WORK/$what.$col ;;
      esac
    done
  done
  N=$(mean <$WORK/$what.native); A=$(mean <$WORK/$what.ax); H=$(mean <$WORK/$what.haproxy)
  case $what in
    iperf) name="iperf3, one stream (Gbit/s)" ;;
    conn) name="new connections (conn/s)" ;;
    ab) name="ab -c 50 to nginx (req/s)" ;;
    calls) name="system calls per connection" ;;
  esac
  printf "%-30s %12s %12s %12s %10s %10s\n" "$name" "$N" "$A" "$H" "$(ratio $A $N)" "$(ratio $A $H)"
done
# cpu COLUMN FIELD: CPU-seconds per GB carried, of the relaying process (2), the whole
# machine (3: other load counts too), the iperf3 client and server (4), softirq (5), or
# the path's: client, server, relay and softirq (6).
cpu() { awk -v hz=$(getconf CLK_TCK) -v f=$2 '{ $6 = $2 + $4 + $5; b += $1; t += $f } END { if (b) printf "%.2f", t / hz / (b / 1e9); else print "n/a" }' $WORK/cpu.$1; }
case " $ROWS " in *" iperf "*)
  echo "CPU-seconds per GB relayed (iperf3), relaying process: ax $(cpu ax 2), HAProxy $(cpu haproxy 2)"
  echo "CPU-seconds per GB, iperf3 client and server: native $(cpu native 4), ax $(cpu ax 4), HAProxy $(cpu haproxy 4)"
  echo "CPU-seconds per GB, softirq: native $(cpu native 5), ax $(cpu ax 5), HAProxy $(cpu haproxy 5)"
  echo "CPU-seconds per GB, the path (client, server, relay, softirq): native $(cpu native 6), ax $(cpu ax 6), HAProxy $(cpu haproxy 6)"
  echo "CPU-seconds per GB, whole machine (other load included): native $(cpu native 3), ax $(cpu ax 3), HAProxy $(cpu haproxy 3)" ;;
esac
P=$(dpid)
echo "daemon: $(ls /proc/$P/task | wc -l) threads, $(awk '/VmRSS/ {print $2, $3}' /proc/$P/status) RSS"
