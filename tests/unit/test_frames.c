/* frames.c: zstd spans decoded ahead of sequential readers by the worker
 * pool, against the bytes the zstd CLI compressed and digests OpenSSL
 * computes here: sequential and random readers at once, a corrupt frame
 * (an error for the reads that need it, good bytes for the others, never
 * wrong ones), closing while workers decode, the memory budget shared by
 * several kits, fork() with workers running, spans too large to keep. */
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bytes.h"
#include "check.h"
#include "frames.h"
#include "source.h"
#include "util.h"

#define FRAME  (4u << 20)
#define NFRAME 10u
#define SIZE   ((uint64_t)NFRAME * FRAME - 12345) /* the last frame is short */

static char dir[] = "/tmp/stella-test-frames.XXXXXX";
static uint8_t *data;

static uint8_t byte_at(uint64_t i)
{
	/* compressible but not trivially */
	uint64_t x = (i / 48) * 2654435761u;
	return (uint8_t)('A' + ((x >> 9) ^ (i % 11)) % 50);
}

static void sh(const char *cmd)
{
	CHECK(system(cmd) == 0);
}

static char *at(const char *name)
{
	static char p[4][256];
	static int k;
	k = (k + 1) % 4;
	snprintf(p[k], sizeof(p[k]), "%s/%s", dir, name);
	return p[k];
}

/* A source on PATH with its stream pass done: its points are complete. */
static struct source *opened(const char *path)
{
	struct source *s = NULL;
	struct stella_err e = { 0 };
	CHECK(source_open(path, &s, &e) == 0);
	if (!s)
		exit(1);
	uint8_t *buf = malloc(1 << 20);
	ssize_t n;
	uint64_t total = 0;
	while ((n = source_stream_read(s, buf, 1 << 20, &e)) > 0)
		total += (uint64_t)n;
	CHECK(n == 0);
	CHECK(total == SIZE);
	free(buf);
	return s;
}

static struct frames *frames_of(struct source *s, struct bytes *b)
{
	const struct source_point *pts;
	size_t n = source_points(s, &pts);
	struct frames *fs = NULL;
	CHECK(frames_new(b ? b : source_bytes(s), source_path(s), pts, n, source_stream_size(s), &fs) == 0);
	return fs;
}

/* Every byte against the data, every digest handed over against
 * OpenSSL's of the same 4096 bytes; the number of digests. */
static unsigned checked(const uint8_t *buf, size_t len, uint64_t off, const struct source_digests *d, int *bad)
{
	if (memcmp(buf, data + off, len)) {
		fprintf(stderr, "wrong bytes at %llu+%zu\n", (unsigned long long)off, len);
		(*bad)++;
	}
	unsigned n = 0;
	for (size_t k = 0; d && k < SOURCE_DIGESTS; k++) {
		if (!d->have[k])
			continue;
		uint8_t h[32];
		unsigned hl = 32;
		if ((k + 1) * 4096 > len || !EVP_Digest(buf + k * 4096, 4096, h, &hl, EVP_sha256(), NULL) ||
		    memcmp(h, d->sha256[k], 32)) {
			fprintf(stderr, "wrong digest of block %zu at %llu\n", k, (unsigned long long)off);
			(*bad)++;
		}
		n++;
	}
	return n;
}

/* A reader going forward through the whole stream, as the kernel's
 * readahead does: large reads at one phase. */
/* Milliseconds a paced reader (pace_ms set) spends per MiB it reads: the
 * checks that workers decode ahead hold only if the reader is slower than
 * they are, which on a loaded machine an unpaced reader may not be. */
static unsigned pace_ms;

static void sequential(struct frames *fs, uint64_t from, size_t chunk, int *bad, unsigned *digests)
{
	uint8_t *buf = malloc(chunk);
	struct source_digests *d = malloc(sizeof(*d));
	for (uint64_t off = from; off < SIZE; off += chunk) {
		size_t len = (size_t)MIN((uint64_t)chunk, SIZE - off);
		struct stella_err e = { 0 };
		memset(d->have, 0, sizeof(d->have));
		int r = frames_read(fs, buf, len, off, d, &e);
		if (r != 0) {
			fprintf(stderr, "read at %llu: %d %s\n", (unsigned long long)off, r, e.msg);
			(*bad)++;
			continue;
		}
		*digests += checked(buf, len, off, d, bad);
		if (pace_ms && (off + len) >> 20 != off >> 20)
			usleep(pace_ms * 1000);
	}
	free(d);
	free(buf);
}

