/*
 * hostile: an untrusted app for ax's attack suite (crates/ax/tests/hostile.rs).
 *
 * Each subcommand tries one way around ax's isolation from inside `ax run` and prints
 * what every attempt returned (the errno's name, or "ok"), so a failing test shows
 * what got through. Every subcommand ends on its own: races stop after a few seconds
 * or a fixed number of calls, and blocking calls are cut off by alarm(2).
 *
 * Addresses are given as IPv4 "a.b.c.d:port"; the test chooses them all.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- output, arguments, sockets ------------------------------------------------ */

static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

/* "ok" for a call that succeeded, else the name of its errno (read right after). */
static const char *outcome(long rv) {
    if (rv >= 0)
        return "ok";
    const char *name = strerrorname_np(errno);
    return name ? name : "E?";
}

static struct sockaddr_in parse_addr(const char *s) {
    char ip[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof ip)
        die("'%s' is not IP:port", s);
    memcpy(ip, s, colon - s);
    ip[colon - s] = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1)
        die("'%s' is not IP:port", s);
    return a;
}

static int make_socket(int family, int type) {
    int fd = socket(family, type, 0);
    if (fd < 0)
        die("socket(%d, %d): %s", family, type, outcome(-1));
    return fd;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Prints whatever a connection that got through answers, for the record. */
static void show_reply(int fd, const char *what) {
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[200];
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    if (n > 0) {
        buf[n] = 0;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] == '\n' || buf[i] == '\r')
                buf[i] = ' ';
        say("%s: REPLY %s", what, buf);
    }
}

/* ---- 1. TCP Fast Open sends on a host TCP socket: fastopen PAYLOAD ADDR... -------- */

static void tfo_attempt(const char *name, const char *target, const char *payload,
                        long (*send_it)(int, const char *, const struct sockaddr_in *)) {
    struct sockaddr_in to = parse_addr(target);
    int fd = make_socket(AF_INET, SOCK_STREAM);
    long rv = send_it(fd, payload, &to);
    char what[128];
    snprintf(what, sizeof what, "%s %s", name, target);
    say("%s: %s", what, outcome(rv));
    if (rv >= 0)
        show_reply(fd, what);
    close(fd);
}

static void fill_msg(struct msghdr *m, struct iovec *iov, const struct sockaddr_in *to, const char *payload) {
    iov->iov_base = (void *)payload;
    iov->iov_len = strlen(payload);
    *m = (struct msghdr){.msg_name = (void *)to, .msg_namelen = sizeof *to, .msg_iov = iov, .msg_iovlen = 1};
}

static long tfo_sendto(int fd, const char *p, const struct sockaddr_in *to) {
    return sendto(fd, p, strlen(p), MSG_FASTOPEN, (const struct sockaddr *)to, sizeof *to);
}

static long tfo_sendmsg(int fd, const char *p, const struct sockaddr_in *to) {
    struct msghdr m;
    struct iovec iov;
    fill_msg(&m, &iov, to, p);
    return sendmsg(fd, &m, MSG_FASTOPEN);
}

static long tfo_sendmmsg(int fd, const char *p, const struct sockaddr_in *to) {
    struct mmsghdr mm = {0};
    struct iovec iov;
    fill_msg(&mm.msg_hdr, &iov, to, p);
    return sendmmsg(fd, &mm, 1, MSG_FASTOPEN);
}

static int cmd_fastopen(int argc, char **argv) {
    if (argc < 2)
        die("usage: fastopen PAYLOAD ADDR...");
    for (int i = 1; i < argc; i++) {
        tfo_attempt("sendto MSG_FASTOPEN", argv[i], argv[0], tfo_sendto);
        tfo_attempt("sendmsg MSG_FASTOPEN", argv[i], argv[0], tfo_sendmsg);
        tfo_attempt("sendmmsg MSG_FASTOPEN", argv[i], argv[0], tfo_sendmmsg);
    }
    return 0;
}

/* ---- 2. TCP_FASTOPEN_CONNECT, then connect and write: tfo-connect PAYLOAD ADDR... -- */

