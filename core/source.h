/* The bytes of a kit's tar stream, whatever the kit's compression.
 *
 * A kit is read twice in its life: once from start to end (verification, or
 * the index build at first mount), then at random offsets (the mount's
 * reads).  The first pass goes through source_stream_read; for compressed
 * kits it records seek points as it goes (like zran.c: every few MiB, at a
 * deflate block boundary, with the 32 KiB window; at zstd frame
 * boundaries), so that source_pread later starts near any offset instead of
 * at the beginning, without ever holding the decompressed kit.  Uncompressed
 * kits are read at the member's own offset straight from the kit's bytes
 * (bytes.h: one call down to pread): no copy, no index. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "err.h"

enum kit_compression { KIT_COMPRESS_NONE, KIT_COMPRESS_GZIP, KIT_COMPRESS_ZSTD };
const char *kit_compression_name(enum kit_compression c);

struct source;
struct bytes;

/* A block device: its size is the device's, larger than the kit on it. */
bool source_is_blockdev(const struct source *s);
/* The kit whose bytes B holds (bytes.h), taken over whatever the outcome. */
int source_open_bytes(struct bytes *b, struct source **out, struct stella_err *e);
/* The local kit file PATH (bytes_open_path). */
int source_open(const char *path, struct source **out, struct stella_err *e);
/* The kit already open on FD (blocking mode), taken over whatever the
 * outcome; PATH names it in messages (bytes_open_fd). */
int source_open_fd(int fd, const char *path, struct source **out, struct stella_err *e);
/* -EINVAL, with the reason, unless ST is a regular file or block device
 * (bytes_check_type; the name fs/kitpath.c calls it by). */
int source_check_type(const char *path, const struct stat *st, struct stella_err *e);
/* A new source on the bytes S reads (not on its path, which may name
 * another file by now), with cursors of its own: S may be in use. */
int source_dup(const struct source *s, struct source **out, struct stella_err *e);
/* The bytes S reads: their identity ties a cached index to the kit. */
struct bytes *source_bytes(const struct source *s);
void source_close(struct source *s);
const char *source_path(const struct source *s);
enum kit_compression source_compression(const struct source *s);
uint64_t source_file_size(const struct source *s);

/* Sequential read of the tar stream from its start; 0 at its end, after
 * checking that the file holds nothing after the compressed stream. */
ssize_t source_stream_read(struct source *s, void *buf, size_t len, struct stella_err *e);

/* Skip up to len bytes of the stream (uncompressed kits: without reading
 * them).  Returns the number skipped. */
int64_t source_stream_skip(struct source *s, uint64_t len, struct stella_err *e);

/* Random read of exactly len bytes of the tar stream at off (thread-safe).
 * For compressed kits, only offsets the stream pass has reached. */
int source_pread(struct source *s, void *buf, size_t len, uint64_t off, struct stella_err *e);

/* The stream bytes [stream_off, stream_off+len) failed verification above:
 * report the kit-file bytes they were decoded from to the bytes
 * (bytes_report_bad), after dropping what was decoded from them.  0: read
 * again, another mirror may serve good bytes; -EIO: nothing else to try
 * (a local kit always). */
int source_report_bad(struct source *s, uint64_t stream_off, size_t len);

/* Whether the stream bytes [stream_off, stream_off+len) can be read without
 * waiting for the network (core/remote.h, remote_resident).  Local kits:
 * always.  Compressed kits from mirrors: never claimed (their decoded
 * spans and seek points are not consulted yet). */
bool source_resident(struct source *s, uint64_t stream_off, uint64_t len);

/* SHA-256 digests of whole 4 KiB blocks of a read, computed on the way
 * (core/frames.h: workers decoding a zstd kit ahead of a sequential reader
 * hash the blocks as they land).  have[k]: sha256[k] is the digest of the
 * 4096 bytes the read returned at buf + k * 4096.  Blocks past the first
 * SOURCE_DIGESTS, a block cut by the end of the read, and blocks nobody
 * hashed have none. */
#define SOURCE_DIGESTS 256u  /* 1 MiB of blocks: FUSE's largest read */
struct source_digests {
	uint8_t have[SOURCE_DIGESTS];
	uint8_t sha256[SOURCE_DIGESTS][32];
};
/* source_pread, and the digests that came with the bytes (d may be NULL). */
int source_pread_digests(struct source *s, void *buf, size_t len, uint64_t off, struct source_digests *d,
			 struct stella_err *e);
/* A decoded zstd span held for a reader that replies straight from it
 * (source_pin): its bytes stay where they are, unchanged, until
 * source_unpin.  Opaque but for the source. */
struct source_pin {
	struct source *src;
	void *frames, *slot;      /* core/frames.c's */
};
/* Where the stream bytes [off, off+len) already lie decoded in memory
 * (a zstd kit's span, core/frames.h), with the digests of their whole
 * blocks as source_pread_digests gives them: 0 and *p, held until
 * source_unpin(pin); 1 when they are not served this way (not one span,
 * not a zstd kit, no buffer under the budget, or a span that does not
 * decode: the caller reads them with source_pread_digests, which says
 * why); -ENOMEM.  Nothing but the bytes' place differs from
 * source_pread_digests: the caller checks them all the same. */
int source_pin(struct source *s, size_t len, uint64_t off, const uint8_t **p, struct source_pin *pin,
	       struct source_digests *d);
void source_unpin(struct source_pin *pin);
/* Whether the calling thread's latest source_pread_digests with digests
 * asked (d not NULL: a file's data, not the tree blocks its check loads
 * through source_pread) succeeded with a digest for each of its whole
 * blocks (up to SOURCE_DIGESTS of them):
 * its caller then hashed nothing itself.  A hint about the next read of a
 * sequential reader (fs/ops.c, op_read's priority), never a verdict. */
bool source_hashed_ahead(void);

/* Seek points, to keep them with the index (compressed kits only). */
struct source_point {
	uint64_t out;       /* offset in the tar stream */
	uint64_t in;        /* offset in the kit file */
	uint8_t bits;       /* gzip: bits of the byte before `in` still to use */
	uint8_t *window;    /* gzip: the 32 KiB before `out` (malloc'ed), else NULL */
};
size_t source_points(const struct source *s, const struct source_point **pts);
/* Install points read back from an index and the stream's total size; the
 * stream pass is then not needed.  Takes ownership of pts and their
 * windows, also when it refuses them (-EINVAL: not points of this kit). */
int source_set_points(struct source *s, struct source_point *pts, size_t n, uint64_t total);
uint64_t source_stream_size(const struct source *s);
/* Whether the stream pass saw a gzip member or zstd frame start at tar
 * offset OUT, among the last few it passed; *in: its offset in the file
 * (a kit's body starts with one: docs/kit-format.md, "The carried index"). */
int source_boundary(const struct source *s, uint64_t out, uint64_t *in);

#define SOURCE_WINDOW 32768u