static void test_sequential(struct source *s)
{
	struct frames *fs = frames_of(s, NULL);
	int bad = 0;
	unsigned dig = 0;
	/* phase 512: a file whose data starts one tar header into a block;
	 * read at 100 MiB/s at most, well below what one worker decodes */
	pace_ms = 10;
	sequential(fs, 512, 1 << 20, &bad, &dig);
	CHECK(bad == 0);
	struct frames_stats st;
	frames_stats(fs, &st);
	/* after the first span, the workers decode ahead and hash */
	CHECK(st.ahead >= NFRAME / 2);
	CHECK(st.ahead + st.demand >= NFRAME);
	CHECK(dig == st.digests);
	CHECK(dig > (SIZE / 4096) / 2);
	CHECK(st.held <= FRAMES_SLOTS * (uint64_t)(FRAME + (256u << 10)));
	CHECK(frames_workers() >= 1);
	/* small reads: no digests ahead, bytes still right */
	frames_free(fs);
	fs = frames_of(s, NULL);
	dig = 0;
	sequential(fs, 0, 16384, &bad, &dig);
	pace_ms = 0;
	CHECK(bad == 0);
	CHECK(dig == 0);
	frames_stats(fs, &st);
	CHECK(st.ahead >= NFRAME / 2);
	frames_free(fs);
	CHECK(frames_held() == 0);
	CHECK(frames_workers() == 0); /* the last kit closed ends the pool */
}

/* Through source_pread_digests: the hook in source.c. */
static void test_source_hook(struct source *s)
{
	uint8_t *buf = malloc(1 << 20);
	struct source_digests *d = malloc(sizeof(*d));
	int bad = 0;
	unsigned dig = 0;
	for (uint64_t off = 4096; off < SIZE; off += 1 << 20) {
		size_t len = (size_t)MIN((uint64_t)1 << 20, SIZE - off);
		struct stella_err e = { 0 };
		memset(d->have, 0xff, sizeof(d->have)); /* cleared by the call */
		CHECK(source_pread_digests(s, buf, len, off, d, &e) == 0);
		dig += checked(buf, len, off, d, &bad);
	}
	CHECK(bad == 0);
	CHECK(dig > 0);
	/* a read past the stream is refused, not served from a span */
	struct stella_err e = { 0 };
	CHECK(source_pread_digests(s, buf, 8192, SIZE - 4096, d, &e) < 0);
	free(d);
	free(buf);
}

struct racer {
	struct frames *fs;
	unsigned seed;
	bool seq;
	size_t chunk;
	uint64_t from;
	int bad;
	unsigned digests;
	size_t max_held;
};

static void *race(void *arg)
{
	struct racer *r = arg;
	if (r->seq) {
		sequential(r->fs, r->from, r->chunk, &r->bad, &r->digests);
		return NULL;
	}
	uint8_t *buf = malloc(1 << 18);
	struct source_digests *d = malloc(sizeof(*d));
	for (int i = 0; i < 150; i++) {
		r->seed = r->seed * 1103515245 + 12345;
		size_t len = 1 + (r->seed >> 8) % (1 << 18);
		r->seed = r->seed * 1103515245 + 12345;
		uint64_t off = ((uint64_t)r->seed << 8) % (SIZE - len);
		struct stella_err e = { 0 };
		memset(d->have, 0, sizeof(d->have));
		if (frames_read(r->fs, buf, len, off, d, &e) != 0)
			r->bad++;
		else
			r->digests += checked(buf, len, off, d, &r->bad);
		r->max_held = MAX(r->max_held, frames_held());
	}
	free(d);
	free(buf);
	return NULL;
}

