#!/usr/bin/env python3
"""A resolver loop: sends N A queries for NAME to SERVER:PORT one after another over
UDP and prints the median latency in microseconds and the queries per second.

usage: dnsloop.py SERVER PORT NAME N
"""
import socket
import struct
import sys
import time

server, port, name, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((server, port))
s.settimeout(2)
lat = []
start = time.perf_counter()
for i in range(n):
    q = struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"
    t = time.perf_counter()
    s.send(q)
    r = s.recv(512)
    lat.append(time.perf_counter() - t)
    assert r[:2] == q[:2] and struct.unpack("!H", r[6:8])[0] >= 1, "no answer"
total = time.perf_counter() - start
lat.sort()
print("median_us=%.1f qps=%.0f" % (lat[n // 2] * 1e6, n / total))
