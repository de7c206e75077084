/*
 * checkid-spp: a qmail-spp plugin that asks a running checkid engine, over
 * MessagePack-RPC, whether qmail-smtpd should take this MAIL FROM or RCPT TO.
 *
 * qmail-spp (spp.c) vforks and execs every plugin of a section once per SMTP
 * command, with stdin closed, and reads its stdout line by line. So this
 * program does one thing and exits: read the environment, send one
 * ["checkID", [IP, nil, HELO, MAIL FROM, [RCPT], [], nil, false]] request
 * (no message will follow: the engine decides now, without DKIM), wait at most
 * CHECKID_SPP_TIMEOUT_MS for the answer, print qmail-spp commands:
 *
 *   E<code> <xcode> <text>   REJECT / TEMPFAIL: refuse this command
 *   H<header line>           ACCEPT / FILTER at [mail]: one line per folded
 *                            header line, added to the message by qmail-smtpd
 *   (nothing)                no opinion: qmail's own checks and the next
 *                            plugin decide
 *
 * The stage comes from argv[1] ("mail" or "rcpt") or, since qmail-spp passes
 * no arguments to a plain plugin line, from the name it was run under:
 * checkid-spp-mail / checkid-spp-rcpt (symlinks to this binary). The
 * environment cannot tell the stages apart: SMTPRCPTTO survives from the
 * previous transaction when the next MAIL is checked.
 *
 * Exit status is 0 whatever the engine says or does; 120, which qmail-spp
 * reports as "451 qmail-spp failure: ...: can't execute (#4.3.0)", only when
 * the plugin itself is misconfigured (unknown stage, unparseable
 * CHECKID_SPP_SERVER or CHECKID_SPP_TIMEOUT_MS). Diagnostics go to stderr,
 * which is qmail-smtpd's log.
 *
 * C99 and POSIX only; no allocation: every buffer is fixed and every length
 * read from the wire is checked against what was received and against the
 * buffer before it is used.
 *
 * Build: cc -O2 -Wall -Wextra -o spp/checkid-spp spp/checkid-spp.c
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SERVER "unix:/run/checkid/rpc.sock"
/* Above checkid's own [dns] decision_timeout (8 s), so the engine's deadline
 * answer (its configured TEMPFAIL or fail open) arrives first; far below
 * qmail-smtpd's control/timeoutsmtpd (1200 s) and the 5 minutes an SMTP
 * client waits for a MAIL or RCPT reply (RFC 5321 section 4.5.3.2). */
#define DEFAULT_TIMEOUT_MS 10000L
#define MAX_TIMEOUT_MS 300000L

/* The request: four short strings and one address. Environment strings
 * longer than this are not sent (no opinion): an SMTP command line is at most
 * 512 octets (RFC 5321 section 4.5.3.1.4), so only a broken qmail gets here. */
#define MAX_REQUEST 8192
/* The response: one action, one reply and a few headers. A server that sends
 * more is not checkid; past this size the reply is dropped unread. */
#define MAX_RESPONSE 65536
/* msgpack nesting skipped inside unknown map values: checkid's reply never
 * nests deeper than 3, so this only bounds the recursion on garbage. */
#define MAX_DEPTH 8
/* Headers printed: checkid adds Authent: and at most a few others. */
#define MAX_HEADERS 16
/* One reply line is at most 512 octets with its CRLF (RFC 5321 section
 * 4.5.3.1.5): "550 5.7.1 " + text + CRLF. */
#define MAX_REPLY_LINE 510
/* A header field's unfolded length we print at most; lines are folded at 78
 * columns and never exceed 998 (RFC 5322 section 2.1.1). */
#define MAX_HEADER_TEXT 2048
#define FOLD_AT 78
#define MAX_LINE 998
#define MAX_LABEL 76
/* Room for every header folded (a fold adds at most "H", " " and LF per line) */
#define MAX_OUTPUT (MAX_HEADERS * 2 * (MAX_LABEL + MAX_HEADER_TEXT + 8) + MAX_REPLY_LINE + 64)

