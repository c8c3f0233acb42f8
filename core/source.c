#include "source.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "bytes.h"
#include "frames.h"
#include "merkle.h"
#include "remote.h"
#include "util.h"

#define IN_CHUNK   (256u << 10)
#define GZ_SPAN    (4u << 20)   /* distance between gzip seek points */
#define ZSTD_SPAN  (1u << 20)   /* at least this far apart at frame ends */
#define NCURSORS   8
#define SINK       (256u << 10)
#define SKIP_LIMIT (8u << 20)   /* continue a cursor rather than restart within this */

struct cursor {
	bool live;            /* decoder state valid */
	bool busy;
	bool raw;             /* gzip: inside a raw deflate stream started at a point */
	bool ended;           /* the compressed stream is finished */
	bool boundary;        /* between two gzip members / zstd frames */
	uint64_t out;         /* tar-stream offset of the next byte it produces */
	uint64_t file_pos;    /* kit-file offset of the next byte to read into inbuf */
	uint64_t last_use;
	uint64_t until;       /* while busy: where it will stand when done */
	uint8_t *inbuf;
	uint8_t *sink;        /* where skipped output goes: per cursor, since
			       * inflate reads back what it wrote there */
	z_stream z;
	bool z_init;
	ZSTD_DCtx *zd;
	ZSTD_inBuffer zin;
};

/* A zstd kit written in frames (stellakit writes 4 MiB ones) is read a
 * whole frame at a time, decoded ahead of sequential readers by worker
 * threads (core/frames.h).  A cursor (below) still serves frames too large
 * for that and gzip kits, whose deflate blocks cannot be decoded apart. */

struct source {
	struct bytes *b;        /* every byte of the kit is read through it */
	const char *path;       /* b's name, for messages */
	uint64_t file_size;
	enum kit_compression comp;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct source_point *pts;
	size_t npts, cap;
	uint64_t stream_size;   /* known once the stream pass reached the end */
	bool complete;
	/* the latest gzip member / zstd frame starts the stream pass saw,
	 * every one (source_boundary) */
	struct { uint64_t out, in; } bnd[8];
	unsigned nbnd;

	struct cursor stream;   /* the sequential pass */
	struct cursor cur[NCURSORS];
	uint64_t clock;

	struct frames *frames;  /* made at the first read once the points are complete */
};

const char *kit_compression_name(enum kit_compression c)
{
	switch (c) {
	case KIT_COMPRESS_GZIP: return "gzip";
	case KIT_COMPRESS_ZSTD: return "zstd";
	default: return "none";
	}
}

const char *source_path(const struct source *s) { return s->path; }
enum kit_compression source_compression(const struct source *s) { return s->comp; }
uint64_t source_file_size(const struct source *s) { return s->file_size; }
bool source_is_blockdev(const struct source *s) { return bytes_is_device(s->b); }
struct bytes *source_bytes(const struct source *s) { return s->b; }
uint64_t source_stream_size(const struct source *s) { return s->comp == KIT_COMPRESS_NONE ? s->file_size : s->stream_size; }

size_t source_points(const struct source *s, const struct source_point **pts)
{
	*pts = s->pts;
	return s->npts;
}

static void cursor_reset(struct cursor *c)
{
	if (c->z_init)
		inflateEnd(&c->z);
	c->z_init = false;
	c->live = false;
	c->ended = false;
}

static void cursor_free(struct cursor *c)
{
	cursor_reset(c);
	ZSTD_freeDCtx(c->zd);
	free(c->inbuf);
	free(c->sink);
}

static int cursor_alloc(struct source *s, struct cursor *c)
{
	memset(c, 0, sizeof(*c));
	if (!(c->inbuf = malloc(IN_CHUNK)) || !(c->sink = malloc(SINK)))
		return -ENOMEM;
	if (s->comp == KIT_COMPRESS_ZSTD && !(c->zd = ZSTD_createDCtx()))
		return -ENOMEM;
	return 0;
}