/* Sequential streams at different phases and random readers, at once. */
static void test_concurrent(struct source *s)
{
	struct frames *fs = frames_of(s, NULL);
	enum { N = 7 };
	struct racer r[N];
	pthread_t t[N];
	for (int i = 0; i < N; i++) {
		r[i] = (struct racer){ .fs = fs, .seed = (unsigned)i * 7919u + 3, .seq = i < 3,
				       .chunk = i == 0 ? 1 << 20 : i == 1 ? 131072 : 65536,
				       .from = i == 0 ? 0 : i == 1 ? 1536 + (5u << 20) : 3584 };
		CHECK(pthread_create(&t[i], NULL, race, &r[i]) == 0);
	}
	unsigned dig = 0;
	for (int i = 0; i < N; i++) {
		pthread_join(t[i], NULL);
		CHECK(r[i].bad == 0);
		CHECK(r[i].max_held <= FRAMES_BUDGET);
		dig += r[i].digests;
	}
	struct frames_stats st;
	frames_stats(fs, &st);
	CHECK(st.digests == dig);
	/* three streams' windows may leave no slot to decode ahead into */
	CHECK(st.ahead + st.demand > 0);
	CHECK(st.failed == 0);
	frames_free(fs);
}

/* One stream read by several threads at once, as the kernel's readahead
 * has FUSE workers do: each takes the next 1 MiB. */
struct chunker {
	struct frames *fs;
	atomic_uint_fast64_t *next;
	bool pin;                 /* frames_pin first, frames_read where refused */
	int bad;
	unsigned digests, pinned;
};

/* A read as stellafs replies from a decoded span (fs/ops.c, read_pinned):
 * the bytes where they lie, checked and "sent" while the pin holds them,
 * then let go.  0, or 1 when the range is not served so. */
static int pinned_read(struct chunker *c, uint64_t off, size_t len, struct source_digests *d)
{
	const uint8_t *p = NULL;
	struct source_pin pin = { 0 };
	int r = frames_pin(c->fs, len, off, &p, &pin, d);
	if (r != 0)
		return r;
	c->digests += checked(p, len, off, d, &c->bad);
	/* still the same bytes after other threads decoded into other slots */
	usleep(200);
	if (memcmp(p, data + off, len))
		c->bad++;
	frames_unpin(&pin);
	c->pinned++;
	return 0;
}

static void *chunks(void *arg)
{
	struct chunker *c = arg;
	uint8_t *buf = malloc(1 << 20);
	struct source_digests *d = malloc(sizeof(*d));
	for (;;) {
		uint64_t off = 512 + atomic_fetch_add(c->next, 1u << 20);
		if (off >= SIZE)
			break;
		size_t len = (size_t)MIN((uint64_t)1 << 20, SIZE - off);
		struct stella_err e = { 0 };
		memset(d->have, 0, sizeof(d->have));
		if (c->pin && pinned_read(c, off, len, d) == 0) {
			if (pace_ms)
				usleep(pace_ms * 1000);
			continue;
		}
		if (frames_read(c->fs, buf, len, off, d, &e) != 0)
			c->bad++;
		else
			c->digests += checked(buf, len, off, d, &c->bad);
		if (pace_ms)
			usleep(pace_ms * 1000);
	}
	free(d);
	free(buf);
	return NULL;
}

static void parallel_stream(struct source *s, bool pin)
{
	struct frames *fs = frames_of(s, NULL);
	atomic_uint_fast64_t next = 0;
	enum { N = 4 };
	/* 4 readers at 100 MiB/s each, below what the workers decode: that
	 * they run ahead is checked, not that they win a race on a loaded
	 * machine (unpaced, it failed once under ASan in CI) */
	pace_ms = 10;
	struct chunker c[N];
	pthread_t t[N];
	for (int i = 0; i < N; i++) {
		c[i] = (struct chunker){ .fs = fs, .next = &next, .pin = pin };
		CHECK(pthread_create(&t[i], NULL, chunks, &c[i]) == 0);
	}
	unsigned dig = 0, pinned = 0;
	for (int i = 0; i < N; i++) {
		pthread_join(t[i], NULL);
		CHECK(c[i].bad == 0);
		dig += c[i].digests;
		pinned += c[i].pinned;
	}
	pace_ms = 0;
	struct frames_stats st;
	frames_stats(fs, &st);
	CHECK(st.ahead > 0);
	CHECK(st.digests == dig && dig > 0);
	CHECK(st.failed == 0);
	/* reads at 512 + k MiB: three of four lie in one span and are pinned,
	 * the one across a frame boundary is refused and read by copy */
	if (pin)
		CHECK(pinned >= 3 * (NFRAME * 4 - 1) / 4 && pinned < NFRAME * 4);
	frames_free(fs);
}

