/* Load client for line protocols that end a reply with an empty line (Postfix policy).
 *
 *   loadclient HOST PORT CONNECTIONS SECONDS RATE REQUESTS_FILE
 *
 * One thread per connection, one request in flight per connection (as Postfix's smtpd
 * processes do), requests taken in turn from REQUESTS_FILE (blocks separated by an empty
 * line), each thread starting at a different offset. RATE > 0 paces the total to that many
 * requests/s (0 = as fast as replies come). Bounded by SECONDS. Prints one line:
 *   requests errors seconds p50_us p90_us p99_us p999_us
 * Loopback only: the host must be 127.0.0.1 or ::1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 4000000

static const char *host;
static int port, nconn;
static double seconds, rate;
static char **reqs;
static size_t *req_len;
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

static int roundtrip(int fd, const char *req, size_t len) {
    size_t sent = 0;
    while (sent < len) {
        ssize_t n = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
        if (n <= 0) return -1;
        sent += n;
    }
    char buf[4096];
    size_t have = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + have, sizeof buf - have - 1, 0);
        if (n <= 0) return -1;
        have += n;
        buf[have] = 0;
        if (have >= 2 && buf[have - 1] == '\n' && buf[have - 2] == '\n') return 0;
        if (have >= sizeof buf - 1) return -1;
    }
}

static void *run(void *arg) {
    struct worker *w = arg;
    int fd = dial();
    double start = now(), end = start + seconds;
    double interval = rate > 0 ? nconn / rate : 0, next = start;
    long i = (long)w->index * nreq / nconn;
    while (now() < end) {
        if (fd < 0) { w->errors++; fd = dial(); if (fd < 0) { usleep(10000); continue; } }
        if (interval > 0) {
            double t = now();
            if (t < next) usleep((useconds_t)((next - t) * 1e6));
            next += interval;
        }
        int k = i++ % nreq;
        double t0 = now();
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
    if (argc != 7) { fprintf(stderr, "usage: %s HOST PORT CONNECTIONS SECONDS RATE REQUESTS_FILE\n", argv[0]); return 2; }
    host = argv[1]; port = atoi(argv[2]); nconn = atoi(argv[3]); seconds = atof(argv[4]); rate = atof(argv[5]);
    if (strcmp(host, "127.0.0.1") && strcmp(host, "::1")) { fprintf(stderr, "loopback only\n"); return 2; }
    FILE *f = fopen(argv[6], "rb");
    if (!f) { perror(argv[6]); return 2; }
    fseek(f, 0, SEEK_END); long size = ftell(f); fseek(f, 0, SEEK_SET);
    char *data = malloc(size + 1);
    if (fread(data, 1, size, f) != (size_t)size) { perror("read"); return 2; }
    data[size] = 0; fclose(f);
    int cap = 1024; reqs = malloc(cap * sizeof *reqs); req_len = malloc(cap * sizeof *req_len);
    for (char *p = data; *p; ) {
        char *e = strstr(p, "\n\n");
        if (!e) break;
        if (nreq == cap) { cap *= 2; reqs = realloc(reqs, cap * sizeof *reqs); req_len = realloc(req_len, cap * sizeof *req_len); }
        reqs[nreq] = p; req_len[nreq] = e + 2 - p; nreq++;
        p = e + 2;
    }
    if (!nreq) { fprintf(stderr, "no requests\n"); return 2; }
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