void source_close(struct source *s)
{
	if (!s)
		return;
	frames_free(s->frames); /* first: its workers read through s->b */
	cursor_free(&s->stream);
	for (int i = 0; i < NCURSORS; i++)
		cursor_free(&s->cur[i]);
	for (size_t i = 0; i < s->npts; i++)
		free(s->pts[i].window);
	free(s->pts);
	bytes_close(s->b);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s);
}

int source_open(const char *path, struct source **out, struct stella_err *e)
{
	struct bytes *b;
	int r = bytes_open_path(path, &b, e);
	return r < 0 ? r : source_open_bytes(b, out, e);
}

int source_open_fd(int fd, const char *path, struct source **out, struct stella_err *e)
{
	struct bytes *b;
	int r = bytes_open_fd(fd, path, &b, e);
	return r < 0 ? r : source_open_bytes(b, out, e);
}

int source_open_bytes(struct bytes *b, struct source **out, struct stella_err *e)
{
	struct source *s = calloc(1, sizeof(*s));
	int r;
	if (!s) {
		bytes_close(b);
		return -ENOMEM;
	}
	s->b = b;
	s->path = bytes_name(b);
	s->file_size = bytes_size(b);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	uint8_t magic[4] = { 0 };
	if (s->file_size >= 4 && (r = bytes_read_full(s->b, magic, 4, 0)) < 0) {
		r = stella_fail_errno(e, r, "%s", s->path);
		goto fail;
	}
	if (magic[0] == 0x1f && magic[1] == 0x8b)
		s->comp = KIT_COMPRESS_GZIP;
	else if (magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd)
		s->comp = KIT_COMPRESS_ZSTD;
	else
		s->comp = KIT_COMPRESS_NONE;
	if ((r = cursor_alloc(s, &s->stream)) < 0)
		goto fail;
	for (int i = 0; i < NCURSORS; i++)
		if ((r = cursor_alloc(s, &s->cur[i])) < 0)
			goto fail;
	if (s->comp != KIT_COMPRESS_NONE) {
		/* The stream's start is the first seek point. */
		if (!(s->pts = calloc(1, sizeof(*s->pts)))) {
			r = -ENOMEM;
			goto fail;
		}
		s->npts = s->cap = 1;
	}
	bytes_advise_sequential(s->b);
	*out = s;
	return 0;
fail:
	source_close(s);
	return r;
}

int source_check_type(const char *path, const struct stat *st, struct stella_err *e)
{
	return bytes_check_type(path, st, e);
}

int source_dup(const struct source *s, struct source **out, struct stella_err *e)
{
	struct bytes *b;
	int r = bytes_dup(s->b, &b, e);
	return r < 0 ? r : source_open_bytes(b, out, e);
}

static void boundary_note(struct source *s, uint64_t out, uint64_t in)
{
	s->bnd[s->nbnd++ % ARRAY_SIZE(s->bnd)].out = out;
	s->bnd[(s->nbnd - 1) % ARRAY_SIZE(s->bnd)].in = in;
}

int source_boundary(const struct source *s, uint64_t out, uint64_t *in)
{
	for (unsigned i = 0; i < ARRAY_SIZE(s->bnd) && i < s->nbnd; i++)
		if (s->bnd[i].out == out) {
			*in = s->bnd[i].in;
			return 0;
		}
	return -ENOENT;
}

static void point_add(struct source *s, uint64_t out, uint64_t in, uint8_t bits, const uint8_t *window)
{
	if (s->complete || (s->npts && s->pts[s->npts - 1].out >= out))
		return;
	if (s->npts == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 16;
		struct source_point *p = realloc(s->pts, cap * sizeof(*p));
		if (!p)
			return; /* fewer points is slower, not wrong */
		s->pts = p;
		s->cap = cap;
	}
	struct source_point *p = &s->pts[s->npts];
	p->out = out;
	p->in = in;
	p->bits = bits;
	p->window = NULL;
	if (window) {
		if (!(p->window = malloc(SOURCE_WINDOW)))
			return;
		memcpy(p->window, window, SOURCE_WINDOW);
	}
	pthread_mutex_lock(&s->lock);
	s->npts++;
	pthread_mutex_unlock(&s->lock);
}