static int cmd_tfo_connect(int argc, char **argv) {
    if (argc < 2)
        die("usage: tfo-connect PAYLOAD ADDR...");
    for (int i = 1; i < argc; i++) {
        struct sockaddr_in to = parse_addr(argv[i]);
        int fd = make_socket(AF_INET, SOCK_STREAM);
        int one = 1;
        say("setsockopt TCP_FASTOPEN_CONNECT %s: %s", argv[i],
            outcome(setsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, &one, sizeof one)));
        say("connect %s: %s", argv[i], outcome(connect(fd, (struct sockaddr *)&to, sizeof to)));
        long rv = send(fd, argv[0], strlen(argv[0]), MSG_NOSIGNAL);
        say("write %s: %s", argv[i], outcome(rv));
        if (rv >= 0)
            show_reply(fd, argv[i]);
        close(fd);
    }
    return 0;
}

/* ---- 3. sendmmsg with addresses on a host UDP socket: sendmmsg-udp ADDR... --------
 * One batch per address: sendmmsg stops at the first datagram that fails. */

static int cmd_sendmmsg_udp(int argc, char **argv) {
    enum { BATCH = 4 };
    if (argc < 1)
        die("usage: sendmmsg-udp ADDR...");
    int fd = make_socket(AF_INET, SOCK_DGRAM);
    for (int i = 0; i < argc; i++) {
        struct sockaddr_in to = parse_addr(argv[i]);
        struct mmsghdr mm[BATCH] = {0};
        struct iovec iov[BATCH];
        for (int k = 0; k < BATCH; k++)
            fill_msg(&mm[k].msg_hdr, &iov[k], &to, "hostile sendmmsg");
        int rv = sendmmsg(fd, mm, BATCH, 0);
        say("sendmmsg %d datagrams to %s: %s (%d sent)", BATCH, argv[i], outcome(rv), rv);
    }
    close(fd);
    return 0;
}

/* ---- 4, 5. Races on a descriptor number: race KIND SECONDS HOLD [ADDR...] ----------
 *
 * Thread A changes what descriptor N is while the main thread calls KIND on N:
 *   connect  N flips between a host TCP socket and an AF_UNIX stream socket (dup2);
 *            the caller alternates connect(N) and sendto(N, MSG_FASTOPEN)
 *   sendto   N flips between a host UDP socket and an AF_UNIX datagram socket; N is
 *            in the range where ax traps sends (DATAGRAM_FD)
 *   bind     as sendto, the caller binds N
 *   listen   as connect, the caller listens on N (an unbound TCP socket autobinds)
 *   accepted as connect, but the host socket is one the app's own listener accepted
 *            and then dissolved with connect(AF_UNSPEC): ax made none of it itself
 *   reopen   thread A closes N and makes a new socket that lands on N, alternately a
 *            host TCP socket and an AF_UNIX one; the caller connects N. One host
 *            socket in 32 is new (socket(2), a trap that leaves N closed meanwhile); the
 *            others are a dup(2) of one made earlier: a reopen that costs no trap
 * After a success the host socket is replaced (and the old one kept open, so a port it
 * took natively stays visible to the test) until MAX_KEPT are kept. With HOLD > 0 the
 * program then keeps everything open for HOLD seconds. */

/* A number in the range where ax puts the UDP sockets it makes (crates/trap/src/fds.rs). */
enum { DATAGRAM_FD = 1000, DATAGRAM_LO = 768, DATAGRAM_HI = 1024 };

enum kind { RACE_CONNECT, RACE_SENDTO, RACE_BIND, RACE_LISTEN, RACE_REOPEN, RACE_ACCEPTED };
enum { MAX_TO = 4, MAX_ERR = 256, MAX_KEPT = 200, MAX_CALLS = 200000 };

struct race {
    enum kind kind;
    int n, host, other;
    int host_type, other_type;
    atomic_int stop, fresh;
    int kept, misplaced;
};

static const char *op_name(enum kind k, int op) {
    static const char *names[] = {"connect", "sendto", "bind", "listen", "connect", "connect"};
    return op ? "sendto MSG_FASTOPEN" : names[k];
}

/* Puts descriptor `fd` at number `n` (it lands there by itself when n is the lowest free). */
static void place_at(struct race *r, int fd) {
    if (fd != r->n) {
        r->misplaced++;
        dup2(fd, r->n);
        close(fd);
    }
}

/* A host socket the kernel made: accepted by a listener of the app's own from a
 * connection the app made to it, then dissolved (connect AF_UNSPEC) so it may connect
 * again. */
