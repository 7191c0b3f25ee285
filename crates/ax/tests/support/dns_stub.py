#!/usr/bin/env python3
"""A stand-in upstream DNS server for tests and benchmarks, on UDP and TCP: answers
every A query with one fixed address, every other query with an empty answer.

usage: dns_stub.py BIND_IP PORT ANSWER_IP
"""
import socket
import struct
import sys
import threading

bind_ip, port, answer = sys.argv[1], int(sys.argv[2]), socket.inet_aton(sys.argv[3])


def reply(q):
    end = 12
    while end < len(q) and q[end] != 0:
        end += q[end] + 1
    question = q[12:end + 5]
    qtype = struct.unpack("!H", q[end + 1:end + 3])[0] if end + 3 <= len(q) else 0
    records = b""
    if qtype == 1:
        records = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + answer
    header = q[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, 1 if records else 0, 0, 0)
    return header + question + records


def serve_tcp(listener):
    while True:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if len(data) >= 14:
                r = reply(data[2:])
                conn.sendall(struct.pack("!H", len(r)) + r)


tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((bind_ip, port))
tcp.listen()
threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((bind_ip, port))
print("ready", flush=True)
while True:
    q, peer = udp.recvfrom(512)
    if len(q) >= 12:
        udp.sendto(reply(q), peer)