/* Position cursor c at seek point p. */
static int cursor_start(struct source *s, struct cursor *c, const struct source_point *p)
{
	cursor_reset(c);
	c->out = p->out;
	c->file_pos = p->in;
	if (s->comp == KIT_COMPRESS_GZIP) {
		memset(&c->z, 0, sizeof(c->z));
		/* a point with a window is inside a member's deflate stream; one
		 * without starts a member (the stream's start, or a boundary) */
		c->raw = p->window != NULL;
		if (inflateInit2(&c->z, c->raw ? -15 : 15 + 32) != Z_OK)
			return -ENOMEM;
		c->z_init = true;
		if (c->raw) {
			if (p->bits) {
				uint8_t byte;
				int r = bytes_read_full(s->b, &byte, 1, p->in - 1);
				if (r < 0)
					return r;
				inflatePrime(&c->z, p->bits, byte >> (8 - p->bits));
			}
			inflateSetDictionary(&c->z, p->window, SOURCE_WINDOW);
		}
	} else {
		ZSTD_DCtx_reset(c->zd, ZSTD_reset_session_only);
		c->zin.src = c->inbuf;
		c->zin.size = c->zin.pos = 0;
	}
	c->live = true;
	return 0;
}

static int refill(struct source *s, struct cursor *c, const uint8_t **next, size_t *avail)
{
	size_t want = (size_t)MIN((uint64_t)IN_CHUNK, s->file_size - c->file_pos);
	if (want == 0)
		return 0;
	ssize_t n = bytes_read_at(s->b, c->inbuf, want, c->file_pos);
	if (n < 0)
		return (int)n;
	if (n == 0)
		return -EIO;
	c->file_pos += (uint64_t)n;
	*next = c->inbuf;
	*avail = (size_t)n;
	return 1;
}

/* Produce up to len bytes (buf NULL: discard).  record: the stream pass,
 * which notes seek points on the way. */
