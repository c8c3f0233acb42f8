/* Where a kit is: a local path, an http(s):// URL, or an oci:// reference
 * (docs/mirrors.md).  Everything that opens a kit by what an operator
 * typed comes through here and gets a struct bytes (bytes.h), whatever
 * the kind. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "bytes.h"
#include "err.h"
#include "remote.h"

/* True for http://, https:// and oci:// (case-insensitive scheme). */
bool location_is_remote(const char *s);

/* NULL when MIRROR may stand beside SOURCE as another location of the same
 * kit, else why not (a static text for a message): a mirror is an http(s)
 * URL with a host, or, beside an oci:// SOURCE, an oci:// reference too (a
 * plain URL has no registry to resolve an oci:// mirror's blob for).
 * SOURCE may be NULL (not known yet): then either kind passes. */
const char *location_mirror_refusal(const char *source, const char *mirror);

/* The kit at SOURCE, with MIRRORS[0..n) as further locations of the same
 * bytes (remote sources only; -EINVAL otherwise).  A local path goes to
 * bytes_open_path; a URL or oci:// reference to remote_open. */
int location_open(const char *source, const char *const *mirrors, size_t n,
		  const struct remote_opts *o, struct bytes **out, struct stella_err *e);

/* follow=: 1 if what SOURCE names has changed since VALIDATOR ("" at
 * first), with the new validator in out; 0 if not; negative errno. */
int location_probe(const char *source, const struct remote_opts *o, const char *validator,
		   char out[256], struct stella_err *e);
