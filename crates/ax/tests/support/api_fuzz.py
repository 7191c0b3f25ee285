#!/usr/bin/env python3
"""Fuzzes the daemon's REST API from its OpenAPI document: random methods, paths,
parameters and bodies (well-formed and not) against http://127.0.0.1:PORT, or the
API's Unix socket when given its path. Fails on any 5xx, on a dropped connection, or
if the daemon stops answering.

usage: api_fuzz.py PORT|SOCKET N SEED
"""
import http.client
import json
import random
import socket
import sys

at, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)


class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(at)


def call(method, path, body=None, headers=None):
    if at.startswith("/"):
        c = UnixConnection("ax", timeout=10)
    else:
        c = http.client.HTTPConnection("127.0.0.1", int(at), timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


status, doc = call("GET", "/v1/openapi.json")
assert status == 200, status
doc = json.loads(doc)
paths = list(doc["paths"])
schema = doc["components"]["schemas"]["VserviceRequest"]["properties"]


def text():
    pool = ["", "web", "WEB", "a" * 70, "-x", "198.18.2.1", "300.1.1.1", "1.2.3.4:80", "80:8000", "80,443",
            "0", "65536", "x:y", "Random", "RoundRobin", "LeastConn", "\u00e9", "%00", "../..", " ", "1.1.1.1,2.2.2.2"]
    return rnd.choice(pool) if rnd.random() < 0.7 else "".join(chr(rnd.randint(0, 0x2ff)) for _ in range(rnd.randint(0, 40)))


def value():
    return rnd.choice([text(), rnd.randint(-2**40, 2**40), None, True, [text()], {"k": text()}, 1.5])


def body():
    kind = rnd.random()
    if kind < 0.15:
        return None
    if kind < 0.3:
        return bytes(rnd.randint(0, 255) for _ in range(rnd.randint(0, 200)))
    obj = {}
    for field in schema:
        if rnd.random() < 0.8:
            obj[field] = text() if rnd.random() < 0.7 else value()
    if rnd.random() < 0.2:
        obj[text()] = value()
    return json.dumps(obj if rnd.random() < 0.9 else [obj]).encode()


for i in range(n):
    method = rnd.choice(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"])
    p = rnd.choice(paths)
    if "{name}" in p:
        p = p.replace("{name}", rnd.choice(["web", "nope", "a%20b", "x" * 300, "%ff"]))
    elif rnd.random() < 0.1:
        p = p + rnd.choice(["/", "/x", "?a=b", "//", "/%2e%2e"])
    b = body() if method in ("POST", "PUT", "PATCH") else None
    headers = {"Content-Type": rnd.choice(["application/json", "text/plain", "application/json; charset=utf-8"])}
    try:
        status, data = call(method, p, b, headers)
    except Exception as e:
        sys.exit(f"request {i}: {method} {p} broke the connection: {e!r}")
    if status >= 500:
        sys.exit(f"request {i}: {method} {p} body={b!r} answered {status}: {data!r}")
status, _ = call("GET", "/v1/info")
assert status == 200, status
print(f"{n} requests, no 5xx")