static ssize_t gz_step(struct source *s, struct cursor *c, uint8_t *buf, size_t len, bool record,
		       struct stella_err *e)
{
	z_stream *z = &c->z;
	size_t produced = 0;
	while (produced < len && !c->ended) {
		if (z->avail_in == 0) {
			const uint8_t *next = NULL;
			size_t avail = 0;
			int r = refill(s, c, &next, &avail);
			if (r < 0)
				return stella_fail_errno(e, r, "%s: reading", s->path);
			if (r == 0)
				return stella_fail(e, -EBADMSG, "%s: truncated gzip stream", s->path);
			z->next_in = (Bytef *)next;
			z->avail_in = (uInt)avail;
		}
		size_t want = len - produced;
		uint8_t *dst = buf ? buf + produced : c->sink;
		if (!buf)
			want = MIN(want, (size_t)SINK);
		z->next_out = dst;
		z->avail_out = (uInt)MIN(want, (size_t)UINT32_MAX);
		int zr = inflate(z, record ? Z_BLOCK : Z_NO_FLUSH);
		size_t got = (size_t)(z->next_out - dst);
		produced += got;
		c->out += got;
		if (zr == Z_STREAM_END) {
			/* One gzip member done: its trailer, then maybe another
			 * member (concatenated gzip), else the end. */
			uint64_t in_pos = c->file_pos - z->avail_in;
			if (c->raw)
				in_pos += 8; /* a raw stream leaves the trailer to us */
			if (in_pos >= s->file_size) {
				if (in_pos > s->file_size)
					return stella_fail(e, -EBADMSG, "%s: truncated gzip stream", s->path);
				c->ended = true;
				break;
			}
			inflateEnd(z);
			memset(z, 0, sizeof(*z));
			if (inflateInit2(z, 15 + 32) != Z_OK)
				return -ENOMEM;
			c->raw = false;
			c->boundary = true;
			c->file_pos = in_pos;
			/* A member boundary is a seek point that needs no window: a
			 * kit of members shorter than the 32 KiB window (any gzip
			 * writer may cut there) has no other, and every read would
			 * decode from the start of the kit. */
			if (record)
				boundary_note(s, c->out, in_pos);
			if (record && c->out - s->pts[s->npts - 1].out >= GZ_SPAN)
				point_add(s, c->out, in_pos, 0, NULL);
			continue;
		}
		if (zr == Z_BUF_ERROR && got == 0 && z->avail_in == 0)
			continue;
		if (zr != Z_OK && zr != Z_BUF_ERROR) {
			/* Bytes after a gzip member that do not start another one. */
			const char *what = c->boundary && z->total_out == 0 ? "trailing garbage after the gzip stream" :
									      "corrupt gzip stream";
			return stella_fail(e, -EBADMSG, "%s: %s: %s", s->path, what, z->msg ? z->msg : "inflate error");
		}
		if (z->total_out)
			c->boundary = false;
		if (record && (z->data_type & 128) && !(z->data_type & 64) &&
		    c->out - s->pts[s->npts - 1].out >= GZ_SPAN) {
			uint8_t win[SOURCE_WINDOW];
			uInt wl = sizeof(win);
			if (inflateGetDictionary(z, win, &wl) == Z_OK && wl == SOURCE_WINDOW)
				point_add(s, c->out, c->file_pos - z->avail_in, (uint8_t)(z->data_type & 7), win);
		}
	}
	return (ssize_t)produced;
}

static ssize_t zstd_step(struct source *s, struct cursor *c, uint8_t *buf, size_t len, bool record,
			 struct stella_err *e)
{
	size_t produced = 0;
	while (produced < len && !c->ended) {
		if (c->zin.pos == c->zin.size) {
			const uint8_t *next = NULL;
			size_t avail = 0;
			int r = refill(s, c, &next, &avail);
			if (r < 0)
				return stella_fail_errno(e, r, "%s: reading", s->path);
			if (r == 0) /* input used up inside a frame */
				return stella_fail(e, -EBADMSG, "%s: truncated zstd stream", s->path);
			c->zin.src = next;
			c->zin.size = avail;
			c->zin.pos = 0;
		}
		size_t want = len - produced;
		uint8_t *dst = buf ? buf + produced : c->sink;
		if (!buf)
			want = MIN(want, (size_t)SINK);
		ZSTD_outBuffer zo = { dst, want, 0 };
		size_t zr = ZSTD_decompressStream(c->zd, &zo, &c->zin);
		if (ZSTD_isError(zr))
			return stella_fail(e, -EBADMSG, "%s: %s: %s", s->path,
					   c->boundary && c->out > 0 ? "trailing garbage after the zstd stream" :
								       "corrupt zstd stream",
					   ZSTD_getErrorName(zr));
		c->boundary = zr == 0;
		produced += zo.pos;
		c->out += zo.pos;
		if (zr == 0) {
			/* A frame ended and is flushed: the next byte starts a frame. */
			uint64_t in_pos = c->file_pos - (c->zin.size - c->zin.pos);
			if (in_pos == s->file_size) {
				c->ended = true;
				break;
			}
			/* A skippable frame is data no decoder shows: hidden bytes. */
			uint8_t magic[4];
			if (bytes_read_full(s->b, magic, 4, in_pos) == 0 && (magic[0] & 0xf0) == 0x50 &&
			    magic[1] == 0x2a && magic[2] == 0x4d && magic[3] == 0x18)
				return stella_fail(e, -EBADMSG, "%s: trailing garbage: a zstd skippable frame at byte %llu",
						   s->path, (unsigned long long)in_pos);
			if (record)
				boundary_note(s, c->out, in_pos);
			if (record && c->out - s->pts[s->npts - 1].out >= ZSTD_SPAN)
				point_add(s, c->out, in_pos, 0, NULL);
		}
	}
	return (ssize_t)produced;
}

