/* oci://REGISTRY/REPOSITORY:TAG and oci://REGISTRY/REPOSITORY@sha256:HEX:
 * what names a kit in an OCI registry (docs/mirrors.md, "OCI registries").
 * Pure: no I/O, so that it can be fuzzed (tests/fuzz/fuzz_ociref.c). */
#pragma once

#include <stdbool.h>

#include "err.h"

#define OCI_REPO_MAX 255      /* the distribution spec's bound on a name */
#define OCI_TAG_MAX 128

struct oci_ref {
	char registry[262];       /* host[:port] as written: the auth file's key */
	char host[256];           /* without brackets for an IPv6 literal */
	unsigned port;            /* 0: the scheme's default */
	char repo[OCI_REPO_MAX + 1];
	char tag[OCI_TAG_MAX + 1];        /* "" when a digest names the manifest */
	char digest[7 + 64 + 1];          /* "sha256:HEX", "" for a tag */
	/* 127.0.0.0/8, ::1 or localhost: plain http is allowed there, as
	 * docker and skopeo allow it */
	bool loopback;
};

/* True for "oci://" (case-insensitive scheme). */
bool ociref_is_oci(const char *s);

/* Parse s; -EINVAL with one line naming what is wrong otherwise.  Exactly
 * one of a tag or a sha256 digest (lowercase hex), the repository path per
 * the distribution spec's grammar (lowercase components joined by '/',
 * separators '.', '_', '__' or dashes between alphanumerics). */
int ociref_parse(const char *s, struct oci_ref *r, struct stella_err *e);

/* The reference part of the manifest URL: the tag or the digest. */
static inline const char *ociref_reference(const struct oci_ref *r)
{
	return r->digest[0] ? r->digest : r->tag;
}

/* HOST (no brackets, no port) is a loopback address by its value (127/8,
 * ::1) or exactly "localhost"; never by a prefix of a name, which any DNS
 * zone can spell. */
bool oci_host_is_loopback(const char *host);