static void test_parallel_stream(struct source *s)
{
	parallel_stream(s, false);
	/* and replying straight from the spans, each read holding its span
	 * while others decode ahead into the other slots */
	parallel_stream(s, true);
	/* a pin across a span boundary, or past the end: not served so */
	struct frames *fs = frames_of(s, NULL);
	struct source_digests *d = malloc(sizeof(*d));
	const uint8_t *p = NULL;
	struct source_pin pin = { 0 };
	CHECK(frames_pin(fs, 8192, FRAME - 4096, &p, &pin, d) == 1);
	CHECK(frames_pin(fs, 100, SIZE - 50, &p, &pin, d) == 1);
	CHECK(frames_pin(fs, 100, FRAME + 7, &p, &pin, d) == 0 && memcmp(p, data + FRAME + 7, 100) == 0);
	frames_unpin(&pin);
	free(d);
	frames_free(fs);
}

/* The bytes of frame 5 damaged in a copy of the kit. */
static void test_corrupt(struct source *s)
{
	const struct source_point *pts;
	size_t n = source_points(s, &pts);
	CHECK(n == NFRAME);
	if (n != NFRAME)
		return;
	uint64_t mid = pts[5].in + (pts[6].in - pts[5].in) / 2;
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "cp %s %s && printf 'XXXXXXXXXXXXXXXX' | dd of=%s bs=1 seek=%llu conv=notrunc status=none",
		 at("k.zst"), at("bad.zst"), at("bad.zst"), (unsigned long long)mid);
	sh(cmd);
	struct bytes *b = NULL;
	struct stella_err e = { 0 };
	CHECK(bytes_open_path(at("bad.zst"), &b, &e) == 0);
	if (!b)
		return;
	uint64_t lo = pts[5].out, hi = pts[6].out;
	uint8_t *buf = malloc(1 << 20);
	/* twice: the second pass finds the span failed by a worker ahead */
	for (int pass = 0; pass < 2; pass++) {
		struct frames *fs = frames_of(s, b);
		int bad = 0, failed = 0;
		for (uint64_t off = 0; off < SIZE; off += 1 << 19) {
			size_t len = (size_t)MIN((uint64_t)1 << 19, SIZE - off);
			memset(buf, 0, len);
			memset(&e, 0, sizeof(e));
			int r = frames_read(fs, buf, len, off, NULL, &e);
			bool needs = off < hi && off + len > lo;
			if (needs) {
				CHECK(r == -EIO);
				CHECK(strstr(e.msg, "no longer decodes") != NULL);
				failed++;
			} else {
				CHECK(r == 0);
				if (r == 0)
					checked(buf, len, off, NULL, &bad);
			}
		}
		CHECK(failed == 8);
		CHECK(bad == 0);
		/* and at random, read on its own: the same */
		memset(&e, 0, sizeof(e));
		CHECK(frames_read(fs, buf, 100, lo + 777777, NULL, &e) == -EIO);
		CHECK(frames_read(fs, buf, 100, lo + 777777, NULL, &e) == -EIO);
		CHECK(frames_read(fs, buf, 100, hi + 5, NULL, &e) == 0);
		CHECK(memcmp(buf, data + hi + 5, 100) == 0);
		struct frames_stats st;
		frames_stats(fs, &st);
		CHECK(st.failed >= 3);
		frames_free(fs);
	}
	free(buf);
	bytes_close(b);
}

/* frames_forget: a span decoded from bytes later found bad is not served
 * again; the next read decodes what the bytes hold now (here: damage, as
 * a mirror's wrong bytes would be, so the read fails rather than return
 * the span kept from before). */
