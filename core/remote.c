/* Kit bytes from site mirrors (remote.h): a struct bytes whose reads are
 * served from aligned chunks of REMOTE_CHUNK bytes, each fetched once with
 * an HTTP range request (http.c) from the first mirror that can, kept in a
 * small memory table and in the disk cache (rcache.c) once the kit is
 * bound to its manifest.
 *
 * One struct shared holds the mirrors, the chunk table and the cache; every
 * handle (remote_open, dup) points at it.  s->mu guards all of its mutable
 * state; it is never held across a network wait or a disk write.  A chunk
 * being fetched sits in the table in state FETCHING: readers that want it
 * wait on s->cv (bounded by their deadline) instead of fetching it again. */
#include "remote.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include <openssl/evp.h>

#include "http.h"
#include "rcache.h"

#define REMOTE_CHUNK (1u << 20)
#define MEM_CHUNKS 32          /* chunks kept in memory (not counting those in use) */
#define READAHEAD 8            /* chunks fetched ahead of a sequential reader, at most */
#define WORKERS 4              /* threads fetching ahead: requests in flight at once */
#define SEQ_SLACK (512u << 10) /* how far from the last read's end a "next" read may start */
#define POOL 16                /* spare chunk buffers kept */
#define STREAMS 8              /* sequential readers told apart (once bound) */
/* Once bound, how far from a stream's end a read may start, either way,
 * and still belong to it: the kernel's readahead (4 MiB, fs/ops.c) sends
 * several reads at once, and the fetch threads take them in any order. */
#define STREAM_NEAR (8u << 20)
#define STREAM_STEP (256u << 10) /* a stream earns a chunk of read-ahead per this much read */
#define WRITES 16              /* chunks waiting for the disk cache, at most */
#define SRC_HINTS 4096
#define BACKOFF_FIRST_MS 1000
#define BACKOFF_MAX_MS 60000
#define ATTEMPT_MIN_MS 1000    /* a mirror's share of a read's time, at least */

enum { CH_FETCHING, CH_READY };

struct chunk {
	uint64_t idx;
	int state;
	uint8_t *data;
	size_t len;
	int src;                /* the endpoint that served it; -1 the disk cache */
	unsigned refs;          /* readers copying from it, and the table's own */
	uint64_t used;          /* LRU tick */
	bool dropped;           /* out of the table: the last put frees it */
	bool on_disk;           /* in the disk cache (or claimed for writing there) */
};

struct bad_range {
	uint64_t off, len;
};

struct endpoint {
	char *url, *label;
	const struct remote_auth_ops *auth;
	void *auth_ctx;
	pthread_mutex_t auth_mu;    /* authorize and challenge, one at a time */
	char origin[160];
	bool tried, failing;
	int64_t retry_at, backoff_ms;
	uint64_t failures, bytes, requests[REMOTE_RESULTS];
	char last_error[256];
	struct bad_range *bad;      /* file bytes it served wrong: never asked again */
	size_t nbad, capbad;
};

struct shared {
	pthread_mutex_t mu;
	pthread_cond_t cv;          /* a chunk left FETCHING; a disk cache write done */
	/* work for the workers (a chunk to fetch ahead, one to write, or
	 * stopping): apart from cv, so that a chunk done does not wake every
	 * idle worker, nor work every waiting reader */
	pthread_cond_t work;
	unsigned refs;
	struct remote_opts o;       /* strings owned */
	struct endpoint ep[REMOTE_MAX_ENDPOINTS];
	size_t n;
	uint64_t size;
	struct chunk **tab;
	size_t ntab, captab;
	uint64_t tick;
	struct rcache *rc;
	/* the cache remote_bind replaced (the URL map named a kit the
	 * verified head is not): readers may still hold it, copied under mu
	 * and used outside, so it is closed with the rest, in shared_free */
	struct rcache *retired;
	char key[65];
	uint64_t head_len;
	/* remote_bind has run: the head is verified and reads are a reader's.
	 * Before, an advised reader may be a mount's look at the head: it
	 * earns read-ahead by its streak like any other. */
	bool bound;
	uint64_t unserved, mem_hits;
	char last_error[400];       /* the latest failure of any mirror */
	int open_src;               /* the endpoint that answered the open, -1 none */
	char validator[128];        /* its ETag, else Last-Modified, "" none */
	uint8_t *pool[POOL];        /* spare chunk buffers */
	size_t npool;
	/* which endpoint served a chunk last, for a report after the chunk
	 * left memory (direct-mapped: a guess that may be lost) */
	struct { uint64_t idx; int src; } src_hint[SRC_HINTS];
	uint64_t queue[2 * READAHEAD * WORKERS];
	size_t qn;
	/* Once bound: the sequential readers of the kit's data, told apart
	 * by where they are, whatever handle or thread their reads come
	 * through (the snapshot reads every file, and the trees in the head,
	 * through one handle, so a handle's own streak would be broken by
	 * every tree block read between two data reads). */
	struct stream { uint64_t next, run, used, end; } streams[STREAMS];
	uint64_t stream_tick;
	/* Chunks a reader took, for the workers to write to the disk cache
	 * (each holds a reference): the write, and the digest of its header,
	 * are no part of the reader's wait.  writing: those being written. */
	struct chunk *wq[WRITES];
	size_t wqn;
	unsigned writing;
	pthread_t workers[WORKERS];
	int nworkers;
	atomic_bool stopping;       /* closing: workers stop, their requests end */
};

struct rbytes {
	struct bytes b;
	struct shared *s;
	uint64_t next_off;      /* where the last read ended */
	uint64_t last_off;      /* where it began (the same read again is not a step) */
	uint64_t streak;        /* bytes read in a row, each read near where the last ended */
	bool sequential;        /* advised */
};

static const struct bytes_ops remote_ops;
static bool write_later_locked(struct shared *s, struct chunk *c);
static void workers_start_locked(struct shared *s);

const char *remote_result_name(enum remote_result r)
{
	static const char *const names[REMOTE_RESULTS] = {
		"ok", "http_error", "timeout", "short", "bad_bytes", "refused",
	};
	return (unsigned)r < REMOTE_RESULTS ? names[r] : "?";
}

bool bytes_is_remote(const struct bytes *b)
{
	return b && b->ops == &remote_ops;
}

