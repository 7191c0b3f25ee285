#!/usr/bin/env python3
"""UDP request/response: `udploop.py serve PORT` echoes datagrams; `udploop.py ping
HOST PORT N` sends N datagrams one after another with sendto and waits for each reply
with recvfrom (the calls ax traps on unconnected sockets); prints round trips/s."""
import socket
import sys
import time

if sys.argv[1] == "serve":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", int(sys.argv[2])))
    while True:
        d, a = s.recvfrom(2048)
        s.sendto(d, a)
else:
    host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(2)
    start = time.perf_counter()
    for i in range(n):
        c.sendto(b"x" * 64, (host, port))
        c.recvfrom(2048)
    print("rtt_per_sec=%.0f" % (n / (time.perf_counter() - start)))
