/* libFuzzer target: ociref_parse on arbitrary bytes.  Whatever parses must
 * be made only of characters that are safe in a URL path, and must parse
 * again, to the same fields, from its canonical spelling. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ociref.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 1024)
		return 0;
	char buf[1100];
	memcpy(buf, "oci://", 6);
	memcpy(buf + 6, data, size);
	buf[6 + size] = '\0';
	struct oci_ref r;
	struct stella_err e = { 0 };
	if (ociref_parse(buf, &r, &e) != 0) {
		if (!e.msg[0] || strchr(e.msg, '\n'))
			abort();
		return 0;
	}
	for (const char *p = r.repo; *p; p++)
		if (!strchr("abcdefghijklmnopqrstuvwxyz0123456789._-/", *p))
			abort();
	if (strstr(r.repo, "..") || strstr(r.repo, "//") || r.repo[0] == '/')
		abort();
	if (!!r.tag[0] == !!r.digest[0])
		abort();
	char again[1200];
	snprintf(again, sizeof(again), "oci://%s/%s%s%s", r.registry, r.repo, r.tag[0] ? ":" : "@",
		 ociref_reference(&r));
	struct oci_ref r2;
	if (ociref_parse(again, &r2, NULL) != 0 || memcmp(&r, &r2, sizeof(r)) != 0) {
		fprintf(stderr, "round trip differs: %s\n", again);
		abort();
	}
	return 0;
}
