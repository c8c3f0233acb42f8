/* Kit bytes fetched from site mirrors: HTTP(S) range requests behind the
 * struct bytes seam (bytes.h), with failover between mirrors, a bounded
 * crash-safe disk cache and a hard time bound per read.  docs/mirrors.md
 * says what an operator sees, docs/remote.md how it works; this file is
 * the contract inside.
 *
 * Every byte still goes through the same verification as a local kit's:
 * this layer never decides that bytes are good, it only fetches them, and
 * hears back (bytes_report_bad) when the layer above found them bad. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <errno.h>
#include <stdint.h>

#include "bytes.h"
#include "err.h"

#define REMOTE_CACHE_SIZE_DEFAULT (UINT64_C(1) << 30)
#define REMOTE_TIMEOUT_DEFAULT_MS 30000u
#define REMOTE_MAX_ENDPOINTS 16

/* What a mount or a stellakit run was told about fetching. */
struct remote_opts {
	const char *cache_dir;     /* cache=: NULL keeps nothing on disk */
	uint64_t cache_size;       /* bound on cached file data (the pinned head comes on top) */
	unsigned timeout_ms;       /* no read waits longer (as its caller sees it) */
	const char *cacert;        /* NULL: the system store or SSL_CERT_FILE */
	const char *proxy;         /* NULL: http_proxy / https_proxy / no_proxy */
	const char *client_cert;   /* https client certificate (PEM), NULL for none */
	const char *client_key;    /* its private key (PEM), NULL: in client_cert */
	/* Optional: once true, every transfer made with these options ends
	 * (checked about once a second; http_error "cancelled"): a daemon that
	 * stops does not wait out timeout= for an import.  Not owned. */
	const atomic_bool *cancel;
};

/* The longest Authorization value an endpoint's auth ops may produce (a
 * registry's JWT runs to kilobytes), NUL included; and the longest
 * WWW-Authenticate value taken in.  Longer is an error, never a cut. */
#define REMOTE_AUTHORIZATION_MAX 8320
#define REMOTE_CHALLENGE_MAX 4096

/* How requests to one endpoint are authorised (a registry's bearer token,
 * core/oci.c); NULL for plain URLs, whose user:password@ or ~/.netrc
 * libcurl applies itself.  Credentials only ever go to the endpoint's own
 * scheme, host and port, never to where a redirect leads. */
struct remote_auth_ops {
	/* Both are called from any number of threads at once, with no lock
	 * held: they serialise themselves, and never wait past DEADLINE_MS
	 * (absolute, CLOCK_MONOTONIC milliseconds) or once *CANCEL is true
	 * (the kit is being closed).
	 * The Authorization header's value into buf (""
	 * for none); 0 or a negative errno. */
	int (*authorize)(void *ctx, char *buf, size_t len, int64_t deadline_ms, const atomic_bool *cancel,
			 struct stella_err *e);
	/* A 401 came with this WWW-Authenticate: get fresh credentials.  0:
	 * retry the request once; negative: the endpoint refuses us. */
	int (*challenge)(void *ctx, const char *www_authenticate, int64_t deadline_ms, const atomic_bool *cancel,
			 struct stella_err *e);
	void (*free)(void *ctx);
};

/* One location of the kit's bytes. */
struct remote_endpoint {
	const char *url;           /* http:// or https://: what is fetched */
	const char *label;         /* what status shows (the URL the operator wrote) */
	const struct remote_auth_ops *auth;  /* may be NULL */
	void *auth_ctx;            /* taken over by remote_open (auth->free) */
	uint64_t size;             /* the size a registry's descriptor states, 0 unknown */
};

/* What read_at returns when no mirror could serve the bytes in time (each
 * failed, or the read's timeout passed): a transport failure, no verdict
 * on the kit's bytes (health: the mirrors' state says it).  Reads whose
 * bytes were served fail otherwise (-ENOMEM) or not at all. */
#define REMOTE_EUNSERVED EHOSTDOWN

/* The kit at EPS[0], with EPS[1..n-1] as mirrors of the same bytes, tried
 * in order.  Fetches what it needs to learn the size, nothing more.  When
 * no endpoint answers, a cache under o->cache_dir that holds this URL's
 * kit serves (offline remount).  Exit class of a failure: runtime (-EIO,
 * -ETIMEDOUT, -EACCES for refused credentials). */
int remote_open(const struct remote_endpoint *eps, size_t n, const struct remote_opts *o,
		struct bytes **out, struct stella_err *e);

