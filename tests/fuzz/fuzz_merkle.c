/* libFuzzer target: merklefile_decode_index on arbitrary bytes, as if they
 * were the whole manifest/merkle.bin member; then a lookup of every entry. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "merklefile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size heap copy so ASan sees any read past the end. */
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	struct merklefile_index idx = {0};
	struct stella_err e = {0};
	if (merklefile_decode_index(buf, size, size, &idx, &e) == 0) {
		for (size_t i = 0; i < idx.n; i++)
			if (merklefile_find(&idx, idx.e[i].fsverity) != &idx.e[i])
				abort();   /* unique, sorted digests: find must return it */
		merklefile_index_free(&idx);
	}
	/* Also with a member larger than the bytes we have (only the head is
	 * passed when streaming). */
	memset(&idx, 0, sizeof idx);
	e = (struct stella_err){0};
	if (merklefile_decode_index(buf, size, (uint64_t)size + 4096u * 4, &idx, &e) == 0)
		merklefile_index_free(&idx);
	free(buf);
	return 0;
}
