#!/usr/bin/env python3
"""UDP request/response: `udploop.py serve PORT` echoes datagrams; `udploop.py ping
HOST PORT N [SECONDS]` sends N datagrams (or as many as fit in SECONDS) one after
another with sendto and waits for each reply with recvfrom (the calls ax traps on
unconnected sockets); prints round trips/s."""
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
    end = start + float(sys.argv[5]) if len(sys.argv) > 5 else float("inf")
    done = 0
    while done < n:
        c.sendto(b"x" * 64, (host, port))
        c.recvfrom(2048)
        done += 1
        if done % 256 == 0 and time.perf_counter() >= end:
            break
    print("rtt_per_sec=%.0f" % (done / (time.perf_counter() - start)))
