# Asks a daemon's egress port one request, as a daemon (or an attacker) would, and
# prints the first answer line, or what went wrong.
#   ask.py HOST PORT REQUEST [CERT_PREFIX | - [ALPN]]
# With a fourth argument the connection is TLS 1.3 (ALPN ax-tunnel, or the fifth
# argument), presenting CERT_PREFIX.pem/.key, or no certificate for "-".
import socket
import ssl
import sys

host, port, request = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cert = sys.argv[4] if len(sys.argv) > 4 else None
alpn = sys.argv[5] if len(sys.argv) > 5 else "ax-tunnel"
try:
    s = socket.create_connection((host, port), 5)
    if cert is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_alpn_protocols([alpn])
        if cert != "-":
            ctx.load_cert_chain(cert + ".pem", cert + ".key")
        s = ctx.wrap_socket(s)
    s.sendall((request + "\n").encode())
    line = s.recv(64).decode(errors="replace").split("\n")[0]
    print(line or "closed")
except Exception as e:  # noqa: BLE001 - the test reads what failed
    print(type(e).__name__, e)
