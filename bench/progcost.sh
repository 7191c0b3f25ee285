#!/usr/bin/env bash
# What the kernel driver's programs cost per connection, read from the kernel's own
# accounting (kernel.bpf_stats_enabled: run count and run time of every program), while
# `ab` under ax fetches a small page from nginx under ax, N connections, one test host.
# MODE=udp: per datagram echoed instead, N of them, between two apps on the node (a
# client's unbound socket and a python echo server replying to the address recvfrom
# shows: the client app's, `crates/trap/src/kdriver/sender.rs`).
#
#   bench/progcost.sh                 # N=20000, ab's client as root (its own namespace)
#   CLIENT_FLAGS="--user nobody" bench/progcost.sh   # the client in the host's namespace
#   MODE=udp bench/progcost.sh        # N datagrams there and back
#
# Every program attached to the cgroup the daemon runs in is listed: run it where no
# other ax daemon runs, or their programs (which run on the same sockets and leave them
# alone) show too. Needs root, nginx, ab (apache2-utils) and bpftool.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/testhost.sh
bench_prelude nsenter
for p in nginx ab bpftool; do command -v $p >/dev/null || { echo "$p is not installed" >&2; exit 1; }; done
WORK=$(mktemp -d); chmod 755 "$WORK"
trap 'sysctl -qw kernel.bpf_stats_enabled=0; testhost_cleanup; rm -rf "$WORK"' EXIT
NODE=10.252.1.1
N=${N:-20000}
testhost_wire axc-p; testhost axc axc-p $NODE
IN="nsenter -t $INIT -m -n -p --"; RUN="$IN $AX run"
$IN sysctl -qw net.ipv4.tcp_tw_reuse=1
testhost_daemon "$WORK/d.log" --driver kernel
if [ "${MODE:-tcp}" = udp ]; then
  UNIT=datagram
  $RUN --ip 198.18.9.1 -- python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 7001))
while True:
    data, a = s.recvfrom(64)
    s.sendto(data, a)
" >/dev/null 2>&1 &
  wait_row 198.18.9.1:7001
else
  UNIT=conn
  mkdir -p "$WORK/www"; echo hi >"$WORK/www/small.html"
  cat >"$WORK/nginx.conf" <<CFG
daemon off;
user root;
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 4096; }
http { access_log off; server { listen 80 backlog=4096; root $WORK/www; } }
CFG
  $RUN --ip 198.18.9.1 -- nginx -p "$WORK" -c "$WORK/nginx.conf" >/dev/null 2>&1 &
  wait_row 198.18.9.1:80
fi
CGROUP=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/d.log" | awk -F'cgroup=' '/kernel driver installed/ {split($2, f, " "); print f[1]}')
IDS=$($IN bpftool cgroup show "$CGROUP" | awk 'NR > 1 {print $1}')
sysctl -qw kernel.bpf_stats_enabled=1
if [ "$UNIT" = datagram ]; then
  # shellcheck disable=SC2086
  $RUN ${CLIENT_FLAGS:-} -- python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
for _ in range($N):
    s.sendto(b'x', ('198.18.9.1', 7001))
    s.recv(64)
print('Datagrams echoed:', $N)
"
else
  # shellcheck disable=SC2086
  $RUN ${CLIENT_FLAGS:-} -- ab -q -r -c 20 -n "$N" http://198.18.9.1/small.html | grep -E "^(Complete requests|Requests per second)"
fi
printf '%-16s %10s %10s %12s %16s\n' program runs "ns/run" "runs/$UNIT" "ns/$UNIT"
for id in $IDS; do bpftool prog show id "$id" 2>/dev/null | head -1 || true; done |
  awk -v n="$N" '{ for (i = 1; i <= NF; i++) { if ($i == "name") nm = $(i + 1); if ($i == "run_time_ns") t = $(i + 1); if ($i == "run_cnt") c = $(i + 1) }
    if (c > 0) printf "%-16s %10d %10.0f %12.1f %16.0f\n", nm, c, t / c, c / n, t / n; c = 0 }'
