#!/usr/bin/env bash
# The data path, ax vs native side by side in one run, for each driver: every row of the
# performance table of issue 12. Run as root.
#
#   bench/datapath.sh                      # DRIVERS="user kernel kernel-host", 3 s per run, 3 runs
#   DRIVERS=user DURATION=5 RUNS=5 bench/datapath.sh
#   AX_BIN=... AXB_BIN=... bench/datapath.sh   # other builds of ax and ax-bench
#   VERBOSE=1 bench/datapath.sh            # also every run's figures
#   ROWS="memcached udp" bench/datapath.sh # some rows: ab conn memcached udp iperf3 redis relay
#   DRIVERS="user nobpf" bench/datapath.sh # nobpf: the user driver on a daemon where bpf(2)
#                                          # fails (no socket guard; needs gcc)
#   DRIVERS=kernel-host bench/datapath.sh  # the kernel driver with the ax clients run as
#                                          # `--user nobody`: in the host's namespace, their
#                                          # TCP sockets made untrapped (servers as root)
#
# The physical limit compared against is native host networking in the same test host:
# per driver, one test host of its own (a network, mount and PID namespace with a veth
# node interface; no traffic leaves it) holds a daemon started with `--driver DRIVER`,
# native servers bound to the node address and the same servers under `ax run`; each
# row runs native client -> native server and ax client -> ax server (virtual address)
# alternately, on the same cores: client, server and daemon share them all (2 on the
# machine the README's figures come from). Each side gets a 1 s warm-up, then RUNS runs
# of DURATION seconds; a row prints the medians and their ratio, next to the issue's
# target for the driver. A driver the daemon refuses is reported with the daemon's
# reason and skipped. A missing tool skips its rows, naming the Debian package.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${DURATION:-3}
RUNS=${RUNS:-3}
DRIVERS=${DRIVERS:-user kernel kernel-host}
ROWS=" ${ROWS:-ab conn memcached udp iperf3 redis relay} "
. bench/testhost.sh
bench_prelude nsenter unshare setpriv ss python3

WORK=$(mktemp -d)
chmod 755 "$WORK"
trap 'testhost_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM HUP
NODE=10.252.1.1

# want ROW TOOL...: ROW is asked for and every tool is installed (else a message naming
# the tool's Debian package).
declare -A DEB=([ab]=apache2-utils [memcaslap]=libmemcached-tools [memcached]=memcached [nginx]=nginx
  [iperf3]=iperf3 [redis-server]=redis-server [redis-benchmark]=redis-tools)
want() {
  local t
  [[ $ROWS == *" $1 "* ]] || return 1
  shift
  for t in "$@"; do
    command -v "$t" >/dev/null && continue
    echo "  skipped: $t is not installed (apt-get install ${DEB[$t]})"
    return 1
  done
}
median() {
  # No figure at all (every run failed) is a row that says so, not the script's end.
  printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "failed"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
row() { printf "%-44s %12s %12s %9s %8s\n" "$@"; }
# side_by_side NAME NATIVE AX TARGET: NATIVE and AX are functions taking the seconds
# to run and printing one figure (higher is better).
side_by_side() {
  local name=$1 nat=$2 ax=$3 target=$4 n=() a=() N A
  $nat 1 >/dev/null 2>&1 || true
  $ax 1 >/dev/null 2>&1 || true
  for _ in $(seq "$RUNS"); do
    n+=("$($nat "$T" 2>>"$WORK/errors" || true)")
    a+=("$($ax "$T" 2>>"$WORK/errors" || true)")
  done
  N=$(median "${n[@]}"); A=$(median "${a[@]}")
  row "$name" "$N" "$A" "$(ratio "$A" "$N")" "$target"
  [ -z "${VERBOSE:-}" ] || echo "  runs: native ${n[*]}; ax ${a[*]}"
}

# Servers: native ones bound to the node address, the same under ax on a virtual one.
WEB=$WORK/www
mkdir -p "$WEB"
head -c 512 /dev/zero | tr '\0' x >"$WEB/small.html"
# nginx_conf NAME LISTEN: the path of a config serving $WEB on LISTEN in the foreground.
nginx_conf() {
  cat >"$WORK/nginx-$1.conf" <<CFG
daemon off;
user root;
worker_processes 2;
pid $WORK/nginx-$1.pid;
error_log $WORK/nginx-$1.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen $2 backlog=4096; root $WEB; }
}
CFG
  echo "$WORK/nginx-$1.conf"
}

