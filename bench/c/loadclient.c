/* Load client for request/reply protocols: Postfix policy and MessagePack-RPC.
 *
 *   loadclient HOST PORT CONNECTIONS SECONDS RATE MAX_REQUESTS PROTOCOL REQUESTS_FILE
 *
 * PROTOCOL is "policy" (a reply ends with an empty line) or "msgpack" (a reply is one
 * MessagePack-RPC response; one whose error is not nil counts as an error). REQUESTS_FILE holds records, each a u32 big-endian length and the
 * request's bytes (bench/load.py writes it). One thread per connection, one request in
 * flight per connection (as Postfix's smtpd processes do), records taken in turn, each
 * thread starting at a different offset. RATE > 0 paces the total to that many requests/s
 * and measures each latency from the request's scheduled time (so a stall counts for every
 * request it delays); RATE 0 sends as fast as replies come. Stops after SECONDS or
 * MAX_REQUESTS in all (0 = no limit). Prints one line:
 *   requests errors seconds p50_us p90_us p99_us p999_us
 * Loopback only: the host must be 127.0.0.1 or ::1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 4000000
#define BUF 65536

static const char *host;
static int port, nconn, msgpack;
static double seconds, rate;
static long max_requests;
static atomic_long issued;
static unsigned char **reqs;
static uint32_t *req_len;
static int nreq;

struct worker {
    int index;
    long done, errors;
    unsigned *lat; /* microseconds */
    long nlat;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int dial(void) {
    struct sockaddr_storage sa;
    socklen_t len;
    memset(&sa, 0, sizeof sa);
    int family = strchr(host, ':') ? AF_INET6 : AF_INET;
    if (family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        inet_pton(AF_INET, host, &s4->sin_addr);
        len = sizeof *s4;
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&sa;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        inet_pton(AF_INET6, host, &s6->sin6_addr);
        len = sizeof *s6;
    }
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, len) < 0) { close(fd); return -1; }
    return fd;
}

static uint64_t be(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

#define INCOMPLETE (-1)
#define INVALID (-2)

/* The length of the MessagePack object at p, INCOMPLETE if [p, end) does not hold it all,
 * INVALID if the bytes are not MessagePack. */
static long skip(const unsigned char *p, const unsigned char *end, int depth) {
    const unsigned char *s = p;
    if (depth > 32) return INVALID;
    if (p >= end) return INCOMPLETE;
    unsigned c = *p++;
    uint64_t items = 0, bytes = 0;
#define NEED(n) do { if ((uint64_t)(end - p) < (uint64_t)(n)) return INCOMPLETE; } while (0)
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) return 1;
    if ((c & 0xf0) == 0x90) items = c & 0x0f;
    else if ((c & 0xf0) == 0x80) items = 2 * (c & 0x0f);
    else if ((c & 0xe0) == 0xa0) bytes = c & 0x1f;
    else switch (c) {
    case 0xcc: case 0xd0: bytes = 1; break;
    case 0xcd: case 0xd1: bytes = 2; break;
    case 0xca: case 0xce: case 0xd2: bytes = 4; break;
    case 0xcb: case 0xcf: case 0xd3: bytes = 8; break;
    case 0xd4: bytes = 2; break;
    case 0xd5: bytes = 3; break;
    case 0xd6: bytes = 5; break;
    case 0xd7: bytes = 9; break;
    case 0xd8: bytes = 17; break;
    case 0xc4: case 0xd9: NEED(1); bytes = be(p, 1); p += 1; break;
    case 0xc5: case 0xda: NEED(2); bytes = be(p, 2); p += 2; break;
    case 0xc6: case 0xdb: NEED(4); bytes = be(p, 4); p += 4; break;
    case 0xc7: NEED(1); bytes = be(p, 1) + 1; p += 1; break;
    case 0xc8: NEED(2); bytes = be(p, 2) + 1; p += 2; break;
    case 0xc9: NEED(4); bytes = be(p, 4) + 1; p += 4; break;
    case 0xdc: NEED(2); items = be(p, 2); p += 2; break;
    case 0xdd: NEED(4); items = be(p, 4); p += 4; break;
    case 0xde: NEED(2); items = 2 * be(p, 2); p += 2; break;
    case 0xdf: NEED(4); items = 2 * be(p, 4); p += 4; break;
    default: return INVALID;
    }
    NEED(bytes);
    p += bytes;
    while (items--) {
        long n = skip(p, end, depth + 1);
        if (n < 0) return n;
        p += n;
    }
    return p - s;
}

/* 1 when buf holds one whole reply, 0 when it needs more, -1 when it is not a reply. */
static int complete(const unsigned char *buf, size_t have) {
    if (!msgpack) return have >= 2 && buf[have - 1] == '\n' && buf[have - 2] == '\n';
    long n = skip(buf, buf + have, 0);
    if (n == INCOMPLETE) return 0;
    if (n != (long)have || have < 4 || buf[0] != 0x94 || buf[1] != 0x01) return -1;
    long id = skip(buf + 2, buf + have, 0); /* [1, msgid, error, result]: a non-nil error fails */
    return id > 0 && buf[2 + id] == 0xc0 ? 1 : -1;
}

