/* SMTP load client: whole sessions, one command at a time, bounded by SECONDS and MAX_SESSIONS.
 *
 *   smtpsessions HOST PORT CONNECTIONS SECONDS MAX_SESSIONS SOURCE HELO SENDER RECIPIENT MESSAGE_FILE
 *
 * Each of CONNECTIONS threads plays sessions back to back, a new TCP connection each (bound
 * to the local address SOURCE first, unless it is "-"): banner, EHLO HELO, MAIL FROM:<SENDER>,
 * RCPT TO:<RECIPIENT>, DATA, the bytes of MESSAGE_FILE (already dot-stuffed, ending in
 * CRLF.CRLF), QUIT. It waits for every reply (no PIPELINING: as smtp-source without -L, and
 * the worst case for a relay, which pays its backend round trips in the client's time) and
 * counts a session done only when every reply had the expected class (2yz, 354 after DATA)
 * and the 221 came back; anything else is an error (the first one is described on stderr).
 * A session's latency is connect() to the 221. Stops after SECONDS or MAX_SESSIONS started
 * in all (0 = no limit). Prints one line:
 *   sessions errors seconds p50_us p90_us p99_us p999_us
 * Loopback only (HOST must be 127.0.0.1).
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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 2000000
/* RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; an EHLO reply has a few dozen */
#define REPLY_MAX 16384

static int port, nconn;
static long max_sessions;
static atomic_long started;
static atomic_int reported;
static double seconds;
static const char *source;
static char cmd_ehlo[600], cmd_mail[600], cmd_rcpt[600];
static unsigned char *message;
static size_t message_len;

struct worker { long done, errors; unsigned *lat; long nlat; };

static double now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec / 1e9; }

static int sendall(int fd, const void *buf, size_t n) {
    const unsigned char *p = buf;
    while (n) { ssize_t w = send(fd, p, n, MSG_NOSIGNAL); if (w <= 0) return -1; p += w; n -= w; }
    return 0;
}

/* reads one whole reply (continuation lines "ddd-", last line "ddd "); returns its code or -1 */
static int reply(int fd, char *buf) {
    size_t got = 0, line = 0;
    for (;;) {
        char *nl;
        while ((nl = memchr(buf + line, '\n', got - line)) != NULL) {
            if (nl - (buf + line) < 4) return -1;
            if (buf[line + 3] == ' ') { buf[nl - buf] = 0; return atoi(buf + line); }
            if (buf[line + 3] != '-') return -1;
            line = nl - buf + 1;
        }
        if (got >= REPLY_MAX - 1) return -1;
        ssize_t r = recv(fd, buf + got, REPLY_MAX - 1 - got, 0);
        if (r <= 0) return -1;
        got += r;
    }
}

static void describe(const char *step, int code, const char *buf) {
    if (atomic_exchange(&reported, 1)) return;
    if (code < 0) fprintf(stderr, "first error: %s: connection lost or malformed reply\n", step);
    else fprintf(stderr, "first error: %s: %s\n", step, buf);
}

static int play(void) {
    static const char *steps[] = {"banner", "EHLO", "MAIL", "RCPT", "DATA", "end of data", "QUIT"};
    char buf[REPLY_MAX];
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET; sa.sin_port = htons(port); inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1, ok = -1;
    if (fd < 0) { describe("socket", -1, ""); return -1; }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (strcmp(source, "-")) {
        struct sockaddr_in local = {0};
        local.sin_family = AF_INET; inet_pton(AF_INET, source, &local.sin_addr);
        if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) { describe("bind", -1, ""); goto done; }
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { describe("connect", -1, ""); goto done; }
    const void *out[] = {NULL, cmd_ehlo, cmd_mail, cmd_rcpt, "DATA\r\n", message, "QUIT\r\n"};
    const int want[] = {2, 2, 2, 2, 3, 2, 2};
    for (int i = 0; i < 7; i++) {
        if (out[i]) {
            size_t n = out[i] == message ? message_len : strlen(out[i]);
            if (sendall(fd, out[i], n) < 0) { describe(steps[i], -1, ""); goto done; }
        }
        int code = reply(fd, buf);
        if (code / 100 != want[i]) { describe(steps[i], code, buf); goto done; }
    }
    ok = 0;
done:
    close(fd);
    return ok;
}