#define EXIT_CANNOT_EXECUTE 120

enum stage { STAGE_MAIL, STAGE_RCPT };

static void logmsg(const char *what, const char *detail)
{
    fprintf(stderr, "checkid-spp: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
}

/* ------------------------------------------------------------------ time */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------- msgpack encoder */

struct out {
    unsigned char *buf;
    size_t cap, len;
    int full;
};

static void put(struct out *o, const void *p, size_t n)
{
    if (o->full || n > o->cap - o->len) {
        o->full = 1;
        return;
    }
    memcpy(o->buf + o->len, p, n);
    o->len += n;
}

static void put_byte(struct out *o, unsigned v) { unsigned char c = (unsigned char)v; put(o, &c, 1); }

static void put_be(struct out *o, uint32_t v, int bytes)
{
    while (bytes--)
        put_byte(o, (v >> (8 * bytes)) & 0xff);
}

static void mp_array(struct out *o, uint32_t n)
{
    if (n < 16) put_byte(o, 0x90 | n);
    else if (n < 65536) { put_byte(o, 0xdc); put_be(o, n, 2); }
    else { put_byte(o, 0xdd); put_be(o, n, 4); }
}

static void mp_uint(struct out *o, uint32_t v)
{
    if (v < 128) put_byte(o, v);
    else if (v < 256) { put_byte(o, 0xcc); put_be(o, v, 1); }
    else if (v < 65536) { put_byte(o, 0xcd); put_be(o, v, 2); }
    else { put_byte(o, 0xce); put_be(o, v, 4); }
}

static void mp_nil(struct out *o) { put_byte(o, 0xc0); }
static void mp_false(struct out *o) { put_byte(o, 0xc2); }

static void mp_str(struct out *o, const char *s)
{
    size_t n = strlen(s);
    if (n > 0xffffffffu) { o->full = 1; return; }
    if (n < 32) put_byte(o, 0xa0 | (unsigned)n);
    else if (n < 256) { put_byte(o, 0xd9); put_be(o, (uint32_t)n, 1); }
    else if (n < 65536) { put_byte(o, 0xda); put_be(o, (uint32_t)n, 2); }
    else { put_byte(o, 0xdb); put_be(o, (uint32_t)n, 4); }
    put(o, s, n);
}

static void mp_str_or_nil(struct out *o, const char *s) { if (s) mp_str(o, s); else mp_nil(o); }

/* ------------------------------------------------------- msgpack decoder */

/* Every decoding step answers one of these. MORE means the bytes so far are
 * a valid prefix: read on. */
enum { DEC_OK = 0, DEC_MORE = 1, DEC_BAD = 2 };

struct in {
    const unsigned char *p;
    size_t len, pos;
};

struct str {
    const unsigned char *p;
    size_t len;
};

/* n more bytes available? A length that could never fit the response buffer
 * is malformed now, not "more" later. */
static int need(struct in *in, uint64_t n)
{
    if (n > MAX_RESPONSE || in->pos + n > MAX_RESPONSE) return DEC_BAD;
    return in->pos + n <= in->len ? DEC_OK : DEC_MORE;
}

static uint64_t get_be(struct in *in, int bytes)
{
    uint64_t v = 0;
    while (bytes--)
        v = (v << 8) | in->p[in->pos++];
    return v;
}

/* A length field of 1, 2 or 4 bytes. */
static int get_len(struct in *in, int bytes, uint64_t *n)
{
    int r = need(in, (uint64_t)bytes);
    if (r) return r;
    *n = get_be(in, bytes);
    return DEC_OK;
}

static int dec_int(struct in *in, int64_t *v)
{
    int r = need(in, 1), width;
    unsigned char c;
    uint64_t u;
    if (r) return r;
    c = in->p[in->pos];
    if (c <= 0x7f) { in->pos++; *v = c; return DEC_OK; }
    if (c >= 0xe0) { in->pos++; *v = (int64_t)c - 256; return DEC_OK; }
    if (c >= 0xcc && c <= 0xcf) width = 1 << (c - 0xcc);
    else if (c >= 0xd0 && c <= 0xd3) width = 1 << (c - 0xd0);
    else return DEC_BAD;
    if ((r = need(in, 1 + (uint64_t)width))) return r;
    in->pos++;
    u = get_be(in, width);
    if (c >= 0xd0) { /* signed: sign-extend from width bytes */
        if (width < 8 && (u >> (8 * width - 1)) & 1) u |= ~(uint64_t)0 << (8 * width);
        *v = (int64_t)u;
    } else {
        if (u > INT64_MAX) return DEC_BAD;
        *v = (int64_t)u;
    }
    return DEC_OK;
}

/* A str (or bin: some packers send text as bin) returned in place. */
static int dec_str(struct in *in, struct str *s)
{
    int r = need(in, 1);
    unsigned char c;
    uint64_t n;
    if (r) return r;
    c = in->p[in->pos];
    if (c >= 0xa0 && c <= 0xbf) { in->pos++; n = c & 0x1f; }
    else if (c == 0xd9 || c == 0xc4) { in->pos++; if ((r = get_len(in, 1, &n))) return r; }
    else if (c == 0xda || c == 0xc5) { in->pos++; if ((r = get_len(in, 2, &n))) return r; }
    else if (c == 0xdb || c == 0xc6) { in->pos++; if ((r = get_len(in, 4, &n))) return r; }
    else return DEC_BAD;
    if ((r = need(in, n))) return r;
    s->p = in->p + in->pos;
    s->len = (size_t)n;
    in->pos += (size_t)n;
    return DEC_OK;
}

/* An array or map header; a count larger than the bytes that could still
 * follow is malformed (each element takes at least one byte). */
static int dec_container(struct in *in, int map, uint64_t *n)
{
    int r = need(in, 1);
    unsigned char c;
    if (r) return r;
    c = in->p[in->pos];
    if (!map && c >= 0x90 && c <= 0x9f) { in->pos++; *n = c & 0x0f; }
    else if (map && c >= 0x80 && c <= 0x8f) { in->pos++; *n = c & 0x0f; }
    else if (c == (map ? 0xde : 0xdc)) { in->pos++; if ((r = get_len(in, 2, n))) return r; }
    else if (c == (map ? 0xdf : 0xdd)) { in->pos++; if ((r = get_len(in, 4, n))) return r; }
    else return DEC_BAD;
    if (*n * (map ? 2 : 1) > MAX_RESPONSE - in->pos) return DEC_BAD;
    return DEC_OK;
}

/* Skip any one object, at most MAX_DEPTH deep. */
static int skip(struct in *in, int depth)
{
    int r = need(in, 1);
    unsigned char c;
    uint64_t n, i;
    int64_t iv;
    struct str s;
    if (r) return r;
    if (depth > MAX_DEPTH) return DEC_BAD;
    c = in->p[in->pos];
    if (c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3)) return dec_int(in, &iv);
    if ((c >= 0xa0 && c <= 0xbf) || c == 0xd9 || c == 0xda || c == 0xdb || (c >= 0xc4 && c <= 0xc6))
        return dec_str(in, &s);
    if (c == 0xc0 || c == 0xc2 || c == 0xc3) { in->pos++; return DEC_OK; }
    if (c == 0xca || c == 0xcb) { if ((r = need(in, c == 0xca ? 5 : 9))) return r; in->pos += c == 0xca ? 5 : 9; return DEC_OK; }
    if (c >= 0xd4 && c <= 0xd8) { /* fixext 1..16: type byte + data */
        uint64_t size = 2 + ((uint64_t)1 << (c - 0xd4));
        if ((r = need(in, size))) return r;
        in->pos += (size_t)size;
        return DEC_OK;
    }
    if (c >= 0xc7 && c <= 0xc9) { /* ext 8/16/32: length, type byte, data */
        in->pos++;
        if ((r = get_len(in, c == 0xc7 ? 1 : c == 0xc8 ? 2 : 4, &n))) return r;
        if ((r = need(in, 1 + n))) return r;
        in->pos += (size_t)(1 + n);
        return DEC_OK;
    }
    if ((c >= 0x90 && c <= 0x9f) || c == 0xdc || c == 0xdd || (c >= 0x80 && c <= 0x8f) || c == 0xde || c == 0xdf) {
        int map = (c >= 0x80 && c <= 0x8f) || c == 0xde || c == 0xdf;
        if ((r = dec_container(in, map, &n))) return r;
        for (i = 0; i < n * (map ? 2 : 1); i++)
            if ((r = skip(in, depth + 1))) return r;
        return DEC_OK;
    }
    return DEC_BAD; /* 0xc1 is never used */
}