static void test_forget(struct source *s)
{
	const struct source_point *pts;
	size_t n = source_points(s, &pts);
	CHECK(n == NFRAME);
	if (n != NFRAME)
		return;
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "cp %s %s", at("k.zst"), at("flip.zst"));
	sh(cmd);
	struct bytes *b = NULL;
	struct stella_err e = { 0 };
	CHECK(bytes_open_path(at("flip.zst"), &b, &e) == 0);
	if (!b)
		return;
	struct frames *fs = frames_of(s, b);
	uint64_t lo = pts[5].out;
	uint8_t buf[100];
	CHECK(frames_read(fs, buf, sizeof(buf), lo + 1000, NULL, &e) == 0);
	CHECK(memcmp(buf, data + lo + 1000, sizeof(buf)) == 0);
	uint64_t mid = pts[5].in + (pts[6].in - pts[5].in) / 2;
	snprintf(cmd, sizeof(cmd), "printf 'XXXXXXXXXXXXXXXX' | dd of=%s bs=1 seek=%llu conv=notrunc status=none",
		 at("flip.zst"), (unsigned long long)mid);
	sh(cmd);
	/* kept: still served from memory until told */
	CHECK(frames_read(fs, buf, sizeof(buf), lo + 2000, NULL, &e) == 0);
	frames_forget(fs, lo + 1000, lo + 1100);
	memset(&e, 0, sizeof(e));
	CHECK(frames_read(fs, buf, sizeof(buf), lo + 3000, NULL, &e) == -EIO);
	/* a span nobody reported stays */
	CHECK(frames_read(fs, buf, sizeof(buf), pts[7].out + 5, NULL, &e) == 0);
	CHECK(memcmp(buf, data + pts[7].out + 5, sizeof(buf)) == 0);
	frames_free(fs);
	bytes_close(b);
}

/* Closing while the workers decode ahead: nothing leaks, nothing is used
 * after it is freed (ASan, TSan), the other kit's reader goes on. */
struct bg {
	struct source *s;
	int bad;
	unsigned digests;
};

static void *background(void *arg)
{
	struct bg *g = arg;
	struct frames *fs = frames_of(g->s, NULL);
	for (int i = 0; i < 3; i++)
		sequential(fs, 1024, 1 << 20, &g->bad, &g->digests);
	frames_free(fs);
	return NULL;
}

static void test_close_while_decoding(struct source *s)
{
	struct bg g = { .s = s };
	pthread_t t;
	CHECK(pthread_create(&t, NULL, background, &g) == 0);
	uint8_t *buf = malloc(1 << 20);
	for (int i = 0; i < 40; i++) {
		struct frames *fs = frames_of(s, NULL);
		struct stella_err e = { 0 };
		/* two reads forward: spans 1 and 2 are queued for the workers */
		CHECK(frames_read(fs, buf, 1 << 20, 0, NULL, &e) == 0);
		CHECK(frames_read(fs, buf, 1 << 20, 1 << 20, NULL, &e) == 0);
		if (i % 2)
			usleep(1000 * (unsigned)(i % 5)); /* some mid-decode, some still queued */
		frames_free(fs);
	}
	free(buf);
	pthread_join(t, NULL);
	CHECK(g.bad == 0);
	CHECK(frames_held() == 0);
}

/* Three kits read at once: the spans of all of them stay within the
 * budget, and reads the budget turns away go through cursors. */
struct kit_reader {
	struct source *s;
	int bad;
	size_t max_held;
};

static void *kit_read(void *arg)
{
	struct kit_reader *k = arg;
	uint8_t *buf = malloc(1 << 20);
	struct source_digests *d = malloc(sizeof(*d));
	for (uint64_t off = 0; off < SIZE; off += 1 << 20) {
		size_t len = (size_t)MIN((uint64_t)1 << 20, SIZE - off);
		struct stella_err e = { 0 };
		if (source_pread_digests(k->s, buf, len, off, d, &e) != 0)
			k->bad++;
		else
			checked(buf, len, off, d, &k->bad);
		k->max_held = MAX(k->max_held, frames_held());
	}
	free(d);
	free(buf);
	return NULL;
}

static void test_budget(void)
{
	enum { K = 3 };
	struct kit_reader k[K];
	pthread_t t[K];
	for (int i = 0; i < K; i++)
		k[i] = (struct kit_reader){ .s = opened(at("k.zst")) };
	for (int i = 0; i < K; i++)
		CHECK(pthread_create(&t[i], NULL, kit_read, &k[i]) == 0);
	for (int i = 0; i < K; i++) {
		pthread_join(t[i], NULL);
		CHECK(k[i].bad == 0);
		CHECK(k[i].max_held <= FRAMES_BUDGET);
		/* 3 kits x 4 slots x 4 MiB would be 48 MiB */
		CHECK(frames_held() <= FRAMES_BUDGET);
	}
	for (int i = 0; i < K; i++)
		source_close(k[i].s);
	CHECK(frames_held() == 0);
}

#if defined(__SANITIZE_THREAD__)
static const bool under_tsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
static const bool under_tsan = true;
#else
static const bool under_tsan = false;
#endif
#else
static const bool under_tsan = false;
#endif

