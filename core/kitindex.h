/* The index a kit carries (kit format 1.1, member manifest/index): an
 * SQLite database in the schema core/index.c serves from, with every
 * offset relative to the kit's body (the first artifact's header, where a
 * fresh zstd frame or gzip member starts in a compressed kit) and every
 * tree offset relative to the start of manifest/merkle.bin's data.
 * docs/kit-format.md, "The carried index", describes it.
 *
 * Nothing in it is trusted before kitindex_check: it is a file the kit's
 * signer made, checked here against the signed manifest entry by entry and
 * for its structure, and even then every byte a read returns is verified
 * against the fs-verity roots the manifest signs. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "manifest.h"

#define KITINDEX_FORMAT "1"

/* What the reader knows of the kit around the index. */
struct kitindex_geom {
	uint64_t body_max;     /* tar stream bytes the body can hold at most
				* (uncompressed: the file after the head; a
				* compressed kit: the index's own claim, bounded) */
	uint64_t merkle_size;  /* merkle.bin's size, 0 when the kit has none */
	bool compressed;
};

/* What the check learned from the index. */
struct kitindex_info {
	uint64_t body_size;    /* "bodySize": the body's tar stream bytes */
	uint64_t nodes;        /* rows, the root included */
	uint64_t files, bytes;
};

/* Check the index file FILE (messages name it LABEL) against manifest M and geometry G: its
 * schema is index.c's; its meta keys are the carried ones; no tree rows;
 * seek points only in a compressed kit, without windows; its nodes are
 * exactly those index_add makes from M's artifacts, in M's order (names,
 * parents, types, modes, sizes, digests, targets, nothing extra or
 * missing), each parent a directory seen before it (no cycle); file data
 * ranges sorted, not overlapping, inside the body; trees inside
 * merkle.bin.  each (may be NULL) gets every artifact's data offset, in
 * manifest order.  -EBADMSG (malformed) or -EUCLEAN (an entry disagrees
 * with the manifest), with one line in e. */
typedef int (*kitindex_each_fn)(void *ctx, size_t i, const struct artifact *a, uint64_t data_off,
				struct stella_err *e);
int kitindex_check(const char *file, const char *label, const struct manifest *m, const struct kitindex_geom *g,
		   kitindex_each_fn each, void *ctx, struct kitindex_info *info, struct stella_err *e);
/* The same against artifacts pulled from IT in manifest order (a stream
 * of a manifest never held whole): the rows are walked beside them, so
 * memory is the directories seen, not the artifacts. */
int kitindex_check_iter(const char *file, const char *label, const struct artifact_iter *it,
			const struct kitindex_geom *g, kitindex_each_fn each, void *ctx, struct kitindex_info *info,
			struct stella_err *e);


/* The same, pushed: begin opens FILE and checks all but the rows (its
 * body against G's body_max), step checks the rows of the next artifact
 * in manifest order, end checks that no row is left and the body against
 * BODY_MAX (a compressed kit's bound is known only once every artifact
 * went by) and frees C, its message in E; abort frees C after a failure.  A first mount
 * checks the rows while it parses the manifest (core/snapshot.c,
 * carried_index): one parse instead of two. */
struct kitindex_check;
int kitindex_begin(const char *file, const char *label, const struct kitindex_geom *g, kitindex_each_fn each,
		   void *ctx, struct kitindex_info *info, struct kitindex_check **c, struct stella_err *e);
int kitindex_step(struct kitindex_check *c, size_t i, const struct artifact *a);
int kitindex_end(struct kitindex_check *c, uint64_t body_max, struct stella_err *e);
void kitindex_abort(struct kitindex_check *c);
