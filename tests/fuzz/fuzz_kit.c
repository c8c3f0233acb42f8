/* libFuzzer target: the whole kit verifier (tar walk, manifest rules,
 * merkle.bin, every member's content) on an arbitrary kit file.  No trust
 * store, so an unsigned or wrongly signed kit still reaches the content
 * checks; expiry is not checked. */
#include <stdint.h>
#include <string.h>

#include "kitverify.h"
#include "memfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = memfile_put(data, size);
	struct kitverify_opts o = {
		.trust = NULL,
		.content = true,
		.check_expiry = false,
	};
	struct kitverify_result res;
	memset(&res, 0, sizeof res);
	struct stella_err e = {0};
	(void)kit_verify(path, &o, &res, &e);
	kitverify_result_free(&res);

	/* The mount's walk: lazy, through an open source. */
	struct source *src = NULL;
	e = (struct stella_err){0};
	if (source_open(path, &src, &e) == 0) {
		o.source = src;
		o.lazy = true;
		memset(&res, 0, sizeof res);
		e = (struct stella_err){0};
		(void)kit_verify(path, &o, &res, &e);
		kitverify_result_free(&res);
		source_close(src);
	}
	return 0;
}
