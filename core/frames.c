#include "frames.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
/* ZSTD_d_forceIgnoreChecksum (zstd >= 1.4.7) is in the experimental part
 * of the API; setting it is best effort (dctx_new). */
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include "bytes.h"
#include "merkle.h"
#include "util.h"

/* A slot holds one decoded span.  Its state changes under the kit's lock;
 * its buffer is written only by the one thread that has it DECODING, and
 * is immutable while READY, so readers copy out of it (and trust digests
 * of it) without the lock, holding a reference. */
enum slot_state { SLOT_EMPTY, SLOT_QUEUED, SLOT_DECODING, SLOT_READY, SLOT_FAILED };

struct slot {
	enum slot_state state;
	size_t span;
	uint64_t seq;             /* QUEUED: order of the queue */
	uint64_t last_use;
	int refs;                 /* readers copying out of it */
	bool stale;               /* decoded from bytes found bad (frames_forget):
				   * never found again, taken like an empty slot */
	int phase;                /* tar offset % 4096 of the blocks to hash; -1: none */
	uint8_t *map;             /* the decoded bytes (big_alloc) */
	size_t mapsize;
	uint8_t (*dig)[32];       /* digests of the blocks at hash_base + k * 4096 */
	size_t digsize;
	size_t ndig;
	uint64_t hash_base;
	struct stella_err err;    /* FAILED: why */
};

/* A reader going forward: its reads begin in the span it last ended in,
 * or in the next one. */
struct stream {
	bool live;
	unsigned hits;            /* reads that continued it */
	size_t last;              /* the span its latest read ended in */
	int phase;                /* -1: its reads are small, no digests ahead */
	uint64_t used;
};

struct frames {
	struct bytes *b;
	const char *name;
	size_t n;                 /* spans */
	uint64_t *out, *in;       /* n + 1 each: span i is [out[i], out[i+1]) */
	unsigned nslots, ahead;

	pthread_mutex_t lock;
	pthread_cond_t cond;      /* a slot changed state or lost a reference */
	struct slot slots[FRAMES_SLOTS];
	struct stream streams[FRAMES_STREAMS];
	uint64_t clock, seq;
	uint64_t reads;           /* note_stream calls: the streams' clock */
	bool closing;
	struct frames_stats st;

	/* the pool's, under its lock */
	struct frames *qnext;
	bool in_queue;
	unsigned active;          /* workers that took it off the queue */
};

/* ---- the worker pool, one per process ---- */

struct worker {
	pthread_t thread;
	ZSTD_DCtx *dc;
	uint8_t *in;              /* the span's compressed bytes (big_alloc) */
	size_t incap;
};

/* Large buffers kept for long (decoded spans, the workers' input):
 * anonymous memory, so that a closed kit's goes back to the system, and
 * aligned for transparent huge pages (MADV_HUGEPAGE, where the system
 * allows it): on the VM measured, a 4 KiB page fault cost about 20 us, and
 * a 4 MiB span buffer touched for the first time 1024 of them. */
#define HUGE_PAGE (2u << 20)

static size_t page_round(size_t n) { return (n + 4095) / 4096 * 4096; }