static ssize_t step(struct source *s, struct cursor *c, uint8_t *buf, size_t len, bool record,
		    struct stella_err *e)
{
	return s->comp == KIT_COMPRESS_GZIP ? gz_step(s, c, buf, len, record, e) :
					       zstd_step(s, c, buf, len, record, e);
}

ssize_t source_stream_read(struct source *s, void *buf, size_t len, struct stella_err *e)
{
	struct cursor *c = &s->stream;
	if (s->comp == KIT_COMPRESS_NONE) {
		ssize_t n = bytes_read_at(s->b, buf, len, c->out);
		if (n < 0)
			return stella_fail_errno(e, (int)n, "%s: reading", s->path);
		c->out += (uint64_t)n;
		return n;
	}
	if (!c->live) {
		int r = cursor_start(s, c, &s->pts[0]);
		if (r < 0)
			return r;
	}
	ssize_t n = step(s, c, buf, len, true, e);
	if (n == 0 && c->ended && !s->complete) {
		/* A point taken where a member or frame began that turned out
		 * to be empty and last stands at the very end: nothing starts
		 * there, and source_set_points would refuse the list at the next
		 * mount (bgzip ends every file with an empty member). */
		pthread_mutex_lock(&s->lock);
		while (s->npts > 1 && s->pts[s->npts - 1].out >= c->out) {
			free(s->pts[s->npts - 1].window);
			s->npts--;
		}
		pthread_mutex_unlock(&s->lock);
		s->stream_size = c->out;
		s->complete = true;
	}
	return n;
}

int64_t source_stream_skip(struct source *s, uint64_t len, struct stella_err *e)
{
	struct cursor *c = &s->stream;
	if (s->comp == KIT_COMPRESS_NONE) {
		uint64_t n = MIN(len, s->file_size - MIN(c->out, s->file_size));
		c->out += n;
		return (int64_t)n;
	}
	if (!c->live) {
		int r = cursor_start(s, c, &s->pts[0]);
		if (r < 0)
			return r;
	}
	ssize_t n = step(s, c, NULL, (size_t)MIN(len, (uint64_t)SSIZE_MAX), true, e);
	return n;
}

static void points_free(struct source_point *pts, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(pts[i].window);
	free(pts);
}

int source_set_points(struct source *s, struct source_point *pts, size_t n, uint64_t total)
{
	/* Points come back from an index file: check them as input.  They
	 * must start at (0, 0), rise strictly in both streams, stay inside
	 * the file and the stream, and a gzip point has at most 7 pending
	 * bits and, unless it starts a member (no window, no bits), its
	 * window. */
	bool ok = s->comp != KIT_COMPRESS_NONE && n > 0 && pts[0].out == 0 && pts[0].in == 0;
	for (size_t i = 0; ok && i < n; i++) {
		const struct source_point *p = &pts[i];
		ok = p->in < s->file_size && p->out < total && p->bits <= 7 &&
		     (i == 0 || (p->out > pts[i - 1].out && p->in > pts[i - 1].in));
		if (ok && s->comp == KIT_COMPRESS_GZIP && i > 0)
			ok = p->window != NULL || p->bits == 0;
	}
	if (!ok) {
		points_free(pts, n);
		return -EINVAL;
	}
	/* frames copied the points it was made from */
	frames_free(s->frames);
	s->frames = NULL;
	for (size_t i = 0; i < s->npts; i++)
		free(s->pts[i].window);
	free(s->pts);
	s->pts = pts;
	s->npts = s->cap = n;
	s->stream_size = total;
	s->complete = true;
	return 0;
}

