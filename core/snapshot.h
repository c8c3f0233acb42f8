/* A snapshot: one verified kit, opened for reading through its index.
 *
 * This is the seam between the kit and the filesystem: the daemon asks it
 * for entries and for verified bytes, nothing else.  Every byte a read
 * returns was hashed in its 4 KiB block and matched against the file's
 * Merkle tree, whose root matches the fs-verity digest in the signed
 * manifest; a block that does not match is an error (-EIO) for that read,
 * counted and logged, never data.  There is no unverified read.
 *
 * Snapshots are reference-counted: each open file holds one, so switching
 * the current snapshot never frees what a reader still uses. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "fdcache.h"
#include "index.h"
#include "manifest.h"
#include "sig.h"

struct snapshot_opts {
	const char *kit;              /* a path, or what names bytes below in messages */
	/* The kit's bytes already open (core/location.h: a kit on a mirror),
	 * taken over whatever the outcome; NULL: kit is a path, opened here. */
	struct bytes *bytes;
	const struct trust *trust;
	unsigned threshold;
	int64_t now;
	bool allow_expired;
	const char *cache_dir;     /* where indexes persist; NULL: a temporary one */
};

struct snapshot {
	atomic_int refs;
	char *kit_path;
	char *version;
	struct manifest *identity;    /* the manifest's fields, without artifacts */
	uint8_t manifest_sha256[32];
	unsigned signers;
	bool index_cached;            /* this open reused an index */
	enum kit_compression compression;
	uint64_t files, bytes;

	atomic_uint_fast64_t verified_bytes;
	atomic_uint_fast64_t failures;
	atomic_uint_fast64_t open_files; /* snapshot_file_open calls not yet closed */
	char last_failure[512];       /* "path: block N" of the latest mismatch */

	struct source *src;           /* direct mode: the kit's tar stream */
	/* Kit format 1.1 (docs/kit-format.md, "The carried index"): the head
	 * (manifest, signature, index, merkle.bin) is the first head_len
	 * bytes of the kit file, where the first artifact's header (and, in a
	 * compressed kit, a fresh frame or member) starts; the rest is read at
	 * random only.  The index's data offsets are relative to data_base
	 * (the head's length in the tar stream), its tree offsets to
	 * tree_base (merkle.bin's data).  All 0 for an index built by walking
	 * a kit (offsets absolute) and in store mode. */
	uint64_t head_len;
	uint64_t data_base, tree_base;
	bool carried;                 /* the index came from the kit */
	/* store mode (fd -1 otherwise), the caller's, borrowed for the
	 * snapshot's life; files in them are opened through core/fdcache */
	struct fdcache_dir blobs;     /* STORE/blobs, file data by sha256 */
	struct fdcache_dir trees;     /* STORE/trees, Merkle trees by fs-verity digest */
	struct index *ix;
	struct snap_files *files_map;
	struct seal *seal;            /* the index file's digest, to tell a damaged
				       * index from a damaged kit */
	char *tmp_index;              /* an index built in a temporary directory of
				       * its own: removed, with the directory, at
				       * the last unref (connections open it by name
				       * as they need one, so it must stay till then) */
};

/* Is dir fit to hold indexes: ours, and nobody else can write it (made,
 * 0700, when missing)?  An index names the digests reads are checked
 * against, so it is trusted as far as its directory is. */
bool snapshot_cache_usable(const char *dir);

int snapshot_open_kit(const struct snapshot_opts *o, struct snapshot **out, struct stella_err *e);
/* A snapshot of a store: its index, its files' bytes in the store's blobs.
 * Signature and expiry were checked at import; reads are checked the same.
 * Files are found in the two directories by fdcache_digest_name.
 * blob_dirfd and tree_dirfd stay the caller's (the store's: every snapshot
 * of a store shares them) and must stay open until the snapshot is freed. */
int snapshot_open_store(const char *index_path, int blob_dirfd, int tree_dirfd, const char *label,
			struct snapshot **out, struct stella_err *e);
/* What an index being built says about its snapshot, read back by every
 * open: the identity (the manifest without its artifacts, which are the
 * nodes), the totals, the signers, the manifest's digest and the index
 * schema.  Written once here for kit and store indexes alike. */
