/* The signed manifest (manifest/offline-manifest.json): JSON <-> struct.
 *
 * Parsing checks every field, so that whatever gets past manifest_parse can be
 * used without further doubt: names are safe, unique and sorted, symlinks stay
 * inside the kit, times are RFC 3339, digests are well-formed.  The writer is
 * canonical (fixed key order, fixed indentation): packing is byte-stable. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

enum artifact_type { ARTIFACT_FILE, ARTIFACT_DIR, ARTIFACT_SYMLINK };

struct artifact {
	char *name;
	enum artifact_type type;
	uint64_t size;            /* files */
	uint8_t sha256[32];       /* files */
	uint8_t fsverity[32];     /* files: the fs-verity file digest */
	uint32_t mode;            /* permission bits (<= 0777) */
	char *target;             /* symlinks */
	int64_t captured_at;      /* 0 when absent */
};

struct component {
	char *name;
	char *path;
	int64_t captured_at;
	int64_t records;          /* -1 when absent */
	int64_t warn_age_days;    /* default 7 */
	int64_t max_age_days;     /* default 14 */
};

struct manifest {
	int64_t schema_version;
	char *kit_id;
	char *version;
	int64_t sequence;
	char *channel;
	int64_t created_at;
	int64_t expires_at;
	bool has_base;
	char *base_version;
	uint8_t base_manifest_sha256[32];
	/* Kit format 1.1: the kit carries its index as member manifest/index
	 * (docs/kit-format.md, section "The carried index"); these bind it. */
	bool has_index;
	uint64_t index_size;
	uint8_t index_sha256[32];
	size_t ncomponents;
	struct component *components;   /* sorted by name */
	size_t nartifacts;
	struct artifact *artifacts;     /* sorted by name, unique */
	/* how many artifacts the document lists: nartifacts, or, from the
	 * streaming parser (which keeps none: artifacts is NULL), its count */
	size_t nlisted;
};

#define MANIFEST_SCHEMA_VERSION 1
#define MANIFEST_DEFAULT_WARN_DAYS 7
#define MANIFEST_DEFAULT_MAX_DAYS 14

/* buf need not be NUL-terminated; a NUL byte in it is refused. */
int manifest_parse(const char *buf, size_t len, struct manifest **out, struct stella_err *e);
void manifest_free(struct manifest *m);

/* Sort, then check everything manifest_parse checks (the packer builds a
 * manifest in memory and runs the same rules before writing it). */
int manifest_validate(struct manifest *m, struct stella_err *e);

/* Canonical JSON, NUL-terminated, ends with a newline. */
int manifest_write(const struct manifest *m, char **out, size_t *len);
/* The same, streamed to fd (never whole in memory), with its SHA-256 and
 * length. */
int manifest_write_fd(const struct manifest *m, int fd, uint8_t sha256[32], uint64_t *len);
/* The same with an empty artifact list: what an index keeps as the
 * snapshot's identity (its artifacts are the index's nodes). */
int manifest_write_identity(const struct manifest *m, char **out, size_t *len);

/* Emit the manifest's fields into an open yajl_gen map (for documents that
 * embed a manifest, like `stellakit inspect --json`). */
int manifest_gen_fields(void *yajl_gen, const struct manifest *m);

const struct artifact *manifest_find(const struct manifest *m, const char *name);
/* Whether a delta kit may leave A out because its base lists B, the one
 * rule for the packer (what to carry) and the importer (what to accept),
 * docs/kit-format.md section 9: the same type and mode (a symlink's mode
 * too, though it has no effect: the format says "same mode" for every
 * entry), for files the same size, SHA-256 and fs-verity digest, for
 * symlinks the same target.  Names are not compared. */
bool artifact_same(const struct artifact *a, const struct artifact *b);
/* Index of name in m->artifacts or -1. */
ssize_t manifest_index(const struct manifest *m, const char *name);

/* Safe identifier for kitId, version, channel: [A-Za-z0-9._+-], 1..128
 * bytes, not "." or "..": a version names a directory in the mounted tree. */
bool manifest_ident_ok(const char *s);

const char *artifact_type_name(enum artifact_type t);

#define FSVERITY_PREFIX "sha256:"

/* ---- the streaming parser: memory bounded by the work, not the kit ----
 *
 * The same document rules as manifest_parse, fed in pieces, handing each
 * artifact to fn (borrowed: valid during the call) in document order and
 * keeping none of them.  What it keeps: the top level without the
 * artifacts (a small struct), the last name, the chain of listed
 * non-directories that are a prefix of it (rule 2), and the symlinks
 * (rule 3 resolves through them; with MANIFEST_STREAM_CHECKED, on a
 * document already checked, not even those).
 *
 * Rules 1 and 2 are checked on the way, which needs the artifacts sorted
 * (the canonical form, docs/kit-format.md section 5).  A document whose
 * artifacts are valid but not sorted fails with -EDOM and
 * manifest_stream_unsorted(): the caller falls back to manifest_parse.
 * Until finish returns 0, nothing fn saw is known to be valid. */
struct manifest_stream;
typedef int (*manifest_artifact_fn)(void *ctx, size_t i, const struct artifact *a, struct stella_err *e);
#define MANIFEST_STREAM_CHECKED 1u
#define MANIFEST_STREAM_CHUNK (256u << 10)
int manifest_stream_new(manifest_artifact_fn fn, void *ctx, unsigned flags, struct manifest_stream **out,
			struct stella_err *e);
/* The first failure is returned, with its message in the e given to new. */
int manifest_stream_feed(struct manifest_stream *ms, const void *buf, size_t len);
/* *out: the manifest without artifacts (nartifacts 0, nlisted the count). */
int manifest_stream_finish(struct manifest_stream *ms, struct manifest **out, struct stella_err *e);
bool manifest_stream_unsorted(const struct manifest_stream *ms);
/* From fn, while the artifacts stream: 1 and the top level's "index"
 * (size and digest) when it came before "artifacts" and is well formed
 * (what packers write), 0 otherwise (finish then judges it).  Lets a
 * first mount check the carried index while the manifest is parsed. */
int manifest_stream_index(const struct manifest_stream *ms, uint64_t *size, uint8_t sha256[32]);
void manifest_stream_free(struct manifest_stream *ms);
/* The whole file fd (read with pread from offset 0) through a stream. */
int manifest_stream_fd(int fd, manifest_artifact_fn fn, void *ctx, struct manifest **out, bool *unsorted,
		       struct stella_err *e);

/* Artifacts pulled one at a time, in manifest order: next gives 1 and *a
 * (valid until the next call), 0 at the end, or a negative errno. */
struct artifact_iter {
	int (*next)(void *ctx, const struct artifact **a, struct stella_err *e);
	void *ctx;
};
/* over a document manifest_stream_* accepted (sorted), from a file or a
 * buffer (borrowed): a chunk's worth of artifacts in memory at a time.
 * A failure's message goes to the e of the next call that fails. */
struct manifest_cursor;
int manifest_cursor_open_fd(int fd, struct manifest_cursor **out, struct stella_err *e);
int manifest_cursor_open_mem(const char *buf, size_t len, struct manifest_cursor **out, struct stella_err *e);
int manifest_cursor_next(void *cursor, const struct artifact **a, struct stella_err *e);
void manifest_cursor_free(struct manifest_cursor *c);
/* over a whole manifest's array */
struct manifest_walk {
	const struct manifest *m;
	size_t i;
};
int manifest_walk_next(void *walk, const struct artifact **a, struct stella_err *e);
