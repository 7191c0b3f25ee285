# Sourced by the benchmark scripts: test hosts made of a network namespace (node
# interface ax0, its veth peer in namespace $2), a mount namespace with a private /run
# and a PID namespace, all torn down by `testhost_cleanup` (or when the script dies);
# and the helpers the scripts share.

# bench_prelude TOOL...: the checks every benchmark starts with (root; TOOL... installed),
# then AX and AXB: the builds AX_BIN and AXB_BIN name, or this tree's, built now.
bench_prelude() {
  local p
  [ "$(id -u)" = 0 ] || { echo "$0 needs root (it makes network namespaces)" >&2; exit 1; }
  for p in "$@"; do
    command -v "$p" >/dev/null || { echo "$p is not installed (see .ci/run for the packages)" >&2; exit 1; }
  done
  [ -n "${AX_BIN:-}" ] || cargo build --release -q -p ax -p ax-bench
  AX=${AX_BIN:-$PWD/target/release/ax}
  AXB=${AXB_BIN:-$PWD/target/release/ax-bench}
}

# haproxy_head: the global and defaults sections of the HAProxy configurations the
# benchmarks compare with (one process, mode tcp, as a distribution runs it).
haproxy_head() {
  cat <<CFG
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
CFG
}

# bench_host NAME NODE_IP: a scratch folder WORK and one test host NAME (wire, host,
# daemon), all gone when the script exits; sets IN (a command prefix that runs in it).
bench_host() {
  WORK=$(mktemp -d)
  trap 'testhost_cleanup; rm -rf "$WORK"' EXIT
  testhost_wire "$1-p"
  testhost "$1" "$1-p" "$2"
  IN="nsenter -t $INIT -m -n -p --"
  testhost_daemon "$WORK/daemon.log" || { echo "ax daemon did not start: $DAEMON_ERR" >&2; exit 1; }
}

TESTHOST_NETNS=()
TESTHOST_HOLDERS=()

# testhost NAME PEER_NS NODE_IP: sets INIT to the host's PID-namespace init and PEER to
# the name of its wire's other end in PEER_NS.
testhost() {
  local name=$1 peer=$2 ip=$3
  ip netns add "$name"
  TESTHOST_NETNS+=("$name")
  PEER=p${#TESTHOST_HOLDERS[@]}
  ip link add ax0 netns "$name" type veth peer name "$PEER" netns "$peer"
  ip -n "$peer" link set "$PEER" up
  ip -n "$name" addr add "$ip/24" dev ax0; ip -n "$name" link set ax0 up; ip -n "$name" link set lo up
  setpriv --pdeathsig KILL ip netns exec "$name" unshare --mount --propagation private --pid --kill-child --mount-proc \
    sh -c 'mount -t tmpfs tmpfs /run && exec sleep infinity' &
  local holder=$!
  TESTHOST_HOLDERS+=("$holder")
  for _ in $(seq 100); do
    INIT=$(cat /proc/$holder/task/$holder/children 2>/dev/null | awk '{print $1}')
    [ -n "$INIT" ] && grep -q sleep /proc/$INIT/cmdline 2>/dev/null && return 0
    sleep 0.05
  done
  echo "test host $name did not start" >&2
  return 1
}

# A namespace that only holds the other ends of the test hosts' wires.
testhost_wire() {
  ip netns add "$1"
  TESTHOST_NETNS+=("$1")
}

testhost_cleanup() {
  for h in "${TESTHOST_HOLDERS[@]}"; do kill -9 "$h" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "${TESTHOST_NETNS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  TESTHOST_NETNS=()
  TESTHOST_HOLDERS=()
}

# The helpers below act on one test host: $IN enters it, $AX is the ax binary.

# testhost_daemon LOG ARGS...: starts `ax daemon --node-interface ax0 ARGS` (under
# $DAEMON_WRAP, a program that runs its arguments, when set) and waits until it answers.
# If it exits first, returns 1 with its last line in DAEMON_ERR.
testhost_daemon() {
  local log=$1 pid; shift
  $IN ${DAEMON_WRAP:-} $AX daemon --node-interface ax0 "$@" >>"$log" 2>&1 &
  pid=$!
  for _ in $(seq 2000); do
    $IN $AX get apps >/dev/null 2>&1 && return 0
    if ! kill -0 $pid 2>/dev/null; then
      DAEMON_ERR=$(grep -v '^[[:space:]]*$' "$log" | tail -1 | sed 's/^ax: //')
      return 1
    fi
    sleep 0.01
  done
  DAEMON_ERR="no answer after 2,000 tries (log: $log)"
  return 1
}
# wait_port PORT [tcp|udp]: until something in the test host listens on PORT.
wait_port() {
  local f=-ltn; [ "${2:-tcp}" = udp ] && f=-lun
  for _ in $(seq 200); do $IN ss $f | grep -q ":$1 " && return 0; sleep 0.05; done
  echo "nothing listens on $1" >&2; return 1
}
# wait_row ADDR: until the daemon's service table has a row for ADDR.
wait_row() { for _ in $(seq 200); do $IN $AX get servers | grep -q "$1" && return 0; sleep 0.05; done; echo "no row for $1" >&2; return 1; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
# iperf3 -J on stdin: the receiver's Gbit/s.
gbps() { python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
# redis-benchmark --csv on stdin: requests/s of test $1 (SET, GET).
rps() { awk -F, -v t="\"$1\"" '$1==t {gsub(/"/,"",$2); print $2}'; }