/* The last seek point at or before off. */
static size_t point_index(const struct source *s, uint64_t off)
{
	size_t lo = 0, hi = s->npts;
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->pts[mid].out <= off)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

static const struct source_point *point_before(struct source *s, uint64_t off)
{
	return &s->pts[point_index(s, off)];
}

/* ---- whole zstd frames ---- */

/* The kit's decoded frames, made at the first read that wants them; NULL
 * when the kit is not made of them (or no memory: then cursors, and
 * another try at the next read). */
static struct frames *kit_frames(struct source *s)
{
	if (s->comp != KIT_COMPRESS_ZSTD || !s->complete)
		return NULL;
	pthread_mutex_lock(&s->lock);
	if (!s->frames && frames_new(s->b, s->path, s->pts, s->npts, s->stream_size, &s->frames) < 0)
		s->frames = NULL;
	struct frames *fs = s->frames;
	pthread_mutex_unlock(&s->lock);
	return fs;
}

/* 1: not frame-shaped here, use a cursor; 0: read; < 0: error. */
static int frame_read(struct source *s, uint8_t *buf, size_t len, uint64_t off, struct source_digests *d,
		      struct stella_err *e)
{
	struct frames *fs = kit_frames(s);
	return fs ? frames_read(fs, buf, len, off, d, e) : 1;
}

/* Whether this thread's latest source_pread_digests came with a digest for
 * every whole block it read (source_hashed_ahead). */
static __thread bool hashed_ahead;

bool source_hashed_ahead(void) { return hashed_ahead; }

/* The thread's hint (source_hashed_ahead) from the digests of a read of
 * len bytes that returned r. */
static void note_digests(int r, size_t len, const struct source_digests *d)
{
	size_t blocks = MIN(len / MERKLE_BLOCK, (size_t)SOURCE_DIGESTS);
	bool all = r == 0 && blocks > 0;
	for (size_t k = 0; all && k < blocks; k++)
		all = d->have[k];
	hashed_ahead = all;
}

int source_pin(struct source *s, size_t len, uint64_t off, const uint8_t **p, struct source_pin *pin,
	       struct source_digests *d)
{
	memset(d->have, 0, sizeof(d->have));
	struct frames *fs = len ? kit_frames(s) : NULL;
	if (!fs)
		return 1;
	int r = frames_pin(fs, len, off, p, pin, d);
	if (r == 0) {
		pin->src = s;
		note_digests(r, len, d);
	}
	return r;
}

void source_unpin(struct source_pin *pin)
{
	frames_unpin(pin);
}

int source_pread(struct source *s, void *buf, size_t len, uint64_t off, struct stella_err *e)
{
	return source_pread_digests(s, buf, len, off, NULL, e);
}

static int pread_digests(struct source *s, void *buf, size_t len, uint64_t off, struct source_digests *d,
			 struct stella_err *e);

int source_pread_digests(struct source *s, void *buf, size_t len, uint64_t off, struct source_digests *d,
			 struct stella_err *e)
{
	int r = pread_digests(s, buf, len, off, d, e);
	if (d) /* not for the Merkle tree's blocks a read loads */
		note_digests(r, len, d);
	return r;
}

