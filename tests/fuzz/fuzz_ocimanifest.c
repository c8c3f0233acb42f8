/* libFuzzer target: oci_manifest_parse on arbitrary bytes (a registry's
 * answer).  Whatever parses is a kit manifest: written again from its
 * layer (oci_manifest_write, as push does) it must parse to the same
 * layer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ocimanifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	struct oci_manifest m;
	struct stella_err e = { 0 };
	if (oci_manifest_parse(buf, size, &m, &e) == 0) {
		if (oci_kit_layer_compression(m.layer.media_type) != m.compression || m.compression < 0)
			abort();
		struct oci_kit_annotations a = { "v", "2025-01-15T00:00:00Z", "k", 1, "2025-02-15T00:00:00Z" };
		char *out = NULL;
		size_t olen = 0;
		if (oci_manifest_write(&m.layer, &a, &out, &olen) != 0)
			abort();
		struct oci_manifest m2;
		struct stella_err e2 = { 0 };
		if (oci_manifest_parse(out, olen, &m2, &e2) != 0 || memcmp(&m.layer, &m2.layer, sizeof(m.layer))) {
			fprintf(stderr, "round trip: %s\n%s\n", e2.msg, out);
			abort();
		}
		free(out);
	} else if (!e.msg[0] || strchr(e.msg, '\n')) {
		abort();
	}
	free(buf);
	return 0;
}