static int accepted_host(void) {
    static int listener = -1;
    static struct sockaddr_in self;
    if (listener < 0) {
        listener = make_socket(AF_INET, SOCK_STREAM);
        struct sockaddr_in any = {.sin_family = AF_INET};
        socklen_t len = sizeof self;
        if (bind(listener, (struct sockaddr *)&any, sizeof any) || listen(listener, 64) ||
            getsockname(listener, (struct sockaddr *)&self, &len))
            die("accepted: the listener: %s", outcome(-1));
    }
    int c = make_socket(AF_INET, SOCK_STREAM);
    if (connect(c, (struct sockaddr *)&self, sizeof self))
        die("accepted: connect to %s:%d: %s", inet_ntoa(self.sin_addr), ntohs(self.sin_port), outcome(-1));
    int a = accept(listener, NULL, NULL);
    if (a < 0)
        die("accepted: accept: %s", outcome(-1));
    close(c);
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    if (connect(a, &unspec, sizeof unspec))
        die("accepted: dissolve: %s", outcome(-1));
    return a;
}

static int new_host(struct race *r) {
    return r->kind == RACE_ACCEPTED ? accepted_host() : make_socket(AF_INET, r->host_type);
}

static void renew_host(struct race *r) {
    if (r->kept >= MAX_KEPT) {
        say("race: %d host sockets kept, stopping", MAX_KEPT);
        atomic_store(&r->stop, 1);
        return;
    }
    r->kept++;
    r->host = new_host(r);
}

static void *flipper(void *p) {
    struct race *r = p;
    for (long cycle = 0; !atomic_load(&r->stop); cycle++) {
        if (r->kind == RACE_REOPEN) {
            close(r->n);
            place_at(r, cycle % 32 ? dup(r->host) : make_socket(AF_INET, SOCK_STREAM));
            close(r->n);
            place_at(r, make_socket(AF_UNIX, SOCK_STREAM));
        } else {
            dup2(r->host, r->n);
            dup2(r->other, r->n);
        }
        if (atomic_exchange(&r->fresh, 0))
            renew_host(r);
    }
    return NULL;
}

static long race_call(struct race *r, int op, const struct sockaddr_in *to) {
    static const char data[] = "hostile race";
    const struct sockaddr *sa = (const struct sockaddr *)to;
    switch (r->kind) {
    case RACE_CONNECT:
    case RACE_ACCEPTED:
        if (op)
            return sendto(r->n, data, sizeof data, MSG_FASTOPEN | MSG_NOSIGNAL, sa, sizeof *to);
        return connect(r->n, sa, sizeof *to);
    case RACE_REOPEN:
        return connect(r->n, sa, sizeof *to);
    case RACE_SENDTO:
        return sendto(r->n, data, sizeof data, MSG_NOSIGNAL, sa, sizeof *to);
    case RACE_BIND:
        return bind(r->n, sa, sizeof *to);
    case RACE_LISTEN:
        return listen(r->n, 16);
    }
    return -1;
}

