/* stellakit push: a kit into an OCI registry as an OCI 1.1 artifact
 * (docs/mirrors.md, "OCI registries"; the registry client is core/oci.c). */
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "kitverify.h"
#include "oci.h"
#include "source.h"
#include "util.h"

static const char help[] =
	"Usage: " PROG " push [--cacert FILE] [--chunk-size SIZE] KIT oci://REGISTRY/REPOSITORY:TAG\n"
	"\n"
	"Upload KIT to an OCI registry as an OCI 1.1 artifact (artifactType\n"
	"application/vnd.stellaops.offline-kit.v1, the empty config, one layer\n"
	"holding the kit, annotations from its manifest) and tag it TAG.  KIT is\n"
	"checked first (structure and every byte; signatures are checked where it\n"
	"is pulled).  Blobs the registry has already are not sent again.  Prints\n"
	"the manifest digest (sha256:...), which oci://REGISTRY/REPOSITORY@DIGEST\n"
	"names for good.\n"
	"\n"
	"Credentials as docker and skopeo read them: ${REGISTRY_AUTH_FILE}, else\n"
	"${DOCKER_CONFIG}/config.json, else ~/.docker/config.json.  https unless the\n"
	"registry is on a loopback address and does not speak TLS.\n"
	"\n"
	"      --cacert FILE     CA bundle for the registry's certificate (default:\n"
	"                        SSL_CERT_FILE, else the system store)\n"
	"      --chunk-size SIZE upload kits larger than SIZE in chunks of SIZE bytes\n"
	"                        (suffix K, M, G; default 64M; 0: one request)\n"
	"  -h, --help            show this help\n"
	"\n"
	"Exit codes: 0 pushed, 1 runtime (registry unreachable, credentials refused),\n"
	"2 usage, 3 malformed kit, 4 content mismatch.\n";

#define PUSH_CHUNK_DEFAULT (UINT64_C(64) << 20)

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	unsigned shift = 0;
	if (*end == 'K' || *end == 'k')
		shift = 10, end++;
	else if (*end == 'M' || *end == 'm')
		shift = 20, end++;
	else if (*end == 'G' || *end == 'g')
		shift = 30, end++;
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

/* sha256:HEX of the whole file, streamed. */
static int file_digest(int fd, uint64_t size, char out[7 + 64 + 1], struct stella_err *e, const char *name)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t *buf = malloc(1u << 20), d[32];
	int r = md && buf && EVP_DigestInit_ex(md, EVP_sha256(), NULL) ? 0 : -ENOMEM;
	for (uint64_t off = 0; r == 0 && off < size;) {
		size_t n = (size_t)MIN((uint64_t)(1u << 20), size - off);
		if ((r = pread_full(fd, buf, n, off)) < 0)
			r = stella_fail_errno(e, r, "%s", name);
		else
			EVP_DigestUpdate(md, buf, n), off += n;
	}
	if (r == 0) {
		EVP_DigestFinal_ex(md, d, NULL);
		memcpy(out, "sha256:", 7);
		hex_encode(d, 32, out + 7);
	}
	EVP_MD_CTX_free(md);
	free(buf);
	return r;
}

/* Blob DIGEST into the registry unless it is there already. */
static int push_blob(struct oci_client *c, const char *digest, int fd, uint64_t size, const void *mem,
		     uint64_t chunk, struct stella_err *e)
{
	bool have = false;
	int r = oci_blob_exists(c, digest, &have, e);
	if (r < 0 || have)
		return r;
	return mem ? oci_blob_upload_mem(c, digest, mem, (size_t)size, e)
		   : oci_blob_upload_fd(c, digest, fd, size, chunk, e);
}

static int push(const char *kit, const struct oci_ref *ref, const char *cacert, uint64_t chunk,
		struct stella_err *e)
{
	/* One open file for the check and the upload: the bytes pushed are
	 * those verified, even if the path is replaced in between. */
	_cleanup_(closep) int fd = open(kit, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		return stella_fail_errno(e, -errno, "%s", kit);
	int vfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (vfd < 0)
		return stella_fail_errno(e, -errno, "%s", kit);
	struct source *src = NULL;
	int r = source_open_fd(vfd, kit, &src, e);
	if (r < 0)
		return r;
	struct kitverify_opts vo = { .content = true, .progress = progress_cb, .progress_ctx = (void *)"checking",
				     .source = src };
	struct kitverify_result res;
	r = kit_verify(kit, &vo, &res, e);
	source_close(src);
	if (r < 0)
		return r;
	progress_done();
	char *dup = strdup(kit);
	struct oci_descriptor layer = { .size = (uint64_t)st.st_size };
	snprintf(layer.media_type, sizeof(layer.media_type), "%s", oci_kit_layer_type(res.compression));
	snprintf(layer.title, sizeof(layer.title), "%s", dup ? basename(dup) : "kit");
	free(dup);
	if ((r = file_digest(fd, layer.size, layer.digest, e, kit)) < 0)
		goto out;

	struct remote_opts ro = { .cacert = cacert, .timeout_ms = REMOTE_TIMEOUT_DEFAULT_MS };
	struct oci_client *c = NULL;
	char created[32], expires[32], *body = NULL, digest[7 + 64 + 1];
	size_t blen = 0;
	time_format(res.manifest->created_at, created);
	time_format(res.manifest->expires_at, expires);
	struct oci_kit_annotations a = { .version = res.manifest->version, .created = created,
		.kit_id = res.manifest->kit_id, .sequence = res.manifest->sequence, .expires = expires };
	if ((r = oci_client_new(ref, &ro, true, &c, e)) == 0 &&
	    (r = push_blob(c, OCI_EMPTY_DIGEST, -1, 2, OCI_EMPTY_JSON, 0, e)) == 0 &&
	    (r = push_blob(c, layer.digest, fd, layer.size, NULL, chunk, e)) == 0 &&
	    (r = oci_manifest_write(&layer, &a, &body, &blen)) == 0 &&
	    (r = oci_manifest_put(c, body, blen, e)) == 0) {
		uint8_t d[32];
		EVP_Digest(body, blen, d, NULL, EVP_sha256(), NULL);
		memcpy(digest, "sha256:", 7);
		hex_encode(d, 32, digest + 7);
		printf("%s\n", digest);
	}
	free(body);
	oci_client_free(c);
out:
	kitverify_result_free(&res);
	return r;
}

enum { OPT_CACERT = 256, OPT_CHUNK };

int cmd_push(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "cacert", required_argument, NULL, OPT_CACERT },
		{ "chunk-size", required_argument, NULL, OPT_CHUNK },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *cacert = NULL;
	uint64_t chunk = PUSH_CHUNK_DEFAULT;
	int c, r;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
		switch (c) {
		case OPT_CACERT: cacert = optarg; break;
		case OPT_CHUNK:
			if (parse_size(optarg, &chunk) < 0)
				return usage_error("push", "--chunk-size '%s': a size (suffix K, M, G)", optarg);
			break;
		case 'h': fputs(help, stdout); return 0;
		default: return usage_error("push", "unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (argc - optind != 2)
		return usage_error("push", "expected KIT and oci://REGISTRY/REPOSITORY:TAG");
	struct stella_err e = { 0 };
	struct oci_ref ref;
	if (ociref_parse(argv[optind + 1], &ref, &e) < 0)
		return usage_error("push", "%s", e.msg);
	if (!ref.tag[0])
		return usage_error("push", "%s: push needs a :TAG (the digest is what it prints)", argv[optind + 1]);
	if ((r = push(argv[optind], &ref, cacert, chunk, &e)) < 0)
		return report(&e, r);
	return 0;
}