# Row functions (argument: seconds), native then ax (the ax clients run by $CLIENT, which
# ends with the program's start: `ax run ... --`).
ab_rps() { awk '/^Requests per second:/ { print $4 }'; }
ab_native() { $IN ab -r -q -c 50 -t "$1" -n $(($1 * 40000)) http://$NODE:8081/small.html | ab_rps; }
ab_ax() { $CLIENT ab -r -q -c 50 -t "$1" -n $(($1 * 40000)) http://198.18.9.1/small.html | ab_rps; }
conn_native() { $IN $AXB connect $NODE:7300 "$1" | sed 's/conns_per_sec=//'; }
conn_ax() { $CLIENT $AXB connect 198.18.9.6:7200 "$1" | sed 's/conns_per_sec=//'; }
tps() { awk '/^Run time:/ { for (i = 1; i < NF; i++) if ($i == "TPS:") print $(i + 1) }'; }
# memcaslap's own default workload, from a file: without one it writes one to the home
# directory of its user (nobody has none).
printf 'key\n64 64 1\nvalue\n1024 1024 1\ncmd\n0 0.1\n1 0.9\n' >"$WORK/memslap.cnf"
chmod 644 "$WORK/memslap.cnf"
mc_native() { $IN memcaslap -F "$WORK/memslap.cnf" -s $NODE:11212 -T 2 -c 32 -t "$1s" | tps; }
mc_ax() { $CLIENT memcaslap -F "$WORK/memslap.cnf" -s 198.18.9.2:11211 -T 2 -c 32 -t "$1s" | tps; }
udp_rtt() { sed 's/rtt_per_sec=//'; }
udp_native() { $IN python3 $PWD/bench/udploop.py ping $NODE 9400 $(($1 * 100000)) "$1" | udp_rtt; }
udp_ax() { $CLIENT python3 $PWD/bench/udploop.py ping 198.18.9.3 9401 $(($1 * 100000)) "$1" | udp_rtt; }
iperf_native() { $IN iperf3 -c $NODE -p 5301 -t "$1" -J | gbps; }
iperf_ax() { $CLIENT iperf3 -c 198.18.9.4 -p 5201 -t "$1" -J | gbps; }
# The relay: a native client to the node port of an --external vservice whose backend
# is the ax iperf3 server; the daemon relays every byte.
relay_ax() { $IN iperf3 -c $NODE -p 5201 -t "$1" -J | gbps; }
redis_native() { $IN redis-benchmark -h $NODE -p 6390 -n $(($1 * 50000)) -t "$REDIS_OP" --csv | rps "${REDIS_OP^^}"; }
redis_ax() { $CLIENT redis-benchmark -h 198.18.9.5 -p 6379 -n $(($1 * 50000)) -t "$REDIS_OP" --csv | rps "${REDIS_OP^^}"; }

# The iperf3 servers, native and under ax, started once per test host.
iperf_servers() {
  [ -z "$IPERF_UP" ] || return 0
  $IN iperf3 -s -B $NODE -p 5301 >/dev/null 2>&1 & wait_port 5301
  $RUN --ip 198.18.9.4 -- iperf3 -s -p 5201 >/dev/null 2>&1 & wait_row 198.18.9.4:5201
  IPERF_UP=1
}

# bench_driver DRIVER: a fresh test host, a daemon with --driver DRIVER, every row.
bench_driver() {
  local d=$1 x
  IPERF_UP=
  testhost_wire axd-$$-$d-p
  testhost axd-$$-$d axd-$$-$d-p $NODE
  IN="nsenter -t $INIT -m -n -p --"
  RUN="$IN $AX run"
  CLIENT="$RUN --"
  # Short connections leave TIME_WAIT sockets on a non-loopback address: reuse them.
  $IN sysctl -qw net.ipv4.tcp_tw_reuse=1
  echo
  # nobpf: the user driver where bpf(2) fails with EPERM, as in a default Docker
  # container (the wrapper the end-to-end tests use).
  local asked=$d
  DAEMON_WRAP=
  if [ "$d" = nobpf ]; then
    gcc -O2 -o "$WORK/nobpf" crates/ax/tests/support/nobpf.c
    DAEMON_WRAP=$WORK/nobpf
    asked=user
  fi
  # kernel-host: unprivileged clients, which the kernel driver places in the host's
  # namespace (README, "Apps in the host's namespace").
  if [ "$d" = kernel-host ]; then
    asked=kernel
    CLIENT="$RUN --user nobody --"
  fi
  if ! testhost_daemon "$WORK/daemon-$d.log" --driver "$asked"; then
    echo "$d driver: not available: $DAEMON_ERR"
    testhost_cleanup
    return 0
  fi
  echo "$d driver: ax client -> ax server vs native client -> native server, medians of $RUNS runs of ${T}s"
  row "workload" "native" "ax" "ax/native" "target"
  row "--------" "------" "--" "---------" "------"
  # target USER KERNEL: the issue's target for this driver.
  target() { if [ "$asked" = kernel ]; then echo "$2"; else echo "$1"; fi; }

  if want ab nginx ab; then
    $IN nginx -p "$WORK" -c "$(nginx_conf native $NODE:8081)" >/dev/null 2>&1 & wait_port 8081
    $RUN --ip 198.18.9.1 -- nginx -p "$WORK" -c "$(nginx_conf ax 80)" >/dev/null 2>&1 & wait_row 198.18.9.1:80
    side_by_side "ab -c 50, HTTP/1.0 to nginx (req/s)" ab_native ab_ax "$(target 0.8 0.95)"
  fi
  if want conn; then
    $IN $AXB serve $NODE:7300 & wait_port 7300
    $RUN --ip 198.18.9.6 -- $AXB serve 0.0.0.0:7200 & wait_row 198.18.9.6:7200
    side_by_side "new TCP connections, ax-bench (conn/s)" conn_native conn_ax "$(target 0.8 0.95)"
  fi
  if want memcached memcached memcaslap; then
    $IN memcached -u root -t 2 -l $NODE -p 11212 >/dev/null 2>&1 & wait_port 11212
    $RUN --ip 198.18.9.2 -- memcached -u root -t 2 -p 11211 >/dev/null 2>&1 & wait_row 198.18.9.2:11211
    side_by_side "memcaslap -T 2 -c 32 (ops/s)" mc_native mc_ax "$(target 0.9 0.95)"
  fi
  if want udp; then
    $IN python3 $PWD/bench/udploop.py serve 9400 & wait_port 9400 udp
    $RUN --ip 198.18.9.3 -- python3 $PWD/bench/udploop.py serve 9401 >/dev/null 2>&1 & wait_row 198.18.9.3:9401
    side_by_side "UDP request/response, unconnected (rtt/s)" udp_native udp_ax "$(target 0.8 0.9)"
  fi
  if want iperf3 iperf3; then
    iperf_servers
    side_by_side "iperf3, one stream (Gbit/s)" iperf_native iperf_ax "$(target 0.97 0.97)"
  fi
  if want redis redis-server redis-benchmark; then
    $IN redis-server --bind $NODE --port 6390 --protected-mode no --save '' >/dev/null 2>&1 & wait_port 6390
    $RUN --ip 198.18.9.5 -- redis-server --port 6379 --protected-mode no --save '' >/dev/null 2>&1 & wait_row 198.18.9.5:6379
    for REDIS_OP in set get; do
      side_by_side "redis-benchmark -c 50 keep-alive ${REDIS_OP^^} (req/s)" redis_native redis_ax "$(target 0.97 0.97)"
    done
  fi
  if want relay iperf3; then
    iperf_servers
    $IN $AX create vservice relay --ip 198.18.9.20 --ports 5201 --backends 198.18.9.4 --external >/dev/null
    wait_port 5201
    side_by_side "relay of an --external port, iperf3 (Gbit/s)" iperf_native relay_ax "$(target 0.85 0.85)"
  fi
  # Every app ran with the driver asked for.
  x=$($IN $AX get apps -o json | python3 -c 'import json,sys; print(" ".join(sorted({a["driver"] for a in json.load(sys.stdin)})))')
  [ "$x" = "$asked" ] || echo "  WARNING: the apps ran with driver(s) '$x', not '$asked'"
  testhost_cleanup
}

echo "ax data path benchmark: $(date -u +%FT%TZ), $(nproc) CPUs, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ax: $("$AX" version 2>/dev/null | head -1)"
echo "limit compared against: native host networking in the same test host (network namespace),"
echo "client, server and daemon sharing the machine's $(nproc) cores"
for d in $DRIVERS; do bench_driver "$d"; done
if [ -s "$WORK/errors" ]; then
  echo
  echo "errors from the runs (a failed run counts as no figure):"
  sort "$WORK/errors" | uniq -c | sort -rn | head -10
fi