static int cmd_race(int argc, char **argv) {
    if (argc < 3 || argc - 3 > MAX_TO)
        die("usage: race connect|sendto|bind|listen|reopen|accepted SECONDS HOLD [ADDR...] (at most %d)", MAX_TO);
    static const char *kinds[] = {"connect", "sendto", "bind", "listen", "reopen", "accepted"};
    struct race r = {.kind = (enum kind)-1};
    for (int k = 0; k < 6; k++)
        if (!strcmp(argv[0], kinds[k]))
            r.kind = k;
    if ((int)r.kind < 0)
        die("unknown race '%s'", argv[0]);
    double seconds = atof(argv[1]);
    int hold = atoi(argv[2]);
    int nto = argc - 3;
    struct sockaddr_in to[MAX_TO] = {0};
    for (int i = 0; i < nto; i++)
        to[i] = parse_addr(argv[3 + i]);
    if (nto == 0 && r.kind != RACE_LISTEN)
        die("race %s needs an address", argv[0]);
    int dgram = r.kind == RACE_SENDTO || r.kind == RACE_BIND;
    r.host_type = r.other_type = dgram ? SOCK_DGRAM : SOCK_STREAM;
    r.host = new_host(&r);
    r.other = make_socket(AF_UNIX, r.other_type);
    /* N is made last, so it is the lowest free number when the reopen race closes it. */
    r.n = make_socket(AF_UNIX, r.other_type);
    if (r.kind == RACE_SENDTO) {
        /* Where ax puts UDP sockets and traps their sends (768-1023): the daemon must see
         * the race. Elsewhere the sends run natively (the dgram-out attack). */
        if (dup2(r.n, DATAGRAM_FD) != DATAGRAM_FD)
            die("dup2 to %d: %s", DATAGRAM_FD, outcome(-1));
        close(r.n);
        r.n = DATAGRAM_FD;
    }
    int ops = r.kind == RACE_CONNECT || r.kind == RACE_ACCEPTED ? 2 : 1;
    int slots = nto ? nto : 1;
    static long counts[2][MAX_TO][MAX_ERR];

    pthread_t t;
    pthread_create(&t, NULL, flipper, &r);
    double start = now(), deadline = start + seconds;
    long calls = 0;
    for (; calls < MAX_CALLS && !atomic_load(&r.stop) && now() < deadline; calls++) {
        int target = calls % slots, op = (calls / slots) % ops;
        long rv = race_call(&r, op, &to[target]);
        int e = rv >= 0 ? 0 : errno;
        counts[op][target][e < MAX_ERR ? e : MAX_ERR - 1]++;
        if (rv >= 0 && r.kind != RACE_SENDTO)
            atomic_store(&r.fresh, 1);
    }
    atomic_store(&r.stop, 1);
    pthread_join(t, NULL);
    say("race %s: %ld calls in %.1f s, %d host sockets replaced, %d misplaced", argv[0], calls, now() - start,
        r.kept, r.misplaced);
    for (int op = 0; op < ops; op++)
        for (int target = 0; target < slots; target++)
            for (int e = 0; e < MAX_ERR; e++)
                if (counts[op][target][e]) {
                    errno = e;
                    say("  %s %s: %s x %ld", op_name(r.kind, op), nto ? argv[3 + target] : "-",
                        outcome(e ? -1 : 0), counts[op][target][e]);
                }
    if (hold > 0) {
        say("holding");
        sleep(hold);
    }
    return 0;
}

/* ---- 6. Taking the DNS port: dns-squat SECONDS ANSWER_IP ------------------------ */

/* Answers every A query it gets with ANSWER_IP (AAAA and the rest with no answer). */
static int cmd_dns_squat(int argc, char **argv) {
    if (argc != 2)
        die("usage: dns-squat SECONDS ANSWER_IP");
    double deadline = now() + atof(argv[0]);
    struct in_addr answer;
    if (inet_pton(AF_INET, argv[1], &answer) != 1)
        die("'%s' is not an IPv4 address", argv[1]);
    int fd = make_socket(AF_INET, SOCK_DGRAM);
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons(53)};
    long rv = bind(fd, (struct sockaddr *)&any, sizeof any);
    say("bind 0.0.0.0:53: %s", outcome(rv));
    if (rv < 0)
        return 0;
    struct timeval tv = {.tv_sec = 1};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int answered = 0;
    while (now() < deadline) {
        unsigned char q[512];
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, q, sizeof q - 16, 0, (struct sockaddr *)&from, &fl);
        if (n < 12)
            continue;
        size_t end = 12; /* past the question's name, type and class */
        while (end < (size_t)n && q[end])
            end += q[end] + 1;
        end += 5;
        if (end > (size_t)n)
            continue;
        int type_a = q[end - 4] == 0 && q[end - 3] == 1;
        q[2] |= 0x80; /* QR: a response */
        memset(q + 6, 0, 6); /* ANCOUNT, NSCOUNT, ARCOUNT */
        q[7] = type_a;
        unsigned char rr[] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4};
        size_t len = end;
        if (type_a) {
            memcpy(q + len, rr, sizeof rr);
            memcpy(q + len + sizeof rr, &answer, 4);
            len += sizeof rr + 4;
        }
        sendto(fd, q, len, 0, (struct sockaddr *)&from, fl);
        answered++;
    }
    say("answered %d queries", answered);
    return 0;
}

/* ---- 7. Bad buffers and connect states: errnos SELF_ADDR SILENT_ADDR -------------
 * SELF_ADDR: this app's own address and a port to listen on; SILENT_ADDR: an address
 * that never answers, so a non-blocking connect to it stays in progress. */