static void *big_alloc(size_t size)
{
	size = page_round(size);
	size_t len = size + HUGE_PAGE;
	uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	uint8_t *a = (uint8_t *)(((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (p + len > a + size)
		munmap(a + size, (size_t)(p + len - (a + size)));
	(void)madvise(a, size, MADV_HUGEPAGE); /* best effort */
	return a;
}

static void big_free(void *p, size_t size)
{
	if (p)
		munmap(p, page_round(size));
}

/* Lock order: a kit's lock, then the pool's; never the other way. */
static struct {
	pthread_mutex_t life;     /* held while the pool starts or stops */
	pthread_mutex_t lock;
	pthread_cond_t work;      /* workers wait here for a queued kit */
	pthread_cond_t idle;      /* frames_free and fork wait for workers to let go */
	unsigned refs;            /* kits alive */
	unsigned nthreads;
	unsigned busy;            /* workers inside a kit */
	unsigned started;         /* workers that have come as far as the pool's lock */
	bool stop, paused;
	struct frames *head, *tail;   /* kits with queued spans, each once */
	struct worker w[FRAMES_WORKERS_MAX];
} pool = {
	.life = PTHREAD_MUTEX_INITIALIZER,
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.work = PTHREAD_COND_INITIALIZER,
	.idle = PTHREAD_COND_INITIALIZER,
};

static atomic_size_t held;  /* bytes of span buffers, all kits */

static unsigned pool_size(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > (long)FRAMES_WORKERS_MAX ? FRAMES_WORKERS_MAX : (unsigned)n;
}

size_t frames_held(void) { return atomic_load(&held); }

unsigned frames_workers(void)
{
	pthread_mutex_lock(&pool.lock);
	unsigned n = pool.nthreads;
	pthread_mutex_unlock(&pool.lock);
	return n;
}

static void work_on(struct frames *fs, struct worker *w);

/* A decoder that does not verify the frames' XXH64 content checksums: every
 * byte a read returns is checked against the Merkle tree of the signed
 * manifest (snapshot.c) whatever zstd says, so the checksum bought nothing
 * but a pass over each span (a corrupt frame that still decodes to the
 * indexed length fails the Merkle check of the very blocks it spoils, with
 * EIO on those blocks only).  A library without the parameter checks it,
 * as before. */
static ZSTD_DCtx *dctx_new(void)
{
	ZSTD_DCtx *dc = ZSTD_createDCtx();
	if (dc)
		(void)ZSTD_DCtx_setParameter(dc, ZSTD_d_forceIgnoreChecksum, ZSTD_d_ignoreChecksum);
	return dc;
}

/* A worker decodes and hashes at the process's priority (its main
 * thread's nice), whatever the thread that started the pool ran at: in
 * stellafs a FUSE worker may start it while raised (fs/ops.c: waiting
 * workers, and reads that hash nothing themselves, run at nice -10; so
 * do control commands such as verify), and a thread inherits its
 * creator's nice.  Best effort. */
static void worker_nice(void)
{
	errno = 0;
	int n = getpriority(PRIO_PROCESS, (id_t)getpid());
	if (errno == 0)
		(void)setpriority(PRIO_PROCESS, (id_t)gettid(), n);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	worker_nice();
	pthread_mutex_lock(&pool.lock);
	pool.started++;
	pthread_cond_broadcast(&pool.idle);
	for (;;) {
		while (!pool.stop && (pool.paused || !pool.head))
			pthread_cond_wait(&pool.work, &pool.lock);
		if (pool.stop)
			break;
		struct frames *fs = pool.head;
		if (!(pool.head = fs->qnext))
			pool.tail = NULL;
		fs->qnext = NULL;
		fs->in_queue = false;
		fs->active++;
		pool.busy++;
		pthread_mutex_unlock(&pool.lock);
		work_on(fs, w);
		pthread_mutex_lock(&pool.lock);
		fs->active--;
		pool.busy--;
		pthread_cond_broadcast(&pool.idle);
	}
	pthread_mutex_unlock(&pool.lock);
	return NULL;
}

static void worker_free(struct worker *w)
{
	ZSTD_freeDCtx(w->dc);
	big_free(w->in, w->incap);
	memset(w, 0, sizeof(*w));
}

/* Under the pool lock: the workers, if none run yet.  Fewer than asked
 * (or none: then queued spans wait for a reader to take them over) when
 * threads cannot be had. */
static void pool_start(void)
{
	if (pool.nthreads || pool.stop)
		return;
	unsigned want = pool_size();
	for (unsigned i = 0; i < want; i++) {
		struct worker *w = &pool.w[pool.nthreads];
		if (!(w->dc = dctx_new()) || pthread_create(&w->thread, NULL, worker_main, w) != 0) {
			worker_free(w);
			break;
		}
		pool.nthreads++;
	}
}

/* A forked child has none of the workers (stellafs forks after opening its
 * kit): the pool is quiet across fork(), and the child starts its own.
 * Quiet means no worker in a kit, and none still starting: a thread just
 * created may be inside the C library's or a sanitizer's thread set-up,
 * holding an allocator lock the child would then find taken for ever
 * (seen: test_frames's fork under ASan, 1 run in 3, hung). */
static void fork_prepare(void)
{
	pthread_mutex_lock(&pool.life);
	pthread_mutex_lock(&pool.lock);
	pool.paused = true;
	while (pool.busy || pool.started < pool.nthreads)
		pthread_cond_wait(&pool.idle, &pool.lock);
}

static void fork_parent(void)
{
	pool.paused = false;
	pthread_cond_broadcast(&pool.work);
	pthread_mutex_unlock(&pool.lock);
	pthread_mutex_unlock(&pool.life);
}

static void fork_child(void)
{
	for (unsigned i = 0; i < pool.nthreads; i++)
		worker_free(&pool.w[i]);
	pool.nthreads = pool.started = 0;
	pool.paused = false;
	pthread_cond_init(&pool.work, NULL);
	pthread_cond_init(&pool.idle, NULL);
	/* Kits still queued get workers at the next decode ahead; meanwhile
	 * their readers take queued spans over. */
	pthread_mutex_unlock(&pool.lock);
	pthread_mutex_unlock(&pool.life);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void atfork_init(void) { pthread_atfork(fork_prepare, fork_parent, fork_child); }

static void pool_ref(void)
{
	pthread_once(&atfork_once, atfork_init);
	pthread_mutex_lock(&pool.life);
	pthread_mutex_lock(&pool.lock);
	pool.refs++;
	pthread_mutex_unlock(&pool.lock);
	pthread_mutex_unlock(&pool.life);
}

/* The last kit gone: the workers end. */
static void pool_unref(void)
{
	pthread_mutex_lock(&pool.life);
	pthread_mutex_lock(&pool.lock);
	unsigned n = --pool.refs ? 0 : pool.nthreads;
	if (n)
		pool.stop = true;
	pthread_cond_broadcast(&pool.work);
	pthread_mutex_unlock(&pool.lock);
	for (unsigned i = 0; i < n; i++) {
		pthread_join(pool.w[i].thread, NULL);
		worker_free(&pool.w[i]);
	}
	pthread_mutex_lock(&pool.lock);
	if (n) {
		pool.nthreads = pool.started = 0;
		pool.stop = false;
	}
	pthread_mutex_unlock(&pool.lock);
	pthread_mutex_unlock(&pool.life);
}

/* Under fs->lock: have a worker look at fs. */
static void pool_enqueue(struct frames *fs)
{
	pthread_mutex_lock(&pool.lock);
	pool_start();
	if (!fs->in_queue) {
		fs->in_queue = true;
		fs->qnext = NULL;
		if (pool.tail)
			pool.tail->qnext = fs;
		else
			pool.head = fs;
		pool.tail = fs;
	}
	pthread_cond_signal(&pool.work);
	pthread_mutex_unlock(&pool.lock);
}

/* ---- spans ---- */

static uint64_t span_len(const struct frames *fs, size_t i) { return fs->out[i + 1] - fs->out[i]; }

/* Decodable in one call into a bounded buffer. */
static bool span_ok(const struct frames *fs, size_t i)
{
	return span_len(fs, i) <= FRAMES_SPAN_MAX && fs->in[i + 1] - fs->in[i] <= ZSTD_COMPRESSBOUND(FRAMES_SPAN_MAX);
}

static size_t span_of(const struct frames *fs, uint64_t off)
{
	size_t lo = 0, hi = fs->n;
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (fs->out[mid] <= off)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* What a slot holds for span i: the bytes, and a digest per block. */
static size_t inplace_margin(size_t len);
static size_t buf_need(const struct frames *fs, size_t i)
{
	size_t len = (size_t)span_len(fs, i);
	return page_round(len + inplace_margin(len));
}
static size_t dig_need(const struct frames *fs, size_t i) { return ((size_t)span_len(fs, i) / MERKLE_BLOCK + 1) * 32; }
static size_t map_need(const struct frames *fs, size_t i) { return buf_need(fs, i) + dig_need(fs, i); }
static size_t slot_size(const struct slot *sl) { return sl->mapsize + sl->digsize; }

static void slot_free(struct slot *sl)
{
	big_free(sl->map, sl->mapsize);
	free(sl->dig);
	atomic_fetch_sub(&held, slot_size(sl));
	sl->map = NULL;
	sl->dig = NULL;
	sl->mapsize = sl->digsize = 0;
}

void frames_forget(struct frames *fs, uint64_t from, uint64_t to)
{
	pthread_mutex_lock(&fs->lock);
	for (unsigned k = 0; k < fs->nslots; k++) {
		struct slot *sl = &fs->slots[k];
		if (sl->state == SLOT_EMPTY || fs->out[sl->span] >= to || fs->out[sl->span + 1] <= from)
			continue;
		/* whatever it holds or will hold came from those bytes: a reader
		 * copying out of it, or a decode under way, finishes, but no
		 * retry finds it (it would fail the same way, and spend one of
		 * its tries on it) */
		sl->stale = true;
	}
	pthread_cond_broadcast(&fs->cond);
	pthread_mutex_unlock(&fs->lock);
}

/* Under fs->lock: make sl hold buffers for span i, within the budget.
 * 1: not under the budget; -ENOMEM; 0. */
static int slot_fit(struct frames *fs, struct slot *sl, size_t i)
{
	size_t bneed = buf_need(fs, i), dneed = dig_need(fs, i), old = slot_size(sl);
	if (sl->mapsize >= bneed && sl->digsize >= dneed)
		return 0;
	size_t need = MAX(bneed, sl->mapsize) + MAX(dneed, sl->digsize);
	size_t cur = atomic_load(&held);
	do {
		if (cur - old + need > FRAMES_BUDGET)
			return 1;
	} while (!atomic_compare_exchange_weak(&held, &cur, cur - old + need));
	uint8_t *m = sl->mapsize >= bneed ? sl->map : big_alloc(bneed);
	void *d = sl->digsize >= dneed ? (void *)sl->dig : malloc(dneed);
	if (!m || !d) {
		if (m != sl->map)
			big_free(m, bneed);
		if (d != sl->dig)
			free(d);
		atomic_fetch_sub(&held, need - old);
		return -ENOMEM;
	}
	if (m != sl->map) {
		big_free(sl->map, sl->mapsize);
		sl->map = m;
		sl->mapsize = bneed;
	}
	if (d != (void *)sl->dig) {
		free(sl->dig);
		sl->dig = d;
		sl->digsize = dneed;
	}
	fs->st.held += need - old;
	return 0;
}

/* One decoder context per reader thread, kept: creating one per span cost
 * a fresh allocation, page faults included, for every 4 MiB decoded. */
static pthread_key_t dctx_key;
static bool dctx_key_ok;
static pthread_once_t dctx_once = PTHREAD_ONCE_INIT;
static void dctx_free(void *p) { ZSTD_freeDCtx(p); }
static void dctx_key_init(void) { dctx_key_ok = pthread_key_create(&dctx_key, dctx_free) == 0; }
static ZSTD_DCtx *thread_dctx(void)
{
	pthread_once(&dctx_once, dctx_key_init);
	if (!dctx_key_ok)
		return NULL; /* no key: the caller fails with ENOMEM */
	ZSTD_DCtx *dc = pthread_getspecific(dctx_key);
	if (!dc && (dc = dctx_new()) && pthread_setspecific(dctx_key, dc) != 0) {
		ZSTD_freeDCtx(dc);
		dc = NULL;
	}
	return dc;
}

/* Where a span that is one zstd frame is decoded in place: its compressed
 * bytes are read into the end of the span's own buffer and decoded towards
 * its start (zstd.h, ZSTD_decompressionMargin: the output buffer holds the
 * output and a margin, the input at its very end).  No input buffer then,
 * neither per worker nor per reader thread, and none of their page faults.
 * The margin is ZSTD_DECOMPRESSION_MARGIN for the largest block size, which
 * also covers the smaller ones of spans up to FRAMES_SPAN_MAX (the block
 * term, 128 KiB, exceeds 3 bytes per 1 KiB block of 8 MiB plus 1 KiB). */
static size_t inplace_margin(size_t len)
{
	return 18 /* frame header */ + 4 /* checksum */ +
	       3 * ((len + ZSTD_BLOCKSIZE_MAX - 1) / ZSTD_BLOCKSIZE_MAX) + ZSTD_BLOCKSIZE_MAX;
}

/* zstd 1.5.4 documents in-place decoding; an older library gets an input
 * buffer. */
static bool inplace_lib(void) { return ZSTD_versionNumber() >= 10504; }

/* Decode span i into sl's buffer.  spare(need, arg) lends an input
 * buffer where the span cannot be decoded in place (several frames in
 * one span: written by another tool). */
static int span_decode(struct frames *fs, struct slot *sl, size_t i, ZSTD_DCtx *dc,
		       uint8_t *(*spare)(size_t need, void *arg), void *arg, struct stella_err *e)
{
	uint64_t in = fs->in[i];
	size_t clen = (size_t)(fs->in[i + 1] - in), len = (size_t)span_len(fs, i);
	size_t cap = len + inplace_margin(len);
	bool inplace = inplace_lib() && clen <= cap;
	uint8_t *src = inplace ? sl->map + cap - clen : spare(clen, arg);
	if (!src || !dc)
		return -ENOMEM;
	int r = bytes_read_full(fs->b, src, clen, in);
	if (r < 0)
		return stella_fail_errno(e, r, "%s: reading at %llu", fs->name, (unsigned long long)in);
	if (inplace && ZSTD_findFrameCompressedSize(src, clen) != clen) {
		/* not one whole frame: no in-place promise (a corrupt one fails below) */
		uint8_t *o = spare(clen, arg);
		if (!o)
			return -ENOMEM;
		memcpy(o, src, clen);
		src = o;
		inplace = false;
	}
	size_t n = ZSTD_decompressDCtx(dc, sl->map, inplace ? cap : len, src, clen);
	if (ZSTD_isError(n) || n != len)
		return stella_fail(e, -EIO, "%s: zstd frame at byte %llu no longer decodes to what was indexed%s%s",
				   fs->name, (unsigned long long)in, ZSTD_isError(n) ? ": " : "",
				   ZSTD_isError(n) ? ZSTD_getErrorName(n) : "");
	return 0;
}

/* The input buffers spans that cannot be decoded in place borrow. */
static uint8_t *worker_spare(size_t need, void *arg)
{
	struct worker *w = arg;
	if (w->incap < need) {
		big_free(w->in, w->incap);
		w->incap = 0;
		/* in whole huge pages: spans' sizes creep up one by one */
		size_t cap = (need + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
		if ((w->in = big_alloc(cap)))
			w->incap = cap;
	}
	return w->in;
}

static uint8_t *reader_spare(size_t need, void *arg)
{
	(void)arg;
	return thread_scratch(SCRATCH_SOURCE, need);
}

/* The digests of the span's whole blocks at the stream's phase.  A digest
 * OpenSSL could not compute leaves the rest to the reader. */
static void span_hash(struct frames *fs, struct slot *sl, size_t i, int phase)
{
	uint64_t out = fs->out[i], end = fs->out[i + 1];
	uint64_t base = out + (uint64_t)((phase - (int)(out % MERKLE_BLOCK) + (int)MERKLE_BLOCK) % (int)MERKLE_BLOCK);
	sl->hash_base = base;
	sl->ndig = 0;
	for (uint64_t b = base; b + MERKLE_BLOCK <= end; b += MERKLE_BLOCK) {
		if (sha256_once(sl->map + (b - out), MERKLE_BLOCK, sl->dig[sl->ndig]) < 0)
			break;
		sl->ndig++;
	}
}

static struct slot *slot_find(struct frames *fs, size_t i)
{
	for (unsigned k = 0; k < fs->nslots; k++)
		if (fs->slots[k].state != SLOT_EMPTY && !fs->slots[k].stale && fs->slots[k].span == i)
			return &fs->slots[k];
	return NULL;
}

/* A worker's turn on fs: the first span queued, decoded and hashed. */
static void work_on(struct frames *fs, struct worker *w)
{
	pthread_mutex_lock(&fs->lock);
	struct slot *sl = NULL;
	unsigned more = 0;
	for (unsigned k = 0; k < fs->nslots && !fs->closing; k++) {
		struct slot *x = &fs->slots[k];
		if (x->state != SLOT_QUEUED || x->stale)
			continue;
		more++;
		if (!sl || x->seq < sl->seq)
			sl = x;
	}
	if (!sl) {
		pthread_mutex_unlock(&fs->lock);
		return;
	}
	sl->state = SLOT_DECODING;
	if (more > 1)
		pool_enqueue(fs); /* the next span goes to another worker */
	size_t i = sl->span;
	int phase = sl->phase;
	pthread_mutex_unlock(&fs->lock);

	struct stella_err e = { 0 };
	int r = span_decode(fs, sl, i, w->dc, worker_spare, w, &e);
	sl->ndig = 0;
	if (r == 0 && phase >= 0)
		span_hash(fs, sl, i, phase);

	pthread_mutex_lock(&fs->lock);
	if (r == -ENOMEM) {
		sl->state = SLOT_EMPTY; /* ours, not the kit's: a reader tries itself */
	} else if (r < 0) {
		sl->state = SLOT_FAILED;
		sl->err = e;
		sl->err.code = r;
		fs->st.failed++;
	} else {
		sl->state = SLOT_READY;
		sl->last_use = ++fs->clock;
		fs->st.ahead++;
	}
	pthread_cond_broadcast(&fs->cond);
	pthread_mutex_unlock(&fs->lock);
}

/* A stream not read for this many reads of the kit is over. */
#define STREAM_IDLE 64

static bool stream_live(const struct frames *fs, const struct stream *t)
{
	return t->live && fs->reads - t->used <= STREAM_IDLE;
}

/* Whether span j is one a stream is reading or will read next. */
static bool in_window(const struct frames *fs, size_t j)
{
	for (unsigned k = 0; k < FRAMES_STREAMS; k++) {
		const struct stream *t = &fs->streams[k];
		if (stream_live(fs, t) && j + 1 >= t->last && j <= t->last + fs->ahead)
			return true;
	}
	return false;
}

/* A slot to decode span j into: one nobody reads or decodes, the one that
 * costs least to take: first one whose buffer is large enough already
 * (the budget may allow no other), then an empty one, one decoded that no
 * stream is about to read (least recently used first), one queued ahead
 * (its decode called off: for a read's own span only), one a stream is
 * about to read.  A decode ahead takes only the first two kinds. */
static struct slot *victim(struct frames *fs, size_t j, bool ahead)
{
	size_t need = map_need(fs, j);
	struct slot *v = NULL;
	unsigned best = ~0u;
	for (unsigned k = 0; k < fs->nslots; k++) {
		struct slot *x = &fs->slots[k];
		unsigned rank;
		bool idle = (x->state == SLOT_READY || x->state == SLOT_FAILED || x->state == SLOT_QUEUED) && x->refs == 0;
		if (x->state == SLOT_EMPTY || (x->stale && idle))
			rank = 0;
		else if (x->stale)
			continue;   /* still decoding or read: its turn comes after */
		else if ((x->state == SLOT_READY || x->state == SLOT_FAILED) && x->refs == 0)
			rank = in_window(fs, x->span) ? 3 : 1;
		else if (x->state == SLOT_QUEUED)
			rank = 2;
		else
			continue;
		if (ahead && rank > 1)
			continue;
		rank += slot_size(x) >= need ? 0 : 4;
		if (rank < best || (rank == best && x->last_use < v->last_use)) {
			v = x;
			best = rank;
		}
	}
	return v;
}

/* Whether one of fs's slots with a buffer for span j is in use: it will
 * be free again soon. */
static bool fitting_busy(const struct frames *fs, size_t j)
{
	size_t need = map_need(fs, j);
	for (unsigned k = 0; k < fs->nslots; k++) {
		const struct slot *x = &fs->slots[k];
		if (slot_size(x) >= need && (x->state == SLOT_DECODING || x->refs > 0))
			return true;
	}
	return false;
}

/* Under fs->lock: queue the spans after stream t for the workers. */
static void queue_ahead(struct frames *fs, const struct stream *t)
{
	bool queued = false;
	for (size_t j = t->last + 1; j <= t->last + fs->ahead && j < fs->n && span_ok(fs, j); j++) {
		if (slot_find(fs, j))
			continue;
		struct slot *sl = victim(fs, j, true);
		if (!sl || slot_fit(fs, sl, j) != 0)
			break;
		sl->state = SLOT_QUEUED;
		sl->stale = false;
		sl->span = j;
		sl->seq = ++fs->seq;
		sl->phase = t->phase;
		sl->ndig = 0;
		queued = true;
	}
	if (queued)
		pool_enqueue(fs);
}

/* Under fs->lock: follow the reader of spans first..last, and queue ahead
 * of it once it has gone forward. */
static void note_stream(struct frames *fs, size_t first, size_t last, uint64_t off, size_t len)
{
	struct stream *t = NULL, *old = NULL;
	unsigned best = ~0u;
	fs->reads++;
	for (unsigned k = 0; k < FRAMES_STREAMS; k++) {
		struct stream *x = &fs->streams[k];
		if (x->live && first + 1 >= x->last && first <= x->last + 1) {
			t = x;
			break;
		}
		/* Replace a stream that is over, else one that never went on
		 * (random reads), before one that goes forward: random readers
		 * must not make the sequential ones look new at every read. */
		unsigned rank = !stream_live(fs, x) ? 0 : x->hits == 0 ? 1 : 2;
		if (rank < best || (rank == best && x->used < old->used)) {
			old = x;
			best = rank;
		}
	}
	if (t) {
		t->hits++;
		t->last = MAX(t->last, last);
	} else {
		t = old;
		*t = (struct stream){ .live = true, .last = last };
	}
	t->used = fs->reads;
	/* The kernel's readahead sends large reads of a file at its block
	 * alignment: blocks hashed ahead at that phase are the ones it asks.
	 * A small read continuing a stream of large ones keeps its phase: it
	 * is most often not the stream's at all but a block of the Merkle
	 * tree the stream's reads load, near it at the start of the kit, and
	 * it cost the stream its digests ahead. */
	if (len >= FRAMES_HASH_READ)
		t->phase = (int)(off % MERKLE_BLOCK);
	else if (t->hits == 0)
		t->phase = -1;
	if (t->hits > 0 && !fs->closing)
		queue_ahead(fs, t);
}

/* Span i decoded, with a reference held: 0, 1 (not under the budget), or
 * a negative errno. */
static int span_get(struct frames *fs, size_t i, struct slot **out, struct stella_err *e)
{
	pthread_mutex_lock(&fs->lock);
	struct slot *sl;
	bool took_over = false;
	for (;;) {
		sl = slot_find(fs, i);
		if (sl && sl->state == SLOT_READY) {
			sl->refs++;
			sl->last_use = ++fs->clock;
			pthread_mutex_unlock(&fs->lock);
			*out = sl;
			return 0;
		}
		if (sl && sl->state == SLOT_FAILED) {
			/* A worker's failure, told once: the next read tries again. */
			int r = sl->err.code;
			if (e && !e->code)
				*e = sl->err;
			sl->state = SLOT_EMPTY;
			pthread_cond_broadcast(&fs->cond);
			pthread_mutex_unlock(&fs->lock);
			return r;
		}
		if (sl && sl->state == SLOT_QUEUED) {
			took_over = true; /* no worker has started it: do it here */
			break;
		}
		if (!sl && (sl = victim(fs, i, false))) {
			int r = slot_fit(fs, sl, i);
			if (r == 0)
				break;
			if (r < 0 || !fitting_busy(fs, i)) {
				pthread_mutex_unlock(&fs->lock);
				return r; /* 1: no buffer under the budget, none to wait for */
			}
			sl = NULL;
		}
		pthread_cond_wait(&fs->cond, &fs->lock); /* being decoded, or every slot in use */
	}
	sl->state = SLOT_DECODING;
	sl->span = i;
	sl->stale = false;
	sl->ndig = 0;
	pthread_mutex_unlock(&fs->lock);

	int r = span_decode(fs, sl, i, thread_dctx(), reader_spare, NULL, e);

	pthread_mutex_lock(&fs->lock);
	if (r < 0) {
		sl->state = SLOT_EMPTY;
		if (r != -ENOMEM)
			fs->st.failed++;
	} else {
		sl->state = SLOT_READY;
		sl->refs++;
		sl->last_use = ++fs->clock;
		fs->st.demand++;
		fs->st.taken_over += took_over;
	}
	pthread_cond_broadcast(&fs->cond);
	pthread_mutex_unlock(&fs->lock);
	*out = sl;
	return r;
}

static void span_put(struct frames *fs, struct slot *sl)
{
	pthread_mutex_lock(&fs->lock);
	if (--sl->refs == 0)
		pthread_cond_broadcast(&fs->cond);
	pthread_mutex_unlock(&fs->lock);
}

/* The digests sl has for the whole blocks of the read [off, off+len) that
 * lie in its span; the count handed over. */
static unsigned digests_out(const struct frames *fs, const struct slot *sl, uint64_t off, size_t len,
			    struct source_digests *d)
{
	if (!sl->ndig || (off - sl->hash_base) % MERKLE_BLOCK)
		return 0;
	uint64_t from = MAX(off, sl->hash_base), to = MIN(off + len, fs->out[sl->span + 1]);
	unsigned n = 0;
	for (uint64_t b = from; b + MERKLE_BLOCK <= to; b += MERKLE_BLOCK) {
		uint64_t k = (b - off) / MERKLE_BLOCK, x = (b - sl->hash_base) / MERKLE_BLOCK;
		if (k >= SOURCE_DIGESTS || x >= sl->ndig)
			break;
		memcpy(d->sha256[k], sl->dig[x], 32);
		d->have[k] = 1;
		n++;
	}
	return n;
}

int frames_read(struct frames *fs, uint8_t *buf, size_t len, uint64_t off, struct source_digests *d,
		struct stella_err *e)
{
	uint64_t total = fs->out[fs->n];
	if (len == 0 || len > total || off > total - len)
		return 1;
	size_t first = span_of(fs, off), last = span_of(fs, off + len - 1);
	for (size_t i = first; i <= last; i++)
		if (!span_ok(fs, i))
			return 1;
	pthread_mutex_lock(&fs->lock);
	note_stream(fs, first, last, off, len);
	pthread_mutex_unlock(&fs->lock);
	unsigned got = 0;
	for (size_t i = first; i <= last; i++) {
		struct slot *sl = NULL;
		int r = span_get(fs, i, &sl, e);
		if (r == 1 && d) /* the caller reads these bytes again another way: */
			memset(d->have, 0, sizeof(d->have)); /* no digest may stand for them */
		if (r != 0)
			return r;
		uint64_t from = MAX(off, fs->out[i]), to = MIN(off + len, fs->out[i + 1]);
		memcpy(buf + (from - off), sl->map + (from - fs->out[i]), (size_t)(to - from));
		if (d)
			got += digests_out(fs, sl, off, len, d);
		span_put(fs, sl);
	}
	if (got) {
		pthread_mutex_lock(&fs->lock);
		fs->st.digests += got;
		pthread_mutex_unlock(&fs->lock);
	}
	return 0;
}

int frames_pin(struct frames *fs, size_t len, uint64_t off, const uint8_t **p, struct source_pin *pin,
	       struct source_digests *d)
{
	memset(d->have, 0, sizeof(d->have));
	uint64_t total = fs->out[fs->n];
	if (len == 0 || len > total || off > total - len)
		return 1;
	size_t i = span_of(fs, off);
	if (off + len > fs->out[i + 1] || !span_ok(fs, i))
		return 1;
	pthread_mutex_lock(&fs->lock);
	note_stream(fs, i, i, off, len);
	pthread_mutex_unlock(&fs->lock);
	struct slot *sl = NULL;
	struct stella_err e = { 0 };
	if (span_get(fs, i, &sl, &e) != 0)
		return 1; /* read again through frames_read, which tells why */
	*p = sl->map + (off - fs->out[i]);
	unsigned got = digests_out(fs, sl, off, len, d);
	if (got) {
		pthread_mutex_lock(&fs->lock);
		fs->st.digests += got;
		pthread_mutex_unlock(&fs->lock);
	}
	pin->frames = fs;
	pin->slot = sl;
	return 0;
}

void frames_unpin(struct source_pin *pin)
{
	span_put(pin->frames, pin->slot);
	pin->frames = pin->slot = NULL;
}

int frames_new(struct bytes *b, const char *name, const struct source_point *pts, size_t n, uint64_t stream_size,
	       struct frames **out)
{
	struct frames *fs = calloc(1, sizeof(*fs));
	if (!fs || n == 0 || !(fs->out = malloc(2 * (n + 1) * sizeof(uint64_t)))) {
		free(fs);
		return -ENOMEM;
	}
	fs->in = fs->out + n + 1;
	for (size_t i = 0; i < n; i++) {
		fs->out[i] = pts[i].out;
		fs->in[i] = pts[i].in;
	}
	fs->out[n] = stream_size;
	fs->in[n] = bytes_size(b);
	fs->b = b;
	fs->name = name;
	fs->n = n;
	/* As many spans ahead as workers decode at once; the slots hold
	 * those, the one being read and the one before it (the kernel's
	 * reads of it may still be in flight). */
	fs->ahead = MIN(pool_size(), FRAMES_SLOTS - 2);
	fs->nslots = FRAMES_SLOTS;
	pthread_mutex_init(&fs->lock, NULL);
	pthread_cond_init(&fs->cond, NULL);
	pool_ref();
	*out = fs;
	return 0;
}

void frames_free(struct frames *fs)
{
	if (!fs)
		return;
	pthread_mutex_lock(&fs->lock);
	fs->closing = true;
	for (unsigned k = 0; k < fs->nslots; k++)
		if (fs->slots[k].state == SLOT_QUEUED)
			fs->slots[k].state = SLOT_EMPTY;
	pthread_mutex_unlock(&fs->lock);

	pthread_mutex_lock(&pool.lock);
	if (fs->in_queue) {
		struct frames **p = &pool.head;
		while (*p != fs)
			p = &(*p)->qnext;
		*p = fs->qnext;
		if (pool.tail == fs) {
			pool.tail = NULL;
			for (struct frames *x = pool.head; x; x = x->qnext)
				pool.tail = x;
		}
		fs->in_queue = false;
	}
	while (fs->active)
		pthread_cond_wait(&pool.idle, &pool.lock);
	pthread_mutex_unlock(&pool.lock);
	pool_unref();

	for (unsigned k = 0; k < fs->nslots; k++)
		slot_free(&fs->slots[k]);
	pthread_mutex_destroy(&fs->lock);
	pthread_cond_destroy(&fs->cond);
	free(fs->out);
	free(fs);
}

void frames_stats(struct frames *fs, struct frames_stats *st)
{
	pthread_mutex_lock(&fs->lock);
	*st = fs->st;
	pthread_mutex_unlock(&fs->lock);
}
