"""Adds an address to a running daemon's member set (the socket guard's `ax_members`
map), as the test's stand-in for a node that wrongly believes another is a member.

usage: add_member.py DAEMON_PID IPV4   (as root; DAEMON_PID as this process sees it)
"""
import ctypes
import os
import socket
import struct
import sys

SYS_BPF = 321
SYS_PIDFD_GETFD = 438
BPF_MAP_UPDATE_ELEM = 2
BPF_OBJ_GET_INFO_BY_FD = 15

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_BPF, cmd, buf, 128)
    if r < 0:
        raise OSError(ctypes.get_errno(), "bpf")
    return r, buf


def map_name(fd):
    info = ctypes.create_string_buffer(96)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, len(info), ctypes.addressof(info)))
    return info.raw[24:40].split(b"\0")[0].decode()


def main():
    pid, ip = int(sys.argv[1]), sys.argv[2]
    pidfd = os.pidfd_open(pid)
    for name in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{name}") != "anon_inode:bpf-map":
            continue
        fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
        if fd < 0:
            continue
        try:
            if map_name(fd) != "ax_members":
                continue
            key = ctypes.create_string_buffer(socket.inet_aton(ip), 4)
            value = ctypes.create_string_buffer(struct.pack("I", 1), 4)
            bpf(BPF_MAP_UPDATE_ELEM, struct.pack("IIQQQ", fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0))
            print("added")
            return
        finally:
            os.close(fd)
    sys.exit("no ax_members map in that process")


main()
