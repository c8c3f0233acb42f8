/* remotectl: core/remote.c driven from the outside, for
 * tests/test_remote_core.py (not installed).  It opens a kit's URL (and
 * mirrors) with remote_open and runs the commands given after "--", one
 * output line each:
 *
 *   size                 the kit's size
 *   read OFF LEN         "ok SHA256" of bytes [OFF, OFF+LEN), or "error ERRNO-NAME"
 *   threads N OFF LEN    N threads read those bytes at once: "ok SHA256" if all
 *                        read the same, else the first error
 *   seq                  the whole kit read front to back in 128 KiB reads
 *                        (advise_sequential): "ok SHA256"
 *   advise               bytes_advise_sequential
 *   drain                as seq, without the digest (a timing): "ok BYTES"
 *   bad OFF LEN          bytes_report_bad: "ok" (retry) or "error EIO"
 *   bind KEY HEADLEN     remote_bind
 *   stats                (after remote_flush) one line per mirror: "mirror URL STATE failures=N
 *                        bytes=N ok=N http_error=N timeout=N short=N
 *                        bad_bytes=N refused=N", then "cache bytes=N hits=N
 *                        unserved=N"
 *   probe VALIDATOR      remote_probe of the first URL: "changed NEW" or
 *                        "unchanged" or "error ..." ("" for none)
 *   local on|off         remote_local_only on this thread: reads that would wait
 *                        for the network say "error EWOULDBLOCK"
 *   sleep MS
 *
 *   remotectl [--cache DIR] [--cache-size BYTES] [--timeout MS] [--cacert FILE]
 *             [--proxy URL] [--client-cert FILE] [--client-key FILE]
 *             [--bearer STALE,FRESH] URL [MIRROR...] -- COMMAND...
 *
 * --bearer gives the first URL auth ops (remote.h) that authorize with
 * "Bearer STALE" until a challenge, then with "Bearer FRESH"; "challenges=N"
 * is printed at the end.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "remote.h"

static void hexdigest(const void *p, size_t n, char out[65])
{
	unsigned char md[32];
	unsigned len;
	EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", md[i]);
}

static const char *errname(int r)
{
	switch (-r) {
	case EIO: return "EIO";
	case EHOSTDOWN: return "EHOSTDOWN";
	case ETIMEDOUT: return "ETIMEDOUT";
	case ENOMEM: return "ENOMEM";
	case EACCES: return "EACCES";
	case EUCLEAN: return "EUCLEAN";
	case EWOULDBLOCK: return "EWOULDBLOCK";
	default: return "EOTHER";
	}
}

struct job {
	struct bytes *b;
	uint64_t off;
	size_t len;
	int r;
	char digest[65];
};

static int read_range(struct bytes *b, uint64_t off, size_t len, char digest[65])
{
	uint8_t *buf = malloc(len ? len : 1);
	size_t done = 0;
	int r = 0;
	while (done < len) {
		ssize_t n = bytes_read_at(b, buf + done, len - done, off + done);
		if (n <= 0) {
			r = n < 0 ? (int)n : -EIO;
			break;
		}
		done += (size_t)n;
	}
	if (r == 0)
		hexdigest(buf, len, digest);
	free(buf);
	return r;
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	j->r = read_range(j->b, j->off, j->len, j->digest);
	return NULL;
}

struct bearer {
	char token[128];
	const char *fresh;
	int challenges;
};

/* the ops serialise themselves (remote.h): remote.c calls them unlocked */
static pthread_mutex_t bearer_mu = PTHREAD_MUTEX_INITIALIZER;

static int bearer_authorize(void *ctx, char *buf, size_t len, int64_t deadline, const atomic_bool *cancel,
			    struct stella_err *e)
{
	(void)e, (void)deadline, (void)cancel;
	pthread_mutex_lock(&bearer_mu);
	snprintf(buf, len, "Bearer %s", ((struct bearer *)ctx)->token);
	pthread_mutex_unlock(&bearer_mu);
	return 0;
}