/* True for bytes remote_open made. */
bool bytes_is_remote(const struct bytes *b);

/* Whether a read of [off, off+len) would be served without the network:
 * every chunk of it is in memory or in the disk cache.  Never waits (a
 * chunk being fetched counts as absent).  True for local bytes.  A hint:
 * a chunk may still leave memory before the read. */
bool remote_resident(struct bytes *b, uint64_t off, uint64_t len);

/* Start bringing into memory, in the background, the chunks of
 * [off, off+len) that are not there nor on their way (from the disk
 * cache, else from a mirror), so that a read of them soon waits less (a
 * file's Merkle tree blocks, fetched while its data is: snapshot_prefetch).
 * Never waits; no-op for local bytes.  Added for issue 15's first-read
 * latency. */
void remote_prefetch(struct bytes *b, uint64_t off, uint64_t len);

/* A reader about to read at OFF (a kit offset) will not go past END (its
 * file's end): the read-ahead earned by the stream it continues stops
 * there (so a sequential read of a file fetches the file, not 8 MiB past
 * it).  No-op for local bytes, or when no stream is near OFF. */
void remote_hint_end(struct bytes *b, uint64_t off, uint64_t end);

/* On the calling thread until turned off again: a read that would wait
 * for the network (a chunk neither in memory nor in the disk cache, one
 * another thread is fetching, a retry on another mirror) fails at once
 * with -EWOULDBLOCK, and nothing is counted or reported for it.  The FUSE
 * threads read this way and hand what fails so to the fetch threads
 * (fs/ops.c, fs/fetch.c): they never wait for a mirror (docs/mirrors.md,
 * "Time bounds"). */
void remote_local_only(bool on);

/* On the calling thread until set to 0 again: every read ends by
 * DEADLINE_MS (absolute, CLOCK_MONOTONIC milliseconds) at the latest, as
 * well as by timeout=.  One bound for all the reads one caller's read
 * makes (its data, its tree blocks, its retries on other mirrors), which
 * otherwise each take timeout= afresh: a fetch thread is free again when
 * the read it serves has been answered EIO (fs/fetch.c's watchdog). */
void remote_read_deadline(int64_t deadline_ms);

/* Wait until the chunks readers took are in the disk cache: a worker
 * writes them after the read was answered (docs/remote.md).  Local disk
 * writes only, never the network.  No-op for local bytes. */
void remote_flush(struct bytes *b);

/* After the kit's head ([0, head_len): manifest, signatures, index,
 * merkle.bin) was verified: key the disk cache by KEY (the signed
 * manifest's sha256, hex), so every mirror of one kit shares it, and pin
 * the head there so that a remount with every mirror down still mounts.
 * Also sets b's identity to "remote:KEY".  No-op for local bytes. */
int remote_bind(struct bytes *b, const char *key, uint64_t head_len, struct stella_err *e);

enum remote_result {
	REMOTE_OK, REMOTE_HTTP_ERROR, REMOTE_TIMEOUT, REMOTE_SHORT, REMOTE_BAD_BYTES, REMOTE_REFUSED,
	REMOTE_RESULTS
};
const char *remote_result_name(enum remote_result r);  /* "ok", "http_error", ... */

struct remote_mirror_stat {
	char url[512];             /* as the operator wrote it (label) */
	char origin[160];          /* scheme://host:port, the metrics label */
	const char *state;         /* "ok", "failing", "untried" */
	uint64_t failures;
	char last_error[256];
	uint64_t bytes;
	uint64_t requests[REMOTE_RESULTS];
};

struct remote_stats {
	size_t n;
	struct remote_mirror_stat m[REMOTE_MAX_ENDPOINTS];
	uint64_t cache_bytes, cache_hits;
	/* reads whose bytes failed verification and no mirror could serve good ones */
	uint64_t unserved;
};
/* -EINVAL if B is not remote. */
int remote_stats(struct bytes *b, struct remote_stats *st);
/* The latest failure of any mirror of B, "LABEL: what" (one line), for the
 * message of a read that failed with -REMOTE_EUNSERVED; "" if none. */
void remote_last_error(struct bytes *b, char *out, size_t len);

/* Has the kit at URL changed since VALIDATOR (an ETag or Last-Modified
 * this returned before, "" the first time)?  1 changed (new validator in
 * out), 0 unchanged, negative errno.  For store mode's follow=. */
int remote_probe(const char *url, const struct remote_opts *o, const char *validator,
		 char out[256], struct stella_err *e);