/* fork() while workers decode ahead (stellafs forks after opening its
 * kit): the child reads with workers of its own, the parent goes on. */
static void test_fork(struct source *s)
{
	struct frames *fs = frames_of(s, NULL);
	uint8_t *buf = malloc(1 << 20);
	struct stella_err e = { 0 };
	CHECK(frames_read(fs, buf, 1 << 20, 0, NULL, &e) == 0);
	CHECK(frames_read(fs, buf, 1 << 20, 1 << 20, NULL, &e) == 0);
	pid_t pid = fork();
	if (pid == 0 && under_tsan) {
		/* TSan cannot start threads after a multi-threaded fork: the
		 * child only lets go of the kit (no lock left taken) */
		frames_free(fs);
		_exit(0);
	}
	if (pid == 0) {
		int bad = 0;
		unsigned dig = 0;
		sequential(fs, 0, 1 << 20, &bad, &dig);
		struct frames_stats st;
		frames_stats(fs, &st);
		frames_free(fs);
		_exit(bad == 0 && dig > 0 && st.ahead > 0 ? 0 : 1);
	}
	int bad = 0;
	unsigned dig = 0;
	sequential(fs, 0, 1 << 20, &bad, &dig);
	CHECK(bad == 0);
	int status = -1;
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	free(buf);
	frames_free(fs);
}

/* A kit of frames shorter than the 1 MiB between seek points: a span holds
 * several frames, and is decoded from an input buffer, not in place. */
static void test_multiframe_spans(void)
{
	struct source *s = opened(at("small.zst"));
	const struct source_point *pts;
	size_t n = source_points(s, &pts);
	CHECK(n > 10 && n < 50);
	struct frames *fs = frames_of(s, NULL);
	int bad = 0;
	unsigned dig = 0;
	sequential(fs, 2048, 1 << 20, &bad, &dig);
	CHECK(bad == 0);
	CHECK(dig > 0);
	struct racer r = { .fs = fs, .seed = 99 };
	race(&r);
	CHECK(r.bad == 0);
	struct frames_stats st;
	frames_stats(fs, &st);
	CHECK(st.ahead > 0 && st.failed == 0);
	frames_free(fs);
	source_close(s);
}

/* A kit written as one frame of the whole stream: no span to keep. */
static void test_large_span(void)
{
	struct source *s = opened(at("one.zst"));
	struct frames *fs = frames_of(s, NULL);
	uint8_t buf[100];
	struct stella_err e = { 0 };
	CHECK(frames_read(fs, buf, sizeof(buf), 5000, NULL, &e) == 1);
	frames_free(fs);
	CHECK(source_pread(s, buf, sizeof(buf), 5000, &e) == 0);
	CHECK(memcmp(buf, data + 5000, sizeof(buf)) == 0);
	source_close(s);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	data = malloc(SIZE);
	for (uint64_t i = 0; i < SIZE; i++)
		data[i] = byte_at(i);
	FILE *f = fopen(at("plain"), "wb");
	CHECK(f && fwrite(data, 1, SIZE, f) == SIZE);
	fclose(f);
	/* independent 4 MiB frames, as stellakit writes them (with the
	 * content checksum the CLI adds) */
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "cd %s && split -b 4194304 -d plain part. && for p in part.*; do zstd -q -c $p; done > k.zst && "
		 "zstd -q -c plain > one.zst && rm part.* && split -b 307200 -d -a 4 plain part. && "
		 "for p in part.*; do zstd -q -c $p; done > small.zst && rm part.*", dir);
	sh(cmd);

	struct source *s = opened(at("k.zst"));
	const struct source_point *pts;
	CHECK(source_points(s, &pts) == NFRAME);
	test_sequential(s);
	test_concurrent(s);
	test_parallel_stream(s);
	test_corrupt(s);
	test_forget(s);
	test_close_while_decoding(s);
	test_fork(s);
	/* last: the source's own spans count against the budget until it is
	 * closed, and the tests above hold two kits' worth at once */
	test_source_hook(s);
	source_close(s);
	test_budget();
	test_multiframe_spans();
	test_large_span();
	CHECK(frames_held() == 0);
	CHECK(frames_workers() == 0);

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	sh(cmd);
	free(data);
	return CHECK_DONE();
}
