#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>

#include "json.h"
#include "ocimanifest.h"

static const char *const layer_types[] = {
	OCI_KIT_ARTIFACT_TYPE ".tar", OCI_KIT_ARTIFACT_TYPE ".tar+gzip", OCI_KIT_ARTIFACT_TYPE ".tar+zstd",
};

const char *oci_kit_layer_type(int compression)
{
	return compression >= 0 && compression < 3 ? layer_types[compression] : NULL;
}

int oci_kit_layer_compression(const char *media_type)
{
	for (int i = 0; i < 3; i++)
		if (!strcmp(media_type, layer_types[i]))
			return i;
	return -1;
}

/* A string member into buf; absent is "" when optional.  Strings from the
 * registry are printed in messages: keep them one short line (err.c). */
static int get_str(const struct json *o, const char *key, char *buf, size_t cap, bool required,
		   const char *where, struct stella_err *e)
{
	const struct json *v = json_get(o, key);
	buf[0] = '\0';
	if (!v)
		return required ? stella_fail(e, -EBADMSG, "registry manifest: %s has no %s", where, key) : 0;
	if (v->type != JSON_STRING)
		return stella_fail(e, -EBADMSG, "registry manifest: %s.%s is not a string", where, key);
	if (v->len >= cap)
		return stella_fail(e, -EBADMSG, "registry manifest: %s.%s is too long", where, key);
	memcpy(buf, v->u.s, v->len);
	buf[v->len] = '\0';
	return 0;
}