static int cmd_errnos(int argc, char **argv) {
    if (argc != 2)
        die("usage: errnos SELF_ADDR SILENT_ADDR");
    struct sockaddr_in self = parse_addr(argv[0]), silent = parse_addr(argv[1]);
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = self.sin_port};
    int l = make_socket(AF_INET, SOCK_STREAM);
    say("bind: %s", outcome(bind(l, (struct sockaddr *)&any, sizeof any)));
    say("listen: %s", outcome(listen(l, 4)));
    int c = make_socket(AF_INET, SOCK_STREAM);
    say("connect: %s", outcome(connect(c, (struct sockaddr *)&self, sizeof self)));

    long page = sysconf(_SC_PAGESIZE);
    unsigned char *ro = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ro == MAP_FAILED)
        die("mmap: %s", outcome(-1));
    *(socklen_t *)(ro + 64) = sizeof(struct sockaddr_in);
    mprotect(ro, page, PROT_READ);
    struct sockaddr_in rw;
    socklen_t len = sizeof rw;
    say("getsockname into read-only address: %s", outcome(getsockname(c, (struct sockaddr *)ro, &len)));
    say("getpeername into read-only address: %s", outcome(getpeername(c, (struct sockaddr *)ro, &len)));
    socklen_t *ro_len = (socklen_t *)(ro + 64);
    say("getsockname with read-only length: %s", outcome(getsockname(c, (struct sockaddr *)&rw, ro_len)));
    say("getpeername with read-only length: %s", outcome(getpeername(c, (struct sockaddr *)&rw, ro_len)));
    int touched = *ro_len != sizeof(struct sockaddr_in);
    for (long i = 0; i < 64; i++)
        touched |= ro[i];
    say("read-only page: %s", touched ? "WRITTEN" : "untouched");

    say("connect again: %s", outcome(connect(c, (struct sockaddr *)&self, sizeof self)));
    int nb = make_socket(AF_INET, SOCK_STREAM);
    fcntl(nb, F_SETFL, fcntl(nb, F_GETFL) | O_NONBLOCK);
    say("non-blocking connect: %s", outcome(connect(nb, (struct sockaddr *)&silent, sizeof silent)));
    say("non-blocking connect again: %s", outcome(connect(nb, (struct sockaddr *)&silent, sizeof silent)));
    return 0;
}

/* ---- 8. Resources: block-recv PORT | block-connect ADDR | take-ports COUNT FIRST HOLD
 * The blocking ones say their pid and the call they are about to block in, so the test
 * can see them inside it (/proc/PID/syscall) before killing them; alarm(2) ends them
 * otherwise. take-ports binds COUNT UDP ports from FIRST on and holds them. */

enum { BLOCK_LIMIT = 60 };

static int cmd_block_recv(int argc, char **argv) {
    if (argc != 1)
        die("usage: block-recv PORT");
    alarm(BLOCK_LIMIT);
    int fd = make_socket(AF_INET, SOCK_DGRAM);
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[0]))};
    say("bind: %s", outcome(bind(fd, (struct sockaddr *)&any, sizeof any)));
    say("pid %d blocking in syscall %ld", getpid(), (long)SYS_recvfrom);
    char buf[64];
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    say("recvfrom: %s", outcome(recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl)));
    return 0;
}

static int cmd_block_connect(int argc, char **argv) {
    if (argc != 1)
        die("usage: block-connect ADDR");
    alarm(BLOCK_LIMIT);
    struct sockaddr_in to = parse_addr(argv[0]);
    int fd = make_socket(AF_INET, SOCK_STREAM);
    say("pid %d blocking in syscall %ld", getpid(), (long)SYS_connect);
    say("connect: %s", outcome(connect(fd, (struct sockaddr *)&to, sizeof to)));
    return 0;
}

