/* A table of socket calls and the kernel's answers to them, printed one row a line:
 * run natively and under ax, the two outputs must be the same (crates/ax/tests/answers.rs).
 *
 * usage: answers SELF PORT
 *   SELF: the address the program is known by (natively the host's, under ax its --ip);
 *         it prints as "SELF".
 *   PORT: the first of the ports the rows use, one each (a port the row itself binds
 *         prints as "P", another nonzero one as "*").
 *
 * Every call's answer is printed as "ok" or the errno's name, every address as
 * getsockname/getpeername give it. Nothing but SELF and loopback is ever reached. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char *self;
static int port;
/* The row being printed. */
static char line[2048];

static const char *err_name(int e) {
    static char other[32];
    switch (e) {
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EINVAL: return "EINVAL";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EACCES: return "EACCES";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EAGAIN: return "EAGAIN";
    case ENOTCONN: return "ENOTCONN";
    case EINPROGRESS: return "EINPROGRESS";
    case EISCONN: return "EISCONN";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    }
    snprintf(other, sizeof other, "errno%d", e);
    return other;
}

static void put(const char *what, const char *value) {
    size_t n = strlen(line);
    snprintf(line + n, sizeof line - n, " %s=%s", what, value);
}

static void said(const char *what, int rc) { put(what, rc == 0 ? "ok" : err_name(errno)); }

static void row(const char *name) {
    snprintf(line, sizeof line, "%s:", name);
}

static void end_row(void) {
    printf("%s\n", line);
    fflush(stdout);
    port++;
}

/* A sockaddr for "ADDR" (SELF stands for the program's address; ::ffff:SELF for its
 * v4-mapped form) at port p, of the socket's family. */
static socklen_t addr_of(const char *a, int p, struct sockaddr_storage *ss) {
    char text[80];
    memset(ss, 0, sizeof *ss);
    if (strcmp(a, "SELF") == 0)
        a = self;
    else if (strcmp(a, "::ffff:SELF") == 0) {
        snprintf(text, sizeof text, "::ffff:%s", self);
        a = text;
    }
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, a, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(p);
        return sizeof *in;
    }
    if (inet_pton(AF_INET6, a, &in6->sin6_addr) != 1) {
        fprintf(stderr, "bad address %s\n", a);
        exit(2);
    }
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(p);
    return sizeof *in6;
}

/* An address as the row prints it. */
static const char *shown(const struct sockaddr_storage *ss, socklen_t len) {
    static char out[96];
    char ip[INET6_ADDRSTRLEN];
    int p;
    if (len == 0 || ss->ss_family == AF_UNSPEC)
        return "none";
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        p = ntohs(in->sin_port);
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        p = ntohs(in6->sin6_port);
    }
    char host[INET6_ADDRSTRLEN + 8];
    if (strcmp(ip, self) == 0)
        snprintf(host, sizeof host, "SELF");
    else if (strncmp(ip, "::ffff:", 7) == 0 && strcmp(ip + 7, self) == 0)
        snprintf(host, sizeof host, "::ffff:SELF");
    else
        snprintf(host, sizeof host, "%s", ip);
    const char *ps = p == port ? "P" : p == 0 ? "0" : "*";
    if (ss->ss_family == AF_INET6)
        snprintf(out, sizeof out, "[%s]:%s", host, ps);
    else
        snprintf(out, sizeof out, "%s:%s", host, ps);
    return out;
}

static void sockname(const char *what, int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        put(what, err_name(errno));
    else
        put(what, shown(&ss, len));
}

static void peername(const char *what, int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
        put(what, err_name(errno));
    else
        put(what, shown(&ss, len));
}

enum { REUSEADDR = 1, REUSEPORT = 2, V6ONLY = 4 };

/* A socket of `family` and `type` with the options `opts`. */
static int sock(int family, int type, int opts) {
    int fd = socket(family, type, 0), one = 1, zero = 0;
    if (fd < 0) {
        perror("socket");
        exit(2);
    }
    if (opts & REUSEADDR)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (opts & REUSEPORT)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, (opts & V6ONLY) ? &one : &zero, sizeof one);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void do_bind(const char *what, int fd, const char *a, int p) {
    struct sockaddr_storage ss;
    socklen_t len = addr_of(a, p, &ss);
    said(what, bind(fd, (struct sockaddr *)&ss, len));
}

