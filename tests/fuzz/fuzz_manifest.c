/* libFuzzer target: manifest_parse on arbitrary bytes; whatever parses must
 * survive a canonical round trip (write, parse again, write the same bytes). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* manifest_parse needs buf[len] readable. */
	char *buf = malloc(size + 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';

	struct stella_err e = {0};
	struct manifest *m = NULL;
	if (manifest_parse(buf, size, &m, &e) == 0) {
		char *out = NULL;
		size_t olen = 0;
		if (manifest_write(m, &out, &olen) != 0) {
			fprintf(stderr, "manifest_write failed on a parsed manifest\n");
			abort();
		}
		struct stella_err e2 = {0};
		struct manifest *m2 = NULL;
		if (manifest_parse(out, olen, &m2, &e2) != 0) {
			fprintf(stderr, "round trip: re-parse failed: %s\n%.*s\n", e2.msg, (int)olen, out);
			abort();
		}
		char *out2 = NULL;
		size_t olen2 = 0;
		if (manifest_write(m2, &out2, &olen2) != 0) {
			fprintf(stderr, "manifest_write failed on the re-parsed manifest\n");
			abort();
		}
		if (olen != olen2 || memcmp(out, out2, olen) != 0) {
			fprintf(stderr, "round trip: writer not canonical\n--- first\n%s\n--- second\n%s\n", out, out2);
			abort();
		}
		free(out2);
		manifest_free(m2);
		free(out);
		manifest_free(m);
	}
	free(buf);
	return 0;
}
