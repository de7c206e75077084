/* The milter ceiling: a null milter on libmilter (Sendmail's own milter library, the
 * fastest milter stack there is), doing on the wire what checkid's milter does with a
 * decision it already has, and nothing else.
 *
 *   nullmilter CONN          CONN: unix:/path/to/socket or inet:PORT@127.0.0.1
 *
 * It negotiates the steps checkid's milter negotiates away (no reply to connect, HELO,
 * DATA, each header, end of headers, body chunks: SMFIP_NR_*), answers MAIL and RCPT with
 * CONTINUE, and at end of message inserts one fixed Authent: header (SMFIF_ADDHDRS) and
 * accepts. No decision, no allocation per session beyond libmilter's own. libmilter runs
 * one thread per connection; it leaves Nagle on over TCP, which costs a delayed-ACK wait
 * at end of message (bench/peers.py reports the TCP row beside the unix-socket one).
 * Built by bench/limits.py under .bench-build/ (gcc ... -lmilter -pthread).
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NO_REPLY (SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_DATA | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY \
                  | SMFIP_NR_UNKN)

static sfsistat negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2, unsigned long f3,
                          unsigned long *pf0, unsigned long *pf1, unsigned long *pf2, unsigned long *pf3) {
    (void)ctx; (void)f2; (void)f3;
    *pf0 = f0 & SMFIF_ADDHDRS;
    *pf1 = f1 & NO_REPLY;
    *pf2 = 0; *pf3 = 0;
    return SMFIS_CONTINUE;
}

static sfsistat noreply_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) {
    (void)ctx; (void)host; (void)addr; return SMFIS_NOREPLY;
}
static sfsistat noreply_helo(SMFICTX *ctx, char *helo) { (void)ctx; (void)helo; return SMFIS_NOREPLY; }
static sfsistat envfrom(SMFICTX *ctx, char **argv) { (void)ctx; (void)argv; return SMFIS_CONTINUE; }
static sfsistat envrcpt(SMFICTX *ctx, char **argv) { (void)ctx; (void)argv; return SMFIS_CONTINUE; }
static sfsistat noreply_data(SMFICTX *ctx) { (void)ctx; return SMFIS_NOREPLY; }
static sfsistat noreply_header(SMFICTX *ctx, char *name, char *value) {
    (void)ctx; (void)name; (void)value; return SMFIS_NOREPLY;
}
static sfsistat noreply_eoh(SMFICTX *ctx) { (void)ctx; return SMFIS_NOREPLY; }
static sfsistat noreply_body(SMFICTX *ctx, unsigned char *chunk, size_t len) {
    (void)ctx; (void)chunk; (void)len; return SMFIS_NOREPLY;
}
static sfsistat eom(SMFICTX *ctx) {
    /* the null servers' fixed decision (bench/nullserver.py), as checkid renders it */
    smfi_insheader(ctx, 0, "Authent", "192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B");
    return SMFIS_ACCEPT;
}

int main(int argc, char **argv) {
    if (argc != 2 || (strncmp(argv[1], "unix:", 5) && strncmp(argv[1], "inet:", 5))) {
        fprintf(stderr, "usage: %s unix:/path | inet:PORT@127.0.0.1\n", argv[0]);
        return 2;
    }
    if (!strncmp(argv[1], "inet:", 5) && !strstr(argv[1], "@127.0.0.1")) {
        fprintf(stderr, "loopback only\n");
        return 2;
    }
    if (!strncmp(argv[1], "unix:", 5)) unlink(argv[1] + 5);
    struct smfiDesc desc = {
        .xxfi_name = "nullmilter", .xxfi_version = SMFI_VERSION, .xxfi_flags = SMFIF_ADDHDRS,
        .xxfi_connect = noreply_connect, .xxfi_helo = noreply_helo, .xxfi_envfrom = envfrom,
        .xxfi_envrcpt = envrcpt, .xxfi_header = noreply_header, .xxfi_eoh = noreply_eoh,
        .xxfi_body = noreply_body, .xxfi_eom = eom, .xxfi_data = noreply_data, .xxfi_negotiate = negotiate,
    };
    if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(desc) == MI_FAILURE) {
        fprintf(stderr, "nullmilter: cannot set up %s\n", argv[1]);
        return 1;
    }
    /* a listen queue as deep as the load's concurrency: libmilter's default is 5 */
    smfi_setbacklog(1024);
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