static void do_listen(const char *what, int fd) { said(what, listen(fd, 16)); }

/* Connects a new socket of `family` to a:p; returns it (the row closes it). */
static int do_connect(const char *what, int family, int type, const char *a, int p) {
    int fd = sock(family, type, 0);
    struct sockaddr_storage ss;
    socklen_t len = addr_of(a, p, &ss);
    said(what, connect(fd, (struct sockaddr *)&ss, len));
    return fd;
}

static int do_accept(const char *what, int fd) {
    int c = accept(fd, NULL, NULL);
    said(what, c < 0 ? -1 : 0);
    return c;
}

static void v6only_of(const char *what, int fd) {
    int v = -1;
    socklen_t len = sizeof v;
    if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v, &len) != 0)
        put(what, err_name(errno));
    else
        put(what, v ? "1" : "0");
}

static void close_all(int *fds, int n) {
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* A wildcard listener of `family` ("0.0.0.0" or "::"), reached at SELF. */
static void wildcard_listener(const char *name, int family, const char *any) {
    row(name);
    int l = sock(family, SOCK_STREAM, 0);
    do_bind("bind", l, any, port);
    sockname("name", l);
    do_listen("listen", l);
    sockname("listening", l);
    int c = do_connect("connect", AF_INET, SOCK_STREAM, "SELF", port);
    sockname("client", c);
    peername("client_peer", c);
    int a = do_accept("accept", l);
    sockname("accepted", a);
    sockname("still", l);
    int fds[] = {l, c, a};
    close_all(fds, 3);
    end_row();
}

/* Two binds of one port: the second's answer, then the listens'. */
/* A row: two UDP sockets with options `opts` bound to the same wildcard port. */
static void udp_twice(const char *name, int opts) {
    row(name);
    int s1 = sock(AF_INET, SOCK_DGRAM, opts), s2 = sock(AF_INET, SOCK_DGRAM, opts);
    do_bind("bind1", s1, "0.0.0.0", port);
    do_bind("bind2", s2, "0.0.0.0", port);
    int fds[] = {s1, s2};
    close_all(fds, 2);
    end_row();
}

static void twice(const char *name, int f1, const char *a1, int o1, int f2, const char *a2, int o2, int listen_first) {
    row(name);
    int s1 = sock(f1, SOCK_STREAM, o1), s2 = sock(f2, SOCK_STREAM, o2);
    do_bind("bind1", s1, a1, port);
    if (listen_first)
        do_listen("listen1", s1);
    do_bind("bind2", s2, a2, port);
    if (!listen_first)
        do_listen("listen1", s1);
    do_listen("listen2", s2);
    int fds[] = {s1, s2};
    close_all(fds, 2);
    end_row();
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: answers SELF PORT\n");
        return 2;
    }
    self = argv[1];
    port = atoi(argv[2]);

    wildcard_listener("tcp4-wildcard", AF_INET, "0.0.0.0");
    wildcard_listener("tcp6-wildcard", AF_INET6, "::");

    row("tcp4-self");
    int s = sock(AF_INET, SOCK_STREAM, 0);
    do_bind("bind", s, "SELF", port);
    sockname("name", s);
    do_listen("listen", s);
    sockname("listening", s);
    close(s);
    end_row();

    row("tcp4-any-port");
    s = sock(AF_INET, SOCK_STREAM, 0);
    do_bind("bind", s, "0.0.0.0", 0);
    sockname("name", s);
    do_listen("listen", s);
    sockname("listening", s);
    close(s);
    end_row();

    row("udp4-wildcard");
    s = sock(AF_INET, SOCK_DGRAM, 0);
    int u = sock(AF_INET, SOCK_DGRAM, 0);
    do_bind("bind", s, "0.0.0.0", port);
    sockname("name", s);
    do_bind("bind_other", u, "SELF", port + 100);
    {
        struct sockaddr_storage ss;
        socklen_t len = addr_of("SELF", port + 100, &ss);
        said("connect", connect(s, (struct sockaddr *)&ss, len));
    }
    sockname("connected", s);
    close(s);
    close(u);
    end_row();

    row("udp6-wildcard");
    s = sock(AF_INET6, SOCK_DGRAM, 0);
    do_bind("bind", s, "::", port);
    sockname("name", s);
    close(s);
    end_row();

    twice("tcp4-twice", AF_INET, "0.0.0.0", 0, AF_INET, "0.0.0.0", 0, 0);
    twice("tcp4-wildcard-then-self", AF_INET, "0.0.0.0", 0, AF_INET, "SELF", 0, 0);
    twice("tcp4-self-then-wildcard", AF_INET, "SELF", 0, AF_INET, "0.0.0.0", 0, 0);
    twice("tcp4-then-tcp6", AF_INET, "0.0.0.0", 0, AF_INET6, "::", 0, 0);
    twice("tcp6-then-tcp4", AF_INET6, "::", 0, AF_INET, "0.0.0.0", 0, 0);
    twice("tcp4-then-tcp6-mapped", AF_INET, "SELF", 0, AF_INET6, "::ffff:SELF", 0, 0);
    twice("tcp4-then-tcp6-v6only", AF_INET, "0.0.0.0", 0, AF_INET6, "::", V6ONLY, 0);
    twice("tcp6-v6only-then-tcp6", AF_INET6, "::", V6ONLY, AF_INET6, "::", 0, 0);
    twice("reuseaddr-both", AF_INET, "0.0.0.0", REUSEADDR, AF_INET, "0.0.0.0", REUSEADDR, 0);
    twice("reuseaddr-both-listening", AF_INET, "0.0.0.0", REUSEADDR, AF_INET, "0.0.0.0", REUSEADDR, 1);
    twice("reuseaddr-first-only", AF_INET, "0.0.0.0", REUSEADDR, AF_INET, "0.0.0.0", 0, 0);
    twice("reuseport-both", AF_INET, "0.0.0.0", REUSEPORT, AF_INET, "0.0.0.0", REUSEPORT, 1);
    twice("reuseport-first-only", AF_INET, "0.0.0.0", REUSEPORT, AF_INET, "0.0.0.0", 0, 1);
    twice("reuseport-tcp6-both", AF_INET6, "::", REUSEPORT, AF_INET6, "::", REUSEPORT, 1);

    udp_twice("udp4-twice", 0);
    udp_twice("udp4-reuseaddr-both", REUSEADDR);

    row("closed-then-bound-again");
    s = sock(AF_INET, SOCK_STREAM, 0);
    do_bind("bind1", s, "0.0.0.0", port);
    do_listen("listen1", s);
    close(s);
    s = sock(AF_INET, SOCK_STREAM, 0);
    do_bind("bind2", s, "0.0.0.0", port);
    do_listen("listen2", s);
    close(s);
    end_row();

    row("tcp6-v6only-listener");
    s = sock(AF_INET6, SOCK_STREAM, V6ONLY);
    do_bind("bind", s, "::", port);
    sockname("name", s);
    v6only_of("v6only", s);
    do_listen("listen", s);
    sockname("listening", s);
    {
        int c = do_connect("connect4", AF_INET, SOCK_STREAM, "SELF", port);
        close(c);
        c = do_connect("connect_mapped", AF_INET6, SOCK_STREAM, "::ffff:SELF", port);
        close(c);
    }
    close(s);
    end_row();

    row("tcp6-v6only-mapped-bind");
    s = sock(AF_INET6, SOCK_STREAM, V6ONLY);
    do_bind("bind", s, "::ffff:SELF", port);
    close(s);
    end_row();

    row("tcp6-dual-listener");
    s = sock(AF_INET6, SOCK_STREAM, 0);
    do_bind("bind", s, "::", port);
    v6only_of("v6only", s);
    do_listen("listen", s);
    {
        int c = do_connect("connect_mapped", AF_INET6, SOCK_STREAM, "::ffff:SELF", port);
        int a = do_accept("accept", s);
        sockname("accepted", a);
        sockname("client", c);
        peername("client_peer", c);
        close(a);
        close(c);
    }
    close(s);
    end_row();

    row("tcp4-beside-v6only");
    s = sock(AF_INET6, SOCK_STREAM, V6ONLY);
    u = sock(AF_INET, SOCK_STREAM, 0);
    do_bind("bind6", s, "::", port);
    do_listen("listen6", s);
    do_bind("bind4", u, "0.0.0.0", port);
    do_listen("listen4", u);
    {
        int c = do_connect("connect4", AF_INET, SOCK_STREAM, "SELF", port);
        int a = do_accept("accept4", u);
        sockname("accepted", a);
        close(a);
        close(c);
    }
    close(s);
    close(u);
    end_row();
    return 0;
}