static int str_is(const struct str *s, const char *lit)
{
    size_t n = strlen(lit);
    return s->len == n && memcmp(s->p, lit, n) == 0;
}

/* ------------------------------------------------------- checkid's reply */

struct header {
    struct str label, text;
};

struct verdict {
    struct str action, xcode, text;
    int64_t code;
    struct header headers[MAX_HEADERS];
    int nheaders;
    int has_error;
    struct str error;
};

/* One header: a map with "label" and "text" strings (other keys ignored). */
static int dec_header(struct in *in, struct header *h, int *complete)
{
    uint64_t n, i;
    int r, have_label = 0, have_text = 0;
    struct str key;
    if ((r = dec_container(in, 1, &n))) return r;
    for (i = 0; i < n; i++) {
        if ((r = dec_str(in, &key))) return r;
        if (str_is(&key, "label")) { if ((r = dec_str(in, &h->label))) return r; have_label = 1; }
        else if (str_is(&key, "text")) { if ((r = dec_str(in, &h->text))) return r; have_text = 1; }
        else if ((r = skip(in, 2))) return r;
    }
    *complete = have_label && have_text;
    return DEC_OK;
}

/* [1, msgid, error, [action, [code, xcode, text], headers]] */
static int dec_response(struct in *in, uint32_t msgid, struct verdict *v)
{
    uint64_t n, i;
    int64_t kind, id;
    int r, complete;
    struct header scratch;

    memset(v, 0, sizeof *v);
    if ((r = dec_container(in, 0, &n))) return r;
    if (n != 4) return DEC_BAD;
    if ((r = dec_int(in, &kind))) return r;
    if (kind != 1) return DEC_BAD;
    if ((r = dec_int(in, &id))) return r;
    if (id != (int64_t)msgid) return DEC_BAD;
    if ((r = need(in, 1))) return r;
    if (in->p[in->pos] != 0xc0) { /* an error: keep its text when it is one, skip the result */
        unsigned char c = in->p[in->pos];
        v->has_error = 1;
        if ((c >= 0xa0 && c <= 0xbf) || c == 0xd9 || c == 0xda || c == 0xdb) {
            if ((r = dec_str(in, &v->error))) return r;
        } else {
            v->error.p = (const unsigned char *)"(not a string)";
            v->error.len = strlen("(not a string)");
            if ((r = skip(in, 1))) return r;
        }
        return skip(in, 1);
    }
    in->pos++;
    if ((r = dec_container(in, 0, &n))) return r;
    if (n != 3) return DEC_BAD;
    if ((r = dec_str(in, &v->action))) return r;
    if ((r = dec_container(in, 0, &n))) return r;
    if (n != 3) return DEC_BAD;
    if ((r = dec_int(in, &v->code))) return r;
    if ((r = dec_str(in, &v->xcode))) return r;
    if ((r = dec_str(in, &v->text))) return r;
    if ((r = dec_container(in, 0, &n))) return r;
    for (i = 0; i < n; i++) {
        struct header *h = v->nheaders < MAX_HEADERS ? &v->headers[v->nheaders] : &scratch;
        if ((r = dec_header(in, h, &complete))) return r;
        if (complete && h != &scratch) v->nheaders++;
    }
    return DEC_OK;
}

