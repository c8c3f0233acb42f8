/* The registry manifest of a kit: what push writes parses back; what is
 * not a kit is refused with its reason. */
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "ocimanifest.h"

#define D1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"

static int parse(const char *s, struct stella_err *e)
{
	struct oci_manifest m;
	memset(e, 0, sizeof(*e));
	return oci_manifest_parse(s, strlen(s), &m, e);
}

int main(void)
{
	struct oci_descriptor l = { .digest = D1, .size = 12345, .title = "kit-2025.01.tar.zst" };
	strcpy(l.media_type, oci_kit_layer_type(2));
	struct oci_kit_annotations a = { "2025.01", "2025-01-15T00:00:00Z", "stella-\"x\"", 42, "2025-02-15T00:00:00Z" };
	char *out;
	size_t n;
	CHECK(oci_manifest_write(&l, &a, &out, &n) == 0);
	CHECK(strstr(out, "\"artifactType\":\"application/vnd.stellaops.offline-kit.v1\""));
	CHECK(strstr(out, "\"config\":{\"mediaType\":\"application/vnd.oci.empty.v1+json\",\"digest\":\"" OCI_EMPTY_DIGEST
			  "\",\"size\":2}"));
	CHECK(strstr(out, "\"io.stellaops.kit.sequence\":\"42\""));
	CHECK(strstr(out, "\"io.stellaops.kit.id\":\"stella-\\\"x\\\"\""));
	struct oci_manifest m;
	struct stella_err e = { 0 };
	CHECK(oci_manifest_parse(out, n, &m, &e) == 0);
	CHECK(m.compression == 2 && m.layer.size == 12345 && !strcmp(m.layer.digest, D1));
	CHECK(!strcmp(m.layer.title, "kit-2025.01.tar.zst") && !strcmp(m.config.digest, OCI_EMPTY_DIGEST));
	free(out);

	CHECK(oci_kit_layer_compression("application/vnd.stellaops.offline-kit.v1.tar") == 0);
	CHECK(oci_kit_layer_compression("application/vnd.stellaops.offline-kit.v1.tar+gzip") == 1);
	CHECK(oci_kit_layer_compression("application/vnd.oci.image.layer.v1.tar") == -1);

	/* OCI 1.1's guidance: no artifactType, then config.mediaType is it */
	CHECK(parse("{\"schemaVersion\":2,\"config\":{\"mediaType\":\"application/vnd.stellaops.offline-kit.v1\","
		    "\"digest\":\"" D1 "\",\"size\":2},\"layers\":[{\"mediaType\":"
		    "\"application/vnd.stellaops.offline-kit.v1.tar\",\"digest\":\"" D1 "\",\"size\":7}]}", &e) == 0);
#define CFG "\"config\":{\"mediaType\":\"application/vnd.oci.empty.v1+json\",\"digest\":\"" D1 "\",\"size\":2}"
#define KIT "\"artifactType\":\"application/vnd.stellaops.offline-kit.v1\""
#define LAYER(t, sz) "{\"mediaType\":\"" t "\",\"digest\":\"" D1 "\",\"size\":" sz "}"
	CHECK(parse("{\"schemaVersion\":2," KIT "," CFG ",\"layers\":[]}", &e) == -EBADMSG &&
	      strstr(e.msg, "missing the kit layer"));
	CHECK(parse("{\"schemaVersion\":2," KIT "," CFG "}", &e) == -EBADMSG && strstr(e.msg, "no layers"));
	CHECK(parse("{\"schemaVersion\":2,\"artifactType\":\"application/x\"," CFG ",\"layers\":["
		    LAYER("application/vnd.stellaops.offline-kit.v1.tar", "1") "]}", &e) == -EBADMSG &&
	      strstr(e.msg, "not a kit: artifact type 'application/x'"));
	CHECK(parse("{\"schemaVersion\":2," KIT "," CFG ",\"layers\":[" LAYER("application/vnd.oci.image.layer.v1.tar", "1")
		    "]}", &e) == -EBADMSG && strstr(e.msg, "not a kit: layer media type"));
	CHECK(parse("{\"schemaVersion\":2," KIT "," CFG ",\"layers\":[" LAYER("application/vnd.stellaops.offline-kit.v1.tar", "1")
		    "," LAYER("application/vnd.stellaops.offline-kit.v1.tar", "1") "]}", &e) == -EBADMSG &&
	      strstr(e.msg, "2 layers"));
	CHECK(parse("{\"schemaVersion\":2," KIT "," CFG ",\"layers\":[" LAYER("application/vnd.stellaops.offline-kit.v1.tar", "-1")
		    "]}", &e) == -EBADMSG);
	CHECK(parse("{\"schemaVersion\":1," KIT "," CFG ",\"layers\":[]}", &e) == -EBADMSG);
	CHECK(parse("{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\"}", &e) == -EBADMSG &&
	      strstr(e.msg, "image.index"));
	CHECK(parse("{\"schemaVersion\":2,", &e) == -EBADMSG && strstr(e.msg, "registry manifest"));
	CHECK(parse("[]", &e) == -EBADMSG);
	return CHECK_DONE();
}
