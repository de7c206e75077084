/* Milter load client: plays whole sessions as an MTA does, bounded by SECONDS.
 *
 *   miltersessions HOST PORT CONNECTIONS SECONDS MAX_SESSIONS SESSIONS_FILE
 *
 * HOST is 127.0.0.1 (TCP to PORT) or unix:/path (a unix socket; PORT is then ignored).
 *
 * SESSIONS_FILE holds sessions, each: u32 count, then count commands, each u32 length +
 * the command's milter packet (bench/peers.py writes it). The first command must be
 * OPTNEG; the client reads the milter's reply and, like Postfix, then waits for a reply
 * only to commands the milter did not ask not to answer (NR_* bits), and at end of message
 * reads modifications until the verdict. One session at a time per connection (thread),
 * a new connection per session, QUIT at the end. Stops after SECONDS or MAX_SESSIONS in
 * all (0 = no limit). Prints one line:
 *   sessions errors seconds p50_us p90_us p99_us p999_us
 * Loopback only.
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
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 2000000

struct cmd { uint32_t len; const unsigned char *data; };
struct session { uint32_t n; struct cmd *cmds; };

static int port, nconn, nsess;
static const char *unix_path; /* set: connect to this unix socket instead of TCP */
static long max_sessions;
static atomic_long started;
static double seconds;
static struct session *sess;

struct worker { int index; long done, errors; unsigned *lat; long nlat; };

static double now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec / 1e9; }

static int readn(int fd, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) { ssize_t r = recv(fd, buf + got, n - got, 0); if (r <= 0) return -1; got += r; }
    return 0;
}

/* one reply packet: returns its code, or -1 */
static int reply(int fd, unsigned char *payload, uint32_t *plen) {
    unsigned char hdr[4];
    if (readn(fd, hdr, 4) < 0) return -1;
    uint32_t len = (uint32_t)hdr[0] << 24 | hdr[1] << 16 | hdr[2] << 8 | hdr[3];
    if (len < 1 || len > 65536) return -1;
    unsigned char buf[65536];
    if (readn(fd, buf, len) < 0) return -1;
    if (payload) { memcpy(payload, buf + 1, len - 1); *plen = len - 1; }
    return buf[0];
}

static int sendall(int fd, const unsigned char *p, size_t n) {
    while (n) { ssize_t w = send(fd, p, n, MSG_NOSIGNAL); if (w <= 0) return -1; p += w; n -= w; }
    return 0;
}

/* the NR bit for a command code, 0 when it is always answered */
static uint32_t nr_bit(unsigned char code) {
    switch (code) {
    case 'C': return 0x1000; case 'H': return 0x2000; case 'M': return 0x4000; case 'R': return 0x8000;
    case 'T': return 0x10000; case 'U': return 0x20000; case 'N': return 0x40000; case 'B': return 0x80000;
    case 'L': return 0x80;
    default: return 0;
    }
}

static int play(const struct session *s) {
    struct sockaddr_in sa = {0};
    struct sockaddr_un su = {0};
    int fd = socket(unix_path ? AF_UNIX : AF_INET, SOCK_STREAM, 0), one = 1, ok = -1;
    if (fd < 0) return -1;
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (unix_path) {
        su.sun_family = AF_UNIX; strncpy(su.sun_path, unix_path, sizeof su.sun_path - 1);
        if (connect(fd, (struct sockaddr *)&su, sizeof su) < 0) goto done;
    } else {
        sa.sin_family = AF_INET; sa.sin_port = htons(port); inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) goto done;
    }
    uint32_t proto = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        const struct cmd *c = &s->cmds[i];
        unsigned char code = c->data[4];
        if (sendall(fd, c->data, c->len) < 0) goto done;
        if (code == 'O') {
            unsigned char p[65536]; uint32_t plen;
            if (reply(fd, p, &plen) != 'O' || plen < 12) goto done;
            proto = (uint32_t)p[8] << 24 | p[9] << 16 | p[10] << 8 | p[11];
            continue;
        }
        if (code == 'D' || code == 'A' || code == 'Q' || code == 'K') continue;
        if (code == 'E') {  /* modifications, then a verdict */
            for (;;) {
                int r = reply(fd, NULL, NULL);
                if (r < 0) goto done;
                if (strchr("acrtdy", r)) break;
            }
            continue;
        }
        uint32_t bit = nr_bit(code);
        if (bit && (proto & bit)) continue;
        int r = reply(fd, NULL, NULL);
        if (r < 0) goto done;
        if (r == 'r' || r == 't' || r == 'y' || r == 'd' || r == 'a') { ok = 0; goto done; } /* decided early: QUIT */
    }
    ok = 0;
done:
    if (ok == 0) {
        static const unsigned char quit[5] = {0, 0, 0, 1, 'Q'};
        sendall(fd, quit, sizeof quit);
    }
    close(fd);
    return ok;
}

static void *run(void *arg) {
    struct worker *w = arg;
    double end = now() + seconds;
    long i = (long)w->index * nsess / nconn;
    while (now() < end) {
        if (max_sessions && atomic_fetch_add(&started, 1) >= max_sessions) break;
        double t0 = now();
        if (play(&sess[i++ % nsess]) < 0) { w->errors++; continue; }
        if (w->nlat < MAX_SAMPLES / nconn) w->lat[w->nlat++] = (unsigned)((now() - t0) * 1e6);
        w->done++;
    }
    return NULL;
}

static int cmp(const void *a, const void *b) { unsigned x = *(const unsigned *)a, y = *(const unsigned *)b; return x < y ? -1 : x > y; }

static uint32_t u32(const unsigned char *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

int main(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: %s HOST PORT CONNECTIONS SECONDS MAX_SESSIONS SESSIONS_FILE\n", argv[0]); return 2; }
    if (!strncmp(argv[1], "unix:", 5)) unix_path = argv[1] + 5;
    else if (strcmp(argv[1], "127.0.0.1")) { fprintf(stderr, "loopback or a unix socket only\n"); return 2; }
    port = atoi(argv[2]); nconn = atoi(argv[3]); seconds = atof(argv[4]); max_sessions = atol(argv[5]);
    FILE *f = fopen(argv[6], "rb");
    if (!f) { perror(argv[6]); return 2; }
    fseek(f, 0, SEEK_END); long size = ftell(f); fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc(size);
    if (fread(data, 1, size, f) != (size_t)size) { perror("read"); return 2; }
    fclose(f);
    int cap = 1024; sess = malloc(cap * sizeof *sess);
    for (long off = 0; off + 4 <= size; ) {
        if (nsess == cap) { cap *= 2; sess = realloc(sess, cap * sizeof *sess); }
        struct session *s = &sess[nsess++];
        s->n = u32(data + off); off += 4;
        s->cmds = malloc(s->n * sizeof *s->cmds);
        for (uint32_t i = 0; i < s->n; i++) {
            s->cmds[i].len = u32(data + off); off += 4;
            s->cmds[i].data = data + off; off += s->cmds[i].len;
        }
    }
    pthread_t *t = calloc(nconn, sizeof *t);
    struct worker *w = calloc(nconn, sizeof *w);
    double start = now();
    for (int i = 0; i < nconn; i++) { w[i].index = i; w[i].lat = malloc((MAX_SAMPLES / nconn + 1) * sizeof(unsigned)); pthread_create(&t[i], NULL, run, &w[i]); }
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
