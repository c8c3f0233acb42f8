/* A store: many verified snapshots on local disk, content stored once.
 *
 *   STORE/store.db              the truth: snapshots, current and previous,
 *                               the rollback ratchet, the control journal
 *   STORE/blobs/ab/<sha256>     verified file contents, one per distinct file
 *   STORE/trees/ab/<fsverity>   their Merkle trees (files over one block)
 *   STORE/snapshots/<v>.db      each snapshot's index (as a mount's index)
 *   STORE/manifests/<sha256>.json, .sig
 *                               each snapshot's signed manifest, kept as imported
 *   STORE/quarantine/           kits refused from incoming=DIR, each with a .reason
 *   STORE/tmp/                  work in progress, emptied when opened
 *   STORE/lock                  flock: one writer at a time, any process
 *
 * Nothing becomes visible before it is complete and durable: blobs and a
 * snapshot's index are written, fsynced and renamed into place first; then
 * one SQLite transaction (synchronous=FULL) adds the snapshot row, moves the
 * ratchet and, when asked, the current pointer.  A crash anywhere leaves
 * the store as it was before or after that commit; leftovers without a row
 * are removed on the next open. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "sig.h"

struct store;

struct store_snapshot {
	char version[129];
	char kit_id[129];
	int64_t sequence;
	char manifest_sha256[65];
	int64_t imported_at;
	uint64_t files, bytes;
};

int store_open(const char *dir, bool create, struct store **out, struct stella_err *e);
void store_close(struct store *st);
const char *store_dir(const struct store *st);
int store_blob_dirfd(const struct store *st);
int store_tree_dirfd(const struct store *st);
/* A file's content lives under blobs/ by its SHA-256, its tree under
 * trees/ by its fs-verity digest, named by fdcache_digest_name (core/
 * fdcache.h: snapshot.c reads them through the descriptor cache, below
 * this module).  The sweep reads these names back. */
/* The path of a snapshot's index (malloc'ed). */
char *store_index_path(const struct store *st, const char *version);
struct snapshot;
/* Snapshot VERSION as the import left it, reading the store's blobs and
 * trees (snapshot_open_store); not checked against its kept manifest:
 * storecheck_open does that. */
int store_open_snapshot(struct store *st, const char *version, struct snapshot **out, struct stella_err *e);

/* Take the writer lock; -EBUSY when another writer holds it. */
int store_lock(struct store *st, struct stella_err *e);
void store_unlock(struct store *st);

/* Snapshots, oldest sequence first. */
int store_list(struct store *st, struct store_snapshot **out, size_t *n, struct stella_err *e);
/* current/previous versions ("" when none). */
int store_pointers(struct store *st, char current[129], char previous[129], struct stella_err *e);
/* Changes whenever another connection committed (imports by stellakit). */
int64_t store_data_version(struct store *st);
int store_usage_pct(struct store *st);

struct store_import_report {
	bool existed;              /* the same kit (same manifest) was in the store: checked, mended */
	uint64_t repaired;         /* stored files found damaged and replaced by the kit's verified bytes */
};

struct source;
struct store_import_opts {
	const struct trust *trust;
	unsigned threshold;
	int64_t now;
	bool allow_expired;
	bool activate;
	bool repair;               /* the kit of a snapshot already here: check and mend it */
	struct store_import_report *report;   /* optional, filled on success */
	/* The kit already open (borrowed, its stream not yet read): the
	 * daemon opens it itself, as the writer of the command; kit then only
	 * names it in messages.  NULL: kit is opened here. */
	struct source *source;
};
/* Verify a kit completely and add it (the writer lock must be held).
 * -ESTALE when its sequence is not above the ratchet for its kitId,
 * -EEXIST when a different kit already has that version.  Every stored
 * blob and tree it needs is checked; one that does not hold the verified
 * bytes is replaced by them.  With o->repair, the kit a snapshot was made
 * from (same version, same manifest) adds nothing but does that check and
 * mend, rebuilds its index and keeps its signed manifest in manifests/
 * (report->existed); without, it is refused like any other stale kit. */
int store_import(struct store *st, const char *kit, const struct store_import_opts *o, char version[129],
		 struct stella_err *e);
int store_activate(struct store *st, const char *version, struct stella_err *e);
/* To version, or to the previous one when version is NULL. */
int store_rollback(struct store *st, const char *version, char now_current[129], struct stella_err *e);
/* Drop a snapshot that is not current (the caller knows whether it is open). */
int store_remove(struct store *st, const char *version, struct stella_err *e);
/* The journal of control commands, kept in the store across mounts. */
int store_journal_add(struct store *st, int64_t when, unsigned uid, const char *cmd, int err, const char *result);
/* The last n entries, oldest first, one line each (malloc'ed); NULL when
 * the journal cannot be read (store.db locked past its timeout, no memory). */
char *store_journal_text(struct store *st, unsigned n);

/* Drop blobs no snapshot references, and indexes and kept manifests no row
 * names; returns how many blobs.  The writer lock must be held. */
int store_sweep(struct store *st, uint64_t *removed, struct stella_err *e);

/* One snapshot's row; -ENOENT when the store has none. */
int store_row(struct store *st, const char *version, struct store_snapshot *row, struct stella_err *e);
/* STORE/manifests: each snapshot's signed manifest and its signatures, as
 * <manifest sha256>.json and .sig, kept by import and swept with the
 * snapshot (core/storecheck.h checks a snapshot's index against them). */
int store_manifest_dirfd(const struct store *st);