/* ------------------------------------------------------------- rendering */

/* Copy s into dst, at most cap bytes, with every control character (CR, LF,
 * NUL, TAB, DEL...) made a space: qmail-spp splits our output on LF, and a
 * CR or LF reaching the client or the message would start a new reply or
 * header line. In replies, bytes past ASCII become '?' (RFC 5321 section
 * 4.2: reply text is US-ASCII); headers keep them (UTF-8, RFC 6532). */
static size_t clean(char *dst, size_t cap, struct str s, int ascii_only)
{
    size_t i, n = s.len < cap ? s.len : cap;
    for (i = 0; i < n; i++) {
        unsigned char c = s.p[i];
        if (c < 0x20 || c == 0x7f) c = ' ';
        else if (ascii_only && c >= 0x80) c = '?';
        dst[i] = (char)c;
    }
    return n;
}

/* "5.7.1": class digit, then 1-3 digits, then 1-3 digits (RFC 3463 section 2),
 * the class matching the reply code's first digit. */
static int xcode_ok(struct str x, int64_t code)
{
    size_t i = 0, digits;
    int part;
    if (x.len < 5 || x.p[0] != (unsigned char)('0' + code / 100) || x.p[1] != '.') return 0;
    i = 2;
    for (part = 0; part < 2; part++) {
        for (digits = 0; i < x.len && x.p[i] >= '0' && x.p[i] <= '9'; i++) digits++;
        if (digits < 1 || digits > 3) return 0;
        if (part == 0) { if (i >= x.len || x.p[i] != '.') return 0; i++; }
    }
    return i == x.len;
}