static bool sha256_digest(const char *s)
{
	if (strncmp(s, "sha256:", 7) || strlen(s) != 71)
		return false;
	for (const char *p = s + 7; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

static int parse_descriptor(const struct json *o, const char *where, struct oci_descriptor *d,
			    struct stella_err *e)
{
	int r;
	if (!o || o->type != JSON_OBJECT)
		return stella_fail(e, -EBADMSG, "registry manifest: %s is missing or not an object", where);
	if ((r = get_str(o, "mediaType", d->media_type, sizeof(d->media_type), true, where, e)) < 0 ||
	    (r = get_str(o, "digest", d->digest, sizeof(d->digest), true, where, e)) < 0)
		return r;
	if (!sha256_digest(d->digest))
		return stella_fail(e, -EBADMSG, "registry manifest: %s.digest '%s' is not a sha256 digest", where,
				   d->digest);
	const struct json *size = json_get(o, "size");
	if (!size || size->type != JSON_INT || size->u.i < 0)
		return stella_fail(e, -EBADMSG, "registry manifest: %s.size is missing or not a size", where);
	d->size = (uint64_t)size->u.i;
	const struct json *ann = json_get(o, "annotations");
	d->title[0] = '\0';
	if (ann && ann->type != JSON_OBJECT)
		return stella_fail(e, -EBADMSG, "registry manifest: %s.annotations is not an object", where);
	if (ann && (r = get_str(ann, "org.opencontainers.image.title", d->title, sizeof(d->title), false, where,
				e)) < 0)
		return r;
	return 0;
}

static int check_manifest(const struct json *root, struct oci_manifest *m, struct stella_err *e)
{
	char media[128];
	int r;
	if (root->type != JSON_OBJECT)
		return stella_fail(e, -EBADMSG, "registry manifest: not a JSON object");
	if (root->dup)
		return stella_fail(e, -EBADMSG, "registry manifest: key '%s' twice", root->dup);
	const struct json *sv = json_get(root, "schemaVersion");
	if (!sv || sv->type != JSON_INT || sv->u.i != 2)
		return stella_fail(e, -EBADMSG, "registry manifest: schemaVersion is not 2");
	if ((r = get_str(root, "mediaType", media, sizeof(media), false, "manifest", e)) < 0)
		return r;
	if (media[0] && strcmp(media, OCI_MANIFEST_TYPE))
		return stella_fail(e, -EBADMSG, "not a kit: the registry holds a %s, not an OCI image manifest",
				   media);
	if ((r = parse_descriptor(json_get(root, "config"), "config", &m->config, e)) < 0)
		return r;
	if ((r = get_str(root, "artifactType", m->artifact_type, sizeof(m->artifact_type), false, "manifest",
			 e)) < 0)
		return r;
	if (!m->artifact_type[0])
		memcpy(m->artifact_type, m->config.media_type, sizeof(m->artifact_type));
	if (strcmp(m->artifact_type, OCI_KIT_ARTIFACT_TYPE))
		return stella_fail(e, -EBADMSG, "not a kit: artifact type '%s', expected %s", m->artifact_type,
				   OCI_KIT_ARTIFACT_TYPE);
	const struct json *layers = json_get(root, "layers");
	if (!layers || layers->type != JSON_ARRAY)
		return stella_fail(e, -EBADMSG, "registry manifest: no layers");
	if (layers->len == 0)
		return stella_fail(e, -EBADMSG, "registry manifest: missing the kit layer");
	if (layers->len != 1)
		return stella_fail(e, -EBADMSG, "registry manifest: %u layers, a kit artifact has exactly one",
				   layers->len);
	if ((r = parse_descriptor(layers->u.first, "layers[0]", &m->layer, e)) < 0)
		return r;
	m->compression = oci_kit_layer_compression(m->layer.media_type);
	if (m->compression < 0)
		return stella_fail(e, -EBADMSG, "not a kit: layer media type '%s'", m->layer.media_type);
	return 0;
}

int oci_manifest_parse(const char *buf, size_t len, struct oci_manifest *m, struct stella_err *e)
{
	memset(m, 0, sizeof(*m));
	if (len > OCI_MANIFEST_MAX)
		return stella_fail(e, -EBADMSG, "registry manifest: larger than %u bytes", OCI_MANIFEST_MAX);
	struct json_opts o = { .max_depth = 8 };
	struct json_doc *doc = NULL;
	const struct json *root;
	int r = json_parse(buf, len, &o, &doc, &root, e);
	if (r == -EBADMSG && e) {
		/* say whose JSON it is */
		char inner[sizeof(e->msg)];
		snprintf(inner, sizeof(inner), "%s", e->msg);
		e->code = 0;
		r = stella_fail(e, -EBADMSG, "registry manifest: %.400s", inner);
	}
	if (r == 0)
		r = check_manifest(root, m, e);
	json_doc_free(doc);
	return r;
}

#define G(call) do { if ((call) != yajl_gen_status_ok) goto fail; } while (0)

static yajl_gen_status gstr(yajl_gen g, const char *s)
{
	return yajl_gen_string(g, (const unsigned char *)s, strlen(s));
}

static yajl_gen_status gdesc(yajl_gen g, const char *type, const char *digest, uint64_t size, const char *title)
{
	yajl_gen_status s;
	if ((s = yajl_gen_map_open(g)) || (s = gstr(g, "mediaType")) || (s = gstr(g, type)) ||
	    (s = gstr(g, "digest")) || (s = gstr(g, digest)) || (s = gstr(g, "size")) ||
	    (s = yajl_gen_integer(g, (long long)size)))
		return s;
	if (title && ((s = gstr(g, "annotations")) || (s = yajl_gen_map_open(g)) ||
		      (s = gstr(g, "org.opencontainers.image.title")) || (s = gstr(g, title)) ||
		      (s = yajl_gen_map_close(g))))
		return s;
	return yajl_gen_map_close(g);
}

int oci_manifest_write(const struct oci_descriptor *layer, const struct oci_kit_annotations *a, char **out,
		       size_t *len)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	if (!g)
		return -ENOMEM;
	char seq[24];
	snprintf(seq, sizeof(seq), "%" PRId64, a->sequence);
	G(yajl_gen_map_open(g));
	G(gstr(g, "schemaVersion")); G(yajl_gen_integer(g, 2));
	G(gstr(g, "mediaType")); G(gstr(g, OCI_MANIFEST_TYPE));
	G(gstr(g, "artifactType")); G(gstr(g, OCI_KIT_ARTIFACT_TYPE));
	G(gstr(g, "config")); G(gdesc(g, OCI_EMPTY_TYPE, OCI_EMPTY_DIGEST, 2, NULL));
	G(gstr(g, "layers")); G(yajl_gen_array_open(g));
	G(gdesc(g, layer->media_type, layer->digest, layer->size, layer->title));
	G(yajl_gen_array_close(g));
	G(gstr(g, "annotations")); G(yajl_gen_map_open(g));
	G(gstr(g, "org.opencontainers.image.version")); G(gstr(g, a->version));
	G(gstr(g, "org.opencontainers.image.created")); G(gstr(g, a->created));
	G(gstr(g, "io.stellaops.kit.id")); G(gstr(g, a->kit_id));
	G(gstr(g, "io.stellaops.kit.sequence")); G(gstr(g, seq));
	G(gstr(g, "io.stellaops.kit.expires")); G(gstr(g, a->expires));
	G(yajl_gen_map_close(g));
	G(yajl_gen_map_close(g));
	const unsigned char *buf;
	size_t n;
	G(yajl_gen_get_buf(g, &buf, &n));
	*out = malloc(n + 1);
	if (!*out)
		goto fail;
	memcpy(*out, buf, n);
	(*out)[n] = '\0';
	*len = n;
	yajl_gen_free(g);
	return 0;
fail:
	yajl_gen_free(g);
	return -ENOMEM;
}
