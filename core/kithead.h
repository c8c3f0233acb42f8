/* Where a kit's head ends in the kit file: the bytes a mount of a kit on a
 * mirror keeps pinned in its cache (remote_bind, core/remote.h) so that a
 * remount with every mirror down still mounts and opens files. */
#pragma once

#include <stdint.h>

#include "err.h"
#include "source.h"

/* The kit-file bytes [0, *head_len) hold the manifest, its signatures,
 * merkle.bin (and a kit 1.1's index): the members under manifest/ that
 * open the kit.  Reads them again through a second source on SRC's bytes
 * (source_dup); for a compressed kit the end is mapped to the kit file by
 * SRC's seek points (the next one past the head; the whole file if none). */
int kit_head_extent(const struct source *src, uint64_t *head_len, struct stella_err *e);