static int pread_digests(struct source *s, void *buf, size_t len, uint64_t off, struct source_digests *d,
			 struct stella_err *e)
{
	if (d)
		memset(d->have, 0, sizeof(d->have));
	if (s->comp == KIT_COMPRESS_NONE) {
		int r = bytes_read_full(s->b, buf, len, off);
		if (r == -EIO)
			return stella_fail(e, -EIO, "%s: short read at %llu: the kit file shrank", s->path,
					   (unsigned long long)off);
		return r < 0 ? stella_fail_errno(e, r, "%s: reading at %llu", s->path, (unsigned long long)off) : 0;
	}
	if (len == 0)
		return 0;
	int fr = frame_read(s, buf, len, off, d, e);
	if (fr <= 0)
		return fr;
	/* Pick the cursor that can reach off soonest: a live one just behind
	 * it (sequential readers keep theirs), else the least recently used,
	 * restarted at the nearest seek point. */
	pthread_mutex_lock(&s->lock);
	const struct source_point *p = point_before(s, off);
	struct cursor *c;
	for (;;) {
		c = NULL;
		struct cursor *lru = NULL;
		bool worth_waiting = false;
		for (int i = 0; i < NCURSORS; i++) {
			struct cursor *x = &s->cur[i];
			if (x->busy) {
				/* The kernel's readahead sends the next chunk while the
				 * previous one is still being decoded: waiting for that
				 * cursor beats decoding again from a seek point. */
				if (x->until <= off && x->until > p->out && off - x->until <= SKIP_LIMIT)
					worth_waiting = true;
				continue;
			}
			if (x->live && x->out <= off && off - x->out <= SKIP_LIMIT && (!c || x->out > c->out))
				c = x;
			if (!lru || x->last_use < lru->last_use)
				lru = x;
		}
		if (!c && !worth_waiting)
			c = lru;
		if (c)
			break;
		pthread_cond_wait(&s->cond, &s->lock);
	}
	c->busy = true;
	c->until = off + len;
	c->last_use = ++s->clock;
	pthread_mutex_unlock(&s->lock);

	int r = 0;
	if (!c->live || c->out > off || off - c->out > SKIP_LIMIT || (p->out > c->out))
		r = cursor_start(s, c, p);
	if (r == 0 && off > c->out) {
		ssize_t n = step(s, c, NULL, off - c->out, false, e);
		if (n < 0)
			r = (int)n;
		else if (c->out != off)
			r = stella_fail(e, -EIO, "%s: offset %llu is past the end of the stream", s->path,
					(unsigned long long)off);
	}
	if (r == 0) {
		ssize_t n = step(s, c, buf, len, false, e);
		if (n < 0)
			r = (int)n;
		else if ((size_t)n != len)
			r = stella_fail(e, -EIO, "%s: read past the end of the stream at %llu", s->path,
					(unsigned long long)off);
	}
	if (r < 0)
		cursor_reset(c);

	pthread_mutex_lock(&s->lock);
	c->busy = false;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return r;
}

/* Where the kit-file bytes of the span from point i end. */
static uint64_t point_end_in(const struct source *s, size_t i)
{
	return i + 1 < s->npts ? s->pts[i + 1].in : s->file_size;
}

int source_report_bad(struct source *s, uint64_t stream_off, size_t len)
{
	if (len == 0)
		return -EIO;
	if (s->comp == KIT_COMPRESS_NONE)
		return bytes_report_bad(s->b, stream_off, len);
	pthread_mutex_lock(&s->lock);
	if (s->npts == 0) {
		pthread_mutex_unlock(&s->lock);
		return -EIO;
	}
	/* the kit-file bytes these stream bytes were decoded from: from the
	 * seek point at or before them (with the byte a gzip point's bits
	 * come from) to the next point after their end */
	size_t first = point_index(s, stream_off), last = point_index(s, stream_off + len - 1);
	uint64_t in = s->pts[first].in, end = point_end_in(s, last);
	if (s->pts[first].bits && in > 0)
		in--;
	/* nothing decoded from them may be served again: the decoded spans
	 * and the cursors that hold such bytes, or state made from them, go */
	if (s->frames)
		frames_forget(s->frames, s->pts[first].out, stream_off + len);
	for (int i = 0; i < NCURSORS; i++)
		if (!s->cur[i].busy)
			cursor_reset(&s->cur[i]);
	pthread_mutex_unlock(&s->lock);
	return bytes_report_bad(s->b, in, end - in);
}

bool source_resident(struct source *s, uint64_t stream_off, uint64_t len)
{
	if (!bytes_is_remote(s->b))
		return true;
	if (s->comp != KIT_COMPRESS_NONE)
		return false;
	return remote_resident(s->b, stream_off, len);
}