static int bearer_challenge(void *ctx, const char *www, int64_t deadline, const atomic_bool *cancel,
			    struct stella_err *e)
{
	(void)deadline, (void)cancel;
	struct bearer *t = ctx;
	int r = 0;
	pthread_mutex_lock(&bearer_mu);
	t->challenges++;
	if (strncmp(www, "Bearer ", 7) || !strcmp(t->token, t->fresh))
		r = stella_fail(e, -EACCES, "refused");
	else
		snprintf(t->token, sizeof(t->token), "%s", t->fresh);
	pthread_mutex_unlock(&bearer_mu);
	return r;
}

static int bearer_challenges;
static void bearer_free(void *ctx)
{
	bearer_challenges = ((struct bearer *)ctx)->challenges;
	free(ctx);
}

static const struct remote_auth_ops bearer_ops = {
	.authorize = bearer_authorize, .challenge = bearer_challenge, .free = bearer_free,
};

static void print_stats(struct bytes *b)
{
	struct remote_stats st;
	if (remote_stats(b, &st) < 0) {
		printf("error stats\n");
		return;
	}
	for (size_t i = 0; i < st.n; i++) {
		const struct remote_mirror_stat *m = &st.m[i];
		printf("mirror %s %s failures=%" PRIu64 " bytes=%" PRIu64, m->url, m->state, m->failures, m->bytes);
		for (int k = 0; k < REMOTE_RESULTS; k++)
			printf(" %s=%" PRIu64, remote_result_name(k), m->requests[k]);
		printf(" origin=%s\n", m->origin);
	}
	printf("cache bytes=%" PRIu64 " hits=%" PRIu64 " unserved=%" PRIu64 "\n", st.cache_bytes, st.cache_hits,
	       st.unserved);
}