static void emit(struct out *o, const char *s, size_t n) { put(o, s, n); }

static void render_reply(struct out *o, const struct verdict *v, int temporary)
{
    char line[MAX_REPLY_LINE + 1], text[MAX_REPLY_LINE];
    int64_t code = v->code;
    size_t used, n;
    int len;
    struct str t = v->text;

    if (temporary ? (code < 400 || code > 499) : (code < 500 || code > 599)) code = temporary ? 451 : 550;
    if (xcode_ok(v->xcode, code))
        len = snprintf(line, sizeof line, "%d %.*s ", (int)code, (int)v->xcode.len, (const char *)v->xcode.p);
    else
        len = snprintf(line, sizeof line, "%d ", (int)code);
    used = (size_t)len;
    if (t.len == 0) {
        t.p = (const unsigned char *)(temporary ? "try again later" : "rejected");
        t.len = strlen((const char *)t.p);
    }
    n = clean(text, MAX_REPLY_LINE - used, t, 1);
    emit(o, "E", 1);
    emit(o, line, used);
    emit(o, text, n);
    emit(o, "\n", 1);
}

/* A header field name: printable ASCII but ':' (RFC 5322 section 3.6.8),
 * written by checkid with its colon ("Authent:"). */
static int label_ok(struct str l)
{
    size_t i, n = l.len;
    if (n && l.p[n - 1] == ':') n--;
    if (n == 0 || n > MAX_LABEL) return 0;
    for (i = 0; i < n; i++)
        if (l.p[i] < 33 || l.p[i] > 126 || l.p[i] == ':') return 0;
    return 1;
}

/* "H<line>" for each line of the header folded at FOLD_AT columns: a fold is
 * made before a space, which starts the continuation line (RFC 5322 section
 * 2.2.3), so unfolding gives back the text exactly. A run with no space is
 * cut at MAX_LINE, the hard limit. */
