/* The index of one snapshot: its directory tree, where every file's bytes
 * and Merkle tree are in the kit's tar stream, the trees the kit did not
 * carry, the seek points of a compressed kit, and the kit's identity.
 *
 * It lives in an SQLite file, so that a kit of millions of files costs the
 * daemon a page cache, not its whole metadata in RAM, and so that a remount
 * of a kit already indexed skips the walk.  Readers share a small pool of
 * read-only connections (one per concurrent FUSE request at most). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "manifest.h"
#include "source.h"

#define INDEX_ROOT_INO 1
/* No row of an index we built has an ino above this (at most 2,000,000
 * artifacts and their directories, numbered from the root up); a row read
 * back above it is damage.  fs/ packs an ino with a slot number into 64
 * bits and relies on this bound to keep snapshots apart. */
#define INDEX_MAX_INO ((UINT64_C(1) << 32) - 1)
/* 2: node_children; 3: gzip seek points without a window at member starts
 * (an older stellafs refuses those); 4: offsets relative to the meta keys
 * dataBase and treeBase (an index carried by its kit, docs/kit-format.md,
 * "The carried index": an older stellafs would read them as absolute).
 * Cached indexes of another schema are rebuilt. */
#define INDEX_SCHEMA 4

struct index_node {
	uint64_t ino;
	uint64_t parent;
	enum artifact_type type;
	uint32_t mode;
	uint64_t size;
	uint64_t data_off;         /* tar-stream offset of a file's data */
	int64_t tree_off;          /* tar-stream offset of its tree in merkle.bin, -1: in the index */
	uint8_t sha256[32];
	uint8_t fsverity[32];
	char name[256];
	char target[4097];
};

struct index;
struct sqlite3;

/* Settings for a connection to a database file a kit carried (a signed
 * file, but written by whoever packed it), while it is checked and
 * rewritten: no triggers, no views, nothing in its schema trusted to run,
 * SQLite's defensive mode.  Call right after sqlite3_open_v2, before the
 * schema is read.  Serving connections need none of it: they open only
 * files this process checked or built and sealed (core/seal.h), and the
 * store's own index is read through views an attacker may have planted
 * only to be compared, never served (core/storecheck.c). */
void index_harden(struct sqlite3 *db);

/* The SQL that makes an empty index (kitindex.c checks a carried index's
 * schema against it). */
extern const char index_schema[];

/* Building: a fresh database at path (replaced if present). */
int index_create(const char *path, struct index **out, struct stella_err *e);
/* Add an artifact; its parent directories are created (implied, 0755) as
 * needed.  Artifacts must come sorted by name. */
int index_add(struct index *ix, const struct artifact *a, uint64_t data_off, int64_t tree_off,
	      struct stella_err *e);
int index_add_tree(struct index *ix, const uint8_t fsverity[32], const uint8_t *tree, size_t len,
		   struct stella_err *e);
int index_add_points(struct index *ix, const struct source_point *pts, size_t n, uint64_t total,
		     struct stella_err *e);
int index_set_meta(struct index *ix, const char *key, const void *val, size_t len, struct stella_err *e);
/* An existing database (a carried index, copied out of its kit), opened
 * for index_set_meta, index_rebase_points and index_finish. */
int index_reopen(const char *path, struct index **out, struct stella_err *e);
/* Make the seek points absolute: the head's own (those of HEAD before
 * OUT_BASE), then every point of the index moved by (OUT_BASE, IN_BASE);
 * the stream then ends at OUT_BASE + BODY_SIZE. */
int index_rebase_points(struct index *ix, const struct source_point *head, size_t nhead, uint64_t out_base,
			uint64_t in_base, uint64_t body_size, struct stella_err *e);
/* Commit everything (one transaction) and switch to read-only use. */
int index_finish(struct index *ix, struct stella_err *e);

/* Reading connections open at once, all indexes of the process together
 * (each is a descriptor); set at start.  At least 2. */
#define INDEX_CONNS_DEFAULT 32
void index_set_conn_budget(unsigned max);
unsigned index_conn_budget(void);

/* Reading an existing database.  A readdir callback must not call into an
 * index: the walk holds a connection. */
int index_open(const char *path, struct index **out, struct stella_err *e);
void index_close(struct index *ix);

/* Value of a meta key (malloc'ed, NUL-terminated); -ENOENT if absent. */
int index_get_meta(struct index *ix, const char *key, char **val, size_t *len);
int index_get(struct index *ix, uint64_t ino, struct index_node *n);
int index_lookup(struct index *ix, uint64_t parent, const char *name, struct index_node *n);
/* The node of PATH, a full name as a manifest lists it ("a/b/c"), looked
 * up component by component from the root: -ENOENT if absent. */
int index_lookup_path(struct index *ix, const char *path, struct index_node *n);
/* Every file listed in the index at PATH, read on a connection of its
 * own (the store's sweep reads indexes nobody serves): cb(ctx, size,
 * sha256, fsverity) for each, a digest NULL where the row holds no 32
 * bytes; cb's negative return stops the walk and is returned.  -EIO when
 * the list cannot be read to its end: a partial one must not be used. */
int index_each_file(const char *path,
		    int (*cb)(void *ctx, uint64_t size, const uint8_t *sha256, const uint8_t *fsverity),
		    void *ctx);
/* N as the manifest entry it was added from (name: its last component;
 * target points into N). */
void index_node_artifact(const struct index_node *n, struct artifact *a);
/* Children of dir with ino > after, in ino order; cb returns non-zero to stop. */
int index_readdir(struct index *ix, uint64_t dir, uint64_t after,
		  int (*cb)(void *ctx, const struct index_node *n), void *ctx);
/* A tree the kit did not carry (malloc'ed). */
int index_get_tree(struct index *ix, const uint8_t fsverity[32], uint8_t **tree, size_t *len);
int index_get_points(struct index *ix, struct source_point **pts, size_t *n, uint64_t *total);