int main(int argc, char **argv)
{
	struct remote_opts o = { 0 };
	struct bearer *bearer = NULL;
	int i = 1;
	for (; i + 1 < argc && argv[i][0] == '-' && argv[i][1] == '-' && argv[i][2]; i += 2) {
		if (!strcmp(argv[i], "--cache"))
			o.cache_dir = argv[i + 1];
		else if (!strcmp(argv[i], "--cache-size"))
			o.cache_size = strtoull(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--timeout"))
			o.timeout_ms = (unsigned)strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--cacert"))
			o.cacert = argv[i + 1];
		else if (!strcmp(argv[i], "--proxy"))
			o.proxy = argv[i + 1];
		else if (!strcmp(argv[i], "--client-cert"))
			o.client_cert = argv[i + 1];
		else if (!strcmp(argv[i], "--client-key"))
			o.client_key = argv[i + 1];
		else if (!strcmp(argv[i], "--bearer") && strchr(argv[i + 1], ',')) {
			bearer = calloc(1, sizeof(*bearer));
			snprintf(bearer->token, sizeof(bearer->token), "%.*s",
				 (int)(strchr(argv[i + 1], ',') - argv[i + 1]), argv[i + 1]);
			bearer->fresh = strchr(argv[i + 1], ',') + 1;
		}
		else
			return fprintf(stderr, "remotectl: unknown option %s\n", argv[i]), 2;
	}
	struct remote_endpoint eps[REMOTE_MAX_ENDPOINTS] = { { 0 } };
	size_t n = 0;
	for (; i < argc && strcmp(argv[i], "--"); i++) {
		eps[n].url = eps[n].label = argv[i];
		n++;
	}
	if (i < argc)
		i++;
	if (bearer) {
		eps[0].auth = &bearer_ops;
		eps[0].auth_ctx = bearer;
	}
	struct bytes *b;
	struct stella_err e = { 0 };
	int r = remote_open(eps, n, &o, &b, &e);
	if (r < 0) {
		printf("open error %s %s\n", errname(r), e.msg);
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (; i < argc; i++) {
		const char *c = argv[i];
		char d[65];
		if (!strcmp(c, "size")) {
			printf("%" PRIu64 "\n", bytes_size(b));
		} else if (!strcmp(c, "read") && i + 2 < argc) {
			uint64_t off = strtoull(argv[i + 1], NULL, 10);
			size_t len = strtoull(argv[i + 2], NULL, 10);
			i += 2;
			r = read_range(b, off, len, d);
			printf(r ? "error %s\n" : "ok %s\n", r ? errname(r) : d);
		} else if (!strcmp(c, "local") && i + 1 < argc) {
			remote_local_only(!strcmp(argv[++i], "on"));
			printf("ok\n");
		} else if (!strcmp(c, "threads") && i + 3 < argc) {
			int nt = atoi(argv[i + 1]);
			struct job jobs[64];
			pthread_t t[64];
			if (nt > 64)
				nt = 64;
			for (int k = 0; k < nt; k++) {
				jobs[k] = (struct job){ .b = b, .off = strtoull(argv[i + 2], NULL, 10),
							.len = strtoull(argv[i + 3], NULL, 10) };
				pthread_create(&t[k], NULL, job_main, &jobs[k]);
			}
			for (int k = 0; k < nt; k++)
				pthread_join(t[k], NULL);
			i += 3;
			r = 0;
			for (int k = 0; k < nt && !r; k++)
				if (jobs[k].r || strcmp(jobs[k].digest, jobs[0].digest))
					r = jobs[k].r ? jobs[k].r : -EIO;
			printf(r ? "error %s\n" : "ok %s\n", r ? errname(r) : jobs[0].digest);
		} else if (!strcmp(c, "seq")) {
			bytes_advise_sequential(b);
			EVP_MD_CTX *md = EVP_MD_CTX_new();
			EVP_DigestInit_ex(md, EVP_sha256(), NULL);
			uint8_t *buf = malloc(128 << 10);
			uint64_t off = 0;
			r = 0;
			while (off < bytes_size(b)) {
				ssize_t got = bytes_read_at(b, buf, 128 << 10, off);
				if (got <= 0) {
					r = got < 0 ? (int)got : -EIO;
					break;
				}
				EVP_DigestUpdate(md, buf, (size_t)got);
				off += (uint64_t)got;
			}
			unsigned char h[32];
			unsigned hl;
			EVP_DigestFinal_ex(md, h, &hl);
			EVP_MD_CTX_free(md);
			free(buf);
			for (int k = 0; k < 32; k++)
				sprintf(d + 2 * k, "%02x", h[k]);
			printf(r ? "error %s\n" : "ok %s\n", r ? errname(r) : d);
		} else if (!strcmp(c, "advise")) {
			bytes_advise_sequential(b);
			printf("ok\n");
		} else if (!strcmp(c, "drain")) {
			bytes_advise_sequential(b);
			uint8_t *buf = malloc(128 << 10);
			uint64_t off = 0;
			r = 0;
			while (off < bytes_size(b)) {
				ssize_t got = bytes_read_at(b, buf, 128 << 10, off);
				if (got <= 0) {
					r = got < 0 ? (int)got : -EIO;
					break;
				}
				off += (uint64_t)got;
			}
			free(buf);
			if (r)
				printf("error %s\n", errname(r));
			else
				printf("ok %" PRIu64 "\n", off);
		} else if (!strcmp(c, "bad") && i + 2 < argc) {
			r = bytes_report_bad(b, strtoull(argv[i + 1], NULL, 10), strtoull(argv[i + 2], NULL, 10));
			i += 2;
			printf(r ? "error %s\n" : "ok\n", errname(r));
		} else if (!strcmp(c, "bind") && i + 2 < argc) {
			r = remote_bind(b, argv[i + 1], strtoull(argv[i + 2], NULL, 10), &e);
			i += 2;
			printf(r ? "error %s\n" : "ok\n", e.msg);
		} else if (!strcmp(c, "stats")) {
			remote_flush(b);   /* what was read is in the cache when counted */
			print_stats(b);
		} else if (!strcmp(c, "identity")) {
			printf("%s\n", bytes_identity(b));
		} else if (!strcmp(c, "probe") && i + 1 < argc) {
			char v[256];
			r = remote_probe(eps[0].url, &o, argv[++i], v, &e);
			if (r < 0)
				printf("error %s\n", e.msg);
			else
				printf(r ? "changed %s\n" : "unchanged\n", v);
		} else if (!strcmp(c, "sleep") && i + 1 < argc) {
			usleep((useconds_t)strtoul(argv[++i], NULL, 10) * 1000);
			printf("ok\n");
		} else {
			printf("error usage %s\n", c);
		}
	}
	bytes_close(b);
	if (bearer)
		printf("challenges=%d\n", bearer_challenges);
	return 0;
}
