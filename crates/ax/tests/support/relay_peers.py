"""Both ends of connections through a relay, for crates/ax/tests/relay.rs.

  relay_peers.py serve HOST            backends: HOST:9000 echoes; HOST:9001 reads to
                                       the end of the request, then answers and closes;
                                       HOST:9002 floods whoever connects
  relay_peers.py idle HOST PORT N [PER_SOURCE]
                                       opens N connections (PER_SOURCE from each of
                                       127.0.0.2, .3, ...) and holds them; then each
                                       line on stdin is a command: `check K` checks K
                                       old connections and a new one still echo
                                       (answers `ok`), `quit` ends
  relay_peers.py hog HOST PORT N SRC   opens N connections from SRC, checks each
                                       echoes, and that one more from SRC is closed
                                       (prints `held`); then `from ADDR` checks that a
                                       connection from ADDR echoes (answers `ok`),
                                       `quit` ends
  relay_peers.py halfclose HOST PORT   sends a question, shuts its writing, prints the
                                       answer that still comes
  relay_peers.py bulk HOST PORT MIB     sends MIB MiB of random bytes to an echo while
                                       reading the echo, shuts its writing, reads to
                                       the end; prints the SHA-256 of what it sent and
                                       of what came back
  relay_peers.py stall HOST PORT MIB    connects to a flood and reads nothing (prints
                                       `open`) until a line on stdin; then reads MIB
                                       MiB, each byte checked (prints `ok`)
  relay_peers.py hostile HOST PORT FLOOD_PORT
                                       clients that never read a flood, half-close and
                                       sit, reset mid-stream, and flood connects (prints
                                       `flooded`, holding what it holds); then `from
                                       ADDR` checks that a new connection from ADDR
                                       echoes 1 MiB (answers `ok`), `quit` ends
"""
import asyncio
import hashlib
import os
import resource
import socket
import struct
import sys
import threading


def raise_fds(n):
    """Up to the hard limit (raising that needs CAP_SYS_RESOURCE)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        n = min(n, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


async def echo(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.write_eof()
    except (ConnectionError, OSError):
        pass


async def answer(r, w):
    try:
        question = await r.read(-1)
        w.write(b"answer to " + question)
        await w.drain()
        w.close()
    except (ConnectionError, OSError):
        pass


async def flood(r, w):
    chunk = b"f" * 65536
    try:
        while True:
            w.write(chunk)
            await w.drain()
    except (ConnectionError, OSError):
        pass


async def serve(host):
    raise_fds(100000)
    servers = [await asyncio.start_server(f, host, port, backlog=4096)
               for f, port in ((echo, 9000), (answer, 9001), (flood, 9002))]
    print("serving", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def roundtrip(s, msg):
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        part = s.recv(len(msg) - len(got))
        if not part:
            raise SystemExit(f"the relay ended a connection after {len(got)} of {len(msg)} bytes")
        got += part
    if got != msg:
        raise SystemExit("the echo differs")


def connect(host, port, src=None):
    return socket.create_connection((host, port), timeout=60, source_address=src and (src, 0))


def source(i, per_source):
    """The address of connection i when per_source connections come from each."""
    return per_source and f"127.0.0.{2 + i // per_source}"


def idle(host, port, n, per_source):
    raise_fds(n * 2 + 1000)
    conns = [connect(host, port, source(i, per_source)) for i in range(n)]
    print("open", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "check":
            k = int(cmd[1])
            step = max(1, n // k)
            for i in range(0, n, step):
                roundtrip(conns[i], b"old %d" % i)
            roundtrip(connect(host, port), os.urandom(1 << 20))
            print("ok", flush=True)
        elif cmd[0] == "quit":
            return


def closed(s):
    """Whether the relay closed s at once (an end or a reset, no echo)."""
    try:
        s.sendall(b"?")
        return s.recv(1) == b""
    except (ConnectionError, OSError):
        return True


def hog(host, port, n, src):
    raise_fds(n * 2 + 1000)
    conns = [connect(host, port, src) for _ in range(n)]
    for i, s in enumerate(conns):
        roundtrip(s, b"mine %d" % i)
    if not closed(connect(host, port, src)):
        raise SystemExit(f"a connection from {src} beyond {n} was carried")
    print("held", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "from":
            roundtrip(connect(host, port, cmd[1]), os.urandom(1 << 16))
            roundtrip(conns[0], b"still mine")
            print("ok", flush=True)
        elif cmd[0] == "quit":
            return


def halfclose(host, port):
    s = connect(host, port)
    s.sendall(b"the question")
    s.shutdown(socket.SHUT_WR)
    got = b""
    while part := s.recv(65536):
        got += part
    print(got.decode())


def bulk(host, port, mib):
    s = connect(host, port)
    sent = hashlib.sha256()

    def send():
        for _ in range(mib):
            block = os.urandom(1 << 20)
            sent.update(block)
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    got, n = hashlib.sha256(), 0
    while part := s.recv(1 << 20):
        got.update(part)
        n += len(part)
    sender.join()
    print(f"sent {mib << 20} {sent.hexdigest()}")
    print(f"got {n} {got.hexdigest()}")


def stall(host, port, mib):
    s = connect(host, port)
    print("open", flush=True)
    sys.stdin.readline()
    left = mib << 20
    while left:
        part = s.recv(min(left, 1 << 20))
        if not part or part.strip(b"f"):
            raise SystemExit(f"the flood ended or changed with {left} bytes still to read")
        left -= len(part)
    print("ok", flush=True)


def hostile(host, port, flood_port):
    raise_fds(20000)
    held = []
    # Never read a flood: their pipes and buffers fill and stay full.
    held += [connect(host, flood_port) for _ in range(20)]
    # Half-close and sit.
    for _ in range(100):
        s = connect(host, port)
        s.sendall(b"x")
        s.shutdown(socket.SHUT_WR)
        held.append(s)
    # Reset mid-stream: send, then close with SO_LINGER 0 while the echo is under way.
    for _ in range(100):
        s = connect(host, port)
        s.sendall(b"r" * 200000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    # Flood connects: open and drop at once.
    for _ in range(2000):
        connect(host, port).close()
    print("flooded", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "from":
            roundtrip(connect(host, port, cmd[1]), os.urandom(1 << 20))
            print("ok", flush=True)
        elif cmd[0] == "quit":
            return


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "serve":
        asyncio.run(serve(args[0]))
    elif what == "idle":
        idle(args[0], int(args[1]), int(args[2]), int(args[3]) if len(args) > 3 else 0)
    elif what == "hog":
        hog(args[0], int(args[1]), int(args[2]), args[3])
    elif what == "halfclose":
        halfclose(args[0], int(args[1]))
    elif what == "bulk":
        bulk(args[0], int(args[1]), int(args[2]))
    elif what == "stall":
        stall(args[0], int(args[1]), int(args[2]))
    elif what == "hostile":
        hostile(args[0], int(args[1]), int(args[2]))