static int cmd_take_ports(int argc, char **argv) {
    if (argc != 3)
        die("usage: take-ports COUNT FIRST HOLD");
    int count = atoi(argv[0]), first = atoi(argv[1]), bound = 0;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    const char *failure = NULL;
    int failed_at = -1;
    for (int i = 0; i < count; i++) {
        int fd = make_socket(AF_INET, SOCK_DGRAM);
        struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons(first + i)};
        long rv = bind(fd, (struct sockaddr *)&any, sizeof any);
        if (rv == 0) {
            bound++;
        } else {
            if (!failure) {
                failure = outcome(rv);
                failed_at = i;
            }
            close(fd);
        }
    }
    say("bound %d of %d", bound, count);
    if (failure)
        say("first failure: bind %d: %s", failed_at, failure);
    say("holding");
    sleep(atoi(argv[2]));
    return 0;
}

/* ---- 9. The i386 entry from a 64-bit app: int80 PAYLOAD ADDR... ----------------
 * int $0x80 runs the i386 system call table (socketcall, connect = 362), whose numbers
 * a filter written for x86_64 would not recognise. Arguments live below 4 GiB. */

#if defined(__x86_64__)
static long int80(long nr, long a, long b, long c) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory", "r8", "r9", "r10", "r11");
    if (r < 0 && r > -4096) {
        errno = -r;
        return -1;
    }
    return r;
}

static int cmd_int80(int argc, char **argv) {
    enum { SOCKETCALL = 102, SC_CONNECT = 3, SC_SENDTO = 11, I386_CONNECT = 362 };
    if (argc < 2)
        die("usage: int80 PAYLOAD ADDR...");
    unsigned char *low = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (low == MAP_FAILED)
        die("mmap: %s", outcome(-1));
    size_t plen = strlen(argv[0]) < 1024 ? strlen(argv[0]) : 1024;
    memcpy(low + 1024, argv[0], plen);
    unsigned addr = (unsigned)(unsigned long)low, buf = addr + 1024;
    unsigned *args = (unsigned *)(low + 256);
    for (int i = 1; i < argc; i++) {
        struct sockaddr_in to = parse_addr(argv[i]);
        memcpy(low, &to, sizeof to);
        int fd = make_socket(AF_INET, SOCK_STREAM);
        memcpy(args, (unsigned[]){fd, addr, sizeof to}, 3 * sizeof *args);
        long rv = int80(SOCKETCALL, SC_CONNECT, (long)args, 0);
        say("socketcall connect %s: %s", argv[i], outcome(rv));
        long rv2 = int80(I386_CONNECT, fd, addr, sizeof to);
        say("i386 connect %s: %s", argv[i], outcome(rv2));
        close(fd);
        fd = make_socket(AF_INET, SOCK_STREAM);
        memcpy(args, (unsigned[]){fd, buf, plen, MSG_FASTOPEN, addr, sizeof to}, 6 * sizeof *args);
        long rv3 = int80(SOCKETCALL, SC_SENDTO, (long)args, 0);
        say("socketcall sendto MSG_FASTOPEN %s: %s", argv[i], outcome(rv3));
        if (rv >= 0 || rv2 >= 0 || rv3 >= 0)
            show_reply(fd, argv[i]);
        close(fd);
    }
    return 0;
}
#else
static int cmd_int80(int argc, char **argv) {
    (void)argc;
    (void)argv;
    say("int80: not x86_64, nothing to try");
    return 0;
}
#endif

/* ---- 10. A UDP socket moved out of the range ax traps: dgram-out ADDR... -----------
 * ax puts the UDP sockets it makes at descriptors 768-1023 and traps their sends and
 * receives there only. Each copy made elsewhere (dup, dup2, dup3, F_DUPFD,
 * F_DUPFD_CLOEXEC, SCM_RIGHTS, pidfd_getfd) sends to each ADDR with sendto and with
 * sendmsg: natively, so the socket guard must refuse every one (EPERM). The original,
 * in the range, then sends to each ADDR through the daemon. */

static int passed_over_unix(int fd) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv))
        die("socketpair: %s", outcome(-1));
    char byte = 'x', cbuf[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(sv[0], &m, 0) != 1 || recvmsg(sv[1], &m, 0) != 1)
        die("SCM_RIGHTS: %s", outcome(-1));
    int got;
    memcpy(&got, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof got);
    close(sv[0]);
    close(sv[1]);
    return got;
}

static int taken_with_pidfd(int fd) {
    int pidfd = syscall(SYS_pidfd_open, getpid(), 0);
    int got = pidfd < 0 ? -1 : syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    if (got < 0)
        die("pidfd_getfd: %s", outcome(-1));
    close(pidfd);
    return got;
}

