/* A seal: the SHA-256 of a file's bytes, recorded when the file was
 * finished and checked before the file is used again.
 *
 * The index cache (cache=DIR) is a file we wrote and read back from a disk
 * that may fail: bytes overwritten inside it can leave a database that
 * SQLite opens and queries without complaint (PRAGMA quick_check misses a
 * changed row), and a mount would serve a wrong tree of an intact kit.  A
 * cached index is used only when its bytes are the ones sealed; otherwise
 * it is built again from the kit.  The seal lives beside the file as
 * PATH.sum, one line "<hex sha256>\n", written atomically. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "err.h"

struct seal;

/* Seal FILE, a finished file not yet under its name: hash it and, when
 * sum_for is not NULL, write sum_for.sum (the name FILE is about to get).
 * The seal keeps FILE open, to check the same bytes again later. */
int seal_create(const char *file, const char *sum_for, struct seal **out, struct stella_err *e);
/* Open PATH's seal and check PATH against it: 0 when they match; -ENOENT
 * when there is no seal, -EBADMSG when the bytes differ (e says which),
 * another negative errno when PATH or its seal cannot be read. */
int seal_open(const char *path, struct seal **out, struct stella_err *e);
/* Are the sealed bytes still there?  Hashes the file again, at most once
 * every few seconds (a verdict of "changed" is kept for good): callers ask
 * on a failure, and a damaged kit may fail on every read. */
bool seal_intact(struct seal *s);
/* Remove the seal on disk, so that the next mount builds the file again.
 * Returns true the first time (say it once). */
bool seal_break(struct seal *s);
void seal_free(struct seal *s);
