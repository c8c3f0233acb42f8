/* Full verification of a kit file, streaming, in one pass:
 *   1. the manifest member first, bounded, parsed with every rule;
 *   2. the signature member second, checked against the trust store
 *      (before any artifact byte is looked at);
 *   3. expiry against `now`;
 *   4. optional merkle.bin, its layout checked and each tree digested;
 *   5. every artifact member: listed, in order, of the listed type, mode,
 *      size, SHA-256 and fs-verity digest (and tree, when merkle.bin has it);
 *   6. every listed artifact present (a delta kit may leave unchanged ones to
 *      its base), nothing after the archive's end.
 * The first failure stops the walk with its class (err.h) and one line. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "hasher.h"
#include "kitread.h"
#include "manifest.h"
#include "merklefile.h"
#include "sig.h"

struct kitverify_opts {
	const struct trust *trust;    /* NULL: signatures are not checked (inspect, diff) */
	unsigned threshold;           /* 0 means 1 */
	int64_t now;
	bool allow_expired;
	bool check_expiry;
	bool content;                 /* false: stop after the manifest members */
	/* Keep no artifact list: res->manifest is the top level only (its
	 * nlisted says how many artifacts), the walk pulls the artifacts from
	 * the manifest spooled to a temporary file, and visit's index is the
	 * artifact's place in manifest order.  Memory is then bounded by the
	 * work (docs/kit-format.md section 13, "memory of stellakit verify and import"), not the kit. */
	bool stream;
	void (*progress)(void *ctx, const char *name, uint64_t done, uint64_t total);
	void *progress_ctx;

	/* The mount's walk: read this open source (its stream pass records the
	 * seek points the mount needs), and leave unhashed every file whose
	 * blocks can be checked on read without a full pass: one block files,
	 * and files whose tree merkle.bin carries.  Those are verified when
	 * read; the others are hashed now and their trees handed to visit. */
	struct source *source;
	bool lazy;
	/* Called for every artifact member, in archive order; h is NULL when
	 * the member's content was not hashed. */
	int (*visit)(void *ctx, size_t index, const struct kit_member *m, const struct hasher_result *h,
		     struct stella_err *e);
	void *visit_ctx;
	/* The store's import: a say on the manifest once its signature and
	 * expiry passed (rollback ratchet, delta base), and every byte of every
	 * hashed member as it streams past (to keep it).  Both use visit_ctx. */
	int (*check_manifest)(void *ctx, const struct manifest *m, const uint8_t sha256[32], struct stella_err *e);
	int (*data)(void *ctx, const uint8_t *buf, size_t len, struct stella_err *e);
	/* Called once check_manifest accepted the manifest, when the walk
	 * ends (r: its result), while the result is still whole: a consumer
	 * working beside the walk stops here. */
	void (*walk_end)(void *ctx, int r);
};

struct kitverify_result {
	struct manifest *manifest;
	uint8_t manifest_sha256[32];
	unsigned signers;
	unsigned sig_lines;
	enum kit_compression compression;
	bool has_merkle;
	uint64_t files;               /* file members hashed */
	uint64_t bytes;               /* their bytes */
	uint64_t from_base;           /* artifacts a delta kit leaves to its base */
	uint64_t merkle_offset;       /* tar-stream offset of merkle.bin's data */
	struct merklefile_index merkle;
	/* o->stream: the manifest's bytes as checked (digest manifest_sha256,
	 * the signatures verified over them), in an unlinked temporary file,
	 * and the signature member's text: an import keeps these very bytes
	 * and pulls the artifacts from the file again.  Owned by the result. */
	bool has_manifest_fd;
	int manifest_fd;
	char *sig;
	size_t sig_len;
};

/* The manifest and signature members only, as bytes, from an open source
 * whose stream has not been read (borrowed): a reload's check of the
 * served kit, an import keeping them.  The caller opens the kit (by path,
 * from a descriptor, or a second source on one in use: source_dup). */
int kit_read_head_source(struct source *src, char **manifest, size_t *mlen, char **sig, size_t *slen,
			 struct stella_err *e);

int kit_verify(const char *path, const struct kitverify_opts *o, struct kitverify_result *res,
	       struct stella_err *e);
void kitverify_result_free(struct kitverify_result *res);