static void *run(void *arg) {
    struct worker *w = arg;
    double end = now() + seconds;
    while (now() < end) {
        if (max_sessions && atomic_fetch_add(&started, 1) >= max_sessions) break;
        double t0 = now();
        if (play() < 0) { w->errors++; continue; }
        if (w->nlat < MAX_SAMPLES / nconn) w->lat[w->nlat++] = (unsigned)((now() - t0) * 1e6);
        w->done++;
    }
    return NULL;
}

static int cmp(const void *a, const void *b) { unsigned x = *(const unsigned *)a, y = *(const unsigned *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv) {
    if (argc != 11) {
        fprintf(stderr, "usage: %s HOST PORT CONNECTIONS SECONDS MAX_SESSIONS SOURCE HELO SENDER RECIPIENT MESSAGE_FILE\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "127.0.0.1")) { fprintf(stderr, "loopback only\n"); return 2; }
    port = atoi(argv[2]); nconn = atoi(argv[3]); seconds = atof(argv[4]); max_sessions = atol(argv[5]);
    source = argv[6];
    if (nconn < 1 || seconds <= 0) { fprintf(stderr, "CONNECTIONS must be >= 1 and SECONDS > 0\n"); return 2; }
    /* RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF */
    if (strlen(argv[7]) > 400 || strlen(argv[8]) > 400 || strlen(argv[9]) > 400) { fprintf(stderr, "argument too long\n"); return 2; }
    snprintf(cmd_ehlo, sizeof cmd_ehlo, "EHLO %s\r\n", argv[7]);
    snprintf(cmd_mail, sizeof cmd_mail, "MAIL FROM:<%s>\r\n", argv[8]);
    snprintf(cmd_rcpt, sizeof cmd_rcpt, "RCPT TO:<%s>\r\n", argv[9]);
    FILE *f = fopen(argv[10], "rb");
    if (!f) { perror(argv[10]); return 2; }
    fseek(f, 0, SEEK_END); long size = ftell(f); fseek(f, 0, SEEK_SET);
    message = malloc(size + 1);
    if (fread(message, 1, size, f) != (size_t)size) { perror("read"); return 2; }
    fclose(f);
    message_len = size;
    if (size < 5 || memcmp(message + size - 5, "\r\n.\r\n", 5)) { fprintf(stderr, "MESSAGE_FILE must end in CRLF.CRLF\n"); return 2; }
    pthread_t *t = calloc(nconn, sizeof *t);
    struct worker *w = calloc(nconn, sizeof *w);
    double start = now();
    for (int i = 0; i < nconn; i++) { w[i].lat = malloc((MAX_SAMPLES / nconn + 1) * sizeof(unsigned)); pthread_create(&t[i], NULL, run, &w[i]); }
    long done = 0, errors = 0, nlat = 0;
    for (int i = 0; i < nconn; i++) { pthread_join(t[i], NULL); done += w[i].done; errors += w[i].errors; nlat += w[i].nlat; }
    double elapsed = now() - start;
    unsigned *all = malloc((nlat + 1) * sizeof *all); long k = 0;
    for (int i = 0; i < nconn; i++) { memcpy(all + k, w[i].lat, w[i].nlat * sizeof *all); k += w[i].nlat; }
    qsort(all, nlat, sizeof *all, cmp);
#define P(q) (nlat ? all[(long)((q) * (nlat - 1))] : 0)
    printf("%ld %ld %.3f %u %u %u %u\n", done, errors, elapsed, P(0.5), P(0.9), P(0.99), P(0.999));
    return 0;
}