struct snapshot_facts {
	uint64_t files, bytes;
	unsigned signers;
	uint8_t manifest_sha256[32];
};
int snapshot_write_facts(struct index *ix, const struct manifest *m, const struct snapshot_facts *f,
			 struct stella_err *e);
struct snapshot *snapshot_ref(struct snapshot *s);
void snapshot_unref(struct snapshot *s);

int snapshot_getattr(struct snapshot *s, uint64_t ino, struct index_node *n);
int snapshot_lookup(struct snapshot *s, uint64_t parent, const char *name, struct index_node *n);
/* The node of PATH, a full name as the manifest lists it (index_lookup_path). */
int snapshot_lookup_path(struct snapshot *s, const char *path, struct index_node *n);
int snapshot_readdir(struct snapshot *s, uint64_t dir, uint64_t after,
		     int (*cb)(void *ctx, const struct index_node *n), void *ctx);

/* An open file: holds the snapshot and the file's verification state. */
struct snap_file;
int snapshot_file_open(struct snapshot *s, uint64_t ino, struct snap_file **out, struct stella_err *e);
void snapshot_file_close(struct snap_file *f);
/* Verified bytes [off, off+len), fewer only at the end of the file; -EIO
 * if any block of the range fails its check.  buf holds len bytes; after
 * an error its content is undefined (unverified data may be in it). */
ssize_t snapshot_read(struct snap_file *f, void *buf, size_t len, uint64_t off);
/* snapshot_read without the copy, for a reply straight from a decoded zstd
 * span (local kits in direct mode, a range within one span): 0 with *out
 * pointing at the *n verified bytes, which stay there until
 * snapshot_unpin(pin), even if the file is closed meanwhile; 1 when the
 * range is not served this way (use snapshot_read); -EIO (a block failed
 * its check, reported as by snapshot_read) or -ENOMEM. */
struct snap_pin {
	struct snapshot *s;
	struct source_pin sp;
};
int snapshot_read_pinned(struct snap_file *f, size_t len, uint64_t off, const void **out, size_t *n,
			 struct snap_pin *pin);
void snapshot_unpin(struct snap_pin *pin);
/* Whether snapshot_read of the same range would not wait for the network
 * (its data blocks and, if not loaded yet, the file's tree are in memory or
 * in the disk cache): a hint, never waits. */
bool snapshot_read_resident(struct snap_file *f, size_t len, uint64_t off);
/* snapshot_read that never waits for the network: -EWOULDBLOCK, with
 * nothing reported, when some of the bytes it needs (data, tree, a retry
 * on another mirror) are neither in memory nor in the disk cache
 * (remote_local_only).  The resident hint can be wrong by the time of the
 * read (a chunk evicted, a cache entry found damaged): this is the read
 * that cannot be. */
ssize_t snapshot_read_local(struct snap_file *f, void *buf, size_t len, uint64_t off);
/* snapshot_read whose waits for the network all end by DEADLINE_MS
 * (CLOCK_MONOTONIC milliseconds): remote_read_deadline. */
ssize_t snapshot_read_by(struct snap_file *f, void *buf, size_t len, uint64_t off, int64_t deadline_ms);
/* For a read of [off, off+len) about to wait for the network: have the
 * tree blocks it will check fetched meanwhile, beside its data, rather
 * than after it (remote_prefetch), and tell the read-ahead where the file
 * ends (remote_hint_end).  Never waits; no-op unless the file is in an
 * uncompressed kit on a mirror. */
void snapshot_prefetch(struct snap_file *f, size_t len, uint64_t off);

/* Re-check every block of every file.  Returns 0, or -EIO with the first
 * failing file and block in e. */
int snapshot_verify_all(struct snapshot *s, uint64_t *files, uint64_t *bytes, struct stella_err *e);

/* The full path of ino inside the snapshot (for messages), malloc'ed. */
char *snapshot_path(struct snapshot *s, uint64_t ino);
/* A copy of last_failure, taken under the lock its writers hold. */
void snapshot_last_failure(struct snapshot *s, char *out, size_t n);
