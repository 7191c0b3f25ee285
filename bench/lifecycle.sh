#!/usr/bin/env bash
# The daemon's lifecycle, measured in a test host of its own: memory with 200 apps
# holding 10,000 sockets, restart-to-ready with 1,000 service rows saved, and a soak of
# short connections (fd count and memory after warm-up and at the end). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK=${SOAK_SECONDS:-60}
[ "$(id -u)" = 0 ] || { echo "bench/lifecycle.sh needs root (it makes network namespaces)" >&2; exit 1; }
cargo build --release -q -p ax -p ax-bench
AX=$PWD/target/release/ax
AXB=$PWD/target/release/ax-bench
NS=axl-$$
WORK=$(mktemp -d)
. bench/testhost.sh
trap 'testhost_cleanup; rm -rf "$WORK"' EXIT
testhost_wire $NS-p
testhost $NS $NS-p 10.254.0.1
IN="nsenter -t $INIT -m -n -p --"
start_daemon() { testhost_daemon "$WORK/daemon.log" --log-level warn "$@" || { echo "ax daemon: $DAEMON_ERR" >&2; exit 1; }; }
dpid() { $IN pgrep -f "ax daemon" | head -1; }
rss_kb() { $IN awk '/VmRSS/ {print $2}' /proc/$(dpid)/status; }
fds() { $IN ls /proc/$(dpid)/fd | wc -l; }
rows() { $IN $AX get servers -o json | grep -c service_addr || true; }

start_daemon
# 200 apps, 50 listening sockets each: 10,000 sockets, 10,000 rows.
APP="import socket,time
ss=[]
for p in range(9000,9050):
  s=socket.socket(); s.bind(('',p)); s.listen(); ss.append(s)
time.sleep(3600)"
for i in $(seq 200); do
  $IN $AX run --ip 198.18.$((i / 250 + 20)).$((i % 250 + 1)) -- python3 -c "$APP" >/dev/null 2>&1 &
done
for _ in $(seq 600); do [ "$(rows)" -ge 10000 ] && break; sleep 0.2; done
echo "ax lifecycle benchmark: $(date -u +%FT%TZ), $(nproc) CPUs, kernel $(uname -r)"
printf "%-52s %10s\n" "daemon RSS with 200 apps, $(rows) rows (MB)" "$(awk -v k=$(rss_kb) 'BEGIN{printf "%.1f", k/1024}')"
printf "%-52s %10s\n" "daemon open fds with 200 apps" "$(fds)"
# Restart-to-ready: kill -9, start again, time until the API answers with every row.
$IN pkill -9 -f "ax daemon"; sleep 0.5
T0=$(date +%s%N)
start_daemon
for _ in $(seq 2000); do [ "$(rows)" -ge 10000 ] && break; sleep 0.01; done
T1=$(date +%s%N)
printf "%-52s %10s\n" "restart to ready with $(rows) rows saved (ms)" "$(( (T1 - T0) / 1000000 ))"
$IN pkill -f "python3 -c import socket,time" || true
sleep 1
$IN pkill -9 -f "ax daemon"; sleep 0.3
rm -f "$WORK/daemon.log"
start_daemon --clean
# Soak: short connections to a served address for $SOAK s.
$IN $AX run --ip 198.18.30.1 -- $AXB serve 0.0.0.0:7000 >/dev/null 2>&1 &
for _ in $(seq 200); do [ "$(rows)" -ge 1 ] && break; sleep 0.05; done
$IN $AX run -- $AXB connect 198.18.30.1:7000 5 >/dev/null
F1=$(fds); R1=$(rss_kb)
OUT=$($IN $AX run -- $AXB connect 198.18.30.1:7000 $SOAK)
F2=$(fds); R2=$(rss_kb)
printf "%-52s %10s %10s\n" "soak ($SOAK s, $OUT)" "warm" "end"
printf "%-52s %10s %10s\n" "  daemon open fds" "$F1" "$F2"
printf "%-52s %10s %10s\n" "  daemon RSS (KB)" "$R1" "$R2"
