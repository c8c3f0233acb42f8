/* Decoded zstd frames of one kit, decoded ahead of sequential readers.
 *
 * A zstd kit from `stellakit pack` is a sequence of independent frames of
 * 4 MiB of tar stream, with a seek point at each (source.h).  Call the bytes
 * from one seek point to the next a *span*.  Reads of spans small enough
 * (FRAMES_SPAN_MAX) are served from whole decoded spans kept here: a read
 * takes a reference on the span, copies out of it, and drops it; or
 * (frames_pin) holds it while its caller checks and sends the bytes where
 * they lie.
 *
 * A reader that goes forward span by span (a sequential stream: up to
 * FRAMES_STREAMS of them per kit are followed) gets the next spans decoded
 * ahead of it by a pool of worker threads shared by every kit of the
 * process (one per CPU, at most FRAMES_WORKERS_MAX), so that decoding
 * runs on every core while the reader's thread hashes and replies.  When
 * the stream's reads are large, the workers also hash the span's 4 KiB
 * blocks as the stream's reads are aligned (*hash as they land*), and a
 * read hands those digests back with the bytes (struct source_digests):
 * the reader's thread then only compares them with the Merkle tree.  A
 * digest is always of the very bytes the read copies out, taken from the
 * same immutable decoded span; it is never a verdict, only a SHA-256 the
 * caller would otherwise compute itself.
 *
 * Other reads decode what they need in their own thread, as before: a
 * span not kept, or queued but not yet started by a worker (the reader
 * takes it over), is decoded by the thread that needs it.
 *
 * A span that is one frame is decoded in place (its compressed bytes read
 * into the end of its own buffer), so it needs no input buffer.
 *
 * Memory: at most FRAMES_SLOTS decoded spans per kit, and all kits
 * together at most FRAMES_BUDGET bytes of them (a read that cannot get a
 * span under the budget goes through a cursor instead, source.c); each
 * worker keeps one decoder context, and an input buffer only once it met
 * a span of several frames.  Spans are kept until the kit is closed.
 * docs/mount.md section 3.3 and docs/hardening.md "Resource budgets". */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "source.h"

#define FRAMES_SPAN_MAX    (8u << 20)   /* larger spans are read through a cursor */
#define FRAMES_WORKERS_MAX 4u
#define FRAMES_SLOTS       4u           /* decoded spans kept per kit */
#define FRAMES_STREAMS     4u           /* sequential readers followed per kit */
#define FRAMES_BUDGET      (32u << 20)  /* decoded spans of all kits together */
#define FRAMES_HASH_READ   (64u << 10)  /* reads at least this long get digests ahead */

struct bytes;
struct frames;

/* The frames of the zstd kit in B (borrowed: it must outlive the result),
 * whose complete seek points are PTS (copied), its tar stream STREAM_SIZE
 * bytes long; NAME names it in messages (borrowed too).  -ENOMEM. */
int frames_new(struct bytes *b, const char *name, const struct source_point *pts, size_t n, uint64_t stream_size,
	       struct frames **out);
/* Cancels the decodes queued for it, waits for the ones running, frees
 * its spans.  No read of it may be running. */
void frames_free(struct frames *fs);

/* Exactly len bytes of the tar stream at off into buf: 0, or a negative
 * errno with e set (a span that does not decode: -EIO); 1 when these
 * bytes are not served here (a span too large, not within the stream, or
 * no memory under the budget): the caller reads them another way.  With
 * d, d->have[k] is set for the blocks k whose digest came with the bytes
 * (and cleared for no others: the caller clears it first; all of it when
 * returning 1, since the bytes are then read again).  Thread-safe. */
int frames_read(struct frames *fs, uint8_t *buf, size_t len, uint64_t off, struct source_digests *d,
		struct stella_err *e);

/* frames_read without the copy: when [off, off+len) lies in one span that
 * can be had, 0 with *p pointing at its bytes in the decoded span, which
 * stays unchanged until frames_unpin(pin) (a reference on its slot: no
 * decode reuses it meanwhile), and d's digests as frames_read gives them
 * (d->have cleared first).  1 otherwise, and when the span does not decode
 * (the caller's frames_read then says why).  Thread-safe.  A pin must not
 * be held while waiting for another span of the same kit (its slots are
 * few: FRAMES_SLOTS pins and a wait for a fifth span would never end). */
int frames_pin(struct frames *fs, size_t len, uint64_t off, const uint8_t **p, struct source_pin *pin,
	       struct source_digests *d);
void frames_unpin(struct source_pin *pin);

/* The stream bytes [from, to) failed verification (a mirror may have
 * served bad compressed bytes, core/remote.h): no span decoded, being
 * decoded or queued from them is found again; a reader copying out of one
 * right now finishes its copy (and fails its own check), and the next read
 * decodes afresh from the bytes the mirrors now give. */
void frames_forget(struct frames *fs, uint64_t from, uint64_t to);

/* Counters, for tests and the bench. */
struct frames_stats {
	uint64_t ahead;        /* spans decoded by the workers */
	uint64_t demand;       /* spans decoded by a reader's thread */
	uint64_t taken_over;   /* of those, queued for a worker first */
	uint64_t digests;      /* block digests handed to readers */
	uint64_t failed;       /* decodes that failed */
	size_t held;           /* bytes of this kit's span buffers */
};
void frames_stats(struct frames *fs, struct frames_stats *st);
/* Bytes of span buffers of all kits of the process (<= FRAMES_BUDGET). */
size_t frames_held(void);
/* The worker pool's size (0 until the first decode ahead). */
unsigned frames_workers(void);
