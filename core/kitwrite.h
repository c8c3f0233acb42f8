/* Packing a kit: a reproducible POSIX tar of a source tree, with the signed
 * manifest first, its signature second, the carried index
 * (manifest/index, kit format 1.1) and manifest/merkle.bin next, then the
 * artifacts sorted bytewise by name; and the three sidecar files beside it.
 *
 * Reproducible means: the same tree, identity, keys and times give the same
 * bytes (uid/gid 0, every mtime = createdAt, modes from the tree, gzip
 * header without name or time); only ECDSA's randomized signature differs
 * between two packs. */
#pragma once

#include <stdint.h>
#include <openssl/evp.h>

#include "err.h"
#include "kitread.h"
#include "manifest.h"

struct kitwrite_opts {
	const char *src_dir;
	const char *out_path;
	EVP_PKEY **keys;              /* signs the manifest; keys[0] also the whole kit */
	size_t nkeys;
	/* Identity and components; pack fills in the artifacts.  Consumed. */
	struct manifest *manifest;
	enum kit_compression compression;
	bool no_index;                /* a v1 kit: no manifest/index member */
	/* Delta: artifacts identical in the base are listed but not carried. */
	const struct manifest *base;
	void (*progress)(void *ctx, const char *name, uint64_t done, uint64_t total);
	void *progress_ctx;
};

struct kitwrite_result {
	uint8_t kit_sha256[32];
	uint8_t manifest_sha256[32];
	uint64_t kit_size;
	uint64_t files, bytes, carried, from_base;
};

int kit_write(const struct kitwrite_opts *o, struct kitwrite_result *res, struct stella_err *e);