static int roundtrip(int fd, const unsigned char *req, size_t len) {
    size_t sent = 0;
    while (sent < len) {
        ssize_t n = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
        if (n <= 0) return -1;
        sent += n;
    }
    static __thread unsigned char buf[BUF];
    size_t have = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + have, sizeof buf - have, 0);
        if (n <= 0) return -1;
        have += n;
        int done = complete(buf, have);
        if (done) return done > 0 ? 0 : -1;
        if (have == sizeof buf) return -1;
    }
}

static void *run(void *arg) {
    struct worker *w = arg;
    int fd = dial();
    double start = now(), end = start + seconds;
    double interval = rate > 0 ? nconn / rate : 0, next = start + w->index * interval / nconn;
    long i = (long)w->index * nreq / nconn;
    while (now() < end) {
        if (max_requests && atomic_fetch_add(&issued, 1) >= max_requests) break;
        if (fd < 0) { w->errors++; fd = dial(); if (fd < 0) { usleep(10000); continue; } }
        double t0 = now();
        if (interval > 0) {
            if (t0 < next) { usleep((useconds_t)((next - t0) * 1e6)); }
            t0 = next; /* latency from the scheduled time: no coordinated omission */
            next += interval;
        }
        int k = i++ % nreq;
        if (roundtrip(fd, reqs[k], req_len[k]) < 0) { w->errors++; close(fd); fd = -1; continue; }
        if (w->nlat < MAX_SAMPLES / nconn) w->lat[w->nlat++] = (unsigned)((now() - t0) * 1e6);
        w->done++;
    }
    if (fd >= 0) close(fd);
    return NULL;
}

static int cmp(const void *a, const void *b) {
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT CONNECTIONS SECONDS RATE MAX_REQUESTS policy|msgpack REQUESTS_FILE\n",
                argv[0]);
        return 2;
    }
    host = argv[1]; port = atoi(argv[2]); nconn = atoi(argv[3]); seconds = atof(argv[4]); rate = atof(argv[5]);
    max_requests = atol(argv[6]);
    if (!strcmp(argv[7], "msgpack")) msgpack = 1;
    else if (strcmp(argv[7], "policy")) { fprintf(stderr, "protocol must be policy or msgpack\n"); return 2; }
    if (strcmp(host, "127.0.0.1") && strcmp(host, "::1")) { fprintf(stderr, "loopback only\n"); return 2; }
    if (nconn < 1 || seconds <= 0) { fprintf(stderr, "need CONNECTIONS >= 1 and SECONDS > 0\n"); return 2; }
    FILE *f = fopen(argv[8], "rb");
    if (!f) { perror(argv[8]); return 2; }
    fseek(f, 0, SEEK_END); long size = ftell(f); fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc(size + 1);
    if (fread(data, 1, size, f) != (size_t)size) { perror("read"); return 2; }
    fclose(f);
    int cap = 1024; reqs = malloc(cap * sizeof *reqs); req_len = malloc(cap * sizeof *req_len);
    for (long off = 0; off + 4 <= size; ) {
        uint32_t n = (uint32_t)be(data + off, 4);
        if (off + 4 + (long)n > size) { fprintf(stderr, "truncated record\n"); return 2; }
        if (nreq == cap) { cap *= 2; reqs = realloc(reqs, cap * sizeof *reqs); req_len = realloc(req_len, cap * sizeof *req_len); }
        reqs[nreq] = data + off + 4; req_len[nreq] = n; nreq++;
        off += 4 + n;
    }
    if (!nreq) { fprintf(stderr, "no requests\n"); return 2; }
    prctl(PR_SET_TIMERSLACK, 1UL); /* paced sends wake on time, not up to 50 µs late */
    pthread_t *t = calloc(nconn, sizeof *t);
    struct worker *w = calloc(nconn, sizeof *w);
    double start = now();
    for (int i = 0; i < nconn; i++) {
        w[i].index = i; w[i].lat = malloc((MAX_SAMPLES / nconn + 1) * sizeof(unsigned));
        pthread_create(&t[i], NULL, run, &w[i]);
    }
    long done = 0, errors = 0, nlat = 0;
    for (int i = 0; i < nconn; i++) { pthread_join(t[i], NULL); done += w[i].done; errors += w[i].errors; nlat += w[i].nlat; }
    double elapsed = now() - start;
    unsigned *all = malloc((nlat + 1) * sizeof *all);
    long k = 0;
    for (int i = 0; i < nconn; i++) { memcpy(all + k, w[i].lat, w[i].nlat * sizeof *all); k += w[i].nlat; }
    qsort(all, nlat, sizeof *all, cmp);
#define P(q) (nlat ? all[(long)((q) * (nlat - 1))] : 0)
    printf("%ld %ld %.3f %u %u %u %u\n", done, errors, elapsed, P(0.5), P(0.9), P(0.99), P(0.999));
    return 0;
}