static void render_header(struct out *o, const struct header *h)
{
    char field[MAX_LABEL + 2 + MAX_HEADER_TEXT];
    size_t n = 0, start = 0, end, cut, i;
    struct str label = h->label;

    if (!label_ok(label)) {
        logmsg("header with an invalid name dropped", NULL);
        return;
    }
    if (label.p[label.len - 1] == ':') label.len--;
    memcpy(field, label.p, label.len);
    n = label.len;
    field[n++] = ':';
    field[n++] = ' ';
    n += clean(field + n, MAX_HEADER_TEXT, h->text, 0);
    while (n > 0 && field[n - 1] == ' ') n--; /* a line of only whitespace would end the header block */
    while (start < n) {
        /* a continuation cut hard inside a word gets a space put in front */
        size_t room = start > 0 && field[start] != ' ' ? MAX_LINE - 1 : MAX_LINE;
        end = n;
        if (end - start > FOLD_AT) {
            cut = 0;
            for (i = start + 1; i <= start + FOLD_AT && i < n; i++)
                if (field[i] == ' ' && field[i - 1] != ' ') cut = i;
            if (!cut) /* no space in reach: fold at the next one, or cut hard */
                for (i = start + FOLD_AT + 1; i < n && i <= start + room; i++)
                    if (field[i] == ' ' && field[i - 1] != ' ') { cut = i; break; }
            end = cut ? cut : (start + room < n ? start + room : n);
        }
        emit(o, "H", 1);
        if (start > 0 && field[start] != ' ') emit(o, " ", 1);
        emit(o, field + start, end - start);
        emit(o, "\n", 1);
        start = end;
    }
}

static void render(struct out *o, const struct verdict *v, enum stage stage)
{
    int i;
    size_t before;
    if (str_is(&v->action, "REJECT")) render_reply(o, v, 0);
    else if (str_is(&v->action, "TEMPFAIL")) render_reply(o, v, 1);
    else if (str_is(&v->action, "ACCEPT") || str_is(&v->action, "FILTER")) {
        /* qmail-spp collects H lines until RSET or the end of DATA, so they are
         * printed once per transaction, at MAIL, not once per recipient. */
        if (stage == STAGE_MAIL)
            for (i = 0; i < v->nheaders; i++) {
                before = o->len;
                render_header(o, &v->headers[i]);
                if (o->full) { /* never print half a header */
                    o->len = before;
                    o->full = 0;
                    logmsg("headers past the output limit dropped", NULL);
                    break;
                }
            }
    } else if (str_is(&v->action, "DISCARD"))
        logmsg("DISCARD cannot be done through qmail-spp: no opinion given", NULL);
    /* CONTINUE (the body is needed) and anything else: no opinion */
}

/* -------------------------------------------------------------- network */

struct server {
    struct sockaddr_storage addr;
    socklen_t addrlen;
};

/* "unix:/path", "a.b.c.d:port" or "[v6]:port"; numeric only, no DNS. */
static int parse_server(const char *spec, struct server *s)
{
    memset(s, 0, sizeof *s);
    if (strncmp(spec, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&s->addr;
        const char *path = spec + 5;
        if (!*path || strlen(path) >= sizeof un->sun_path) return -1;
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, path, strlen(path) + 1);
        s->addrlen = (socklen_t)sizeof *un;
        return 0;
    } else {
        char host[64];
        const char *colon = strrchr(spec, ':'), *h = spec;
        size_t hl;
        char *endp;
        long port;
        if (!colon) return -1;
        hl = (size_t)(colon - spec);
        if (hl >= 2 && spec[0] == '[' && spec[hl - 1] == ']') { h = spec + 1; hl -= 2; }
        if (hl == 0 || hl >= sizeof host) return -1;
        memcpy(host, h, hl);
        host[hl] = 0;
        errno = 0;
        port = strtol(colon + 1, &endp, 10);
        if (errno || *endp || endp == colon + 1 || port < 1 || port > 65535) return -1;
        if (h == spec) {
            struct sockaddr_in *in4 = (struct sockaddr_in *)&s->addr;
            if (inet_pton(AF_INET, host, &in4->sin_addr) != 1) return -1;
            in4->sin_family = AF_INET;
            in4->sin_port = htons((uint16_t)port);
            s->addrlen = (socklen_t)sizeof *in4;
        } else {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&s->addr;
            if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1) return -1;
            in6->sin6_family = AF_INET6;
            in6->sin6_port = htons((uint16_t)port);
            s->addrlen = (socklen_t)sizeof *in6;
        }
        return 0;
    }
}