static void send_to_each(const char *what, int fd, int argc, char **argv) {
    static const char data[] = "hostile dgram-out";
    for (int i = 0; i < argc; i++) {
        struct sockaddr_in to = parse_addr(argv[i]);
        long rv = sendto(fd, data, sizeof data, 0, (struct sockaddr *)&to, sizeof to);
        say("%s (fd %d) sendto %s: %s", what, fd, argv[i], outcome(rv));
        struct msghdr m;
        struct iovec iov;
        fill_msg(&m, &iov, &to, data);
        rv = sendmsg(fd, &m, 0);
        say("%s (fd %d) sendmsg %s: %s", what, fd, argv[i], outcome(rv));
    }
}

static int cmd_dgram_out(int argc, char **argv) {
    if (argc < 1)
        die("usage: dgram-out ADDR...");
    int fd = make_socket(AF_INET, SOCK_DGRAM);
    say("socket: fd %d", fd);
    struct {
        const char *name;
        int fd;
    } copies[] = {
        {"copy dup", dup(fd)},
        {"copy dup2", dup2(fd, 10)},
        {"copy dup3", dup3(fd, 11, O_CLOEXEC)},
        {"copy F_DUPFD", fcntl(fd, F_DUPFD, 0)},
        {"copy F_DUPFD_CLOEXEC", fcntl(fd, F_DUPFD_CLOEXEC, 100)},
        {"copy SCM_RIGHTS", passed_over_unix(fd)},
        {"copy pidfd_getfd", taken_with_pidfd(fd)},
    };
    for (size_t i = 0; i < sizeof copies / sizeof copies[0]; i++) {
        if (copies[i].fd < 0 || (copies[i].fd >= DATAGRAM_LO && copies[i].fd < DATAGRAM_HI))
            die("%s: fd %d, not a copy outside the range", copies[i].name, copies[i].fd);
        send_to_each(copies[i].name, copies[i].fd, argc, argv);
    }
    send_to_each("original", fd, argc, argv);
    return 0;
}

/* ---- 12. A source route on a connected UDP socket's sends: udp-srr CONNECT HOP ----
 * The daemon connects the socket to CONNECT; the app then sends without an address
 * but with an IP_RETOPTS control message holding a loose source route whose first
 * hop is HOP. udp_sendmsg runs the cgroup sendmsg4 hook only for unconnected sends,
 * and routes a source-routed datagram to its first hop: the packet leaves to HOP.
 * Tried on the socket where the daemon put it, on a copy outside the trapped range,
 * and with sendmmsg. */

static long srr_send(int fd, int batch, const struct sockaddr_in *hop, const struct sockaddr_in *to) {
    unsigned char opt[8] = {131 /* IPOPT_LSRR */, 7, 4, 0, 0, 0, 0, 1 /* NOP */};
    memcpy(opt + 3, &hop->sin_addr, 4);
    char control[CMSG_SPACE(sizeof opt)] __attribute__((aligned(8))) = {0};
    struct cmsghdr *c = (struct cmsghdr *)control;
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_RETOPTS;
    c->cmsg_len = CMSG_LEN(sizeof opt);
    memcpy(CMSG_DATA(c), opt, sizeof opt);
    struct iovec iov = {.iov_base = "hostile source route", .iov_len = 20};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    if (to) {
        m.msg_name = (void *)to;
        m.msg_namelen = sizeof *to;
    }
    if (!batch)
        return sendmsg(fd, &m, 0);
    struct mmsghdr mm = {.msg_hdr = m};
    return sendmmsg(fd, &mm, 1, 0);
}

