# Sourced by the benchmark scripts: test hosts made of a network namespace (node
# interface ax0, its veth peer in namespace $2), a mount namespace with a private /run
# and a PID namespace, all torn down by `testhost_cleanup` (or when the script dies).

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
}
