/* A client of an OCI registry (the distribution API), for kits kept there
 * as OCI 1.1 artifacts (docs/mirrors.md, "OCI registries"): resolve a tag
 * or digest to the kit layer's blob, which remote_open then reads lazily
 * with range requests like any URL; and push a kit.
 *
 * Transport: https verifying the certificate (cacert, else SSL_CERT_FILE,
 * else the system store); plain http only for a loopback registry, and
 * only when it does not speak TLS (as docker and skopeo do).
 * Credentials: anonymous; basic, from ${REGISTRY_AUTH_FILE}, else
 * ${DOCKER_CONFIG}/config.json, else ~/.docker/config.json (`auths`, the
 * base64 `auth` of user:password); the bearer-token challenge, tokens
 * refreshed when they expire or a request meets a new 401.  Credentials
 * and tokens go to the registry's own scheme, host and port and to the
 * token realm only, never to where a redirect leads.
 *
 * Failures: the negative errno classes of err.h: a manifest whose digest
 * is not the one asked for or a layer whose size is not its descriptor's
 * -EUCLEAN (4); not a kit's manifest -EBADMSG (3); refused or unusable
 * credentials -EACCES, unreachable -EIO, unknown -ENOENT (all 1); a bad
 * reference -EINVAL (2). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "ocimanifest.h"
#include "ociref.h"
#include "remote.h"

struct oci_client;

/* A session with REF's registry, for pulling (push=false) or pushing.
 * Learns the scheme and the kind of authentication (GET /v2/). */
int oci_client_new(const struct oci_ref *ref, const struct remote_opts *o, bool push,
		   struct oci_client **out, struct stella_err *e);
void oci_client_free(struct oci_client *c);

struct oci_resolved {
	char digest[7 + 64 + 1];          /* the manifest's, "sha256:HEX" */
	struct oci_manifest m;
	char blob_url[2048];              /* the kit layer's /v2/REPO/blobs/DIGEST */
};

/* Fetch REF's manifest, check it is the digest asked for (and the
 * registry's Docker-Content-Digest), that it is a kit's, and that the
 * layer blob's size is the descriptor's. */
int oci_resolve(struct oci_client *c, struct oci_resolved *res, struct stella_err *e);

/* The manifest digest REF names now (follow=). */
int oci_manifest_digest(struct oci_client *c, char digest[7 + 64 + 1], struct stella_err *e);

/* The endpoint remote_open reads the kit layer from: the blob URL, LABEL
 * for status, the size of the descriptor and auth ops carrying this
 * session's credentials (ep->url, ep->label malloc'ed, freed by
 * oci_endpoint_release; the auth ctx is remote_open's to free). */
int oci_endpoint(struct oci_client *c, const struct oci_resolved *res, const char *label,
		 struct remote_endpoint *ep, struct stella_err *e);
void oci_endpoint_release(struct remote_endpoint *ep);

/* Push: is the blob there already; upload one from FD (SIZE bytes,
 * streamed: monolithic PUT when SIZE <= CHUNK or CHUNK is 0, else PATCH
 * chunks of CHUNK bytes); upload one from memory; put the manifest under
 * REF's tag. */
int oci_blob_exists(struct oci_client *c, const char *digest, bool *exists, struct stella_err *e);
int oci_blob_upload_fd(struct oci_client *c, const char *digest, int fd, uint64_t size, uint64_t chunk,
		       struct stella_err *e);
int oci_blob_upload_mem(struct oci_client *c, const char *digest, const void *buf, size_t len,
			struct stella_err *e);
int oci_manifest_put(struct oci_client *c, const char *body, size_t len, struct stella_err *e);

/* The location_open / location_probe side of oci:// (core/location.c). */
int oci_location_endpoint(const char *source, const struct remote_opts *o, struct remote_endpoint *ep,
			  struct stella_err *e);
int oci_location_probe(const char *source, const struct remote_opts *o, const char *validator,
		       char out[256], struct stella_err *e);
