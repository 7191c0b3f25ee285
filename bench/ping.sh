#!/usr/bin/env bash
# Ping under ax, side by side with a native ping, in one test host: iputils' ping of a
# virtual address from an app (answered by the daemon through the app's echo device) vs
# a ping of the host's own node address from outside ax (answered by the kernel). Prints
# the average round trip of each and their ratio, for a paced run and a flood.
# Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/testhost.sh
bench_prelude ping
COUNT=${PING_COUNT:-500}
bench_host axp-$$ 10.254.3.1
$IN $AX run --ip 198.18.50.1 --name web -- sleep 3600 >/dev/null 2>&1 &
for _ in $(seq 200); do $IN $AX get apps | grep -q web && break; sleep 0.05; done
# ping -q's summary: rtt min/avg/max/mdev = a/b/c/d ms; the average, in µs.
avg_us() { awk -F/ '/^rtt/ { printf "%.1f", $5 * 1000 }'; }
echo "ax ping benchmark: $(date -u +%FT%TZ), $(nproc) CPUs, kernel $(uname -r), $COUNT echoes each"
printf "%-34s %12s %12s %8s\n" "" "native (µs)" "ax (µs)" "ratio"
for mode in "paced:-i 0.01" "flood:-f"; do
  name=${mode%%:*} flags=${mode#*:}
  native=$($IN ping -q -n -c "$COUNT" $flags 10.254.3.1 | avg_us)
  ax=$($IN $AX run -- ping -q -n -c "$COUNT" $flags 198.18.50.1 | avg_us)
  printf "%-34s %12s %12s %8s\n" "round trip, $name" "$native" "$ax" "$(ratio "$ax" "$native")"
done
