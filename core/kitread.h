/* Reading a kit archive as a stream of tar members, with the rules that do
 * not need the manifest: allowed member types, safe names, no trailing
 * garbage, bounded memory whatever the kit's size.  libarchive parses the
 * tar; the bytes come from source.c, which decompresses gzip and zstd kits
 * itself so that one pass both checks the kit and records its seek points. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"
#include "manifest.h"
#include "source.h"

#define KIT_MANIFEST_NAME "manifest/offline-manifest.json"
#define KIT_SIG_NAME      "manifest/offline-manifest.json.sig"
#define KIT_MERKLE_NAME   "manifest/merkle.bin"
#define KIT_INDEX_NAME    "manifest/index"


struct kit_member {
	const char *name;          /* valid until the next kitread_next */
	enum artifact_type type;
	uint64_t size;
	uint32_t mode;             /* permission bits */
	const char *target;        /* symlinks */
	int64_t mtime;
	uint64_t data_offset;      /* offset of the data in the uncompressed tar stream */
};

struct kitread;

int kitread_open(const char *path, struct kitread **out, struct stella_err *e);
/* Walk an already open source (borrowed: the mount keeps it for its reads,
 * with the seek points this walk records). */
int kitread_open_source(struct source *src, struct kitread **out, struct stella_err *e);
void kitread_close(struct kitread *kr);
enum kit_compression kitread_compression(const struct kitread *kr);
struct source *kitread_source(const struct kitread *kr);

/* The next member: 1 when there is one, 0 at the end of the archive (after
 * checking that nothing but zero padding follows), or a negative errno. */
int kitread_next(struct kitread *kr, struct kit_member *m, struct stella_err *e);

/* Read up to len bytes of the current member's data; 0 at its end. */
ssize_t kitread_data(struct kitread *kr, void *buf, size_t len, struct stella_err *e);
/* Refuse (-EBADMSG) a tar stream longer than max bytes; 0: no limit. */
void kitread_set_limit(struct kitread *kr, uint64_t max);
/* Read the whole current member (at most max bytes, else -EBADMSG "too
 * large") into a malloc'ed buffer, NUL-terminated. */
int kitread_slurp(struct kitread *kr, const struct kit_member *m, size_t max, char **out,
		  struct stella_err *e);
