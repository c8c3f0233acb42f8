/* The OCI 1.1 image manifest that carries a kit in a registry
 * (docs/mirrors.md, "OCI registries"): read when pulling, written by
 * `stellakit push`.  Pure: no I/O (tests/fuzz/fuzz_ocimanifest.c). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define OCI_MANIFEST_TYPE "application/vnd.oci.image.manifest.v1+json"
#define OCI_KIT_ARTIFACT_TYPE "application/vnd.stellaops.offline-kit.v1"
#define OCI_EMPTY_TYPE "application/vnd.oci.empty.v1+json"
#define OCI_EMPTY_DIGEST "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
#define OCI_EMPTY_JSON "{}"
/* distribution refuses larger manifests; so do we, before parsing */
#define OCI_MANIFEST_MAX (4u << 20)

/* The kit layer's media type for a compression (0 none, 1 gzip, 2 zstd,
 * as enum kit_compression), and back (-1: not a kit layer). */
const char *oci_kit_layer_type(int compression);
int oci_kit_layer_compression(const char *media_type);

struct oci_descriptor {
	char media_type[128];
	char digest[7 + 64 + 1];  /* "sha256:HEX" */
	uint64_t size;
	char title[256];          /* org.opencontainers.image.title, "" if none */
};

struct oci_manifest {
	char artifact_type[128];  /* artifactType, else config.mediaType */
	struct oci_descriptor config;
	struct oci_descriptor layer;  /* the one kit layer */
	int compression;              /* of the layer, enum kit_compression */
};

/* Check that buf[0..len) is a kit's manifest: schemaVersion 2, the OCI
 * manifest media type (when stated), artifactType (or, per OCI 1.1's
 * guidance for artifacts without it, config.mediaType) the kit's, exactly
 * one layer of a kit media type with a sha256 digest and a size.
 * -EBADMSG with one line otherwise. */
int oci_manifest_parse(const char *buf, size_t len, struct oci_manifest *m, struct stella_err *e);

/* What `stellakit push` puts into the manifest besides the layer. */
struct oci_kit_annotations {
	const char *version;      /* org.opencontainers.image.version */
	const char *created;      /* org.opencontainers.image.created (RFC 3339) */
	const char *kit_id;       /* io.stellaops.kit.id */
	int64_t sequence;         /* io.stellaops.kit.sequence */
	const char *expires;      /* io.stellaops.kit.expires (RFC 3339) */
};

/* The manifest for LAYER (media_type, digest, size, title) with the empty
 * config and these annotations, as malloc'ed JSON; 0 or -ENOMEM. */
int oci_manifest_write(const struct oci_descriptor *layer, const struct oci_kit_annotations *a, char **out,
		       size_t *len);
