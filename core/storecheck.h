/* A store's snapshot, opened for serving only once it is vouched for.
 *
 * Reads in store mode are checked against the digests in the snapshot's
 * index (STORE/snapshots/<v>.db), a file on the same disk as the blobs: by
 * itself it proves nothing.  What does is the signed manifest the import
 * kept beside it (STORE/manifests/<sha256>.json and .sig): its digest must
 * be the one store.db's row and the index name, its signatures must reach
 * the mount's threshold under the mount's trust store, and the index must
 * say, entry by entry, what it says (names, types, modes, sizes, SHA-256,
 * fs-verity digests, symlink targets, and no entry more).  Then every read
 * checked against the index is checked against what a trusted key signed.
 *
 * The index served is not the store's own: it is built from the verified
 * kept manifest in a directory private to the daemon (cache_dir, when it
 * is ours alone, sealed and reused by later mounts; else a temporary one),
 * so that nothing written to the store's disk later, and no trick of its
 * database file, changes what is served.  The store's index is still
 * compared, to refuse a snapshot whose store was tampered with. */
#pragma once

#include <stdbool.h>

#include "err.h"
#include "sig.h"
#include "snapshot.h"
#include "store.h"

struct storecheck {
	unsigned signers;          /* distinct trusted keys that sign the kept manifest */
	bool trusted;              /* signers reach the threshold */
	char why[320];             /* when not trusted: the signature check's one line */
	bool forged;               /* -EBADMSG was a verdict: never serve it (other
				    * failures, and -EBADMSG without it, are of the
				    * moment: memory, I/O; try again) */
};

/* Open snapshot version of st.  -EBADMSG with c->forged: the index,
 * store.db's row or the kept manifest disagree (forged or damaged), or no
 * manifest is kept (a snapshot imported by an older stellakit): it must
 * not be served.  0:
 * *out is open, served from the private index of its kept manifest; c says whether that manifest
 * carries threshold trusted signatures under t (the caller refuses it, or
 * flags it, when not).  The manifest is read and parsed whole (as an
 * import reads it); the index is compared one entry at a time. */
int storecheck_open(struct store *st, const char *version, const struct trust *t, unsigned threshold,
		    const char *cache_dir, struct snapshot **out, struct storecheck *c, struct stella_err *e);

/* Count again the trusted signatures over an open snapshot's kept
 * manifest (a reload changed the trust store).  -EBADMSG with c->forged
 * when the kept manifest is gone or no longer the snapshot's. */
int storecheck_signatures(struct store *st, const struct snapshot *s, const struct trust *t, unsigned threshold,
			  struct storecheck *c, struct stella_err *e);

/* Remove from cache_dir the indexes storecheck_open built for snapshots of
 * st that are not among rows (removed from the store since).  Call it
 * when no snapshot of st not in rows can be in use (at a mount's start):
 * a snapshot's index is opened by name as its reads need connections. */
void storecheck_prune(struct store *st, const char *cache_dir, const struct store_snapshot *rows, size_t n);