static int cmd_udp_srr(int argc, char **argv) {
    if (argc != 2)
        die("usage: udp-srr CONNECT HOP");
    struct sockaddr_in to = parse_addr(argv[0]), hop = parse_addr(argv[1]);
    int fd = make_socket(AF_INET, SOCK_DGRAM);
    say("socket: fd %d", fd);
    say("connect %s: %s", argv[0], outcome(connect(fd, (struct sockaddr *)&to, sizeof to)));
    int low = dup2(fd, 10);
    /* And a socket that never connects, sending with the address. */
    int free_fd = make_socket(AF_INET, SOCK_DGRAM);
    int free_low = dup2(free_fd, 11);
    for (int i = 0; i < 3; i++) {
        say("sendmsg fd %d via %s: %s", fd, argv[1], outcome(srr_send(fd, 0, &hop, NULL)));
        say("sendmsg fd %d via %s: %s", low, argv[1], outcome(srr_send(low, 0, &hop, NULL)));
        say("sendmmsg fd %d via %s: %s", fd, argv[1], outcome(srr_send(fd, 1, &hop, NULL)));
        say("sendmsg fd %d to %s via %s: %s", free_fd, argv[0], argv[1], outcome(srr_send(free_fd, 0, &hop, &to)));
        say("sendmsg fd %d to %s via %s: %s", free_low, argv[0], argv[1], outcome(srr_send(free_low, 0, &hop, &to)));
        say("sendmmsg fd %d to %s via %s: %s", free_fd, argv[0], argv[1], outcome(srr_send(free_fd, 1, &hop, &to)));
    }
    return 0;
}

/* ---- 13. A source address of the app's choosing: pktinfo-spoof DEST SOURCE ----
 * Sends to DEST with an IP_PKTINFO control message whose ipi_spec_dst (the source the
 * kernel sends from) is SOURCE, another of the host's addresses: the datagram must
 * still go from the app's own socket address. Tried unconnected, on a copy outside the
 * trapped range, with sendmmsg, and connected. */

static long pktinfo_send(int fd, int batch, const struct sockaddr_in *to, struct in_addr source) {
    struct in_pktinfo info = {.ipi_spec_dst = source};
    char control[CMSG_SPACE(sizeof info)] __attribute__((aligned(8))) = {0};
    struct cmsghdr *c = (struct cmsghdr *)control;
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof info);
    memcpy(CMSG_DATA(c), &info, sizeof info);
    struct iovec iov = {.iov_base = "hostile pktinfo", .iov_len = 15};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    if (to) {
        m.msg_name = (void *)to;
        m.msg_namelen = sizeof *to;
    }
    if (!batch)
        return sendmsg(fd, &m, 0);
    struct mmsghdr mm = {.msg_hdr = m};
    return sendmmsg(fd, &mm, 1, 0);
}

static int cmd_pktinfo_spoof(int argc, char **argv) {
    if (argc != 2)
        die("usage: pktinfo-spoof DEST SOURCE");
    struct sockaddr_in to = parse_addr(argv[0]);
    struct in_addr source;
    if (inet_pton(AF_INET, argv[1], &source) != 1)
        die("bad address %s", argv[1]);
    int fd = make_socket(AF_INET, SOCK_DGRAM);
    int low = dup2(fd, 10);
    say("sendmsg fd %d: %s", fd, outcome(pktinfo_send(fd, 0, &to, source)));
    say("sendmsg fd %d: %s", low, outcome(pktinfo_send(low, 0, &to, source)));
    say("sendmmsg fd %d: %s", fd, outcome(pktinfo_send(fd, 1, &to, source)));
    say("connect: %s", outcome(connect(fd, (struct sockaddr *)&to, sizeof to)));
    say("sendmsg connected fd %d: %s", fd, outcome(pktinfo_send(fd, 0, NULL, source)));
    return 0;
}

/* ---- dispatch ----------------------------------------------------------------- */

int main(int argc, char **argv) {
    static const struct {
        const char *name;
        int (*run)(int, char **);
    } cmds[] = {
        {"fastopen", cmd_fastopen},     {"tfo-connect", cmd_tfo_connect}, {"sendmmsg-udp", cmd_sendmmsg_udp},
        {"race", cmd_race},             {"dns-squat", cmd_dns_squat},     {"errnos", cmd_errnos},
        {"block-recv", cmd_block_recv}, {"block-connect", cmd_block_connect}, {"take-ports", cmd_take_ports},
        {"int80", cmd_int80},           {"dgram-out", cmd_dgram_out},     {"udp-srr", cmd_udp_srr},
        {"pktinfo-spoof", cmd_pktinfo_spoof},
    };
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2)
        for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
            if (!strcmp(argv[1], cmds[i].name))
                return cmds[i].run(argc - 2, argv + 2);
    die("usage: hostile fastopen|tfo-connect|sendmmsg-udp|race|dns-squat|errnos|block-recv|block-connect|"
        "take-ports|int80|dgram-out|udp-srr|pktinfo-spoof ...");
}