/* Wait for fd to become ready for events, until deadline (ms, monotonic).
 * 0 ready, -1 timed out or failed. */
static int wait_fd(int fd, short events, long long deadline)
{
    struct pollfd p;
    for (;;) {
        long long left = deadline - now_ms();
        int r;
        if (left <= 0) return -1;
        p.fd = fd;
        p.events = events;
        p.revents = 0;
        r = poll(&p, 1, left > 1000000 ? 1000000 : (int)left);
        if (r > 0) return 0;
        if (r == 0) continue; /* re-check the clock */
        if (errno != EINTR) return -1;
    }
}

/* Ask the engine. Returns DEC_OK with v filled, or DEC_BAD with why set. */
static int ask(const struct server *srv, const unsigned char *req, size_t reqlen, uint32_t msgid,
               long long deadline, unsigned char *resp, struct verdict *v, const char **why)
{
    int fd, r = DEC_MORE, one = 1, err;
    size_t sent = 0, got = 0;
    socklen_t errlen = sizeof err;

    fd = socket(srv->addr.ss_family, SOCK_STREAM, 0);
    if (fd < 0) { *why = "socket() failed"; return DEC_BAD; }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (srv->addr.ss_family != AF_UNIX) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)&srv->addr, srv->addrlen) < 0) {
        /* EAGAIN on a unix socket is a full listen queue, not a connection in progress */
        if (errno != EINPROGRESS && errno != EINTR) { *why = "engine unreachable"; goto fail; }
        if (wait_fd(fd, POLLOUT, deadline) < 0) { *why = "timed out connecting"; goto fail; }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0 || err) { *why = "engine unreachable"; goto fail; }
    }
    while (sent < reqlen) {
        ssize_t n = send(fd, req + sent, reqlen - sent, MSG_NOSIGNAL);
        if (n > 0) { sent += (size_t)n; continue; }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (wait_fd(fd, POLLOUT, deadline) < 0) { *why = "timed out sending"; goto fail; }
            continue;
        }
        *why = "send failed";
        goto fail;
    }
    while (r == DEC_MORE) {
        ssize_t n;
        struct in in;
        if (got == MAX_RESPONSE) { *why = "reply too large"; goto fail; }
        /* a reply trickling in byte by byte is re-parsed per read: bound the CPU by the deadline too */
        if (now_ms() >= deadline) { *why = "timed out waiting for the engine"; goto fail; }
        n = recv(fd, resp + got, MAX_RESPONSE - got, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (wait_fd(fd, POLLIN, deadline) < 0) { *why = "timed out waiting for the engine"; goto fail; }
            continue;
        }
        if (n <= 0) { *why = got ? "reply cut short" : "engine closed the connection"; goto fail; }
        got += (size_t)n;
        in.p = resp;
        in.len = got;
        in.pos = 0;
        r = dec_response(&in, msgid, v);
    }
    close(fd);
    if (r == DEC_BAD) { *why = "malformed reply"; return DEC_BAD; }
    return DEC_OK;
fail:
    close(fd);
    return DEC_BAD;
}

/* ----------------------------------------------------------------- main */