static void sha256_hex(const void *p, size_t n, char out[65])
{
	unsigned char md[32];
	unsigned len = 0;
	EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static int64_t deadline_after(unsigned ms)
{
	return http_now_ms() + (int64_t)ms;
}

/* ------------------------------------------------------------ chunks */

static uint64_t chunk_len(const struct shared *s, uint64_t idx)
{
	uint64_t off = idx * REMOTE_CHUNK;
	return s->size - off < REMOTE_CHUNK ? s->size - off : REMOTE_CHUNK;
}

static struct chunk *tab_find(struct shared *s, uint64_t idx)
{
	for (size_t i = 0; i < s->ntab; i++)
		if (s->tab[i]->idx == idx)
			return s->tab[i];
	return NULL;
}

/* Under s->mu: a chunk's buffer back to the pool.  Fresh 1 MiB buffers
 * come from mmap and fault in page by page, which costs a sequential
 * reader more than the copy into them. */
static void buf_release(struct shared *s, uint8_t *p)
{
	if (p && s->npool < POOL)
		s->pool[s->npool++] = p;
	else
		free(p);
}

/* Under s->mu: a REMOTE_CHUNK buffer, or NULL. */
static uint8_t *buf_take(struct shared *s)
{
	return s->npool ? s->pool[--s->npool] : malloc(REMOTE_CHUNK);
}

static void chunk_free(struct shared *s, struct chunk *c)
{
	buf_release(s, c->data);
	free(c);
}

static void chunk_put_locked(struct shared *s, struct chunk *c)
{
	if (--c->refs == 0)
		chunk_free(s, c);
}

/* Out of the table, without putting the table's reference: true if it
 * was there. */
static bool tab_unlink(struct shared *s, struct chunk *c)
{
	for (size_t i = 0; i < s->ntab; i++) {
		if (s->tab[i] == c) {
			s->tab[i] = s->tab[--s->ntab];
			c->dropped = true;
			return true;
		}
	}
	return false;
}

static void tab_remove(struct shared *s, struct chunk *c)
{
	if (tab_unlink(s, c))
		chunk_put_locked(s, c);
}

/* Keep the table near MEM_CHUNKS: evict the least recently used ready
 * chunks nobody is copying from. */
static void tab_trim(struct shared *s)
{
	while (s->ntab > MEM_CHUNKS) {
		struct chunk *lru = NULL;
		for (size_t i = 0; i < s->ntab; i++) {
			struct chunk *c = s->tab[i];
			if (c->state == CH_READY && c->refs == 1 && (!lru || c->used < lru->used))
				lru = c;
		}
		if (!lru)
			return;
		tab_remove(s, lru);
	}
}

static int tab_add(struct shared *s, struct chunk *c)
{
	if (s->ntab == s->captab) {
		size_t cap = s->captab ? 2 * s->captab : 2 * MEM_CHUNKS;
		struct chunk **t = realloc(s->tab, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		s->tab = t;
		s->captab = cap;
	}
	s->tab[s->ntab++] = c;
	c->refs++;
	tab_trim(s);
	return 0;
}

/* ------------------------------------------------------------ mirrors */

/* Did EP serve wrong bytes in [off, off+len)? */
static bool ep_bad_in(const struct endpoint *ep, uint64_t off, uint64_t len)
{
	for (size_t i = 0; i < ep->nbad; i++)
		if (ep->bad[i].off < off + len && off < ep->bad[i].off + ep->bad[i].len)
			return true;
	return false;
}

static void ep_mark_bad(struct endpoint *ep, uint64_t off, uint64_t len)
{
	for (size_t i = 0; i < ep->nbad; i++)
		if (ep->bad[i].off <= off && off + len <= ep->bad[i].off + ep->bad[i].len)
			return;
	if (ep->nbad == ep->capbad) {
		size_t cap = ep->capbad ? 2 * ep->capbad : 16;
		struct bad_range *b = realloc(ep->bad, cap * sizeof(*b));
		if (!b)
			return;   /* it will be asked again, and found bad again */
		ep->bad = b;
		ep->capbad = cap;
	}
	ep->bad[ep->nbad++] = (struct bad_range){ off, len };
}

static void ep_failed(struct shared *s, struct endpoint *ep, enum remote_result r, const char *msg)
{
	ep->tried = true;
	ep->failing = true;
	ep->failures++;
	ep->requests[r]++;
	ep->backoff_ms = ep->backoff_ms ? ep->backoff_ms * 2 : BACKOFF_FIRST_MS;
	if (ep->backoff_ms > BACKOFF_MAX_MS)
		ep->backoff_ms = BACKOFF_MAX_MS;
	ep->retry_at = http_now_ms() + ep->backoff_ms;
	snprintf(ep->last_error, sizeof(ep->last_error), "%s", msg);
	snprintf(s->last_error, sizeof(s->last_error), "%s: %s", ep->label, msg);
}

static void ep_served(struct endpoint *ep, uint64_t bytes)
{
	ep->tried = true;
	ep->failing = false;
	ep->backoff_ms = 0;
	ep->retry_at = 0;
	ep->requests[REMOTE_OK]++;
	ep->bytes += bytes;
}

/* One range request to EP, with its credentials (one retry after a
 * challenge).  Outside s->mu. */
static int ep_get(struct shared *s, struct endpoint *ep, uint64_t off, void *buf, size_t len,
		  int64_t deadline, struct http_resp *rs)
{
	char authz[REMOTE_AUTHORIZATION_MAX] = "";
	struct http_req rq = {
		.url = ep->url, .off = off, .len = len, .buf = buf,
		.deadline_ms = deadline, .o = &s->o, .cancel = &s->stopping,
	};
	for (int attempt = 0; ; attempt++) {
		if (ep->auth && ep->auth->authorize) {
			struct stella_err e = { 0 };
			int r = ep->auth->authorize(ep->auth_ctx, authz, sizeof(authz), deadline, &s->stopping, &e);
			if (r < 0) {
				memset(rs, 0, sizeof(*rs));
				rs->result = REMOTE_REFUSED;
				snprintf(rs->error, sizeof(rs->error), "%s", stella_err_text(&e, r));
				return r;
			}
			rq.authorization = authz;
		}
		int r = http_get(&rq, rs);
		/* a host the endpoint redirected to (object storage) is not the
		 * endpoint: its challenge would send the endpoint's credentials
		 * to a realm of its choosing.  Its 401 is a refusal. */
		if (r == -EACCES && rs->status == 401 && !rs->same_origin) {
			snprintf(rs->error, sizeof(rs->error), "HTTP 401 from the host the mirror redirected to");
			return r;
		}
		if (r == -EACCES && rs->status == 401 && rs->www_authenticate_cut) {
			snprintf(rs->error, sizeof(rs->error), "HTTP 401 with a WWW-Authenticate longer than %d bytes",
				 REMOTE_CHALLENGE_MAX - 1);
			return r;
		}
		if (r == -EACCES && attempt == 0 && rs->status == 401 && ep->auth && ep->auth->challenge) {
			struct stella_err e = { 0 };
			int c = ep->auth->challenge(ep->auth_ctx, rs->www_authenticate, deadline, &s->stopping, &e);
			if (c == 0)
				continue;
		}
		return r;
	}
}

/* Under s->mu: how little EP is to be preferred for chunk IDX when the
 * caller needs [need_off, need_off+need_len) of it; -1 never (it served
 * wrong bytes there). */
static int ep_rank(struct shared *s, const struct endpoint *ep, uint64_t idx, uint64_t need_off,
		   uint64_t need_len, int64_t now)
{
	if (ep_bad_in(ep, need_off, need_len))
		return -1;
	return (ep->retry_at > now ? 2 : 0) + (ep_bad_in(ep, idx * REMOTE_CHUNK, chunk_len(s, idx)) ? 1 : 0);
}

/* Chunk IDX from the mirrors: in order, those in backoff after the others,
 * those that served wrong bytes elsewhere in the chunk after those, and
 * never one that served wrong bytes in what the caller needs.  BUF holds
 * the chunk's LEN bytes on success; *src the endpoint.  -EUCLEAN when no
 * mirror is left for the needed bytes. */
static int fetch_chunk(struct shared *s, uint64_t idx, uint64_t need_off, uint64_t need_len, uint8_t *buf,
		       size_t len, int64_t deadline, int *src)
{
	bool done[REMOTE_MAX_ENDPOINTS] = { false };
	int last = -EUCLEAN;
	for (;;) {
		pthread_mutex_lock(&s->mu);
		int64_t now = http_now_ms();
		int best = -1, best_rank = 0;
		size_t left_eps = 0;
		for (size_t j = 0; j < s->n; j++) {
			int rk = done[j] ? -1 : ep_rank(s, &s->ep[j], idx, need_off, need_len, now);
			if (rk < 0)
				continue;
			left_eps++;
			if (best < 0 || rk < best_rank) {
				best = (int)j;
				best_rank = rk;
			}
		}
		pthread_mutex_unlock(&s->mu);
		if (best < 0)
			break;
		struct endpoint *ep = &s->ep[best];
		int64_t left = deadline - now;
		if (left <= 0)
			return -ETIMEDOUT;
		/* a hanging mirror gets its share of the time, not all of it */
		int64_t share = left / (int64_t)left_eps;
		if (share < ATTEMPT_MIN_MS)
			share = left < ATTEMPT_MIN_MS ? left : ATTEMPT_MIN_MS;
		done[best] = true;
		struct http_resp rs;
		int r = ep_get(s, ep, idx * REMOTE_CHUNK, buf, len, now + share, &rs);
		if (r == 0 && rs.range.total != s->size) {
			rs.result = REMOTE_HTTP_ERROR;
			snprintf(rs.error, sizeof(rs.error), "the file there is %" PRIu64 " bytes, not %" PRIu64,
				 rs.range.total, s->size);
			r = -EIO;
		}
		pthread_mutex_lock(&s->mu);
		if (r == 0)
			ep_served(ep, rs.got);
		else
			ep_failed(s, ep, rs.result, rs.error);
		pthread_mutex_unlock(&s->mu);
		if (r == 0) {
			*src = best;
			return 0;
		}
		stella_log(LOG_NOTICE, "%s: bytes %" PRIu64 "+%zu: %s (%s)", ep->label,
			   idx * REMOTE_CHUNK, len, rs.error, remote_result_name(rs.result));
		last = r;
	}
	return last == -ENOMEM || last == -ETIMEDOUT || last == -EUCLEAN ? last : -EIO;
}

/* Chunk IDX, ready, with a reference the caller puts back (chunk_put),
 * holding bytes [need_off, need_off+need_len) from a mirror not known to
 * serve them wrong.  Waits at most until DEADLINE.  AHEAD: for the fetch
 * threads; a chunk fetched ahead goes to the disk cache only once a reader
 * takes it, so that what was never read does not push out what was. */
/* remote_local_only's: this thread's reads never wait for the network. */
static __thread bool local_only;

void remote_local_only(bool on)
{
	local_only = on;
}

/* remote_read_deadline's: 0, or when this thread's reads must end. */
static __thread int64_t read_deadline;

void remote_read_deadline(int64_t deadline_ms)
{
	read_deadline = deadline_ms;
}

static int get_chunk(struct shared *s, uint64_t idx, uint64_t need_off, uint64_t need_len, int64_t deadline,
		     bool ahead, struct chunk **out)
{
	pthread_mutex_lock(&s->mu);
	for (;;) {
		struct chunk *c = tab_find(s, idx);
		if (c && c->state == CH_READY && c->src >= 0 && ep_bad_in(&s->ep[c->src], need_off, need_len)) {
			/* fetched (by another reader) from where these bytes are bad */
			tab_remove(s, c);
			c = NULL;
		}
		if (c && c->state == CH_READY) {
			c->refs++;
			c->used = ++s->tick;
			s->mem_hits++;
			struct rcache *keep = !ahead && !c->on_disk && c->src >= 0 && s->rc && rcache_keeps(s->rc, idx) ?
						      s->rc : NULL;
			if (keep)
				c->on_disk = true;
			if (keep && write_later_locked(s, c))
				keep = NULL;
			pthread_mutex_unlock(&s->mu);
			if (keep)
				rcache_put(keep, idx, c->data, c->len);   /* our reference keeps data */
			*out = c;
			return 0;
		}
		if (!c)
			break;
		if (local_only) {
			pthread_mutex_unlock(&s->mu);
			return -EWOULDBLOCK;
		}
		/* another thread fetches it: wait for that, not for a second copy */
		int64_t left = deadline - http_now_ms();
		if (left <= 0) {
			pthread_mutex_unlock(&s->mu);
			return -ETIMEDOUT;
		}
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += left / 1000;
		ts.tv_nsec += (left % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&s->cv, &s->mu, &ts);
	}
	if (local_only && !(s->rc && rcache_has(s->rc, idx))) {
		pthread_mutex_unlock(&s->mu);
		return -EWOULDBLOCK;
	}
	struct chunk *c = calloc(1, sizeof(*c));
	size_t len = chunk_len(s, idx);
	uint8_t *data = buf_take(s);
	if (!c || !data || tab_add(s, c) < 0) {
		buf_release(s, data);
		pthread_mutex_unlock(&s->mu);
		free(c);
		return -ENOMEM;
	}
	c->idx = idx;
	c->state = CH_FETCHING;
	c->refs++;   /* ours */
	struct rcache *rc = s->rc;
	pthread_mutex_unlock(&s->mu);

	int src = -1;
	bool on_disk = false;
	int r = rc && rcache_get(rc, idx, data, len) == 0 ? 0 : -ENOENT;
	if (r == 0)
		on_disk = true;
	else if (local_only)
		r = -EWOULDBLOCK; /* the entry was damaged: dropped, fetched by another thread */
	else
		r = fetch_chunk(s, idx, need_off, need_len, data, len, deadline, &src);

	pthread_mutex_lock(&s->mu);
	if (r == 0) {
		c->data = data;
		c->len = len;
		c->src = src;
		c->state = CH_READY;
		c->used = ++s->tick;
		/* a reader's chunk goes to the disk cache, by a worker; one
		 * fetched ahead, once a reader takes it */
		struct rcache *keep = !on_disk && rc && !ahead && rc == s->rc && rcache_keeps(rc, idx) ? rc : NULL;
		c->on_disk = on_disk || keep != NULL;
		if (keep && write_later_locked(s, c))
			keep = NULL;
		if (keep) {
			/* the queue is full: this reader writes (and so waits
			 * for the disk the workers are behind on) */
			pthread_mutex_unlock(&s->mu);
			rcache_put(keep, idx, data, len);
			pthread_mutex_lock(&s->mu);
		}
		if (src >= 0) {
			s->src_hint[idx % SRC_HINTS].idx = idx;
			s->src_hint[idx % SRC_HINTS].src = src;
		}
		*out = c;
	} else {
		buf_release(s, data);
		/* ours, and the table's if it still holds it */
		c->refs -= tab_unlink(s, c) ? 2 : 1;
		if (c->refs == 0)
			chunk_free(s, c);
	}
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	return r;
}

static void chunk_put(struct shared *s, struct chunk *c)
{
	pthread_mutex_lock(&s->mu);
	chunk_put_locked(s, c);
	pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------ readahead */

/* Under s->mu, with one reference on C: have a worker write it to the
 * disk cache.  False (and nothing done) if none runs or too many wait:
 * the caller writes it itself. */
static bool write_later_locked(struct shared *s, struct chunk *c)
{
	if (s->nworkers == 0 || s->wqn == WRITES || s->stopping)
		return false;
	c->refs++;
	s->wq[s->wqn++] = c;
	pthread_cond_signal(&s->work);
	return true;
}

/* Under s->mu: until no chunk waits for or is in a disk cache write. */
static void writes_drain_locked(struct shared *s)
{
	while (s->wqn || s->writing)
		pthread_cond_wait(&s->cv, &s->mu);
}

/* Under s->mu, returns with it: the oldest waiting write, done. */
static void write_one_locked(struct shared *s)
{
	struct chunk *c = s->wq[0];
	memmove(s->wq, s->wq + 1, --s->wqn * sizeof(s->wq[0]));
	struct rcache *rc = s->rc;
	s->writing++;
	pthread_mutex_unlock(&s->mu);
	/* rc stays open: remote_bind drains the writes before it closes it */
	if (rc)
		rcache_put(rc, c->idx, c->data, c->len);
	pthread_mutex_lock(&s->mu);
	s->writing--;
	chunk_put_locked(s, c);
	pthread_cond_broadcast(&s->cv);
}

/* A worker: fetches ahead first (a reader may be about to wait for them),
 * disk cache writes after; at close, the writes still waiting are done
 * (a remount finds what was read), the fetches dropped. */
static void *worker_main(void *arg)
{
	struct shared *s = arg;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		while (!s->stopping && s->qn == 0 && s->wqn == 0)
			pthread_cond_wait(&s->work, &s->mu);
		if (s->wqn && (s->stopping || s->qn == 0)) {
			write_one_locked(s);
			continue;
		}
		if (s->stopping)
			break;
		uint64_t idx = s->queue[0];
		memmove(s->queue, s->queue + 1, --s->qn * sizeof(s->queue[0]));
		bool have = tab_find(s, idx) != NULL;
		unsigned ms = s->o.timeout_ms;
		pthread_mutex_unlock(&s->mu);
		struct chunk *c;
		if (!have && get_chunk(s, idx, idx * REMOTE_CHUNK, chunk_len(s, idx), deadline_after(ms), true, &c) == 0)
			chunk_put(s, c);
		pthread_mutex_lock(&s->mu);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* Under s->mu: chunk IDX onto the workers' queue, unless it is in memory
 * or queued already; false when the queue is full or no worker runs. */
static void workers_start_locked(struct shared *s)
{
	while (s->nworkers < WORKERS &&
	       pthread_create(&s->workers[s->nworkers], NULL, worker_main, s) == 0)
		s->nworkers++;
}

static bool queue_locked(struct shared *s, uint64_t idx)
{
	workers_start_locked(s);
	if (s->nworkers == 0)
		return false;
	if (tab_find(s, idx))
		return true;
	for (size_t q = 0; q < s->qn; q++)
		if (s->queue[q] == idx)
			return true;
	if (s->qn == sizeof(s->queue) / sizeof(s->queue[0]))
		return false;
	s->queue[s->qn++] = idx;
	pthread_cond_signal(&s->work);
	return true;
}

/* Under s->mu: queue up to N chunks after LAST for the workers (never
 * past the kit's end). */
static void readahead_locked(struct shared *s, uint64_t last, uint64_t n)
{
	uint64_t nchunks = (s->size + REMOTE_CHUNK - 1) / REMOTE_CHUNK;
	for (uint64_t i = last + 1; i <= last + n && i < nchunks; i++)
		if (!queue_locked(s, i))
			break;
}

/* Under s->mu, once bound: the read [off, off+len) of the kit's data
 * joins the stream it continues, or starts one (pushing out the least
 * recently used); how many chunks to fetch ahead of it.  A lone read
 * (the first at a random offset) gets none: it must not share the
 * network with fetches nobody asked for.  A stream earns a chunk per
 * STREAM_STEP it has read, up to READAHEAD. */
static uint64_t stream_note(struct shared *s, uint64_t off, uint64_t len)
{
	struct stream *st = NULL, *lru = &s->streams[0];
	for (size_t i = 0; i < STREAMS; i++) {
		struct stream *x = &s->streams[i];
		if (x->used && off <= x->next + STREAM_NEAR && off + STREAM_NEAR >= x->next) {
			st = x;
			break;
		}
		if (x->used < lru->used)
			lru = x;
	}
	if (!st) {
		*lru = (struct stream){ .next = off + len, .run = 0, .end = s->size };
		lru->used = ++s->stream_tick;
		return 0;
	}
	/* only bytes past its end count: the same page asked again (a
	 * failed read retried) is no progress */
	if (off + len > st->next) {
		st->run += off + len - (off > st->next ? off : st->next);
		st->next = off + len;
	}
	st->used = ++s->stream_tick;
	uint64_t n = st->run / STREAM_STEP;
	n = n < READAHEAD ? n : READAHEAD;
	/* never past where its reader said it stops (the file's end) */
	uint64_t last = (off + len - 1) / REMOTE_CHUNK, stop = (st->end - 1) / REMOTE_CHUNK;
	return last + n <= stop ? n : stop > last ? stop - last : 0;
}

void remote_hint_end(struct bytes *b, uint64_t off, uint64_t end)
{
	if (!bytes_is_remote(b))
		return;
	struct shared *s = ((struct rbytes *)b)->s;
	if (end == 0 || end > s->size)
		end = s->size;
	pthread_mutex_lock(&s->mu);
	struct stream *lru = &s->streams[0];
	bool found = false;
	for (size_t i = 0; i < STREAMS; i++) {
		struct stream *x = &s->streams[i];
		if (x->used && off <= x->next + STREAM_NEAR && off + STREAM_NEAR >= x->next) {
			x->end = end;
			found = true;
		} else if (x->used < lru->used) {
			lru = x;
		}
	}
	/* the kernel sends a file's first reads at once: the stream starts
	 * here, so that its end is known whichever read is noted first */
	if (!found && s->bound)
		*lru = (struct stream){ .next = off, .run = 0, .end = end, .used = ++s->stream_tick };
	pthread_mutex_unlock(&s->mu);
}

void remote_prefetch(struct bytes *b, uint64_t off, uint64_t len)
{
	if (!bytes_is_remote(b))
		return;
	struct shared *s = ((struct rbytes *)b)->s;
	if (len == 0 || off >= s->size)
		return;
	uint64_t first = off / REMOTE_CHUNK;
	uint64_t last = (off + len - 1 < s->size ? off + len - 1 : s->size - 1) / REMOTE_CHUNK;
	/* a chunk in the disk cache too: a worker reads and checks it (1 MiB
	 * read and hashed) while the reader's data is fetched */
	pthread_mutex_lock(&s->mu);
	for (uint64_t idx = first; idx <= last; idx++)
		if (!tab_find(s, idx) && !queue_locked(s, idx))
			break;
	pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------ bytes ops */

static ssize_t remote_read_at(struct bytes *b, void *buf, size_t len, uint64_t off)
{
	struct rbytes *rb = (struct rbytes *)b;
	struct shared *s = rb->s;
	if (off >= s->size)
		return 0;
	if (len > s->size - off)
		len = (size_t)(s->size - off);
	if (len == 0)
		return 0;
	int64_t deadline = deadline_after(s->o.timeout_ms);
	if (read_deadline && read_deadline < deadline)
		deadline = read_deadline;
	uint64_t first = off / REMOTE_CHUNK, last = (off + len - 1) / REMOTE_CHUNK;
	/* a handle may be read from several threads at once: its streak is
	 * kept under the lock (a guess either way, never a correctness matter) */
	pthread_mutex_lock(&s->mu);
	uint64_t ahead = 0;
	if (s->bound) {
		/* the head (trees, index) is pinned in the disk cache: reads
		 * of it earn nothing; the data's readers, by their stream */
		if (off + len > s->head_len)
			ahead = stream_note(s, off, len);
	} else {
		/* a mount reading the head, through its own handle.  Near
		 * where the last read ended counts: a reader's reads arrive
		 * from several threads, a little out of order */
		uint64_t dist = off > rb->next_off ? off - rb->next_off : rb->next_off - off;
		bool near = rb->next_off != UINT64_MAX && dist <= SEQ_SLACK && off != rb->last_off;
		rb->streak = near ? rb->streak + len : 0;
		rb->next_off = off + len;
		rb->last_off = off;
		/* ahead by as many chunks as it has gone through in a row: a
		 * walk over tar headers, small reads near each other, does not
		 * pull in the big files between them; an advised sequential
		 * reader once it has gone through a chunk */
		bool eager = rb->sequential && rb->streak >= REMOTE_CHUNK;
		ahead = eager ? READAHEAD : rb->streak / REMOTE_CHUNK;
	}
	if (ahead > 0)
		readahead_locked(s, last, ahead < READAHEAD ? ahead : READAHEAD);
	pthread_mutex_unlock(&s->mu);
	size_t done = 0;
	for (uint64_t idx = first; idx <= last; idx++) {
		struct chunk *c;
		uint64_t need_off = off + done, cend = (idx + 1) * REMOTE_CHUNK;
		uint64_t need_len = (off + len < cend ? off + len : cend) - need_off;
		int r = get_chunk(s, idx, need_off, need_len, deadline, false, &c);
		if (r == -EWOULDBLOCK)
			return r;
		if (r == -EUCLEAN) {
			stella_log(LOG_NOTICE, "%s: bytes %" PRIu64 "+%zu: every mirror served them wrong", b->name,
				   off, len);
			return -EUCLEAN;
		}
		if (r < 0) {
			stella_log(LOG_NOTICE, "%s: bytes %" PRIu64 "+%zu: %s", b->name, off, len,
				   r == -ETIMEDOUT ? "no mirror answered in time" : "no mirror could serve them");
			return r == -ENOMEM ? -ENOMEM : -REMOTE_EUNSERVED;
		}
		uint64_t cstart = idx * REMOTE_CHUNK;
		uint64_t from = off + done - cstart;
		size_t n = (size_t)(c->len - from);
		if (n > len - done)
			n = len - done;
		memcpy((uint8_t *)buf + done, c->data + from, n);
		done += n;
		chunk_put(s, c);
	}
	return (ssize_t)done;
}

static void remote_advise_sequential(struct bytes *b)
{
	((struct rbytes *)b)->sequential = true;
}

static int new_handle(struct shared *s, const char *name, struct bytes **out)
{
	struct rbytes *rb = calloc(1, sizeof(*rb));
	if (!rb || !(rb->b.name = strdup(name))) {
		free(rb);
		return -ENOMEM;
	}
	rb->b.ops = &remote_ops;
	rb->b.size = s->size;
	rb->s = s;
	rb->next_off = rb->last_off = UINT64_MAX;
	*out = &rb->b;
	return 0;
}

static int remote_dup(const struct bytes *b, struct bytes **out, struct stella_err *e)
{
	struct shared *s = ((const struct rbytes *)b)->s;
	int r = new_handle(s, b->name, out);
	if (r < 0)
		return stella_fail_errno(e, r, "%s", b->name);
	memcpy((*out)->identity, b->identity, sizeof(b->identity));
	pthread_mutex_lock(&s->mu);
	s->refs++;
	pthread_mutex_unlock(&s->mu);
	return 0;
}

static void shared_free(struct shared *s)
{
	pthread_mutex_lock(&s->mu);
	s->stopping = true;
	pthread_cond_broadcast(&s->cv);
	pthread_cond_broadcast(&s->work);
	pthread_mutex_unlock(&s->mu);
	for (int i = 0; i < s->nworkers; i++)
		pthread_join(s->workers[i], NULL);
	for (size_t i = 0; i < s->ntab; i++)
		chunk_put_locked(s, s->tab[i]);
	free(s->tab);
	while (s->npool)
		free(s->pool[--s->npool]);
	for (size_t i = 0; i < s->n; i++) {
		struct endpoint *ep = &s->ep[i];
		if (ep->auth && ep->auth->free)
			ep->auth->free(ep->auth_ctx);
		pthread_mutex_destroy(&ep->auth_mu);
		free(ep->url);
		free(ep->label);
		free(ep->bad);
	}
	if (s->rc)
		rcache_close(s->rc);
	rcache_close(s->retired);
	free((char *)s->o.cache_dir);
	free((char *)s->o.cacert);
	free((char *)s->o.proxy);
	free((char *)s->o.client_cert);
	free((char *)s->o.client_key);
	pthread_cond_destroy(&s->cv);
	pthread_cond_destroy(&s->work);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

static void remote_close(struct bytes *b)
{
	struct rbytes *rb = (struct rbytes *)b;
	struct shared *s = rb->s;
	pthread_mutex_lock(&s->mu);
	bool last = --s->refs == 0;
	pthread_mutex_unlock(&s->mu);
	if (last)
		shared_free(s);
	free(b->name);
	free(rb);
}

/* Under s->mu: the endpoint that served chunk IDX (in memory, or last
 * fetched), -1 if unknown or the disk cache. */
static int chunk_source(struct shared *s, uint64_t idx)
{
	struct chunk *c = tab_find(s, idx);
	if (c && c->state == CH_READY)
		return c->src;
	if (s->src_hint[idx % SRC_HINTS].idx == idx)
		return s->src_hint[idx % SRC_HINTS].src;
	return -1;
}

/* bytes.h: [off, off+len) failed verification above. */
static int remote_report_bad(struct bytes *b, uint64_t off, uint64_t len)
{
	struct shared *s = ((struct rbytes *)b)->s;
	if (len == 0 || off >= s->size)
		return -EIO;
	if (len > s->size - off)
		len = s->size - off;
	uint64_t first = off / REMOTE_CHUNK, last = (off + len - 1) / REMOTE_CHUNK;
	pthread_mutex_lock(&s->mu);
	for (uint64_t idx = first; idx <= last; idx++) {
		uint64_t cs = idx * REMOTE_CHUNK, ce = cs + chunk_len(s, idx);
		uint64_t bo = off > cs ? off : cs, be = off + len < ce ? off + len : ce;
		int src = chunk_source(s, idx);
		if (src >= 0) {
			struct endpoint *ep = &s->ep[src];
			ep_mark_bad(ep, bo, be - bo);
			ep->requests[REMOTE_BAD_BYTES]++;
			ep->failures++;
			ep->failing = true;
			snprintf(ep->last_error, sizeof(ep->last_error), "bytes %" PRIu64 "+%" PRIu64 " failed verification",
				 bo, be - bo);
			snprintf(s->last_error, sizeof(s->last_error), "%s: %s", ep->label, ep->last_error);
			stella_log(LOG_ERR, "%s: bytes %" PRIu64 "+%" PRIu64 " failed verification; never asked "
				   "for them again", ep->label, bo, be - bo);
		}
		struct chunk *c = tab_find(s, idx);
		if (c && c->state == CH_READY)
			tab_remove(s, c);
		if (s->rc)
			rcache_drop(s->rc, idx);
	}
	bool more = false;
	for (size_t i = 0; i < s->n; i++)
		more |= !ep_bad_in(&s->ep[i], off, len);
	if (!more)
		s->unserved++;
	pthread_mutex_unlock(&s->mu);
	return more ? 0 : -EIO;
}

static const struct bytes_ops remote_ops = {
	.read_at = remote_read_at,
	.advise_sequential = remote_advise_sequential,
	.dup = remote_dup,
	.close = remote_close,
	.report_bad = remote_report_bad,
};

/* ------------------------------------------------------------ open */

static int opts_copy(struct remote_opts *d, const struct remote_opts *o)
{
	*d = (struct remote_opts){ .cache_size = REMOTE_CACHE_SIZE_DEFAULT,
				   .timeout_ms = REMOTE_TIMEOUT_DEFAULT_MS };
	if (!o)
		return 0;
	d->cache_size = o->cache_size ? o->cache_size : REMOTE_CACHE_SIZE_DEFAULT;
	d->timeout_ms = o->timeout_ms ? o->timeout_ms : REMOTE_TIMEOUT_DEFAULT_MS;
	d->cancel = o->cancel;
	const char *const src[] = { o->cache_dir, o->cacert, o->proxy, o->client_cert, o->client_key };
	const char **dst[] = { &d->cache_dir, &d->cacert, &d->proxy, &d->client_cert, &d->client_key };
	for (size_t i = 0; i < 5; i++)
		if (src[i] && !(*dst[i] = strdup(src[i])))
			return -ENOMEM;
	return 0;
}

static void set_url_identity(struct bytes *b, const char *url)
{
	char h[65];
	sha256_hex(url, strlen(url), h);
	snprintf(b->identity, sizeof(b->identity), "url:%s", h);
}

/* The first chunk from the first endpoint that answers: the kit's size. */
static int open_fetch(struct shared *s, int64_t deadline, const struct remote_endpoint *eps,
		      struct stella_err *e)
{
	uint8_t *buf = malloc(REMOTE_CHUNK);
	if (!buf)
		return -ENOMEM;
	int r = -EIO;
	char why[400] = "";
	for (size_t i = 0; i < s->n; i++) {
		struct endpoint *ep = &s->ep[i];
		struct http_resp rs;
		int64_t now = http_now_ms(), left = deadline - now;
		if (left <= 0)
			break;
		int64_t share = left / (int64_t)(s->n - i);
		if (share < ATTEMPT_MIN_MS)
			share = left;
		r = ep_get(s, ep, 0, buf, REMOTE_CHUNK, now + share, &rs);
		if (r == 0 && rs.range.total == UINT64_MAX) {
			rs.result = REMOTE_HTTP_ERROR;
			snprintf(rs.error, sizeof(rs.error), "no size in its Content-Range");
			r = -EIO;
		}
		if (r == 0 && eps[i].size && rs.range.total != eps[i].size) {
			rs.result = REMOTE_HTTP_ERROR;
			snprintf(rs.error, sizeof(rs.error), "%" PRIu64 " bytes, not the %" PRIu64 " its descriptor states",
				 rs.range.total, eps[i].size);
			r = -EIO;
		}
		if (r == 0) {
			ep_served(ep, rs.got);
			s->size = rs.range.total;
			s->open_src = (int)i;
			snprintf(s->validator, sizeof(s->validator), "%s", rs.etag[0] ? rs.etag : rs.last_modified);
			struct chunk *c = calloc(1, sizeof(*c));
			if (!c || tab_add(s, c) < 0) {
				free(c);
				free(buf);
				return -ENOMEM;
			}
			c->state = CH_READY;
			c->data = buf;
			c->len = (size_t)rs.got;
			c->src = (int)i;
			c->used = ++s->tick;
			s->src_hint[0].src = (int)i;
			return 0;
		}
		ep_failed(s, ep, rs.result, rs.error);
		if (!why[0] || i == 0)
			snprintf(why, sizeof(why), "%s", rs.error);
		if (r == -EACCES && s->n == 1)
			break;
	}
	free(buf);
	if (r == 0)
		r = -ETIMEDOUT;
	if (s->n == 1)
		return stella_fail(e, r, "%s: %s", s->ep[0].label, why[0] ? why : "no time left");
	return stella_fail(e, r, "%s: no mirror answers (%zu tried; the first: %s)", s->ep[0].label, s->n,
			   why[0] ? why : "no time left");
}

/* Every endpoint down: the disk cache of the kit this URL served last. */
static int open_offline(struct shared *s)
{
	if (!s->o.cache_dir)
		return -ENOENT;
	for (size_t i = 0; i < s->n; i++) {
		char key[65];
		uint64_t size, head;
		if (rcache_lookup_url(s->o.cache_dir, s->ep[i].url, key, &size, &head, NULL) < 0)
			continue;
		struct rcache *rc;
		struct stella_err e = { 0 };
		if (rcache_open(s->o.cache_dir, key, size, REMOTE_CHUNK, head, s->o.cache_size, &rc, &e) < 0)
			continue;
		s->rc = rc;
		s->size = size;
		s->head_len = head;
		memcpy(s->key, key, sizeof(s->key));
		return 0;
	}
	return -ENOENT;
}

/* A mirror answered: if it serves the kit it served when the cache last
 * saw it (the same size and the same validator), use that kit's cache
 * already, so that the head is read from disk.  A kit rewritten under the
 * same ETag would still be caught: the head is verified above, and
 * remote_bind rekeys the cache by the manifest it finds. */
static void open_cached(struct shared *s)
{
	if (!s->o.cache_dir || s->open_src < 0 || !s->validator[0])
		return;
	char key[65], v[128];
	uint64_t size, head;
	if (rcache_lookup_url(s->o.cache_dir, s->ep[s->open_src].url, key, &size, &head, v) < 0 ||
	    size != s->size || strcmp(v, s->validator) != 0)
		return;
	struct stella_err e = { 0 };
	struct rcache *rc;
	if (rcache_open(s->o.cache_dir, key, size, REMOTE_CHUNK, head, s->o.cache_size, &rc, &e) < 0)
		return;
	s->rc = rc;
	s->head_len = head;
	memcpy(s->key, key, sizeof(s->key));
}

/* The auth contexts of EPS[FROM..N), which remote_open took over but
 * never got to hand to an endpoint of its own. */
static void auth_ctxs_free(const struct remote_endpoint *eps, size_t from, size_t n)
{
	for (size_t i = from; i < n; i++)
		if (eps[i].auth && eps[i].auth->free)
			eps[i].auth->free(eps[i].auth_ctx);
}

int remote_open(const struct remote_endpoint *eps, size_t n, const struct remote_opts *o,
		struct bytes **out, struct stella_err *e)
{
	if (n == 0 || n > REMOTE_MAX_ENDPOINTS) {
		auth_ctxs_free(eps, 0, n > REMOTE_MAX_ENDPOINTS ? REMOTE_MAX_ENDPOINTS : n);
		return stella_fail(e, -EINVAL, "between 1 and %d locations of a kit, not %zu",
				   REMOTE_MAX_ENDPOINTS, n);
	}
	int r0 = http_usable(e);
	if (r0 < 0) {
		auth_ctxs_free(eps, 0, n);
		return r0;
	}
	struct shared *s = calloc(1, sizeof(*s));
	if (!s) {
		auth_ctxs_free(eps, 0, n);
		return -ENOMEM;
	}
	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&s->work, NULL);
	s->refs = 1;
	s->open_src = -1;
	for (size_t i = 0; i < SRC_HINTS; i++)
		s->src_hint[i].src = -1;
	int r = opts_copy(&s->o, o);
	for (size_t i = 0; r == 0 && i < n; i++) {
		struct endpoint *ep = &s->ep[i];
		pthread_mutex_init(&ep->auth_mu, NULL);
		s->n = i + 1;
		ep->auth = eps[i].auth;
		ep->auth_ctx = eps[i].auth_ctx;
		const char *label = eps[i].label ? eps[i].label : eps[i].url;
		/* the label is shown (status, logs, messages): never a password */
		if (!(ep->url = strdup(eps[i].url)) || !(ep->label = http_redact(label)))
			r = -ENOMEM;
		else if (http_origin(eps[i].url, ep->origin, sizeof(ep->origin)) < 0)
			r = stella_fail(e, -EINVAL, "%s: not a URL", ep->label);
	}
	auth_ctxs_free(eps, s->n, n); /* those no endpoint took (s->n of them did) */
	if (r == 0) {
		r = open_fetch(s, deadline_after(s->o.timeout_ms), eps, e);
		if (r < 0 && r != -ENOMEM && open_offline(s) == 0) {
			stella_log(LOG_NOTICE, "%s: no mirror answers; serving from the cache", s->ep[0].label);
			*e = (struct stella_err){ 0 };
			r = 0;
		}
	}
	if (r == 0 && !s->rc)
		open_cached(s);
	if (r == 0)
		r = new_handle(s, s->ep[0].label, out);
	if (r < 0) {
		shared_free(s);
		return r == -ENOMEM ? stella_fail_errno(e, r, "opening a remote kit") : r;
	}
	/* offline, the cache's key is all there is; online, the identity is
	 * the URL's until remote_bind names the kit by its verified manifest */
	if (s->key[0] && s->open_src < 0)
		snprintf((*out)->identity, sizeof((*out)->identity), "remote:%s", s->key);
	else
		set_url_identity(*out, s->ep[0].url);
	return 0;
}

/* ------------------------------------------------------------ bind, stats */

int remote_bind(struct bytes *b, const char *key, uint64_t head_len, struct stella_err *e)
{
	if (!bytes_is_remote(b))
		return 0;
	struct shared *s = ((struct rbytes *)b)->s;
	if (strlen(key) != 64)
		return stella_fail(e, -EINVAL, "%s: not a sha256: %s", b->name, key);
	snprintf(b->identity, sizeof(b->identity), "remote:%s", key);
	pthread_mutex_lock(&s->mu);
	/* the workers start now, not at the first read that needs one: that
	 * read does not wait for their creation */
	workers_start_locked(s);
	/* no write may still be on its way into a cache closed here */
	writes_drain_locked(s);
	bool same = s->rc && strcmp(s->key, key) == 0;
	struct rcache *old = same ? NULL : s->rc, *gone = NULL;
	if (old) {
		gone = s->retired; /* a second rebind: none of ours makes one */
		s->retired = old;
	}
	if (!same)
		s->rc = NULL;
	memcpy(s->key, key, 65);
	s->head_len = head_len;
	s->bound = true;
	pthread_mutex_unlock(&s->mu);
	rcache_close(gone);
	if (!s->o.cache_dir)
		return 0;
	struct rcache *rc = NULL;
	if (!same) {
		int r = rcache_open(s->o.cache_dir, key, s->size, REMOTE_CHUNK, head_len, s->o.cache_size, &rc, e);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < s->n; i++)
		rcache_remember_url(s->o.cache_dir, s->ep[i].url, key, s->size, head_len,
				    (int)i == s->open_src ? s->validator : "");
	pthread_mutex_lock(&s->mu);
	if (rc)
		s->rc = rc;
	rc = s->rc;
	/* what was fetched before the key was known (the head) goes to disk
	 * now; copies, so that no chunk is held across the writes */
	size_t nc = 0;
	struct chunk **cs = malloc(s->ntab * sizeof(*cs) + 1);
	for (size_t i = 0; cs && i < s->ntab; i++) {
		if (s->tab[i]->state == CH_READY && !s->tab[i]->on_disk && s->tab[i]->src >= 0) {
			cs[nc++] = s->tab[i];
			s->tab[i]->refs++;
			s->tab[i]->on_disk = true;
		}
	}
	pthread_mutex_unlock(&s->mu);
	for (size_t i = 0; i < nc; i++) {
		rcache_put(rc, cs[i]->idx, cs[i]->data, cs[i]->len);
		chunk_put(s, cs[i]);
	}
	free(cs);
	return 0;
}

void remote_flush(struct bytes *b)
{
	if (!bytes_is_remote(b))
		return;
	struct shared *s = ((struct rbytes *)b)->s;
	pthread_mutex_lock(&s->mu);
	writes_drain_locked(s);
	pthread_mutex_unlock(&s->mu);
}

int remote_stats(struct bytes *b, struct remote_stats *st)
{
	if (!bytes_is_remote(b))
		return -EINVAL;
	struct shared *s = ((struct rbytes *)b)->s;
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&s->mu);
	st->n = s->n;
	int64_t now = http_now_ms();
	for (size_t i = 0; i < s->n; i++) {
		const struct endpoint *ep = &s->ep[i];
		struct remote_mirror_stat *m = &st->m[i];
		snprintf(m->url, sizeof(m->url), "%s", ep->label);
		snprintf(m->origin, sizeof(m->origin), "%s", ep->origin);
		m->state = !ep->tried ? "untried" : ep->failing ? "failing" : "ok";
		m->failures = ep->failures;
		snprintf(m->last_error, sizeof(m->last_error), "%s", ep->last_error);
		m->bytes = ep->bytes;
		memcpy(m->requests, ep->requests, sizeof(m->requests));
		(void)now;
	}
	st->unserved = s->unserved;
	struct rcache *rc = s->rc;
	if (rc)
		rcache_counts(rc, &st->cache_bytes, &st->cache_hits);
	pthread_mutex_unlock(&s->mu);
	return 0;
}

void remote_last_error(struct bytes *b, char *out, size_t len)
{
	if (len == 0)
		return;
	out[0] = 0;
	if (!bytes_is_remote(b))
		return;
	struct shared *s = ((struct rbytes *)b)->s;
	pthread_mutex_lock(&s->mu);
	snprintf(out, len, "%s", s->last_error);
	pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------ probe */

int remote_probe(const char *url, const struct remote_opts *o, const char *validator,
		 char out[256], struct stella_err *e)
{
	unsigned ms = o && o->timeout_ms ? o->timeout_ms : REMOTE_TIMEOUT_DEFAULT_MS;
	bool is_etag = validator && validator[0] == '"';
	bool is_weak = validator && strncmp(validator, "W/\"", 3) == 0;
	uint8_t one;
	struct http_req rq = {
		.url = url, .off = 0, .len = 1, .buf = &one,
		.deadline_ms = deadline_after(ms), .o = o,
		.if_none_match = (is_etag || is_weak) ? validator : NULL,
		.if_modified_since = validator && validator[0] && !is_etag && !is_weak ? validator : NULL,
	};
	struct http_resp rs;
	int r = http_get(&rq, &rs);
	if (r < 0 && rs.status == 304)
		return 0;
	if (r < 0 && rs.status == 200)
		r = 0;   /* a server that ignores Range: its headers are all a probe needs */
	if (r < 0)
		return stella_fail(e, r, "%s: %s", url, rs.error);
	const char *v = rs.etag[0] ? rs.etag : rs.last_modified;
	snprintf(out, 256, "%s", v);
	/* without a validator every probe says "changed": the import that
	 * follows finds out (the store refuses what it already has) */
	return !v[0] || !validator || strcmp(v, validator) != 0 ? 1 : 0;
}

bool remote_resident(struct bytes *b, uint64_t off, uint64_t len)
{
	if (!bytes_is_remote(b))
		return true;
	struct shared *s = ((struct rbytes *)b)->s;
	if (len == 0 || off >= s->size)
		return true;
	uint64_t last = (off + len - 1 < s->size ? off + len - 1 : s->size - 1) / REMOTE_CHUNK;
	bool all = true;
	pthread_mutex_lock(&s->mu);
	for (uint64_t idx = off / REMOTE_CHUNK; all && idx <= last; idx++) {
		struct chunk *c = tab_find(s, idx);
		all = (c && c->state == CH_READY) || (s->rc && rcache_has(s->rc, idx));
	}
	pthread_mutex_unlock(&s->mu);
	return all;
}