static int write_all(const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(1, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int stage_of(int argc, char **argv, enum stage *stage)
{
    const char *name = argc > 1 ? argv[1] : argv[0] ? argv[0] : "";
    size_t n = strlen(name);
    if (argc > 2) return -1;
    if (argc > 1) {
        if (!strcmp(name, "mail")) { *stage = STAGE_MAIL; return 0; }
        if (!strcmp(name, "rcpt")) { *stage = STAGE_RCPT; return 0; }
        return -1;
    }
    if (n >= 5 && !strcmp(name + n - 5, "-mail")) { *stage = STAGE_MAIL; return 0; }
    if (n >= 5 && !strcmp(name + n - 5, "-rcpt")) { *stage = STAGE_RCPT; return 0; }
    return -1;
}

int main(int argc, char **argv)
{
    static unsigned char req[MAX_REQUEST], resp[MAX_RESPONSE], outbuf[MAX_OUTPUT];
    struct out o = {req, sizeof req, 0, 0}, result = {outbuf, sizeof outbuf, 0, 0};
    struct server srv;
    struct verdict v;
    enum stage stage;
    const char *server = getenv("CHECKID_SPP_SERVER"), *timeout = getenv("CHECKID_SPP_TIMEOUT_MS");
    const char *on_error = getenv("CHECKID_SPP_ON_ERROR"), *why = NULL, *rcpt;
    long timeout_ms = DEFAULT_TIMEOUT_MS;
    uint32_t msgid = (uint32_t)getpid();
    int defer = on_error && !strcmp(on_error, "defer");

    memset(&v, 0, sizeof v);
    signal(SIGPIPE, SIG_IGN); /* a closed stdout or socket is an error return, not a death */

    if (stage_of(argc, argv, &stage) < 0) {
        logmsg("cannot tell the stage: run as checkid-spp-mail / checkid-spp-rcpt, or with mail|rcpt", NULL);
        return EXIT_CANNOT_EXECUTE;
    }
    if (!server || !*server) server = DEFAULT_SERVER;
    if (parse_server(server, &srv) < 0) {
        logmsg("CHECKID_SPP_SERVER is not unix:PATH, IPv4:PORT or [IPv6]:PORT", server);
        return EXIT_CANNOT_EXECUTE;
    }
    if (timeout && *timeout) {
        char *end;
        errno = 0;
        timeout_ms = strtol(timeout, &end, 10);
        if (errno || *end || timeout_ms < 1 || timeout_ms > MAX_TIMEOUT_MS) {
            logmsg("CHECKID_SPP_TIMEOUT_MS is not a number of milliseconds from 1 to 300000", timeout);
            return EXIT_CANNOT_EXECUTE;
        }
    }
    if (on_error && *on_error && !defer && strcmp(on_error, "pass"))
        logmsg("CHECKID_SPP_ON_ERROR is neither pass nor defer; using pass", on_error);

    mp_array(&o, 4);
    mp_uint(&o, 0);
    mp_uint(&o, msgid);
    mp_str(&o, "checkID");
    mp_array(&o, 8);
    mp_str_or_nil(&o, getenv("TCPREMOTEIP"));
    mp_nil(&o); /* ID: qmail has no ID command; the engine falls back to HELO, then MAIL FROM */
    mp_str_or_nil(&o, getenv("SMTPHELOHOST"));
    mp_str_or_nil(&o, getenv("SMTPMAILFROM"));
    rcpt = stage == STAGE_RCPT ? getenv("SMTPRCPTTO") : NULL;
    mp_array(&o, rcpt ? 1 : 0);
    if (rcpt) mp_str(&o, rcpt);
    mp_array(&o, 0); /* Hdrs, */
    mp_nil(&o);      /* Body: qmail-spp has no end-of-data hook, */
    mp_false(&o);    /* MessageFollows: so the engine must decide now, never CONTINUE */

    if (o.full) why = "request too large";
    else if (ask(&srv, req, o.len, msgid, now_ms() + timeout_ms, resp, &v, &why) == DEC_OK) {
        if (v.has_error) {
            char text[256];
            size_t n = clean(text, sizeof text - 1, v.error, 1);
            text[n] = 0;
            logmsg("engine error", text);
            why = "engine error";
        } else
            render(&result, &v, stage);
    }
    if (why) {
        if (!v.has_error) logmsg(why, server);
        if (defer) {
            static const char msg[] = "E451 4.3.0 checkid unavailable, try again later\n";
            result.len = 0;
            put(&result, msg, sizeof msg - 1);
        }
    }
    if (result.len && write_all(result.buf, result.len) < 0) logmsg("cannot write to qmail-spp", NULL);
    return 0;
}
